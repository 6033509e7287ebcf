"""Fast adaptation to a held-out site: K adaptation steps on N of its cases, then the rest of its cases evaluated.

The MAML-U-Net use case: a meta-learned initialisation should reach a new site's optimum in a few steps. Each step
takes one batch of the N support cases (a random patch of each, and a random non-empty subset of its available
modalities drawn by the registered ``random`` masking policy); the steps are taken by the one adaptation loop of
:mod:`prism.adapt`, through a run's own rule (``Strategy.adapt``) or plain fine-tuning (:func:`fine_tune_rule`).
The model is never changed: the adapted weights go into a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..adapt import OPTIMIZERS, AdaptLossFn, adaptation_loss, adapted_model, fine_tune
from ..backbone import Backbone
from ..batch import Batch
from ..config import EvalConfig
from ..data.cache_reader import CacheReader
from ..errors import ConfigError, DataError
from ..masking import MaskingPolicy
from ..registry import create_masking_policy
from ..strategy import Strategy

_CONFIG = EvalConfig()  # the config's eval defaults (the fine-tuning ones are prism.adapt.ADAPT_DEFAULTS)

#: the masking policy that draws each support case's modalities in a step (a uniformly drawn non-empty subset)
SUPPORT_MASKING = "random"


@dataclass(frozen=True)
class AdaptationSettings:
    """Which site, how many support cases (N), how many steps (K) and how to take them.

    The defaults are the config's (``eval.adapt_*``); :meth:`from_config` reads a run's.
    """

    site: str
    support_cases: int = _CONFIG.adapt_cases
    steps: int = _CONFIG.adapt_steps
    lr: float = _CONFIG.adapt_lr
    optimizer: str = _CONFIG.adapt_optimizer  # one of prism.adapt.OPTIMIZERS
    patch_size: tuple[int, int, int] | None = _CONFIG.adapt_patch_size  # None: whole volumes
    split: str | None = _CONFIG.adapt_split  # where the site's cases come from; None: the cases being evaluated
    seed: int = _CONFIG.adapt_seed

    def __post_init__(self) -> None:
        if self.support_cases < 1 or self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"eval.adapt: needs support_cases >= 1, steps >= 0 and lr > 0, got "
                              f"{self.support_cases}, {self.steps}, {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"eval.adapt_optimizer: one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")

    @classmethod
    def from_config(cls, section: EvalConfig) -> AdaptationSettings | None:
        """The fast adaptation a config's ``eval`` section asks for (None while ``adapt_site`` is unset)."""
        if section.adapt_site is None:
            return None
        return cls(site=section.adapt_site, support_cases=section.adapt_cases, steps=section.adapt_steps,
                   lr=section.adapt_lr, optimizer=section.adapt_optimizer,
                   patch_size=tuple(section.adapt_patch_size) if section.adapt_patch_size else None,
                   split=section.adapt_split, seed=section.adapt_seed)

    def settings(self) -> dict[str, object]:
        out = asdict(self)
        out["patch_size"] = list(self.patch_size) if self.patch_size else None
        return out


def site_cases(reader: CacheReader, candidates: Sequence[str], settings: AdaptationSettings
               ) -> tuple[list[str], list[str]]:
    """Support (the first N of the site's cases, in order) and query cases (the rest) for ``settings.site``."""
    pool = reader.split(settings.split) if settings.split else tuple(candidates)
    members = [c for c in pool if reader.info(c).site == settings.site]
    if len(members) <= settings.support_cases:
        sites = sorted({reader.info(c).site for c in pool})
        raise DataError(f"{reader.path}: site '{settings.site}' has {len(members)} cases in "
                        f"{settings.split or 'the evaluated cases'}; fast adaptation needs more than "
                        f"{settings.support_cases} (sites there: {sites})")
    return members[: settings.support_cases], members[settings.support_cases:]


#: One support case: image float ``[M, D, H, W]``, label long ``[D, H, W]``, availability bool ``[M]``.
SupportCase = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def load_support(reader: CacheReader, support: Sequence[str]) -> list[SupportCase]:
    """The ``support`` cases read whole from the cache, as :data:`SupportCase` tuples (on the CPU)."""
    cases = []
    for cid in support:
        image, label = reader.read_case(cid)
        cases.append((torch.from_numpy(image), torch.from_numpy(label).long(),
                      torch.tensor(reader.info(cid).availability)))
    return cases


