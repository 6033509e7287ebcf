"""Checks at every seam between prism and a plugin: what a plugin hands back is checked against its contract.

Each check raises a :class:`~prism.errors.PluginBug` headed by the plugin that broke the contract (kind, name,
distribution, version), saying what was expected and what came. The engine runs them where a plugin's value
enters it, before any checkpoint is written: the strategy's ``step()`` result every step (metadata only), the
masking policy's mask on every draw (values read only while the mask is on the CPU, as the engine's are), and
at the first loss evaluation of a process the backbone's ``SegOutput`` and each loss term's value, and after the
first step the state dicts' round trip through a weights-only checkpoint. None reads a device tensor back to
the host after that first step. The conformance kit (:mod:`prism.testing`) runs the same checks, and a
plugin's own tests may call them directly.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import PluginBug, PluginError
from .loss import LossResult
from .outputs import PARTS, SegOutput, providers
from .registry import PluginEntry, describe, get_registry

#: whom a failed check names: a registry entry, or a text naming the object (e.g. "masking policy DropOne")
Owner = PluginEntry | str


def owner_text(owner: Owner) -> str:
    """How a message names the plugin: ``loss 'tversky' (prism-curriculum 0.2.0)``."""
    return describe(owner) if isinstance(owner, PluginEntry) else str(owner)


def owner_of(obj: Any, kind: str, fallback: Owner | None = None) -> Owner:
    """The registry entry that built ``obj``, else ``fallback``, else its class and distribution in words.

    Args:
        obj: a plugin object (a masking policy a strategy made itself, a loss term).
        kind: its kind in words when unregistered (``"masking policy"``).
        fallback: the owner to name when the registry did not build it.
    """
    entry = get_registry().origin(obj)
    if entry is not None:
        return entry
    if fallback is not None:
        return fallback
    cls = type(obj)
    return f"{kind} {cls.__qualname__} ({cls.__module__})"


def bug(owner: Owner, message: str) -> PluginBug:
    """A PluginBug headed by ``owner``: ``<plugin> <message>``."""
    err = PluginBug(f"{owner_text(owner)} {message}")
    err.plugin_entry = owner if isinstance(owner, PluginEntry) else None
    return err


def _what(value: Any) -> str:
    """A short description of a value for messages: ``Tensor float32 [2, 3]``, ``float``, ``None``."""
    if isinstance(value, torch.Tensor):
        return f"Tensor {str(value.dtype).removeprefix('torch.')} {list(value.shape)} on {value.device}"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {sorted(map(str, value))[:6]}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    return "None" if value is None else type(value).__name__


# ---- the strategy's step ----------------------------------------------------------------------------------------

def check_step_result(result: Any, owner: Owner) -> dict[str, torch.Tensor]:
    """``Strategy.step`` returns a dict of named scalar tensors holding ``'loss'`` (what is logged).

    Args:
        result: what ``step(ctx)`` returned.
        owner: the strategy.

    Returns:
        ``result`` (unchanged).

    Raises:
        PluginBug: anything else, saying what came.
    """
    expected = "expected a dict of named scalar tensors holding 'loss' (Strategy.step)"
    if not isinstance(result, Mapping):
        raise bug(owner, f"returned {_what(result)} from step(); {expected}")
    if "loss" not in result:
        raise bug(owner, f"returned a dict without 'loss' from step() (keys {sorted(map(str, result))}); {expected}")
    for key, value in result.items():
        if not isinstance(key, str):
            raise bug(owner, f"returned a non-text key {key!r} from step(); {expected}")
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise bug(owner, f"returned '{key}' as {_what(value)} from step(); {expected}")
    return dict(result)


# ---- the masking policy's mask ------------------------------------------------------------------------------------

def check_mask(mask: Any, availability: torch.Tensor, owner: Owner, *, values: bool = True) -> torch.Tensor:
    """A masking policy's mask: bool ``[B, M]`` like ``availability``, at least one modality per row, never one
    the case does not have.

    Args:
        mask: what the policy returned.
        availability: what it was given, bool ``[B, M]``.
        owner: the policy.
        values: also check the values (reads the mask; the engine's masks are on the CPU, so it costs no sync).

    Returns:
        ``mask``.

    Raises:
        PluginBug: naming the rows at fault.
    """
    if not isinstance(mask, torch.Tensor):
        raise bug(owner, f"returned {_what(mask)}; expected a bool tensor {list(availability.shape)} (MaskingPolicy)")
    if tuple(mask.shape) != tuple(availability.shape):
        raise bug(owner, f"returned a mask of shape {list(mask.shape)} for availability {list(availability.shape)}; "
                         "expected the same shape [B, M]")
    if mask.dtype != torch.bool:
        raise bug(owner, f"returned a {str(mask.dtype).removeprefix('torch.')} mask; expected torch.bool")
    if not values:
        return mask
    given = availability.to(mask.device, torch.bool)
    empty = (~mask.any(1)).nonzero().flatten().tolist()
    if empty:
        raise bug(owner, f"returned a mask with no modality in row(s) {empty[:5]} (availability "
                         f"{given[empty[0]].int().tolist()}); expected at least one modality per sample")
    outside = (mask & ~given).any(1).nonzero().flatten().tolist()
    if outside:
        row = outside[0]
        raise bug(owner, f"marked an unavailable modality as available in row(s) {outside[:5]} (mask "
                         f"{mask[row].int().tolist()}, availability {given[row].int().tolist()}); expected a subset "
                         "of each row's availability")
    return mask


# ---- the backbone's output ---------------------------------------------------------------------------------------

def seg_output_problems(output: SegOutput, *, batch: int, spatial: tuple[int, ...], num_classes: int | None,
                        num_modalities: int | None, required: Iterable[str] = ("logits",),
                        device: torch.device | None = None) -> list[str]:
    """What is wrong with a backbone's output against the SegOutput contract (``prism.outputs.PARTS``).

    Args:
        output: the backbone's return value.
        batch, spatial: B and (D, H, W) of the input image.
        num_classes: K (None: not checked).
        num_modalities: M (None: not checked).
        required: parts that must be present (the parts the losses need, in train mode).
        device: where the logits must be (None: not checked).

    Returns:
        One line per problem (empty when the output keeps the contract).
    """
    if not isinstance(output, SegOutput):
        return [f"returned {_what(output)}; expected a prism.outputs.SegOutput"]
    problems = []
    missing = sorted(set(required) - output.present())
    if missing:
        problems.append(f"returned no {missing} (present: {sorted(output.present())}) although the losses need "
                        "them and its provides declares them")
    k = num_classes
    m = num_modalities
    s = list(spatial)

    def shape_of(name: str, t: Any, want: list[Any]) -> None:
        if not isinstance(t, torch.Tensor):
            problems.append(f"returned part '{name}' as {_what(t)}; expected a tensor {want}")
            return
        if len(t.shape) != len(want) or any(w is not None and w != g for w, g in zip(want, t.shape, strict=False)):
            shown = ["?" if w is None else w for w in want]
            problems.append(f"returned part '{name}' of shape {list(t.shape)}; expected {shown} ({PARTS[name]})")
        elif not t.is_floating_point():
            problems.append(f"returned part '{name}' as {str(t.dtype).removeprefix('torch.')}; expected floating")

    shape_of("logits", output.logits, [batch, k, *s])
    if isinstance(output.logits, torch.Tensor) and device is not None and output.logits.device != device:
        problems.append(f"returned logits on {output.logits.device} for an input on {device}")
    if output.uni is not None:
        shape_of("uni", output.uni, [batch, m, k, *s])
    if output.features is not None:
        shape_of("features", output.features, [batch, None, *s])
    if output.uni_features is not None:
        shape_of("uni_features", output.uni_features, [batch, m, None, *s])
    for name, per_modality in (("deep", False), ("uni_deep", True)):
        levels = output.part(name)
        if levels is None:
            continue
        if not isinstance(levels, list | tuple):  # empty when the architecture has no coarser level
            problems.append(f"returned part '{name}' as {_what(levels)}; expected a list ({PARTS[name]})")
            continue
        for i, t in enumerate(levels):
            lead = [batch, m, k] if per_modality else [batch, k]
            shape_of(name, t, [*lead, None, None, None])
            if isinstance(t, torch.Tensor) and t.dim() == len(lead) + 3 and any(
                    a > b for a, b in zip(t.shape[-3:], s, strict=True)):
                problems.append(f"returned level {i} of '{name}' of size {list(t.shape[-3:])}, larger than the "
                                f"input {s}; expected coarser levels")
    return problems


def check_seg_output(output: Any, owner: Owner, **expected: Any) -> SegOutput:
    """Raise a PluginBug naming the backbone when ``output`` breaks the SegOutput contract.

    Args:
        output: what the backbone returned.
        owner: the backbone.
        expected: the keyword arguments of :func:`seg_output_problems`.
    """
    problems = seg_output_problems(output, **expected)
    if problems:
        raise bug(owner, "; ".join(problems))
    return output


# ---- a loss term's value -----------------------------------------------------------------------------------------

def check_loss_result(result: Any, owner: Owner, *, device: torch.device | None = None,
                      finite: bool = True) -> LossResult:
    """A loss term's value: a LossResult whose ``total`` is a finite floating scalar on ``device`` and whose
    ``parts`` are named scalar tensors.

    Args:
        result: what the term returned.
        owner: the loss term.
        device: where the total must be (the model output's device; None: not checked).
        finite: also check the total is finite (reads it back: the engine does so at the first evaluation only).

    Raises:
        PluginBug: saying what came.
    """
    if not isinstance(result, LossResult):
        raise bug(owner, f"returned {_what(result)}; expected a prism.loss.LossResult(total, parts)")
    total = result.total
    if not isinstance(total, torch.Tensor) or total.numel() != 1 or not total.is_floating_point():
        raise bug(owner, f"returned a total of {_what(total)}; expected a floating scalar tensor")
    if device is not None and total.device != device:
        raise bug(owner, f"returned its total on {total.device}; expected it on {device}, where the model's output is")
    if not isinstance(result.parts, Mapping):
        raise bug(owner, f"returned parts as {_what(result.parts)}; expected a dict of named scalar tensors")
    for key, value in result.parts.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise bug(owner, f"returned part {key!r} as {_what(value)}; expected named scalar tensors")
    if finite and not bool(torch.isfinite(total.detach()).all()):
        raise bug(owner, f"returned a non-finite total ({float(total.detach().float().reshape(()))}) on a finite "
                         "input; expected a finite loss")
    return result


# ---- state dicts -------------------------------------------------------------------------------------------------

def first_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """Where two state dicts differ (``state['inner']['w']: values differ``), or None when they are equal.

    Tensors compare by dtype, shape and values (NaN equal to NaN); dicts by keys; lists and tuples by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{path}: {_what(a)} vs {_what(b)}"
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {_what(a)} vs {_what(b)}"
        if a.device != b.device:  # a checkpoint's copy is on the CPU
            a, b = a.cpu(), b.cpu()
        return None if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                             and torch.equal(a.nan_to_num(), b.nan_to_num())) else \
            f"{path}: values differ"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if type(a) is type(b) and a == b else f"{path}: {a!r} vs {b!r}"


def weights_only_copy(state: Any) -> Any:
    """``state`` after ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint stores it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


def _refusal(exc: BaseException) -> str:
    """The line of a (weights-only) pickling error that names what was refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"WeightsUnpickler error: (.*)", text)
    if found:
        return f"it holds {found.group(1)}" if found.re.pattern.startswith("Unsupported") else found.group(1).strip()
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def check_state_storable(obj: Any, owner: Owner) -> dict[str, Any]:
    """``obj.state_dict()`` is a dict that a weights-only checkpoint stores and gives back equal (tensors, numbers,
    text, lists and dicts of them; never Python objects, NumPy arrays or callables).

    Args:
        obj: a strategy, masking policy or loss term.
        owner: it, for messages.

    Returns:
        The state it returned.

    Raises:
        PluginBug: ``state_dict`` is not a dict, raised, or holds what a checkpoint cannot store.
    """
    try:
        state = obj.state_dict()
    except Exception as exc:
        raise bug(owner, f"raised {type(exc).__name__} in state_dict(): {exc}") from exc
    if not isinstance(state, dict):
        raise bug(owner, f"returned {_what(state)} from state_dict(); expected a dict (of tensors, numbers, text, "
                         "lists and dicts)")
    try:
        again = weights_only_copy(state)
    except (pickle.PicklingError, pickle.UnpicklingError, TypeError, AttributeError, RuntimeError) as exc:
        raise bug(owner, f"returned a state_dict() that a weights-only checkpoint cannot store ({_refusal(exc)}); "
                         "expected tensors, numbers, text, lists and dicts only") from exc
    diff = first_difference(state, again)
    if diff:
        raise bug(owner, f"returned a state_dict() that changes when stored in a checkpoint ({diff})")
    return state


