"""Adapting a model to a task, functionally: the weights a task gets, never written into the meta-learned model.

The contract shared by every meta-strategy's ``adapt`` (``prism.strategy.Strategy.adapt``), by evaluation
(fast adaptation, adaptation curves) and by prediction: a task is a list of support batches, adaptation returns
``{parameter name: adapted tensor}`` for the parameters it adapted (the others keep their meta-learned values),
and :func:`adapted_copy` turns the result into an ordinary model for inference. Like learn2learn's
``clone()``/``adapt()``, the original model is never modified.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .backbone import Backbone
from .batch import Batch
from .errors import ConfigError
from .loss import observation
from .outputs import SegOutput

#: ``loss_fn(output, batch) -> scalar``: the loss an adaptation step descends.
AdaptLossFn = Callable[[SegOutput, Batch], torch.Tensor]
#: a fixed step size, or one per parameter entry (Meta-SGD), keyed by parameter name
StepSizes = float | Mapping[str, torch.Tensor]

#: ``adapt_params`` presets: every parameter, the head only (ANIL), everything but the head (BOIL)
PRESETS = ("all", "head", "body")


def select_parameters(model: nn.Module, rule: str | Sequence[str] = "all", *, field: str = "adapt_params"
                      ) -> list[str]:
    """Names of the trainable parameters an inner loop adapts.

    Args:
        model: the backbone (``head_parameter_names`` says what its head is; plain modules have no head).
        rule: ``"all"``, ``"head"`` (ANIL: the convolutions producing class logits), ``"body"`` (BOIL: all but
            the head), or glob patterns over parameter names (e.g. ``["decoder.*", "heads.*"]``).
        field: the config field named in errors.

    Returns:
        Parameter names in ``named_parameters`` order.

    Raises:
        ConfigError: an unknown preset, or a selection that matches no trainable parameter.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(rule, str) and rule in PRESETS:
        if rule == "all":
            chosen = names
        else:
            head = set(model.head_parameter_names()) if isinstance(model, Backbone) else set()
            chosen = [n for n in names if (n in head) == (rule == "head")]
    elif isinstance(rule, str):
        raise ConfigError(f"{field}: {rule!r} is neither one of {', '.join(PRESETS)} nor a list of name patterns")
    else:
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pattern) for pattern in rule)]
    if not chosen:
        raise ConfigError(f"{field}: {rule!r} selects none of the model's {len(names)} trainable parameters")
    return chosen


def functional_forward(model: nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch, *,
                       prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       buffers: Mapping[str, torch.Tensor] | None = None) -> Any:
    """``model(batch.image, batch.mask)`` with ``weights`` in place of the named parameters (others unchanged).

    ``buffers`` (default: copies of the model's) receive any running-statistics update, so the model's own
    normalisation statistics are never written by an adaptation step.
    """
    if buffers is None:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
    image = prepare(batch.image) if prepare is not None else batch.image
    return functional_call(model, ({**dict(weights)}, dict(buffers)), (image, batch.mask), strict=False)


