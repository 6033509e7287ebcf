"""Count the kernel launches and the host syncs of any piece of PyTorch code, by one written rule.

The rule (``LaunchCounter``):

- ``ops``: dispatcher-level aten ops that launch a kernel. The counter is a ``TorchDispatchMode``, so forward,
  autograd's backward and optimizer steps are all seen below autograd, after composite ops were decomposed into
  what a backend runs. Not counted: pure views and metadata (ops whose schema returns an alias of an input:
  ``view``, ``expand``, ``transpose``, ``detach``...), allocations that launch no kernel (``empty*``), profiler
  markers, and the scalar reads below. In-place, ``_foreach_*`` and fused ops count once per call (one launch of a
  multi-tensor kernel on CUDA).
- ``syncs``: reads of device data by the host, each of which makes the host wait for the device: a scalar read
  (``_local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``, ``if t:``); ops whose output size depends on
  the data (``nonzero``, indexing with a boolean mask, ``masked_select``, ``unique`` and friends,
  ``repeat_interleave`` without ``output_size``, ``bincount``, ``equal``); and copies of a tensor to the host
  (``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")``), seen at the Python level by a ``TorchFunctionMode``
  because on a CPU they dispatch nothing.
- ``host_reads``: scalar reads of data that lives on the host whatever the device: tensors on the CPU while the
  counted code runs on a GPU; tensors drawn from a CPU ``torch.Generator`` (a strategy's task draws: that
  generator makes CPU tensors on any machine); and tensors named by ``host_tensors`` (for a count made on a CPU,
  where everything is on the CPU: e.g. the step counters a non-fused, non-capturable torch optimizer keeps on the
  host and reads with ``.item()`` every step). They cost the host microseconds but never wait for the device, so
  they are reported apart from ``syncs``.

Counts do not depend on the input size (the same code runs the same ops), so a 16^3 patch on a CPU gives the op
count of an 80^3 step on a GPU. Where torch takes a CPU-only branch (an optimizer's CPU default) counts differ;
under CUDA autocast some ops run in float32 that CPU autocast runs in bfloat16, so a CPU count under autocast is a
lower bound of the CUDA one. ``pause()`` excludes a region (e.g. data loading, the DataLoader's work).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SYNC_OPS = frozenset({
    "nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount", "equal",
    "is_nonzero", "item",
})
SCALAR_READ = "_local_scalar_dense"
NO_KERNEL_OPS = frozenset({
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh", "set_", "resize_",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
    "_record_function_enter", "_record_function_enter_new", "_record_function_exit",  # profiler markers
    "_unsafe_view",  # a view that autograd does not track as one: metadata only
})
BOOL_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
COPY_TO_HOST = frozenset({"tolist", "numpy", "cpu"})


def _has_bool_index(args: tuple, kwargs: dict | None) -> bool:
    indices = args[1] if len(args) > 1 else (kwargs or {}).get("indices", ())
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _op_name(func: Any) -> str:
    return func._schema.name.split("::")[-1]


def _to_host(args: tuple, kwargs: dict | None) -> bool:
    """``Tensor.to("cpu")``: the host named as a string. (A ``torch.device`` target is the run's device taken from a
    tensor, ``x.to(image.device)``, which is the CPU only because the count runs on one.)"""
    targets = [*args[1:2], (kwargs or {}).get("device")]
    return any(isinstance(t, str) and t.split(":")[0] == "cpu" for t in targets)


def _cpu_generator(kwargs: dict | None) -> bool:
    generator = (kwargs or {}).get("generator")
    return isinstance(generator, torch.Generator) and generator.device.type == "cpu"


def optimizer_step_counters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The per-parameter ``step`` tensors an optimizer keeps on the host (non-fused, non-capturable groups)."""
    out = []
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                out.append(step)
    return out


class _HostCopies(TorchFunctionMode):
    """The Python-level half of the counter: copies of tensors to the host."""

    def __init__(self, counter: LaunchCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if (name in COPY_TO_HOST or (name == "to" and _to_host(args, kwargs))) and args \
                and isinstance(args[0], torch.Tensor):
            self.counter._read(f"{name}()", args[0])
        return func(*args, **(kwargs or {}))


class LaunchCounter(TorchDispatchMode):
    """``with LaunchCounter() as c: step()`` then ``c.total``, ``c.sync_total``, ``c.host_read_total`` and the
    Counters by op name ``c.ops``, ``c.syncs``, ``c.host_reads``.

    Args:
        device: the device the counted code would run on ("cpu" counts model a GPU step: data on the CPU is
            device data, except ``host_tensors``); on "cuda", CPU tensors are host data.
        host_tensors: returns the tensors that live on the host whatever the device (asked at each read).

    Ops that draw from a CPU generator run on the host on any machine: they are kept in ``host_ops``, not ``ops``.

    Example:
        >>> with LaunchCounter() as c:
        ...     value = (torch.ones(3) * 2).sum().item()
        >>> c.total, c.sync_total
        (3, 1)
    """

    def __init__(self, device: str = "cpu", host_tensors: Callable[[], Iterable[torch.Tensor]] | None = None
                 ) -> None:
        super().__init__()
        self.device = torch.device(device).type
        self.host_tensors = host_tensors
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.host_reads: Counter[str] = Counter()
        self.host_ops: Counter[str] = Counter()  # draws from a CPU generator: host work, no kernel launch
        self._paused = 0
        self._functions = _HostCopies(self)
        self._drawn: dict[int, weakref.ref] = {}  # id -> tensor drawn from a CPU generator

    def __enter__(self) -> LaunchCounter:
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._functions.__exit__(*exc)

    def _is_host_data(self, t: torch.Tensor) -> bool:
        if self.device != "cpu" and t.device.type == "cpu":
            return True
        drawn = self._drawn.get(id(t))
        if drawn is not None and drawn() is t:
            return True
        return self.host_tensors is not None and any(t is h for h in self.host_tensors())

    def _remember_draw(self, kwargs: dict | None, out: Any) -> None:
        if _cpu_generator(kwargs) and isinstance(out, torch.Tensor):
            self._drawn[id(out)] = weakref.ref(out)

    def _read(self, name: str, t: Any) -> None:
        if self._paused:
            return
        if isinstance(t, torch.Tensor) and self._is_host_data(t):
            self.host_reads[name] += 1
        else:
            self.syncs[name] += 1

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if not self._paused:
            name = _op_name(func)
            if name == SCALAR_READ:
                self._read(name, args[0] if args else None)
            elif name == "repeat_interleave" and (kwargs or {}).get("output_size") is None:
                self.syncs[name] += 1
            elif name in SYNC_OPS:
                self.syncs[name] += 1
            elif name in BOOL_INDEX_OPS and _has_bool_index(args, kwargs):
                self.syncs[f"{name} (bool mask)"] += 1
                self.ops[name] += 1
            elif _cpu_generator(kwargs):  # a draw on the host (a CPU generator), on any machine
                self.host_ops[name] += 1
            elif not (getattr(func, "is_view", False) or name in NO_KERNEL_OPS):
                self.ops[name] += 1
        out = func(*args, **(kwargs or {}))
        if kwargs and "generator" in kwargs:
            self._remember_draw(kwargs, out)
        return out

    @property
    def total(self) -> int:
        """Kernel-level ops counted."""
        return sum(self.ops.values())

    @property
    def sync_total(self) -> int:
        """Reads of device data by the host (each a device sync)."""
        return sum(self.syncs.values())

    @property
    def host_read_total(self) -> int:
        """Scalar reads of host-resident data (no device sync)."""
        return sum(self.host_reads.values())

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
