"""Adapting a model to a task, functionally: the weights a task gets, never written into the meta-learned model.

The contract shared by every meta-strategy's ``adapt`` (``prism.strategy.Strategy.adapt``), by evaluation
(fast adaptation, adaptation curves, few-shot) and by prediction: a task is a list of support batches, adaptation
returns ``{parameter name: adapted tensor}`` for the parameters it adapted (the others keep their meta-learned
values), and :func:`adapted_copy` turns the result into an ordinary model for inference. Like learn2learn's
``clone()``/``adapt()``, the original model is never modified.

One loop takes every adaptation step (:func:`gradient_steps`): MAML's inner loop in training, and through
:func:`fine_tune` every strategy's ``adapt``; mixed precision is handled there once (:func:`precision`). The loss
evaluation, prediction and the conformance suite adapt with is :func:`adaptation_loss`; the fine-tuning defaults
are :data:`ADAPT_DEFAULTS`.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .backbone import Backbone
from .batch import Batch
from .errors import ConfigError
from .loss import observation
from .outputs import SegOutput

logger = logging.getLogger(__name__)

#: ``loss_fn(output, batch) -> scalar``: the loss an adaptation step descends.
AdaptLossFn = Callable[[SegOutput, Batch], torch.Tensor]
#: a fixed step size, or one per parameter entry (Meta-SGD), keyed by parameter name
StepSizes = float | Mapping[str, torch.Tensor]
#: ``factory(weights, lr) -> optimizer``: the torch optimizer of a Reptile-style rule (``torch.optim.Adam`` is one)
OptimizerFactory = Callable[[list[torch.Tensor], float], torch.optim.Optimizer]

#: ``adapt_params`` presets: every parameter, the head only (ANIL), everything but the head (BOIL)
PRESETS = ("all", "head", "body")

#: the optimizers a fine-tuning names: plain functional SGD (None), or torch's Adam
OPTIMIZERS: dict[str, OptimizerFactory | None] = {"sgd": None, "adam": torch.optim.Adam}


@dataclass(frozen=True)
class AdaptOptions:
    """How a model is fine-tuned when nothing says otherwise: the one definition of these defaults.

    The base ``Strategy.adapt`` (standard training, Meta-Drop), the config's ``eval.adapt_steps``, ``adapt_lr``
    and ``adapt_optimizer`` (and through them fast adaptation in an evaluation, ``prism-eval`` and its help) read
    them from :data:`ADAPT_DEFAULTS`. MAML-style strategies adapt with their own options instead.

    Attributes:
        steps: gradient steps K (MAML's test-time steps and step size on MiniImagenet, Finn et al., 2017).
        lr: the step size.
        optimizer: one of :data:`OPTIMIZERS`.
    """

    steps: int = 10
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"


ADAPT_DEFAULTS = AdaptOptions()


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
        exact = set(rule)  # names as selected before (e.g. by a strategy's own field) match themselves
        chosen = [n for n in names if n in exact or any(fnmatch.fnmatchcase(n, pattern) for pattern in rule)]
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


def _fp16_autocast(device_type: str) -> bool:
    """Whether the code runs under fp16 autocast on ``device_type`` (whose gradients need a loss scale)."""
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16


class _LossScale:
    """The factor losses are multiplied by before their gradients are taken, removed from the gradients.

    ``fixed``: the engine's fp16 scale (MAML's inner loop in training; an overflow reaches the engine's own scaler
    through the query loss). Otherwise, under fp16 autocast, a dynamic scale as ``torch.amp.GradScaler`` starts it
    (2^16), halved and the step taken again whenever a gradient overflows, so K steps are K updates.
    """

    def __init__(self, fixed: float | None, dynamic: bool) -> None:
        self.value = float(fixed) if fixed is not None else (_DYNAMIC_START if dynamic else 1.0)
        self.dynamic = fixed is None and dynamic

    def unscaled(self, grads: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """``grads`` divided by the scale, or None after an overflow (the scale then halved; retry the step)."""
        if self.value != 1.0:
            grads = list(torch._foreach_div(grads, self.value))
        if self.dynamic and grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            if self.value > _DYNAMIC_FLOOR:
                self.value /= 2.0
                return None
            logger.warning("adaptation: fp16 gradients are not finite at a loss scale of %g; step taken as is",
                           self.value)
        return grads


_DYNAMIC_START, _DYNAMIC_FLOOR = 2.0**16, 2.0**-24


def gradient_steps(model: nn.Module, weights: dict[str, torch.Tensor], support: Sequence[Batch],
                   loss_fn: AdaptLossFn, steps: int, lr: StepSizes, *, create_graph: bool = False,
                   detach: bool = False, optimizer: OptimizerFactory | None = None,
                   loss_scale: float | None = None, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   buffers: Mapping[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``steps`` gradient steps on ``weights``: the one inner loop of prism.

    Functional SGD by default, ``w <- w - lr * grad L_support(w)`` (one multi-tensor update per step), which keeps
    the graph to the starting weights: MAML's inner loop (``create_graph`` for second-order meta-gradients,
    Meta-SGD's per-parameter rates). :func:`fine_tune` runs it detached between steps for every strategy's
    ``adapt``; with ``optimizer`` (Reptile's inner optimizer, fine-tuning with Adam) a torch optimizer updates the
    weights in place instead. Step ``i`` uses ``support[i % len(support)]``. Statistics of stateful loss terms are
    not recorded (``prism.loss.observation(False)``). Under fp16 autocast the loss is scaled: by ``loss_scale``
    when given, else dynamically (see :class:`_LossScale`); bf16 and full precision need no scale.

    Args:
        model: the module the weights belong to.
        weights: ``{name: tensor}``, the adapted parameters' starting values (the model's own, or copies; leaf
            tensors that require grad when ``optimizer`` is given).
        support: the task's support batches.
        loss_fn: ``(output, batch) -> scalar``.
        steps: number of steps (0 returns ``weights`` unchanged).
        lr: a step size, or per-parameter step sizes keyed by name (Meta-SGD; functional SGD only).
        create_graph: keep the graph through the steps (second-order meta-gradients).
        detach: cut the graph after each step (adaptation: memory flat in ``steps``).
        optimizer: ``factory(weights, lr)`` building the torch optimizer that takes the steps (None: SGD).
        loss_scale: a fixed fp16 loss scale applied to the loss and removed from the gradients.
        prepare: maps the image to the model's memory format.
        buffers: where running statistics go (default: throw-away copies).

    Returns:
        The adapted weights and the last support loss (0 when ``steps == 0``).

    Raises:
        ConfigError: steps without any support batch.
        ValueError: an optimizer asked to differentiate through its steps or to use per-parameter rates.
    """
    if not support and steps:
        raise ConfigError("adaptation needs at least one support batch")
    if optimizer is not None and (create_graph or isinstance(lr, Mapping)):
        raise ValueError("gradient_steps: a torch optimizer takes one step size and no second-order graph")
    if buffers is None:
        buffers = {n: b.clone() for n, b in model.named_buffers()}
    fast = dict(weights)
    names = list(fast)
    inner = optimizer([fast[n] for n in names], float(lr)) if optimizer is not None and steps else None  # type: ignore[arg-type]
    device = next(iter(fast.values())).device.type if fast else "cpu"
    scale = _LossScale(loss_scale, dynamic=_fp16_autocast(device))
    loss = torch.zeros(())
    for i in range(steps):
        batch = support[i % len(support)]
        grads: list[torch.Tensor | None] | None = None
        while grads is None:  # more than one pass only after an fp16 overflow under the dynamic scale
            with observation(False):  # adaptation steps; only training batches feed epoch statistics
                loss = loss_fn(functional_forward(model, fast, batch, prepare=prepare, buffers=buffers), batch)
            raw = torch.autograd.grad(loss * scale.value if scale.value != 1.0 else loss, [fast[n] for n in names],
                                      create_graph=create_graph, allow_unused=True)
            used = [j for j, g in enumerate(raw) if g is not None]  # unused parameters keep their value
            unscaled = scale.unscaled([raw[j] for j in used])  # type: ignore[misc]
            if unscaled is not None:
                grads = [None] * len(names)
                for j, g in zip(used, unscaled, strict=True):
                    grads[j] = g
        if inner is not None:
            _optimizer_step(inner, [fast[n] for n in names], grads)
            continue
        fast = _sgd_step(fast, names, grads, lr)
        if detach:
            fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
    return fast, loss