def _pad_to(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    return (0, target[2] - shape[2], 0, target[1] - shape[1], 0, target[0] - shape[0])


def pad_to_divisor(image: torch.Tensor, label: torch.Tensor, divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``[M, D, H, W]`` and label ``[D, H, W]`` zero-padded at the end of each axis to a multiple of
    ``divisor`` (a backbone's ``size_divisor``)."""
    pad = _pad_to(label.shape, [-(-s // divisor) * divisor for s in label.shape])
    if any(pad):
        image, label = F.pad(image, pad), F.pad(label, pad)
    return image, label


class SupportBatches(Sequence[Batch]):
    """The batches of ``steps`` adaptation steps, as ``Strategy.adapt`` reads them (step ``i``: item ``i``).

    Each batch holds every support case once: a random crop of ``patch_size`` (clipped to the volume; None: the
    whole volume, volumes of different sizes padded to the largest), zero-padded to a multiple of the backbone's
    size divisor, under a mask drawn by ``policy`` within the case's availability. Every random draw is made up
    front from ``seed`` (crops, then masks, step by step); a batch is built when it is read, so memory stays flat
    in the number of steps.
    """

    def __init__(self, cases: Sequence[SupportCase], *, steps: int, patch_size: tuple[int, int, int] | None,
                 divisor: int, policy: MaskingPolicy, seed: int, device: torch.device) -> None:
        self.cases, self.patch_size, self.divisor, self.device = list(cases), patch_size, divisor, device
        gen = torch.Generator().manual_seed(seed)
        available = torch.stack([a for _, _, a in self.cases])
        self.draws: list[tuple[list[tuple[int, ...]], torch.Tensor]] = []
        for _ in range(steps):
            starts = [self._crop_start(label.shape, gen) for _, label, _ in self.cases]
            self.draws.append((starts, policy(available, gen)))

    def _crop_start(self, spatial: Sequence[int], gen: torch.Generator) -> tuple[int, ...]:
        if self.patch_size is None:
            return ()
        return tuple(int(torch.randint(0, n - min(s, n) + 1, (), generator=gen))
                     for s, n in zip(self.patch_size, spatial, strict=True))

    def __len__(self) -> int:
        return len(self.draws)

    def __getitem__(self, index: int) -> Batch:  # type: ignore[override]
        starts, mask = self.draws[index]
        samples = [self._crop(image, label, start) for (image, label, _), start in zip(self.cases, starts, strict=True)]
        if len({tuple(lab.shape) for _, lab in samples}) > 1:  # whole volumes of different sizes: pad to the largest
            top = [max(lab.shape[a] for _, lab in samples) for a in range(3)]
            samples = [(F.pad(i, _pad_to(lab.shape, top)), F.pad(lab, _pad_to(lab.shape, top))) for i, lab in samples]
        available = torch.stack([a for _, _, a in self.cases])
        batch = Batch(image=torch.stack([s[0] for s in samples]), label=torch.stack([s[1] for s in samples]),
                      mask=available, availability=available,
                      case_ids=[f"support{i}" for i in range(len(self.cases))])
        return batch.with_mask(mask).to(self.device)

    def _crop(self, image: torch.Tensor, label: torch.Tensor, start: tuple[int, ...]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.patch_size is not None:
            box = tuple(slice(a, a + min(s, n)) for a, s, n in zip(start, self.patch_size, label.shape, strict=True))
            image, label = image[(slice(None), *box)], label[box]
        return pad_to_divisor(image, label, self.divisor)


def support_batches(model: Backbone, support: Sequence[SupportCase], settings: AdaptationSettings,
                    device: torch.device) -> SupportBatches:
    """The :class:`SupportBatches` of ``settings`` (steps, patch size, seed) for ``model``'s modalities."""
    policy = create_masking_policy(SUPPORT_MASKING, tuple(model.modalities))
    return SupportBatches(support, steps=settings.steps, patch_size=settings.patch_size,
                          divisor=model.size_divisor, policy=policy, seed=settings.seed, device=device)


#: The per-(draw, K) adaptation rule: ``rule(model, support cases, settings, *, device, amp_dtype=None,
#: loss_fn=None) -> adapted copy`` (in eval mode; ``model`` unchanged).
AdaptRule = Callable[..., Backbone]


def fine_tune_rule(model: Backbone, support: Sequence[SupportCase], settings: AdaptationSettings, *,
                   device: torch.device, amp_dtype: torch.dtype | None = None, loss_fn: AdaptLossFn | None = None
                   ) -> Backbone:
    """Fine-tuning: ``settings.steps`` steps of ``settings.optimizer`` (plain SGD, or Adam) at ``settings.lr`` on
    every trainable parameter (:func:`prism.adapt.fine_tune`, the base ``Strategy.adapt``'s rule), on
    :func:`support_batches`, under ``amp_dtype``; ``loss_fn`` defaults to :func:`prism.adapt.adaptation_loss`.

    Returns:
        The adapted copy, in eval mode.
    """
    return adapted_model(fine_tune, model, support_batches(model, support, settings, device),
                         loss_fn or adaptation_loss, amp_dtype=amp_dtype, steps=settings.steps, lr=settings.lr,
                         optimizer=OPTIMIZERS[settings.optimizer])


def strategy_rule(strategy: Strategy, *, use_strategy_lr: bool = False) -> AdaptRule:
    """The run's own adaptation rule (``Strategy.adapt``: MAML's inner loop, Meta-SGD's rates, plain fine-tuning
    for standard training) as an :data:`AdaptRule`, on the batches of :func:`fine_tune_rule`.

    ``settings.lr`` is the step size unless ``use_strategy_lr`` (then the strategy's own); ``settings.optimizer``
    is not read (the strategy's rule is).
    """
    def rule(model: Backbone, support: Sequence[SupportCase], settings: AdaptationSettings, *,
             device: torch.device, amp_dtype: torch.dtype | None = None, loss_fn: AdaptLossFn | None = None
             ) -> Backbone:
        return adapted_model(strategy.adapt, model, support_batches(model, support, settings, device),
                             loss_fn or adaptation_loss, amp_dtype=amp_dtype, steps=settings.steps,
                             lr=None if use_strategy_lr else settings.lr)

    return rule


def has_own_rule(strategy: Strategy) -> bool:
    """Whether ``strategy`` adapts by a rule of its own (MAML, Reptile, ...) rather than the base fine-tuning."""
    return type(strategy).adapt is not Strategy.adapt


def evaluation_rule(strategy: Strategy | None) -> AdaptRule:
    """The rule of fast adaptation in an evaluation (``eval.adapt_site``): the strategy's own, with its own step
    size, for strategies that have one; otherwise fine-tuning (:func:`fine_tune_rule`, ``eval.adapt_lr`` and
    ``eval.adapt_optimizer``), which for ``sgd`` is the base ``Strategy.adapt``."""
    if strategy is not None and has_own_rule(strategy):
        return strategy_rule(strategy, use_strategy_lr=True)
    return fine_tune_rule


#: the rules an adaptation curve can name (``prism-eval adapt --rule``)
RULES = ("strategy", "fine_tune")
