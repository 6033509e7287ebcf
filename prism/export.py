"""Deployment artifacts: a trained backbone for one fixed set of modalities, as an ONNX model or a
``torch.export`` ExportedProgram, checked against the eager model.

The artifact takes ``image`` float32 ``[B, P, D, H, W]``: the P present modalities only, in the run's channel
order (the absent ones are zero-filled and masked out inside, the mask baked in), z-scored and brain-cropped as
prism's preprocessing does. It returns ``logits`` float32 ``[B, K, D, H, W]`` (the fused logits; softmax over dim
1 gives the class probabilities). Batch and spatial sizes are dynamic: B >= 1; D, H, W any multiples of the
backbone's size divisor, at least twice it (sliding windows or padded volumes, as in
:mod:`prism.evaluation.inference`).

Beside the artifact, ``<artifact>.json`` describes it (inputs, outputs, classes and label values, size divisor,
versions) and holds the parity check: the largest absolute difference between the artifact's and the eager
model's logits on random inputs of two shapes, and the tolerance it passed
(``PARITY_RTOL * max(1, max |eager logits|)``). The artifact runs on the CPU for the check (onnxruntime's CPU
provider for ONNX, ``torch.export.load`` for ExportedPrograms); an artifact that fails it is not written.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import atomic_path, write_text_atomic
from .backbone import Backbone
from .errors import ConfigError, PrismError

log = logging.getLogger(__name__)

#: export formats and their file suffixes
FORMATS: dict[str, str] = {"onnx": ".onnx", "torch-export": ".pt2"}
#: the parity tolerance, relative to the eager logits' largest magnitude (at least 1)
PARITY_RTOL = 1e-4
#: the distributions ONNX export and its check need (the optional extra ``export``)
ONNX_EXTRA = ("onnx", "onnxruntime", "onnxscript")


class ExportError(PrismError):
    """The exported artifact does not reproduce the eager model (a bug in the exporter or the backbone, not the
    user's mistake): exit code 1, nothing written."""

    exit_code = 1


class FixedModalities(nn.Module):
    """A backbone for one modality set: ``image [B, P, D, H, W]`` (the present modalities, in the backbone's order)
    -> fused logits float32 ``[B, K, D, H, W]``, the absent modalities zero-filled and masked out.

    Args:
        backbone: a trained backbone (eval mode is set here).
        present: the modalities the input holds, each one of ``backbone.modalities``.
    """

    def __init__(self, backbone: Backbone, present: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone.eval()
        self.present = tuple(m for m in backbone.modalities if m in set(present))
        self.index = [backbone.modalities.index(m) for m in self.present]
        self.register_buffer("mask", torch.tensor([[m in self.present for m in backbone.modalities]]),
                             persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, m = image.shape[0], self.backbone.num_modalities
        if len(self.index) == m:
            full = image
        else:
            full = image.new_zeros((b, m, *image.shape[2:]))
            full[:, self.index] = image
        return self.backbone(full, self.mask.expand(b, -1)).logits.float()


@dataclass
class ExportCard:
    """What ``<artifact>.json`` holds (see the module docstring)."""

    format: str
    artifact: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    classes: dict[int, str]
    label_values: dict[int, int]  # class -> the dataset's raw label value
    size_divisor: int
    parity: dict[str, Any]
    source: str = ""  # the run folder
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def resolve_modalities(requested: Sequence[str] | None, available: Sequence[str]) -> tuple[str, ...]:
    """The requested modality names as the run spells them (case-insensitive), in the run's order; all of
    ``available`` when ``requested`` is None.

    Raises:
        ConfigError: an unknown or repeated name, or an empty list (names ``--modalities``).
    """
    if requested is None:
        return tuple(available)
    by_lower = {m.lower(): m for m in available}
    chosen = []
    for name in requested:
        m = by_lower.get(name.lower())
        if m is None:
            raise ConfigError(f"--modalities: unknown modality '{name}'; the run's modalities: {', '.join(available)}")
        if m in chosen:
            raise ConfigError(f"--modalities: '{name}' given twice")
        chosen.append(m)
    if not chosen:
        raise ConfigError("--modalities: name at least one modality")
    return tuple(m for m in available if m in chosen)


def require_onnx() -> None:
    """Raise a one-line ConfigError naming the extra to install when ONNX export or its check cannot run."""
    missing = []
    for name in ONNX_EXTRA:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install 'prism-seg[export]'")


def _versions(fmt: str) -> dict[str, str]:
    out = {"prism": __version__, "torch": torch.__version__}
    for name in ONNX_EXTRA if fmt == "onnx" else ():
        out[name] = metadata.version(name)
    return out


def trace(module: FixedModalities, spatial: Sequence[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` on a random ``[2, P, *spatial]`` input, with a dynamic batch size and
    spatial sizes that are any multiples of the size divisor (at least twice it)."""
    from torch.export import Dim

    div = module.backbone.size_divisor
    example = torch.zeros(2, len(module.present), *spatial)
    sizes = [div * Dim(axis, min=2) for axis in ("D", "H", "W")]
    dims = {"image": {0: Dim("B", min=1), 2: sizes[0], 3: sizes[1], 4: sizes[2]}}
    return torch.export.export(module, (example,), dynamic_shapes=dims)


def _save(program: torch.export.ExportedProgram, fmt: str, path: Path) -> None:
    if fmt == "torch-export":
        torch.export.save(program, path)
        return
    # one self-contained file (weights inside; prism's backbones are far below ONNX's 2 GB limit)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" etc.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)  # torch-internal
            onnx_program = torch.onnx.export(program, dynamo=True, input_names=["image"], output_names=["logits"],
                                             external_data=False, verbose=False)
    finally:
        registration.setLevel(level)
    onnx_program.save(str(path), external_data=False)


def _runner(fmt: str, path: Path) -> Any:
    """A function running the artifact at ``path`` on the CPU: numpy ``[B, P, ...]`` -> numpy logits."""
    if fmt == "torch-export":
        module = torch.export.load(path).module()

        def run_program(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()

        return run_program
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"image": x})[0]


def parity_check(module: FixedModalities, run_artifact: Any, shapes: Sequence[Sequence[int]], *,
                 seed: int = 0) -> dict[str, Any]:
    """The largest absolute logit difference between ``run_artifact`` and the eager ``module`` on standard-normal
    inputs of ``shapes``, and the tolerance ``PARITY_RTOL * max(1, max |eager logits|)``.

    Returns:
        ``{"max_abs_diff", "tolerance", "rtol", "max_abs_logit", "shapes", "seed", "passed"}``.
    """
    generator = torch.Generator().manual_seed(seed)
    diff, scale = 0.0, 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            eager = module(x).numpy()
        out = np.asarray(run_artifact(x.numpy()))
        if out.shape != eager.shape:
            raise ExportError(f"the exported model returned shape {out.shape} for input {tuple(shape)}, the eager "
                              f"model {eager.shape}")
        diff = max(diff, float(np.abs(out - eager).max()))
        scale = max(scale, float(np.abs(eager).max()))
    tolerance = PARITY_RTOL * max(1.0, scale)
    return {"max_abs_diff": diff, "tolerance": tolerance, "rtol": PARITY_RTOL, "max_abs_logit": scale,
            "shapes": [list(s) for s in shapes], "seed": seed, "passed": bool(diff <= tolerance)}


def export_backbone(backbone: Backbone, path: str | Path, *, fmt: str, modalities: Sequence[str] | None = None,
                    classes: Mapping[int, str] | None = None, label_values: Mapping[int, int] | None = None,
                    source: str = "", spatial: Sequence[int] | None = None) -> ExportCard:
    """Export ``backbone`` for ``modalities`` to ``path`` in ``fmt`` and write ``<path>.json`` beside it.

    Args:
        backbone: a trained backbone; exported on the CPU in float32 (it is moved there).
        path: the artifact file (``.onnx`` or ``.pt2`` by convention).
        fmt: ``onnx`` or ``torch-export``.
        modalities: the input's modalities (default: all of the backbone's).
        classes: class index -> name, for the card (default: ``class<k>``).
        label_values: class index -> raw label value, for the card (default: the class index).
        source: the run folder, for the card.
        spatial: the trace shape ``D, H, W`` (default: twice the size divisor on each axis); the parity check
            runs on ``[2, P, *spatial]`` and ``[1, P, *(spatial + divisor)]``.

    Returns:
        The card written to ``<path>.json``.

    Raises:
        ConfigError: an unknown format or modality, or a missing extra for ONNX.
        ExportError: the artifact's logits differ from the eager model's beyond the tolerance (nothing written).
        StorageError: the folder is missing or not writable.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format '{fmt}'; allowed: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    present = resolve_modalities(modalities, backbone.modalities)
    module = FixedModalities(backbone.float().cpu(), present)
    div = backbone.size_divisor
    spatial = tuple(int(s) for s in spatial) if spatial else (2 * div,) * 3
    if any(s % div or s < 2 * div for s in spatial):
        raise ConfigError(f"spatial: {list(spatial)} must be multiples of {div}, at least {2 * div}")
    path = Path(path)
    log.info("tracing %s for %s", type(backbone).__name__, ", ".join(present))
    program = trace(module, spatial)
    shapes = [(2, len(present), *spatial), (1, len(present), *(s + div for s in spatial))]
    with atomic_path(path, suffix=FORMATS[fmt]) as tmp:
        _save(program, fmt, tmp)
        parity = parity_check(module, _runner(fmt, tmp), shapes)
        parity["runtime"] = ("onnxruntime CPUExecutionProvider" if fmt == "onnx"
                             else "torch.export.load(...).module() on the CPU")
        if not parity["passed"]:
            raise ExportError(f"{path}: parity check failed: max |exported - eager| logit difference "
                              f"{parity['max_abs_diff']:.3g} > tolerance {parity['tolerance']:.3g}; nothing written")
    k = backbone.num_classes
    card = ExportCard(
        format=fmt, artifact=path.name,
        inputs={"name": "image", "dtype": "float32", "shape": ["B", len(present), "D", "H", "W"],
                "modalities": list(present), "absent_modalities": [m for m in backbone.modalities if m not in present],
                "spatial": f"multiples of {div}, at least {2 * div}; B >= 1",
                "preprocessing": "brain-cropped, z-scored per modality over the brain (prism-data preprocess)"},
        outputs={"name": "logits", "dtype": "float32", "shape": ["B", k, "D", "H", "W"],
                 "probabilities": "softmax over dimension 1"},
        classes={i: (classes or {}).get(i, f"class{i}") for i in range(k)},
        label_values={i: int((label_values or {}).get(i, i)) for i in range(k)},
        size_divisor=div, parity=parity, source=source, versions=_versions(fmt))
    write_text_atomic(card_path(path), card.to_json())
    return card


def card_path(artifact: str | Path) -> Path:
    """``<artifact>.json``: the card beside an artifact."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")