def _sgd_step(fast: dict[str, torch.Tensor], names: list[str], grads: list[torch.Tensor | None], lr: StepSizes
              ) -> dict[str, torch.Tensor]:
    """``w - lr * g`` for every weight with a gradient, as one multi-tensor update (differentiable)."""
    used = [j for j, g in enumerate(grads) if g is not None]
    g = [grads[j] for j in used]
    if isinstance(lr, Mapping):
        delta = torch._foreach_mul(g, [lr[names[j]] for j in used])
    else:
        delta = torch._foreach_mul(g, float(lr))
    updated = torch._foreach_sub([fast[names[j]] for j in used], delta)
    out = dict(fast)
    for j, w in zip(used, updated, strict=True):
        out[names[j]] = w
    return out


def _optimizer_step(optimizer: torch.optim.Optimizer, weights: list[torch.Tensor],
                    grads: list[torch.Tensor | None]) -> None:
    """One step of ``optimizer`` on ``weights`` (leaves) with ``grads`` (None: no gradient, the weight is skipped)."""
    for w, g in zip(weights, grads, strict=True):
        w.grad = g
    optimizer.step()
    for w in weights:
        w.grad = None


def weights_of(model: nn.Module, params: str | Sequence[str] = "all", *, field: str = "adapt_params"
               ) -> dict[str, torch.Tensor]:
    """The model's own values of the parameters ``params`` selects (:func:`select_parameters`), by name."""
    own = dict(model.named_parameters())
    return {n: own[n] for n in select_parameters(model, params, field=field)}


