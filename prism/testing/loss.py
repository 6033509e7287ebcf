"""``check_loss``: the LossTerm contract, checked on any registered loss term over a backbone providing its needs."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call

from ..backbone import Backbone
from ..batch import Batch
from ..modalities import BRATS_MODALITIES
from ..outputs import SegOutput, validate_parts
from ..registry import get_registry
from ..seams import check_loss_result, check_state_round_trip, first_difference
from ._report import Checks, ConformanceReport, SkipCheck, expect, registered

#: the checks of :func:`check_loss`, in the order they run
LOSS_CHECKS = (
    "builds", "value_contract", "reads_only_its_needs", "gradients_finite_and_placed", "batch_order_invariant",
    "deterministic", "state_round_trip", "second_order_finite", "device_move",
)

#: small options for the registered backbones a loss is checked on (only those a factory takes are passed)
SMALL_BACKBONE_OPTIONS = {"width": 2, "depth": 3, "dim": 16}
#: backbones tried first (smallest first); any registered backbone providing the needs is used otherwise
PREFERRED_BACKBONES = ("unet", "multi_unet", "rfnet", "shaspec")


def backbone_for(needs: frozenset[str]) -> tuple[str, dict[str, Any]]:
    """A registered backbone providing ``needs`` (the smallest preferred one) and small options for it.

    Raises:
        SkipCheck: no registered backbone provides them.
    """
    entries = {e.name: e for e in get_registry().entries("backbone") if not e.name.startswith("_conformance_")}
    fitting = [n for n, e in entries.items() if needs <= e.provides]
    if not fitting:
        raise SkipCheck(f"no registered backbone provides {sorted(needs)}")
    rank = {n: i for i, n in enumerate(PREFERRED_BACKBONES)}
    name = min(fitting, key=lambda n: (rank.get(n, len(rank)), n))
    params = inspect.signature(entries[name].factory).parameters
    return name, {k: v for k, v in SMALL_BACKBONE_OPTIONS.items() if k in params}


def absent_class_batch(size: int, modalities: int) -> Batch:
    """Two samples, three classes: class 2 absent everywhere, class 1 only in sample 0; modalities missing."""
    g = torch.Generator().manual_seed(3)
    label = torch.zeros(2, size, size, size, dtype=torch.long)
    label[0, : size // 2] = 1
    mask = torch.zeros(2, modalities, dtype=torch.bool)
    mask[0] = True
    mask[0, 2 % modalities] = modalities == 1  # BraTS: [T, T, F, T]
    mask[1, ::2] = True  # BraTS: [T, F, T, F]
    return Batch(torch.randn(2, modalities, size, size, size, generator=g), label, mask, mask.clone())


def permuted(out: SegOutput, batch: Batch, perm: torch.Tensor) -> tuple[SegOutput, Batch]:
    """The output and batch with their samples reordered by ``perm``."""
    def p(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[perm]
        return None if value is None else [p(v) for v in value]

    return (dataclasses.replace(out, **{n: p(out.part(n)) for n in out.part_names()}),
            Batch(batch.image[perm], batch.label[perm], batch.mask[perm], batch.availability[perm]))


def moved(out: SegOutput, device: torch.device) -> SegOutput:
    def m(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        return None if value is None else [m(v) for v in value]

    return dataclasses.replace(out, **{n: m(out.part(n)) for n in out.part_names()})


class _LossSuite:
    def __init__(self, name: str, options: Mapping[str, Any], modalities: tuple[str, ...], num_classes: int,
                 backbone: str | None, backbone_options: Mapping[str, Any] | None, detached: Iterable[str],
                 stateful: bool, device: torch.device | None) -> None:
        self.name, self.options, self.modalities, self.k = name, dict(options), modalities, num_classes
        self.backbone, self.backbone_options = backbone, backbone_options
        self.detached, self.stateful, self.device = frozenset(detached), stateful, device
        self.owner = get_registry().get("loss", name)
        self._outputs: dict[frozenset[str], tuple[SegOutput, Batch]] = {}

    def term(self) -> Any:
        return get_registry().build("loss", self.name, (self.modalities, self.k), self.options)

    def model(self, needs: frozenset[str], seed: int = 0) -> Backbone:
        if self.backbone is not None:
            name, options = self.backbone, dict(self.backbone_options or {})
        else:
            name, options = backbone_for(needs)
        torch.manual_seed(seed)
        model = get_registry().build("backbone", name, (self.modalities, self.k), options).train()
        model.request_parts(needs)
        return model

    def setting(self, term: Any) -> tuple[SegOutput, Batch, dict[str, list[torch.Tensor]]]:
        """An output holding only the term's needs, as fresh gradient-requiring leaves, its batch and the leaves."""
        needs = frozenset(term.needs)
        if self._outputs.get(needs) is None:
            model = self.model(needs)
            batch = absent_class_batch(max(8, model.size_divisor), len(self.modalities))
            with torch.no_grad():
                self._outputs[needs] = (model(batch.image, batch.mask), batch)
        out, batch = self._outputs[needs]
        leaves: dict[str, list[torch.Tensor]] = {}

        def cut(part: str, value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                leaf = value.detach().clone().requires_grad_(True)
                leaves.setdefault(part, []).append(leaf)
                return leaf
            return [cut(part, v) for v in value]

        keep = {p: (cut(p, out.part(p)) if p in term.needs and out.part(p) is not None else None)
                for p in out.part_names()}
        if keep["logits"] is None:
            keep["logits"] = out.logits.detach()
        return dataclasses.replace(out, **keep), batch, leaves

    # ---- the checks -------------------------------------------------------------------------------------------
    def builds(self) -> Any:
        term = self.term()
        expect(callable(term), f"built {type(term).__name__}, which is not callable")
        needs = getattr(term, "needs", None)
        expect(isinstance(needs, frozenset | set), f"needs is {needs!r}; expected a frozenset of SegOutput parts")
        validate_parts(needs, f"loss '{self.name}'")
        for method in ("state_dict", "load_state_dict", "on_epoch_end"):
            expect(callable(getattr(term, method, None)), f"has no {method}() (subclass prism.loss.LossTerm)")
        return term

    def value_contract(self, term: Any) -> None:
        out, batch, _ = self.setting(term)
        check_loss_result(term(out, batch), self.owner, device=out.logits.device)

    def reads_only_its_needs(self, term: Any) -> None:
        out, batch, _ = self.setting(term)
        result = term(out, batch)
        expect(torch.isfinite(result.total).all(), "non-finite total on an output holding only its needs")
        bad = [k for k, v in result.parts.items() if not torch.isfinite(v).all()]
        expect(not bad, f"non-finite part(s) {bad}")

    def gradients_finite_and_placed(self, term: Any) -> None:
        out, batch, leaves = self.setting(term)
        term(out, batch).total.backward()
        b, m = batch.mask.shape
        reached = set()
        for part, tensors in leaves.items():
            for t in tensors:
                if t.grad is None:
                    continue
                expect(torch.isfinite(t.grad).all(), f"non-finite gradient reaches part '{part}'")
                if t.grad.any():
                    reached.add(part)
                if t.dim() >= 2 and tuple(t.shape[:2]) == (b, m):  # a per-modality part
                    expect(not t.grad[~batch.mask].any(), f"part '{part}': a gradient reaches a missing modality")
        wrong = reached & self.detached
        expect(not wrong, f"parts {sorted(wrong)} read as detached teachers received gradients")
        expect(reached, "no part of the output received a gradient")

    def batch_order_invariant(self, term: Any) -> None:
        out, batch, _ = self.setting(term)
        with torch.no_grad():
            a = term(out, batch)
            b = self.term()(*permuted(out, batch, torch.tensor([1, 0])))
        expect(torch.allclose(a.total, b.total, rtol=1e-5, atol=1e-6),
               f"the total changes when the batch's samples are swapped ({a.total.item()} vs {b.total.item()})")
        expect(set(a.parts) == set(b.parts), f"parts {sorted(a.parts)} vs {sorted(b.parts)} after swapping")
        moved_parts = [k for k in a.parts if not torch.allclose(a.parts[k], b.parts[k], rtol=1e-5, atol=1e-6)]
        expect(not moved_parts, f"part(s) {moved_parts} change when the batch's samples are swapped")

    def deterministic(self, term: Any) -> None:
        out, batch, _ = self.setting(term)
        with torch.no_grad():
            a, b = self.term()(out, batch).total, self.term()(out, batch).total
        expect(torch.equal(a, b), f"two fresh terms give {a.item()} and {b.item()} on the same input")

    def state_round_trip(self, term: Any) -> None:
        out, batch, _ = self.setting(term)
        term = self.term()
        initial = term.state_dict()
        for _ in range(2):
            term(out, batch)
            term.on_epoch_end()
        term(out, batch)  # statistics of an unfinished epoch are part of the state
        if self.stateful:
            expect(first_difference(initial, term.state_dict()) is not None,
                   "the state did not change over two epochs")
        fresh = self.term()
        check_state_round_trip(term, fresh, self.owner)
        expect(torch.allclose(fresh(out, batch).total, term(out, batch).total),
               "a term restored from another's state computes a different value")
        fresh.on_epoch_end()
        term.on_epoch_end()
        diff = first_difference(term.state_dict(), fresh.state_dict())
        expect(diff is None, f"states diverge after the next epoch end: {diff}")

    def second_order_finite(self, term: Any) -> None:
        """One inner SGD step with ``create_graph=True``, the query loss at the adapted weights, backward to the
        initial weights (second-order MAML through the term): every meta-gradient finite."""
        model = self.model(frozenset(term.needs))
        batch = absent_class_batch(max(8, model.size_divisor), len(self.modalities))
        params = dict(model.named_parameters())
        support = term(functional_call(model, params, (batch.image, batch.mask)), batch).total
        grads = torch.autograd.grad(support, list(params.values()), create_graph=True, allow_unused=True)
        fast = {k: p if g is None else p - 0.1 * g for (k, p), g in zip(params.items(), grads, strict=True)}
        query = term(functional_call(model, fast, (batch.image, batch.mask)), batch).total
        expect(torch.isfinite(query), "non-finite loss after one inner step")
        query.backward()
        got = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        expect(got, "no meta-gradient reached the initial weights")
        bad = sorted(k for k, g in got.items() if not torch.isfinite(g).all())
        expect(not bad, f"non-finite second-order gradients in {bad[:5]}")

    def device_move(self, term: Any) -> None:
        target = self.device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("meta"))
        out, batch, _ = self.setting(term)
        with torch.no_grad():
            result = self.term()(moved(out, target), batch.to(target))
        check_loss_result(result, self.owner, device=target, finite=target.type != "meta")


