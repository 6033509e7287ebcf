"""``check_backbone``: the Backbone contract, checked on any registered backbone."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch

from ..backbone import Backbone
from ..errors import ConfigError
from ..modalities import BRATS_MODALITIES, combination_masks
from ..outputs import SegOutput
from ..registry import get_registry
from ..seams import first_difference, seg_output_problems, weights_only_copy
from ._report import CheckFailed, Checks, ConformanceReport, SkipCheck, expect, registered

#: the checks of :func:`check_backbone`, in the order they run
BACKBONE_CHECKS = (
    "builds", "train_mode_parts", "eval_mode_parts", "logits_only_request", "gradients_reach_every_parameter",
    "masked_channels_ignored", "missing_modality_changes_output", "deterministic_under_seed",
    "state_dict_round_trip", "bad_input_one_line_error", "combination_logits_match_forward", "device_move",
)


def output_tensors(out: Any) -> dict[str, torch.Tensor]:
    """Every tensor a SegOutput holds (core and extra parts), lists flattened as ``part[i]``."""
    found: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(out):
        value = getattr(out, f.name)
        if isinstance(value, torch.Tensor):
            found[f.name] = value
        elif isinstance(value, list | tuple):
            found.update({f"{f.name}[{i}]": t for i, t in enumerate(value) if isinstance(t, torch.Tensor)})
    return found


def patch_side(model: Backbone) -> int:
    """The smallest cube side of at least 16 voxels that the backbone's ``size_divisor`` allows."""
    d = max(1, int(getattr(model, "size_divisor", 1)))
    return max(d, -(-16 // d) * d)


def image_batch(model: Backbone, batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image ``[batch, M, s, s, s]`` and a full mask ``[batch, M]``."""
    g = torch.Generator().manual_seed(seed)
    s, m = patch_side(model), len(model.modalities)
    return torch.randn(batch, m, s, s, s, generator=g), torch.ones(batch, m, dtype=torch.bool)


def level_problems(out: SegOutput, side: int, modalities: int) -> list[str]:
    """The coarser levels: ``deep`` finest first, each a coarser divisor of the input side; ``uni_deep`` level by
    level like ``deep`` with the modalities in front."""
    problems = []
    if out.deep:
        sizes = [tuple(t.shape[2:]) for t in out.deep]
        if sizes != sorted(sizes, reverse=True):
            problems.append(f"deep levels are not finest first: {sizes}")
        if any(d >= side or side % d for size in sizes for d in size):
            problems.append(f"deep levels {sizes} are not coarser divisors of the input side {side}")
        if out.uni_deep is not None:
            got = [tuple(t.shape) for t in out.uni_deep]
            want = [(t.shape[0], modalities, *t.shape[1:]) for t in out.deep]
            if got != want:
                problems.append(f"uni_deep levels {got} do not match the deep levels {want}")
    return problems


class _BackboneSuite:
    def __init__(self, name: str, options: Mapping[str, Any], modalities: tuple[str, ...], num_classes: int,
                 device: torch.device | None) -> None:
        self.name, self.options, self.modalities, self.k = name, dict(options), modalities, num_classes
        self.device = device

    def build(self, seed: int = 0) -> Backbone:
        torch.manual_seed(seed)
        return get_registry().build("backbone", self.name, (self.modalities, self.k), self.options)

    def contract_problems(self, model: Backbone, out: Any, x: torch.Tensor, required: Iterable[str]) -> list[str]:
        return seg_output_problems(out, batch=x.shape[0], spatial=tuple(x.shape[2:]), num_classes=self.k,
                                   num_modalities=len(self.modalities), required=required, device=x.device)

    # ---- the checks -------------------------------------------------------------------------------------------
    def builds(self) -> Backbone:
        model = self.build()
        expect(isinstance(model, Backbone), f"built {type(model).__name__}, not a prism.backbone.Backbone")
        provides = type(model).provides
        expect("logits" in provides, f"provides {sorted(provides)} lacks 'logits'")
        divisor = getattr(model, "size_divisor", None)
        expect(isinstance(divisor, int) and divisor >= 1, f"size_divisor {divisor!r} is not an integer >= 1")
        return model

    def train_mode_parts(self, model: Backbone) -> None:
        model.train()
        model.request_parts(type(model).provides)
        x, mask = image_batch(model, 2)
        out = model(x, mask)
        problems = self.contract_problems(model, out, x, type(model).provides)
        problems += level_problems(out, x.shape[-1], x.shape[1]) if isinstance(out, SegOutput) else []
        expect(not problems, "in train mode with every declared part requested: " + "; ".join(problems))

    def eval_mode_parts(self, model: Backbone) -> None:
        model.eval()
        x, mask = image_batch(model, 1)
        with torch.no_grad():
            out = model(x, mask)
        problems = self.contract_problems(model, out, x, ("logits",))
        expect(not problems, "in eval mode: " + "; ".join(problems))

    def logits_only_request(self, model: Backbone) -> None:
        model.train()
        model.request_parts({"logits"})
        x, mask = image_batch(model, 1)
        out = model(x, mask)
        problems = self.contract_problems(model, out, x, ("logits",))
        expect(not problems, "with only 'logits' requested: " + "; ".join(problems))

    def gradients_reach_every_parameter(self, model: Backbone) -> None:
        model.train()
        model.request_parts(type(model).provides)
        model.zero_grad(set_to_none=True)
        x, mask = image_batch(model, 2)
        out = model(x, mask)
        g = torch.Generator().manual_seed(2)  # a random projection: plain sums leave some norm weights at zero
        loss = sum((t.float() * torch.randn(t.shape, generator=g)).sum() for t in output_tensors(out).values())
        loss.backward()
        dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        expect(not bad, f"non-finite gradients in {bad[:5]}")
        expect(not dead, f"no gradient reaches {dead[:5]}{' ...' if len(dead) > 5 else ''} ({len(dead)} parameters)")

    def masked_channels_ignored(self, model: Backbone) -> None:
        model.train()
        model.request_parts(type(model).provides)
        masks = combination_masks(self.modalities)  # one sample per combination
        x, _ = image_batch(model, len(masks))
        x = x * masks[:, :, None, None, None]
        noisy = x + torch.randn_like(x) * 100 * (~masks)[:, :, None, None, None]
        with torch.no_grad():
            a, b = output_tensors(model(x, masks)), output_tensors(model(noisy, masks))
        expect(a.keys() == b.keys(), f"parts {sorted(a)} vs {sorted(b)} with noise in the masked channels")
        moved = [k for k in a if not torch.equal(a[k], b[k])]
        expect(not moved, f"part(s) {moved} change when masked-out channels hold noise (the output must depend "
                          "only on the modalities the mask allows)")

    def missing_modality_changes_output(self, model: Backbone) -> None:
        model.eval()
        x, full = image_batch(model, 1)
        part = full.clone()
        part[0, min(1, part.shape[1] - 1)] = False
        if not part.any():
            raise SkipCheck("one modality only")
        with torch.no_grad():
            a, b = model(x, full).logits, model(x * part[:, :, None, None, None], part).logits
        expect(not torch.allclose(a, b), "dropping a modality leaves the fused logits unchanged")

    def deterministic_under_seed(self) -> None:
        a, b = self.build(seed=5).train(), self.build(seed=5).train()
        for model in (a, b):
            model.request_parts(type(model).provides)
        x, mask = image_batch(a, 2)
        mask[0, 0] = False
        ta, tb = output_tensors(a(x, mask)), output_tensors(b(x, mask))
        moved = [k for k in ta if k not in tb or not torch.equal(ta[k], tb[k])]
        expect(not moved, f"two builds under the same seed give different {moved} (all randomness must come from "
                          "torch's seeded generators)")

    def state_dict_round_trip(self) -> None:
        a = self.build(seed=0).eval()
        x, mask = image_batch(a, 1)
        mask[0, -1] = False
        c = self.build(seed=99).eval()
        with torch.no_grad():
            before = c(x, mask).logits
            c.load_state_dict(weights_only_copy(a.state_dict()))
            expected, got = a(x, mask).logits, c(x, mask).logits
        expect(not torch.equal(before, expected), "two seeds gave the same weights (initialisation ignores the seed)")
        expect(torch.equal(got, expected), "a model loaded from another's state_dict (weights-only) predicts "
                                           "differently")
        diff = first_difference(a.state_dict(), c.state_dict())
        expect(diff is None, f"state_dict differs after loading it: {diff}")

    def bad_input_one_line_error(self, model: Backbone) -> None:
        x, mask = image_batch(model, 1)
        d = int(model.size_divisor)
        cases = [("an image with one modality too few", x[:, :-1], mask[:, :-1])]
        if d > 1:
            cases.append((f"a spatial size not divisible by {d}", torch.randn(1, x.shape[1], x.shape[2] + 1,
                                                                              *x.shape[3:]), mask))
        for what, image, m in cases:
            try:
                model(image, m)
            except ConfigError as exc:
                expect("\n" not in str(exc), f"{what}: the ConfigError spans several lines")
                continue
            except Exception as exc:
                raise CheckFailed(f"{what} raised {type(exc).__name__}, not a one-line ConfigError (call "
                                     "self.check_input(image, mask) first in forward)") from None
            raise CheckFailed(f"{what} was accepted (call self.check_input(image, mask) first in forward)")

    def combination_logits_match_forward(self, model: Backbone) -> None:
        model.eval()
        image, _ = image_batch(model, 2)
        masks = combination_masks(self.modalities)
        with torch.no_grad():
            together = model.combination_logits(image, masks)
            expect(tuple(together.shape[:3]) == (2, len(masks), self.k),
                   f"combination_logits gave {list(together.shape)}; expected [2, {len(masks)}, {self.k}, ...]")
            for c in range(len(masks)):
                mask = masks[c].expand(2, -1)
                alone = model(image * mask[:, :, None, None, None], mask).logits
                expect(torch.allclose(together[:, c], alone, rtol=1e-4, atol=1e-5),
                       f"combination_logits differs from forward under combination {c} {masks[c].int().tolist()}")

    def device_move(self, model: Backbone) -> None:
        target = self.device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("meta"))
        model.eval()
        x, mask = image_batch(model, 1)
        with torch.no_grad():
            reference = output_tensors(model(x, mask))
        copy = deepcopy(model).to(target)  # a copy: a module moved to 'meta' loses its weights
        with torch.no_grad():
            moved = output_tensors(copy(x.to(target), mask.to(target)))
        stray = [k for k, t in moved.items() if t.device.type != target.type]
        expect(not stray, f"after model.to('{target}'), part(s) {stray} are computed elsewhere (tensors kept as "
                          "plain attributes instead of buffers?)")
        expect(moved.keys() == reference.keys(), f"parts {sorted(moved)} on {target} vs {sorted(reference)} on cpu")
        for key, t in moved.items():
            expect(t.shape == reference[key].shape, f"part {key}: shape {list(t.shape)} on {target} vs "
                                                    f"{list(reference[key].shape)} on cpu")
            if target.type != "meta":
                expect(torch.allclose(t.cpu().float(), reference[key].float(), rtol=1e-3, atol=1e-4),
                       f"part {key} differs on {target} from cpu")


def check_backbone(plugin: str | Callable[..., Any], *, options: Mapping[str, Any] | None = None,
                   modalities: Sequence[str] = BRATS_MODALITIES, num_classes: int = 3,
                   device: str | torch.device | None = None, skip: Iterable[str] = (),
                   raise_on_failure: bool = True) -> ConformanceReport:
    """Run prism's backbone suite (``BACKBONE_CHECKS``) on a backbone, every check whatever the others gave.

    The checks: it builds a ``Backbone`` declaring ``logits`` and a ``size_divisor``; in train mode every declared
    part has its SegOutput shape (the parts requested, ``deep`` finest first); eval mode and a request for
    ``logits`` alone still give logits; a gradient reaches every parameter and is finite; the output does not
    change when masked-out channels hold noise (all combinations); dropping a modality changes the fused logits;
    two builds under one seed agree; a ``state_dict`` through a weights-only checkpoint reproduces the outputs;
    bad inputs are one-line ``ConfigError``\\ s (``check_input``); ``combination_logits`` equals ``forward``;
    ``model.to(device)`` keeps every output on that device (CUDA when there is one, else PyTorch's ``meta``
    device, which catches tensors kept outside the module's buffers).

    Args:
        plugin: a registered backbone name, or its factory (registered in this process for the check).
        options: the backbone's options (small ones keep the suite fast, e.g. ``{"width": 4}``).
        modalities: the modality names it is built for (the masking checks cover all their combinations).
        num_classes: K.
        device: the device of ``device_move`` (default: CUDA if available, else ``meta``).
        skip: names of checks to leave out (reported as skipped).
        raise_on_failure: raise :class:`ConformanceError` listing every failed check (else return the report).

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (every failure named in one message).
    """
    with registered("backbone", plugin) as (name, subject):
        checks = Checks(subject, BACKBONE_CHECKS, skip)
        suite = _BackboneSuite(name, options or {}, tuple(modalities), num_classes,
                               torch.device(device) if device is not None else None)
        with torch.random.fork_rng(devices=[]):
            model = checks.run("builds", suite.builds)
            if model is None:
                checks.not_run("the backbone did not build")
                return checks.finish(raise_on_failure)
            for check in ("train_mode_parts", "eval_mode_parts", "logits_only_request",
                          "gradients_reach_every_parameter", "masked_channels_ignored",
                          "missing_modality_changes_output"):
                checks.run(check, getattr(suite, check), model)
            checks.run("deterministic_under_seed", suite.deterministic_under_seed)
            checks.run("state_dict_round_trip", suite.state_dict_round_trip)
            for check in ("bad_input_one_line_error", "combination_logits_match_forward", "device_move"):
                checks.run(check, getattr(suite, check), model)
        return checks.finish(raise_on_failure)