def fine_tune(model: nn.Module, support: Sequence[Batch], loss_fn: AdaptLossFn, *, steps: int, lr: StepSizes,
              params: str | Sequence[str] = "all", start: Mapping[str, torch.Tensor] | None = None,
              optimizer: OptimizerFactory | None = None) -> dict[str, torch.Tensor]:
    """Adapted weights after ``steps`` detached gradient steps (:func:`gradient_steps`); the model unchanged.

    The rule every strategy's ``adapt`` is made of: the base ``Strategy.adapt`` (plain fine-tuning), MAML's (its
    inner rate or Meta-SGD's rates on ``adapt_params``), Reptile's (its inner optimizer), the fast-weight
    generator's refinement of generated weights.

    Args:
        model: the trained model (in the mode the steps should run in; normally train mode).
        support: the task's support batches; step ``i`` uses ``support[i % len(support)]``.
        loss_fn: ``(output, batch) -> scalar`` (e.g. :func:`adaptation_loss`).
        steps: gradient steps.
        lr: the step size, or Meta-SGD's per-parameter rates keyed by name.
        params: which of the model's parameters adapt (:func:`select_parameters`).
        start: starting values instead (e.g. generated weights), keyed by parameter name; ``params`` is then
            not read.
        optimizer: ``factory(weights, lr)`` of a torch optimizer (e.g. ``torch.optim.Adam``; None: plain SGD).

    Returns:
        ``{name: tensor}`` for the adapted parameters (detached).
    """
    begin = weights_of(model, params) if start is None else start
    fast = {n: w.detach().clone().requires_grad_(True) for n, w in begin.items()}
    fast, _ = gradient_steps(model, fast, support, loss_fn, steps, lr, detach=True, optimizer=optimizer)
    return {n: w.detach() for n, w in fast.items()}


@contextlib.contextmanager
def precision(device: torch.device | str, amp_dtype: torch.dtype | None) -> Iterator[None]:
    """Adaptation steps taken inside run under autocast to ``amp_dtype`` (None: full precision); fp16 losses are
    then scaled by :func:`gradient_steps` itself."""
    if amp_dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=amp_dtype):
        yield


def adapted_model(adapt: Callable[..., Mapping[str, torch.Tensor]], model: nn.Module, support: Sequence[Batch],
                  loss_fn: AdaptLossFn, *, amp_dtype: torch.dtype | None = None, **options: Any) -> nn.Module:
    """An ordinary model adapted to ``support``, for inference: evaluation, adaptation curves, few-shot, prediction.

    ``adapt(model, support, loss_fn, **options)`` (a strategy's ``adapt``, or :func:`fine_tune`) runs with the
    model in train mode under :func:`precision`; its weights go into a copy (:func:`adapted_copy`), returned in
    eval mode. ``model`` keeps its weights and its mode.
    """
    was_training = model.training
    model.train()
    try:
        device = next(model.parameters()).device
        with precision(device, amp_dtype):
            weights = adapt(model, support, loss_fn, **options)
    finally:
        model.train(was_training)
    return adapted_copy(model, weights).eval()


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


def foreground_dice_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus one minus the soft Dice of the foreground classes, on logits ``[B, K, ...]``.

    The soft Dice ``(2 |P.G| + 1e-5) / (|P| + |G| + 1e-5)`` is taken per sample and foreground class, on the softmax
    probabilities in float32, and averaged; the cross-entropy is the mean over voxels.

    Args:
        logits: ``[B, K, *spatial]`` (K >= 2).
        label: ``[B, *spatial]`` class indices.

    Returns:
        A scalar.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, label)
    probs = logits.softmax(1)[:, 1:].flatten(2)
    onehot = F.one_hot(label, logits.shape[1]).movedim(-1, 1)[:, 1:].flatten(2).to(probs.dtype)
    soft_dice = (2 * (probs * onehot).sum(-1) + 1e-5) / (probs.sum(-1) + onehot.sum(-1) + 1e-5)
    return ce + 1 - soft_dice.mean()


def adaptation_loss(output: SegOutput, batch: Batch) -> torch.Tensor:
    """The loss fast adaptation descends: :func:`foreground_dice_ce` of the fused logits against the labels.

    What ``prism-eval`` (``eval.adapt_site``, ``prism-eval adapt``), ``prism-predict --adapt`` and the strategy
    conformance suite hand to ``Strategy.adapt``.
    """
    return foreground_dice_ce(output.logits, batch.label)


def class_task_loss(cls: int, exclude: Sequence[int] = ()) -> AdaptLossFn:
    """The loss of a class task: :func:`foreground_dice_ce` of :func:`class_logits` against ``label == cls``, as
    ``loss(output, batch) -> scalar``. Used to meta-train on class tasks and to adapt to a held-out class."""

    def loss(output: SegOutput, batch: Batch) -> torch.Tensor:
        return foreground_dice_ce(class_logits(output.logits.float(), cls, exclude), (batch.label == cls).long())

    return loss
