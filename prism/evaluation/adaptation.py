"""Fast adaptation to a held-out site: K fine-tuning steps on N of its cases, then the rest of its cases evaluated.

The MAML-U-Net use case: a meta-learned initialisation should reach a new site's optimum in a few steps. The
model is copied (the caller's stays as it was); each step trains on the N support cases (random patches, a random
non-empty subset of each case's available modalities), with plain SGD by default as in MAML's inner loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..adapt import adapted_copy
from ..backbone import Backbone
from ..batch import Batch
from ..data.cache_reader import CacheReader
from ..errors import ConfigError, DataError
from ..outputs import SegOutput
from ..strategy import Strategy

#: A loss for fine-tuning: the model output and the batch -> a scalar (or ``(scalar, parts)`` as a LossSet gives).
AdaptLoss = Callable[[SegOutput, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class AdaptationSettings:
    """Which site, how many support cases (N), how many steps (K) and how to take them."""

    site: str
    support_cases: int = 1
    steps: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" or "adam"
    patch_size: tuple[int, int, int] | None = None  # None: whole volumes
    split: str | None = None  # where the site's cases come from; None: the cases being evaluated
    seed: int = 0

    def __post_init__(self) -> None:
        if self.support_cases < 1 or self.steps < 0 or self.lr <= 0:
            raise ConfigError(f"eval.adapt: needs support_cases >= 1, steps >= 0 and lr > 0, got "
                              f"{self.support_cases}, {self.steps}, {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"eval.adapt_optimizer: 'sgd' or 'adam', got '{self.optimizer}'")

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


def dice_ce_loss(output: SegOutput, batch: Batch) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the foreground classes, on the fused logits."""
    logits = output.logits.float()
    label = batch.label
    ce = F.cross_entropy(logits, label)
    probs = logits.softmax(1)[:, 1:].flatten(2)
    onehot = F.one_hot(label, logits.shape[1]).movedim(-1, 1)[:, 1:].flatten(2).to(probs.dtype)
    inter = (probs * onehot).sum(-1)
    denom = probs.sum(-1) + onehot.sum(-1)
    soft_dice = ((2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return ce + 1 - soft_dice


def _random_mask(available: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A uniformly drawn non-empty subset of ``available [M]``."""
    idx = available.nonzero().flatten()
    while True:
        pick = torch.rand(idx.numel(), generator=gen) < 0.5
        if pick.any():
            mask = torch.zeros_like(available)
            mask[idx[pick]] = True
            return mask


def _sample(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int, int] | None, divisor: int,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of ``size`` (clipped to the volume), zero-padded to a multiple of ``divisor``."""
    spatial = label.shape
    if size is not None:
        crop = [min(s, n) for s, n in zip(size, spatial, strict=True)]
        start = [int(torch.randint(0, n - c + 1, (), generator=gen)) for c, n in zip(crop, spatial, strict=True)]
        box = tuple(slice(a, a + c) for a, c in zip(start, crop, strict=True))
        image, label = image[(slice(None), *box)], label[box]
    pad = [(-s) % divisor for s in label.shape]
    if any(pad):
        image = F.pad(image, (0, pad[2], 0, pad[1], 0, pad[0]))
        label = F.pad(label, (0, pad[2], 0, pad[1], 0, pad[0]))
    return image, label


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


def fine_tune(model: Backbone, reader: CacheReader, support: Sequence[str], settings: AdaptationSettings, *,
              device: torch.device, amp_dtype: torch.dtype | None = None, loss_fn: AdaptLoss | None = None
              ) -> Backbone:
    """A copy of ``model`` after ``settings.steps`` steps on the ``support`` cases (the input is left unchanged)."""
    return adapt_model(model, load_support(reader, support), settings, device=device, amp_dtype=amp_dtype,
                       loss_fn=loss_fn)


def adapt_model(model: Backbone, support: Sequence[SupportCase], settings: AdaptationSettings, *,
                device: torch.device, amp_dtype: torch.dtype | None = None, loss_fn: AdaptLoss | None = None
                ) -> Backbone:
    """The adaptation rule: a copy of ``model`` after ``settings.steps`` optimiser steps on ``support``.

    Each step uses every support case once (a random patch of ``settings.patch_size`` or the whole volume, and a
    random non-empty subset of its available modalities), plain SGD (or Adam) with ``settings.lr``; randomness
    comes from ``settings.seed``. ``model`` is left unchanged. This is the one call an adaptation curve makes per
    (draw, K); a strategy's own rule can take its place (same arguments, same result type).

    Args:
        model: the trained backbone.
        support: :data:`SupportCase` tuples (see :func:`load_support`).
        settings: steps, lr, optimizer, patch_size and seed are read.

    Returns:
        The adapted copy, in eval mode, on ``device``.
    """
    adapted = copy.deepcopy(model).to(device)
    adapted.train()
    params = [p for p in adapted.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (torch.optim.SGD(params, lr=settings.lr) if settings.optimizer == "sgd"
                                  else torch.optim.Adam(params, lr=settings.lr))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    loss_fn = loss_fn or dice_ce_loss
    gen = torch.Generator().manual_seed(settings.seed)
    cases = list(support)
    for _ in range(settings.steps):
        batch = support_batch(cases, settings.patch_size, adapted.size_divisor, gen).to(device)
        opt.zero_grad(set_to_none=True)
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                result = loss_fn(adapted(batch.image, batch.mask), batch)
        else:
            result = loss_fn(adapted(batch.image, batch.mask), batch)
        loss = result[0] if isinstance(result, tuple) else result
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    adapted.eval()
    return adapted


def support_batch(cases: Sequence[SupportCase], patch_size: tuple[int, int, int] | None, divisor: int,
                  gen: torch.Generator) -> Batch:
    """One adaptation batch: every support case once, a random patch of ``patch_size`` (None: the whole volume,
    volumes of different sizes padded to the largest) and a random non-empty subset of its available modalities.

    Returns:
        A :class:`~prism.batch.Batch` on the CPU (image ``[N, M, ...]``, label ``[N, ...]``, mask ``[N, M]``).
    """
    samples = [_sample(img, lab, patch_size, divisor, gen) for img, lab, _ in cases]
    if len({tuple(s[1].shape) for s in samples}) > 1:  # whole volumes of different sizes: pad to the largest
        top = [max(s[1].shape[a] for s in samples) for a in range(3)]
        samples = [(F.pad(i, _pad_to(lab.shape, top)), F.pad(lab, _pad_to(lab.shape, top))) for i, lab in samples]
    available = torch.stack([a for _, _, a in cases])
    mask = torch.stack([_random_mask(a, gen) for a in available])
    batch = Batch(image=torch.stack([s[0] for s in samples]), label=torch.stack([s[1] for s in samples]),
                  mask=available, availability=available, case_ids=[f"support{i}" for i in range(len(cases))])
    return batch.with_mask(mask)


def _pad_to(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    return (0, target[2] - shape[2], 0, target[1] - shape[1], 0, target[0] - shape[0])


#: The per-(draw, K) adaptation rule: (model, support, settings with steps = K) -> adapted copy.
AdaptRule = Callable[..., Backbone]


def strategy_rule(strategy: Strategy, *, use_strategy_lr: bool = False) -> AdaptRule:
    """The run's own adaptation rule (``Strategy.adapt``: MAML's inner loop, Meta-SGD's rates, plain fine-tuning
    for standard training) as an :data:`AdaptRule`.

    Step ``i`` gets its own batch (:func:`~prism.evaluation.adaptation.support_batch`: every support case, a random
    patch and modality subset, seeded by ``settings.seed``); ``settings.lr`` is the step size unless
    ``use_strategy_lr`` (then the strategy's own).
    """
    def rule(model: Backbone, support: Sequence[SupportCase], settings: AdaptationSettings, *,
             device: torch.device, amp_dtype: torch.dtype | None = None, loss_fn: AdaptLoss | None = None
             ) -> Backbone:
        gen = torch.Generator().manual_seed(settings.seed)
        batches = [support_batch(support, settings.patch_size, model.size_divisor, gen).to(device)
                   for _ in range(settings.steps)]
        was_training = model.training
        model.train()
        try:
            weights = strategy.adapt(model, batches, loss_fn or dice_ce_loss, steps=settings.steps,
                                     lr=None if use_strategy_lr else settings.lr)
        finally:
            model.train(was_training)
        return adapted_copy(model, weights).eval()

    return rule


def has_own_rule(strategy: Strategy) -> bool:
    """Whether ``strategy`` adapts by a rule of its own (MAML, Reptile, ...) rather than the base fine-tuning."""
    return type(strategy).adapt is not Strategy.adapt


def evaluation_rule(strategy: Strategy | None) -> AdaptRule:
    """The rule of fast adaptation in an evaluation (``eval.adapt_site``): the strategy's own, with its own step
    size, for strategies that have one; otherwise fine-tuning (:func:`adapt_model`, ``eval.adapt_lr`` and
    ``eval.adapt_optimizer``)."""
    if strategy is not None and has_own_rule(strategy):
        return strategy_rule(strategy, use_strategy_lr=True)
    return adapt_model