def gradient_steps(model: nn.Module, weights: dict[str, torch.Tensor], support: Sequence[Batch],
                   loss_fn: AdaptLossFn, steps: int, lr: StepSizes, *, create_graph: bool = False,
                   loss_scale: float | None = None, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   buffers: Mapping[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``steps`` plain gradient steps on ``weights``: ``w <- w - lr * grad L_support(w)``.

    The one inner loop of prism: MAML's (differentiable, ``create_graph`` for second order), and every
    strategy's ``adapt`` (detached). Step ``i`` uses ``support[i % len(support)]``. Statistics of stateful loss
    terms are not recorded (``prism.loss.observation(False)``).

    Args:
        model: the module the weights belong to.
        weights: ``{name: tensor}``, the adapted parameters' starting values (the model's own, or copies).
        support: the task's support batches.
        loss_fn: ``(output, batch) -> scalar``.
        steps: number of steps (0 returns ``weights`` unchanged).
        lr: a step size, or per-parameter step sizes keyed by name (Meta-SGD).
        create_graph: keep the graph through the steps (second-order meta-gradients).
        loss_scale: fp16 loss scale applied to the loss and removed from the gradients.
        prepare: maps the image to the model's memory format.
        buffers: where running statistics go (default: throw-away copies).

    Returns:
        The adapted weights and the last support loss (NaN-free scalar; 0 when ``steps == 0``).
    """
    if not support and steps:
        raise ConfigError("adaptation needs at least one support batch")
    if buffers is None:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
    fast = dict(weights)
    loss = torch.zeros(())
    scale = 1.0 if loss_scale is None else float(loss_scale)
    for i in range(steps):
        batch = support[i % len(support)]
        with observation(False):  # adaptation steps; only training batches feed epoch statistics
            loss = loss_fn(functional_forward(model, fast, batch, prepare=prepare, buffers=buffers), batch)
        names, weights = list(fast), list(fast.values())
        grads = torch.autograd.grad(loss * scale if scale != 1.0 else loss, weights,
                                    create_graph=create_graph, allow_unused=True)
        used = [i for i, g in enumerate(grads) if g is not None]  # unused parameters keep their value
        g = [grads[i] for i in used]
        if scale != 1.0:
            g = torch._foreach_div(g, scale)
        # one multi-tensor update per step (a few kernels instead of two per parameter), differentiable
        if isinstance(lr, Mapping):
            delta = torch._foreach_mul(g, [lr[names[i]] for i in used])
        else:
            delta = torch._foreach_mul(g, float(lr))
        updated = torch._foreach_sub([weights[i] for i in used], delta)
        for i, w in zip(used, updated, strict=True):
            fast[names[i]] = w
    return fast, loss


def fine_tune(model: nn.Module, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int, lr: StepSizes,
              params: str | Sequence[str] = "all") -> dict[str, torch.Tensor]:
    """Adapted weights after ``steps`` detached gradient steps on the selected parameters (the model unchanged).

    Returns:
        ``{name: tensor}`` for the adapted parameters (detached).
    """
    names = select_parameters(model, params)
    own = dict(model.named_parameters())
    start = {n: own[n].detach().clone().requires_grad_(True) for n in names}
    fast = start
    for i in range(steps):  # one step at a time, detached between steps: memory flat in K
        fast, _ = gradient_steps(model, fast, [support[i % len(support)]], loss_fn, 1, lr)
        fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
    return {n: w.detach() for n, w in fast.items()}


def adapted_copy(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with ``weights`` loaded (for inference with ordinary calls); ``model`` unchanged."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ConfigError(f"adapted weights name parameters the model does not have: {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return out


def class_logits(logits: torch.Tensor, cls: int, exclude: Sequence[int] = ()) -> torch.Tensor:
    """Binary logits ``[B, 2, ...]`` (rest, class ``cls``) of a few-shot class task from class logits.

    Args:
        logits: ``[B, K, *spatial]``.
        cls: the task's class index.
        exclude: classes left out of "rest" (the held-out classes: no gradient reaches their logits).

    Returns:
        ``[B, 2, *spatial]``: ``logsumexp`` over the other classes, and the class's own logit.
    """
    left_out = set(int(c) for c in exclude) | {int(cls)}
    others = [k for k in range(logits.shape[1]) if k not in left_out]
    rest = torch.logsumexp(logits[:, others], dim=1)
    return torch.stack([rest, logits[:, cls]], dim=1)


def class_task_loss(cls: int, exclude: Sequence[int] = ()) -> AdaptLossFn:
    """The loss of a class task: cross-entropy + soft Dice (of the class) on :func:`class_logits` against
    ``label == cls``, as ``loss(output, batch) -> scalar``. Used to meta-train on class tasks and to adapt to a
    held-out class."""

    def loss(output: SegOutput, batch: Batch) -> torch.Tensor:
        binary = class_logits(output.logits.float(), cls, exclude)
        target = (batch.label == cls).long()
        ce = torch.nn.functional.cross_entropy(binary, target)
        prob = binary.softmax(1)[:, 1].flatten(1)
        truth = target.flatten(1).to(prob.dtype)
        dice = (2 * (prob * truth).sum(1) + 1e-5) / (prob.sum(1) + truth.sum(1) + 1e-5)
        return ce + 1 - dice.mean()

    return loss