def check_state_round_trip(obj: Any, fresh: Any, owner: Owner) -> None:
    """``fresh.load_state_dict(<obj's state from a checkpoint>)`` makes ``fresh.state_dict()`` equal to
    ``obj.state_dict()`` (a resumed run starts where the run stopped).

    Args:
        obj: a plugin object that has run (its state is not the initial one).
        fresh: a new object of the same plugin with the same options.
        owner: the plugin.

    Raises:
        PluginBug: the state cannot be stored, ``load_state_dict`` raised, or the states differ (where, named).
    """
    state = check_state_storable(obj, owner)
    try:
        fresh.load_state_dict(weights_only_copy(state))
    except Exception as exc:
        raise bug(owner, f"raised {type(exc).__name__} in load_state_dict(state_dict()): {exc}") from exc
    diff = first_difference(state, fresh.state_dict())
    if diff:
        raise bug(owner, f"does not restore its state: after load_state_dict(state_dict()), {diff}")


# ---- which backbone provides what the losses need ---------------------------------------------------------------

def check_provides_needs(backbone: str, provides: Iterable[str], loss: str, needs: Iterable[str], *,
                         candidates: Mapping[str, Iterable[str]] | None = None) -> None:
    """Raise a one-line PluginError when the backbone does not provide every part the loss needs.

    Args:
        backbone, provides: the backbone's registered name and its ``provides``.
        loss, needs: the loss term's registered name and its ``needs``.
        candidates: backbone name -> provides, searched for a backbone to suggest; the registered backbones
            by default.
    Raises:
        PluginError: naming the missing parts and suggesting a backbone that provides them.
    """
    provides, needs = frozenset(provides), frozenset(needs)
    missing = sorted(needs - provides)
    if not missing:
        return
    if candidates is None:
        candidates = {e.name: e.provides for e in get_registry().entries("backbone")}
    fits = [n for n in providers(needs, candidates) if n != backbone]
    hint = (f"; backbone(s) providing them: {', '.join(fits)} (model.name={fits[0]})" if fits
            else "; no registered backbone provides them")
    raise PluginError(
        f"loss '{loss}' needs SegOutput part(s) {missing} that backbone '{backbone}' does not provide "
        f"(it provides {sorted(provides)}){hint}"
    )
