"""``check_strategy``: the Strategy contract, checked on any registered meta-strategy in tiny real runs.

A strategy needs a real ``StepContext``: the suite trains tiny runs through the engine's public ``Trainer`` on a
small synthetic cache (written once into a temporary folder unless one is given), so every seam check of a
training run applies too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..adapt import adaptation_loss
from ..backbone import Backbone
from ..config import Config, build_config
from ..data_tools.synthetic import SynthSettings, write_synthetic_cache
from ..engine.trainer import Trainer
from ..registry import get_registry
from ..seams import check_state_round_trip
from ._report import Checks, ConformanceReport, SkipCheck, expect, registered

#: the checks of :func:`check_strategy`, in the order they run
STRATEGY_CHECKS = (
    "builds_and_sets_up", "step_contract", "makes_progress", "adapt", "deterministic_under_seed",
    "state_round_trip", "exact_resume", "device_move",
)

#: a tiny run: small backbone and patches, one thread, deterministic kernels, a checkpoint every 2 steps
TINY_RUN = (
    "model.options.width=4", "model.options.depth=3", "data.patch_size=[16,16,16]", "data.batch_size=2",
    "train.log_every=1", "train.checkpoint_every=2", "train.threads=1", "train.deterministic=true",
    "train.loggers=[csv]", "optim.lr=0.01",
)


def tiny_cache(folder: str | os.PathLike[str]) -> Path:
    """A synthetic cache of 6 small cases (two test cases), written into ``folder``."""
    path = Path(folder) / "conformance.h5"
    if not path.is_file():
        write_synthetic_cache(str(path), SynthSettings(cases=6, shape=(24, 24, 24), seed=3), test_fraction=0.34)
    return path


def flat_parameters(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in trainer.ctx.parameters()])


@contextlib.contextmanager
def _torch_settings_kept() -> Iterator[None]:
    """Undo what a run sets process-wide: threads, deterministic algorithms, the random state."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class _StrategySuite:
    def __init__(self, config: Config, cache: Path, folder: Path, steps: int, device: str | None) -> None:
        self.config, self.cache, self.folder, self.steps, self.device = config, cache, folder, steps, device
        self.trainers: list[Trainer] = []

    def trainer(self, run: str, *, resume: bool = False, config: Config | None = None) -> Trainer:
        trainer = Trainer(config or self.config, self.folder / run, cache_path=self.cache, resume=resume)
        self.trainers.append(trainer)
        return trainer

    def close(self) -> None:
        for trainer in self.trainers:
            with contextlib.suppress(Exception):
                trainer.close()

    # ---- the checks -------------------------------------------------------------------------------------------
    def builds_and_sets_up(self) -> Trainer:
        trainer = self.trainer("a")
        expect(isinstance(trainer.ctx.model, Backbone), "prepare_model did not return a prism Backbone")
        return trainer

    def step_contract(self, trainer: Trainer, before: torch.Tensor) -> torch.Tensor:
        trainer.fit(stop_at=self.steps // 2)
        return flat_parameters(trainer)

    def makes_progress(self, before: torch.Tensor, after: torch.Tensor) -> None:
        expect(not torch.equal(before, after), f"{self.steps // 2} steps changed no trainable parameter (does step() "
                                               "call ctx.backward and ctx.optimizer_step?)")

    def adapt(self, trainer: Trainer) -> None:
        model = trainer.ctx.model
        batch = trainer.ctx.next_batch("train")
        own = {n: p.detach().clone() for n, p in model.named_parameters()}
        weights = trainer.strategy.adapt(model, [batch], adaptation_loss, steps=1)
        expect(isinstance(weights, Mapping), f"adapt returned {type(weights).__name__}; expected {{parameter name: "
                                             "adapted tensor}}")
        unknown = sorted(set(weights) - set(own))
        expect(not unknown, f"adapt returned names that are not parameters of the model: {unknown[:3]}")
        wrong = [n for n, w in weights.items() if not isinstance(w, torch.Tensor) or w.shape != own[n].shape]
        expect(not wrong, f"adapt returned tensors of the wrong shape for {wrong[:3]}")
        changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), own[n])]
        expect(not changed, f"adapt changed the model's own parameters {changed[:3]} (it must return the adapted "
                            "weights and leave the model as it was)")

    def deterministic_under_seed(self, after: torch.Tensor) -> None:
        again = self.trainer("b")
        again.fit(stop_at=self.steps // 2)
        expect(torch.equal(after, flat_parameters(again)), "two runs under the same seed end with different "
                                                           "weights (draw from ctx.generator, not global state)")

    def state_round_trip(self, trainer: Trainer) -> None:
        fresh = self.trainer("c")
        check_state_round_trip(trainer.strategy, fresh.strategy, get_registry().get("strategy",
                                                                                  self.config.strategy.name))

    def exact_resume(self, first: Trainer) -> None:
        first.close()  # the run folder's writer lets go before the run resumes
        straight = self.trainer("d")
        straight.fit()
        resumed = self.trainer("a", resume=True)
        resumed.fit()
        expect(torch.equal(flat_parameters(straight), flat_parameters(resumed)),
               f"a run resumed from its step-{self.steps // 2} checkpoint ends with other weights than a run "
               "trained straight (state_dict must hold every state that changes a step)")

    def device_move(self) -> None:
        device = self.device or ("cuda" if torch.cuda.is_available() else None)
        if device is None:
            raise SkipCheck("no second device (CUDA) here")
        config = build_config(self.config.model_dump(mode="python"), [f"train.device={device}"])
        trainer = self.trainer("e", config=config)
        trainer.fit(stop_at=1)
        stray = [n for n, p in trainer.ctx.model.named_parameters() if p.device.type != torch.device(device).type]
        expect(not stray, f"after a step on {device}, parameters {stray[:3]} are elsewhere")


def check_strategy(plugin: str | Callable[..., Any], *, options: Mapping[str, Any] | None = None,
                   overrides: Sequence[str] = (), steps: int = 4, cache: str | os.PathLike[str] | None = None,
                   device: str | None = None, skip: Iterable[str] = (), raise_on_failure: bool = True
                   ) -> ConformanceReport:
    """Run prism's strategy suite (``STRATEGY_CHECKS``) on a meta-strategy, in tiny real runs.

    The checks: a run builds (``prepare_model`` returns a Backbone, ``setup`` succeeds); its steps keep the
    contract (``step()`` returns a dict of scalar tensors holding ``loss``; every plugin's value checked at the
    seams); the steps change the weights; ``adapt`` returns ``{name: tensor}`` of the model's parameters and
    leaves the model unchanged; two runs under one seed end equal; the strategy's state survives a weights-only
    checkpoint into a fresh strategy; a run resumed from its checkpoint ends exactly where a straight run does;
    a step on CUDA (when there is one, or ``device``) keeps the parameters there.

    Args:
        plugin: a registered meta-strategy name, or its factory (registered in this process for the check).
        options: the strategy's options (``strategy.options``).
        overrides: config overrides for the tiny runs (``field=value``), after ``TINY_RUN``: another backbone,
            losses or masking roles the strategy needs.
        steps: steps of the straight run (even; the resumed run stops and resumes at half).
        cache: a prism cache to train on (default: a small synthetic one in a temporary folder).
        device: the device of ``device_move`` (default: CUDA if available, else the check is skipped).
        skip: names of checks to leave out (reported as skipped).
        raise_on_failure: raise :class:`ConformanceError` listing every failed check (else return the report).

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (every failure named in one message).
        ConfigError: ``options`` or ``overrides`` do not make a valid config.
    """
    if steps < 2 or steps % 2:
        raise ValueError(f"steps: an even number >= 2, got {steps}")
    with registered("strategy", plugin) as (name, subject), tempfile.TemporaryDirectory() as tmp, \
            _torch_settings_kept():
        checks = Checks(subject, STRATEGY_CHECKS, skip)
        path = Path(cache) if cache is not None else tiny_cache(tmp)
        config = build_config({"strategy": {"name": name, "options": dict(options or {})}},
                              [*TINY_RUN, f"train.steps={steps}", f"data.cache={path}", *overrides])
        suite = _StrategySuite(config, path, Path(tmp), steps, device)
        try:
            trainer = checks.run("builds_and_sets_up", suite.builds_and_sets_up)
            if trainer is None:
                checks.not_run("the run did not build")
                return checks.finish(raise_on_failure)
            before = flat_parameters(trainer)
            after = checks.run("step_contract", suite.step_contract, trainer, before)
            if after is None:
                checks.not_run("the first steps failed")
                return checks.finish(raise_on_failure)
            checks.run("makes_progress", suite.makes_progress, before, after)
            checks.run("adapt", suite.adapt, trainer)
            checks.run("deterministic_under_seed", suite.deterministic_under_seed, after)
            checks.run("state_round_trip", suite.state_round_trip, trainer)
            checks.run("exact_resume", suite.exact_resume, trainer)
            checks.run("device_move", suite.device_move)
        finally:
            suite.close()
        return checks.finish(raise_on_failure)
