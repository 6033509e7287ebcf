"""Inference for every modality combination of a case in batched passes: whole volume or sliding windows.

The combinations run as the batch dimension. With sliding windows (MONAI's ``sliding_window_inference``,
Gaussian blending), each window is cut once and expanded to every combination inside the predictor, so one
sweep over the volume serves ``combos_per_pass`` combinations; logits are blended, then arg-maxed. Test-time
mirroring (``tta='mirror'``, :mod:`prism.evaluation.tta`) wraps that window predictor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..errors import ConfigError
from .options import DEFAULTS, EvalOptions
from .tta import Predictor, with_tta


def _forward(model: Backbone, x: torch.Tensor, masks: torch.Tensor, amp_dtype: torch.dtype | None,
             channels_last: bool) -> torch.Tensor:
    """Fused logits (float32) ``[B, C, K, ...]`` of ``model`` for images ``x [B, M, ...]`` under every mask of
    ``masks [C, M]`` (``Backbone.combination_logits``: shared encoder work where the backbone allows it)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if amp_dtype is not None:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            return model.combination_logits(x, masks).float()
    return model.combination_logits(x, masks).float()


def check_window(model: Backbone, window: Sequence[int]) -> tuple[int, int, int]:
    """The window as a 3-tuple, or a one-line error if the backbone cannot take it."""
    win = tuple(int(w) for w in window)
    if len(win) != 3 or any(w < 1 for w in win):
        raise ConfigError(f"eval.window: expected three positive sizes, got {list(window)}")
    bad = [w for w in win if w % model.size_divisor]
    if bad:
        raise ConfigError(f"eval.window: {list(win)} must be multiples of {model.size_divisor} for "
                          f"backbone {type(model).__name__}")
    return win  # type: ignore[return-value]


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (free GPU memory, or the host's available memory), or
    None where it cannot be told."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        if device.type == "cpu":
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None
    return None


def sliding_window_bytes(spatial: Sequence[int], window: Sequence[int], modalities: int, combinations: int,
                         num_classes: int, sw_batch_size: int) -> int:
    """Bytes of the buffers a Gaussian-blended sliding-window pass allocates besides the model's own activations.

    The blended float32 logits and their weight map over the volume padded to the window
    (``combinations * num_classes + 1`` channels), the float32 Gaussian map of one window, and one batch of
    ``sw_batch_size`` windows in and out of the model.
    """
    padded = math.prod(max(int(s), int(w)) for s, w in zip(spatial, window, strict=True))
    win = math.prod(int(w) for w in window)
    outputs = combinations * num_classes
    return 4 * ((outputs + 1) * padded + win + sw_batch_size * (modalities + outputs) * win)


def check_window_fits(model: Backbone, spatial: Sequence[int], window: Sequence[int], *, combinations: int,
                      sw_batch_size: int, devices: Sequence[torch.device]) -> None:
    """One-line ConfigError, before anything is allocated, when the window is larger than the volume or the
    sliding-window buffers (:func:`sliding_window_bytes`) exceed the memory available where they go.

    Args:
        model: the backbone (its size divisor, modalities and classes).
        spatial: the volume's ``(D, H, W)``.
        window: the window size.
        combinations: combinations predicted per sweep.
        sw_batch_size: windows per forward pass.
        devices: where the blended volume and the windows live (each is checked).
    """
    divisor = model.size_divisor
    limit = [-(-int(s) // divisor) * divisor for s in spatial]  # the volume rounded up to the size divisor
    if any(int(w) > m for w, m in zip(window, limit, strict=True)):
        raise ConfigError(f"eval.window: {list(window)} is larger than the volume {list(spatial)} (at most "
                          f"{limit} for this backbone); choose a smaller window, or none for whole volumes")
    need = sliding_window_bytes(spatial, window, len(model.modalities), combinations, model.num_classes,
                                sw_batch_size)
    for device in dict.fromkeys(devices):
        free = available_memory(device)
        if free is not None and need > free:
            raise ConfigError(f"eval.window {list(window)} with eval.sw_batch_size {sw_batch_size} and "
                              f"{combinations} combinations per pass needs about {need / 2**30:.1f} GiB of buffers "
                              f"on {device}, more than the {free / 2**30:.1f} GiB available; use a smaller window, "
                              "sw_batch_size or combos_per_pass")


def _whole_volume_logits(model: Backbone, x: torch.Tensor, forward: Predictor) -> torch.Tensor:
    """Logits ``[C, K, D, H, W]``: the volume zero-padded to the backbone's size divisor, padding cropped."""
    spatial = x.shape[1:]
    pad = [(-s) % model.size_divisor for s in spatial]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    logits = forward(x.unsqueeze(0))[0]
    return logits[:, :, : spatial[0], : spatial[1], : spatial[2]]


def _sliding_window_logits(x: torch.Tensor, c: int, forward: Predictor, window: tuple[int, int, int], overlap: float,
                           sw_batch_size: int, sigma_scale: float, output_device: torch.device) -> torch.Tensor:
    """Gaussian-blended logits ``[C, K, D, H, W]``; every window is run under all ``C`` masks at once."""
    from monai.inferers import sliding_window_inference

    def predictor(windows: torch.Tensor) -> torch.Tensor:  # [n, M, *window] -> [n, C * K, *window]
        return forward(windows).flatten(1, 2)

    blended = sliding_window_inference(
        x.unsqueeze(0), roi_size=window, sw_batch_size=sw_batch_size, predictor=predictor, overlap=overlap,
        mode="gaussian", sigma_scale=sigma_scale, padding_mode="constant", cval=0.0, sw_device=x.device,
        device=output_device,
    )
    return blended[0].unflatten(0, (c, -1))


@torch.no_grad()
def predict_logits(model: Backbone, image: torch.Tensor, masks: torch.Tensor, *, device: torch.device,
                   amp_dtype: torch.dtype | None = None, options: EvalOptions = DEFAULTS) -> torch.Tensor:
    """Float32 logits ``[C, K, D, H, W]`` for image ``[M, D, H, W]`` under every mask of ``masks [C, M]``, in one pass.

    Read from ``options``: ``window`` None predicts the whole volume at once; otherwise sliding windows of that
    size, ``overlap``, ``sw_batch_size`` windows per forward (each expanded to the C combinations), Gaussian
    blending with ``sigma_scale``, the blended volume kept in host memory with ``stitch_on_cpu`` (to save GPU
    memory); ``channels_last`` memory format; ``tta='mirror'``: each window (or the whole volume) predicted on its
    8 mirrorings, probabilities averaged, the logits then the log of those mean probabilities
    (:func:`prism.evaluation.tta.mirrored`). ``combos_per_pass`` is not read (all of ``masks`` share the pass).
    """
    model.eval()
    x = image.to(device, non_blocking=True)
    m = masks.to(device)
    forward = with_tta(lambda windows: _forward(model, windows, m, amp_dtype, options.channels_last), options.tta)
    if options.window is None:
        return _whole_volume_logits(model, x, forward)
    win = check_window(model, options.window)
    output_device = torch.device("cpu") if options.stitch_on_cpu else x.device
    check_window_fits(model, x.shape[1:], win, combinations=m.shape[0], sw_batch_size=options.sw_batch_size,
                      devices=[output_device, x.device])
    return _sliding_window_logits(x, m.shape[0], forward, win, options.overlap, options.sw_batch_size,
                                  options.sigma_scale, output_device)


@torch.no_grad()
def predict_combinations(model: Backbone, image: torch.Tensor, masks: torch.Tensor, *, device: torch.device,
                         amp_dtype: torch.dtype | None = None, options: EvalOptions = DEFAULTS) -> torch.Tensor:
    """Label maps uint8 ``[C, D, H, W]`` (on the CPU) for image ``[M, D, H, W]`` under each mask of ``masks [C, M]``.

    ``options.combos_per_pass`` combinations share one pass (``1`` = one loop per combination); the other options
    are those of :func:`predict_logits`.
    """
    out = []
    step = options.combos_per_pass
    for start in range(0, masks.shape[0], step):
        logits = predict_logits(model, image, masks[start:start + step], device=device, amp_dtype=amp_dtype,
                                options=options)
        out.append(logits.argmax(1).to(torch.uint8).cpu())
    return torch.cat(out)
