"""Count the dispatcher-level ops that would be GPU kernels, and the host syncs, of any piece of PyTorch code.

What is counted (``LaunchCounter``, a ``TorchDispatchMode``, so forward, autograd's backward and optimizer steps
are all seen below autograd, after composite ops have been decomposed into what a backend really runs):

- ``ops``: every aten op that reaches a backend kernel, EXCEPT pure views and metadata (ops whose schema says
  they return an alias of an input, e.g. ``view``, ``expand``, ``transpose``, ``detach``; allocations without a
  kernel: ``empty*``; profiler markers; and the host syncs below, which are counted apart). In-place,
  ``_foreach_*`` and fused ops count once per call (one launch of a multi-tensor kernel on CUDA).
- ``syncs``: ops that make the host wait for the device on CUDA: ``_local_scalar_dense`` (``.item()``,
  ``bool(t)``, ``float(t)``, ``if t:``), ``nonzero``, indexing with a boolean mask (``index``/``index_put_``
  with a bool index: a nonzero on CUDA; counted as a sync and as an op), ``masked_select``, ``unique`` and
  friends, ``repeat_interleave`` without ``output_size``, ``bincount``, ``equal``. Host<->device copies cannot be
  seen on a CPU-only machine and are not counted. ``.item()`` on a CPU tensor (e.g. a non-capturable optimizer's
  step counter) is counted as a sync, as the issue counts it: it is a host read per parameter per step.

Counts do not depend on the input size (the same code runs the same ops), so a 16^3 patch on a CPU gives the op
count of an 80^3 step on a GPU; CPU-only branches of torch (e.g. an optimizer's CPU default) are the exception.
``pause()`` excludes a region (e.g. data loading, which is the DataLoader's job and not a kernel launch).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive",
    "bincount", "equal", "is_nonzero", "item",
})
NO_KERNEL_OPS = frozenset({
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh", "set_", "resize_",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
    "_record_function_enter", "_record_function_enter_new", "_record_function_exit",  # profiler markers
    "_unsafe_view",  # a view that autograd does not track as one: metadata only
})

BOOL_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


def _has_bool_index(args: tuple, kwargs: dict | None) -> bool:
    indices = args[1] if len(args) > 1 else (kwargs or {}).get("indices", ())
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _op_name(func: Any) -> str:
    return func._schema.name.split("::")[-1]


class LaunchCounter(TorchDispatchMode):
    """``with LaunchCounter() as c: step()`` then ``c.total``, ``c.sync_total``, ``c.ops`` (Counter by op name).

    Example:
        >>> with LaunchCounter() as c:
        ...     value = (torch.ones(3) * 2).sum().item()
        >>> c.total, c.sync_total
        (3, 1)
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self._paused = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not self._paused:
            name = _op_name(func)
            if name == "repeat_interleave" and (kwargs or {}).get("output_size") is None:
                self.syncs[name] += 1
            elif name in SYNC_OPS:
                self.syncs[name] += 1
            elif name in BOOL_INDEX_OPS and _has_bool_index(args, kwargs):
                self.syncs[f"{name} (bool mask)"] += 1
                self.ops[name] += 1
            elif not (getattr(func, "is_view", False) or name in NO_KERNEL_OPS):
                self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Kernel-level ops counted."""
        return sum(self.ops.values())

    @property
    def sync_total(self) -> int:
        """Host syncs counted."""
        return sum(self.syncs.values())

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Do not count what runs inside (nests)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1


def count(fn: Any, *args: Any, **kwargs: Any) -> LaunchCounter:
    """Run ``fn(*args, **kwargs)`` under a fresh counter and return the counter."""
    with LaunchCounter() as counter:
        fn(*args, **kwargs)
    return counter