def check_loss(plugin: str | Callable[..., Any], *, options: Mapping[str, Any] | None = None,
               modalities: Sequence[str] = BRATS_MODALITIES, num_classes: int = 3, backbone: str | None = None,
               backbone_options: Mapping[str, Any] | None = None, detached: Iterable[str] = (),
               stateful: bool = False, device: str | torch.device | None = None, skip: Iterable[str] = (),
               raise_on_failure: bool = True) -> ConformanceReport:
    """Run prism's loss-term suite (``LOSS_CHECKS``) on a loss term, every check whatever the others gave.

    The term is applied to the output of a registered backbone providing its ``needs`` (or ``backbone``) on a batch
    where a class is absent and modalities are missing. The checks: it builds a term declaring valid ``needs``;
    its value keeps the contract (a ``LossResult`` whose total is a finite scalar on the output's device, parts
    named scalars); it reads only its needs; gradients are finite, reach no missing modality, none reaches the
    ``detached`` parts and some reach the output; the value does not depend on the order of the batch; two fresh
    terms agree; its state survives a weights-only checkpoint and a fresh term restored from it computes the
    same; second-order MAML through it stays finite; on another device (CUDA, else ``meta``) its total stays
    there.

    Args:
        plugin: a registered loss name, or its factory (registered in this process for the check).
        options: the term's options.
        modalities, num_classes: what the term and backbone are built for.
        backbone: the registered backbone to read outputs from (default: the smallest providing the needs);
            ``backbone_options`` its options.
        detached: parts the term reads as detached teachers (they must receive no gradient).
        stateful: the term keeps statistics; its state must change over two epochs.
        device: the device of ``device_move`` (default: CUDA if available, else ``meta``).
        skip: names of checks to leave out (reported as skipped).
        raise_on_failure: raise :class:`ConformanceError` listing every failed check (else return the report).

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (every failure named in one message).
    """
    with registered("loss", plugin) as (name, subject):
        checks = Checks(subject, LOSS_CHECKS, skip)
        suite = _LossSuite(name, options or {}, tuple(modalities), num_classes, backbone, backbone_options,
                           detached, stateful, torch.device(device) if device is not None else None)
        with torch.random.fork_rng(devices=[]):
            term = checks.run("builds", suite.builds)
            if term is None:
                checks.not_run("the loss term did not build")
                return checks.finish(raise_on_failure)
            for check in LOSS_CHECKS[1:]:
                checks.run(check, getattr(suite, check), term)
        return checks.finish(raise_on_failure)
