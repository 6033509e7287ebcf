"""Test-time mirroring: a flip-equivariant model is unchanged by it; any other model gets exactly the mean of the
probabilities of its 8 flipped predictions (computed here independently), in whole volumes, in Gaussian-blended
sliding windows and in the batched pass over modality combinations; the config field and the flags reach it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from prism.backbone import Backbone
from prism.config import build_config
from prism.errors import ConfigError
from prism.evaluation.inference import predict_combinations, predict_logits
from prism.evaluation.options import EvalOptions
from prism.evaluation.report import evaluate
from prism.evaluation.tta import MIRROR_FLIPS, with_tta
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.outputs import SegOutput

CPU = torch.device("cpu")
K = 3


class ConvModel(Backbone):
    """One 3x3x3 convolution (zero padding) from the masked modalities to K logits, plus ``ramp`` times a
    position-dependent term along D (which no flip maps to itself)."""

    def __init__(self, symmetric: bool, ramp: float = 0.0, seed: int = 0, k: int = K) -> None:
        super().__init__(BRATS_MODALITIES, k)
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(k, 4, 3, 3, 3, generator=g)
        if symmetric:  # the mean over the 8 flips of the kernel: invariant under every flip
            weight = torch.stack([weight.flip([d + 2 for d in axes]) if axes else weight
                                  for axes in _subsets()]).mean(0)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.randn(k, generator=g))
        self.ramp = ramp

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> SegOutput:
        x = image * mask[:, :, None, None, None].to(image.dtype)
        logits = F.conv3d(x, self.weight, self.bias, padding=1)
        d = image.shape[2]
        position = torch.linspace(-1, 1, d, dtype=image.dtype)[None, None, :, None, None]
        classes = torch.arange(self.num_classes, dtype=image.dtype)[None, :, None, None, None]
        return SegOutput(logits=logits + self.ramp * position * classes)


def _subsets() -> list[tuple[int, ...]]:
    """The 8 subsets of the spatial axes (0, 1, 2) = D, H, W, written independently of prism's list."""
    return [tuple(a for a, on in zip((0, 1, 2), bits, strict=True) if on)
            for bits in itertools.product((False, True), repeat=3)]


def _mirrored_mean(model: Backbone, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the 8 flips f of f(softmax(model(f(image)))): probabilities ``[K, D, H, W]`` of one mask."""
    total = torch.zeros(model.num_classes, *image.shape[1:], dtype=torch.float64)
    for axes in _subsets():
        dims = [a + 1 for a in axes]
        x = image.flip(dims) if dims else image
        with torch.no_grad():
            p = torch.softmax(model(x[None], mask[None]).logits[0].double(), 0)
        total += p.flip(dims) if dims else p
    return total / 8


@pytest.fixture()
def image() -> torch.Tensor:
    return torch.randn(4, 12, 10, 8, generator=torch.Generator().manual_seed(1))


def test_the_flips_are_the_8_subsets_of_the_spatial_axes():
    assert len(MIRROR_FLIPS) == 8 == len(set(MIRROR_FLIPS))
    assert {tuple(sorted(a % 3 for a in axes)) for axes in MIRROR_FLIPS} == set(_subsets())


@pytest.mark.parametrize("window", [None, (8, 8, 8)], ids=["whole", "sliding"])
def test_a_flip_equivariant_model_is_unchanged(image, window):
    model = ConvModel(symmetric=True).eval()
    masks = combination_masks(BRATS_MODALITIES)[[0, 6, 14]]
    plain_options = EvalOptions(window=window, overlap=0.5)
    mirror_options = EvalOptions(window=window, overlap=0.5, tta="mirror")
    plain = torch.softmax(predict_logits(model, image, masks, device=CPU, options=plain_options), 1)
    mirrored = torch.softmax(predict_logits(model, image, masks, device=CPU, options=mirror_options), 1)
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=0)
    assert torch.equal(predict_combinations(model, image, masks, device=CPU, options=mirror_options),
                       predict_combinations(model, image, masks, device=CPU, options=plain_options))


def test_a_non_equivariant_model_gets_the_mean_of_its_8_flipped_predictions(image):
    """Whole volume, three combinations in one batched pass: softmax of the returned logits is the mean
    probability of the 8 flips for each combination; it is not the unmirrored prediction."""
    model = ConvModel(symmetric=False, ramp=2.0).eval()
    masks = combination_masks(BRATS_MODALITIES)[[0, 6, 14]]
    mirror = EvalOptions(tta="mirror")
    mirrored = torch.softmax(predict_logits(model, image, masks, device=CPU, options=mirror).double(), 1)
    for c in range(masks.shape[0]):
        torch.testing.assert_close(mirrored[c], _mirrored_mean(model, image, masks[c]), atol=1e-6, rtol=0)
    plain = torch.softmax(predict_logits(model, image, masks, device=CPU).double(), 1)
    assert (mirrored - plain).abs().max() > 0.05
    labels = predict_combinations(model, image, masks, device=CPU,
                                  options=EvalOptions(tta="mirror", combos_per_pass=2))
    assert torch.equal(labels, mirrored.argmax(1).to(torch.uint8))


def test_whole_volume_padding_is_mirrored_with_the_volume():
    """A backbone with size divisor 4 on a 10 x 9 x 7 volume: padded, mirrored, cropped back; still the mean."""
    model = ConvModel(symmetric=False, ramp=1.0).eval()
    model.size_divisor = 4
    image = torch.randn(4, 10, 9, 7, generator=torch.Generator().manual_seed(2))
    mask = combination_masks(BRATS_MODALITIES)[14:]
    mirrored = torch.softmax(predict_logits(model, image, mask, device=CPU,
                                            options=EvalOptions(tta="mirror"))[0].double(), 0)
    padded = F.pad(image, (0, 1, 0, 3, 0, 2))
    expected = _mirrored_mean(model, padded, mask[0])[:, :10, :9, :7]
    torch.testing.assert_close(mirrored, expected, atol=1e-6, rtol=0)


def test_sliding_windows_blend_the_mirrored_windows(image):
    """Each window is mirrored (not the volume): equal to MONAI's blending of a per-window mirrored mean written
    here; a window as large as the volume gives the whole-volume result."""
    model = ConvModel(symmetric=False, ramp=2.0).eval()
    mask = combination_masks(BRATS_MODALITIES)[5]

    def window_predictor(windows: torch.Tensor) -> torch.Tensor:
        return torch.stack([_mirrored_mean(model, w, mask).float().log() for w in windows])

    expected = sliding_window_inference(image[None], roi_size=(8, 8, 8), sw_batch_size=1, predictor=window_predictor,
                                        overlap=0.5, mode="gaussian", sigma_scale=0.125, padding_mode="constant")[0]
    got = predict_logits(model, image, mask[None], device=CPU,
                         options=EvalOptions(window=(8, 8, 8), overlap=0.5, tta="mirror"))[0]
    torch.testing.assert_close(torch.softmax(got, 0), torch.softmax(expected, 0), atol=1e-5, rtol=0)
    one_window = predict_logits(model, image, mask[None], device=CPU,
                                options=EvalOptions(window=(12, 10, 8), tta="mirror"))[0]
    torch.testing.assert_close(torch.softmax(one_window.double(), 0), _mirrored_mean(model, image, mask),
                               atol=1e-5, rtol=0)


def test_unknown_mode_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"^eval.tta: unknown test-time augmentation 'flip'; allowed: none, mirror$"):
        with_tta(lambda x: x, "flip")
    with pytest.raises(ConfigError, match=r"eval.tta"):
        build_config(None, ["eval.tta=flip"])
    assert build_config(None, ["eval.tta=mirror"]).eval.tta == "mirror"
    assert EvalOptions.from_config(build_config(None, ["eval.tta=mirror"]).eval).tta == "mirror"
    assert EvalOptions.from_config(build_config(None, []).eval).tta == "none"


def test_evaluation_scores_the_mirrored_prediction_and_records_it(tiny_cache):
    """evaluate(tta='mirror') scores argmax of the mirrored mean (its Dice equals that of the independent mean's
    argmax) and records the mode in the report's settings."""
    from prism.data.cache_reader import CacheReader
    from prism.evaluation.metrics import mask_dice, region_masks, regions_for

    reader = CacheReader(tiny_cache)
    try:
        assert reader.modalities == BRATS_MODALITIES
        k = len(reader.labels)
        model = ConvModel(symmetric=False, ramp=2.0, k=k).eval()
        case = reader.split("test")[0]
        report = evaluate(model, reader, [case], device=CPU, options=EvalOptions(tta="mirror", compute_hd95=False))
        image, label = reader.read_case(case)
        regions = regions_for(reader.labels)
        available = torch.tensor(reader.info(case).availability)
        masks = combination_masks(reader.modalities)
        for c in range(masks.shape[0]):
            if (masks[c] & ~available).any():
                assert np.isnan(report.dice[0, c]).all()
                continue
            pred = _mirrored_mean(model, torch.from_numpy(image), masks[c]).argmax(0)
            p, g = region_masks(pred[None], torch.from_numpy(label), regions, k)
            np.testing.assert_allclose(report.dice[0, c], mask_dice(p, g)[0].numpy(), atol=1e-6)
    finally:
        reader.close()
    assert report.settings["tta"] == "mirror"


@pytest.mark.slow
def test_the_config_field_reaches_the_evaluation_after_training_and_the_flag_overrides_it(tiny_cache, tmp_path):
    """eval.tta=mirror (as a study arm's override would set it): the evaluation after training mirrors; prism-eval
    --tta none -o DIR evaluates the same run without, into another folder."""
    from conftest import FAST
    from prism.cli.evaluate import main as eval_main
    from prism.cli.train import main as train_main
    from prism.evaluation.compare import load_report

    run = tmp_path / "run"
    assert train_main([*FAST, f"data.cache={tiny_cache}", "train.steps=1", "eval.tta=mirror", "eval.hd95=false",
                       "eval.max_cases=1", "-o", str(run)]) == 0
    assert load_report(run).settings["tta"] == "mirror"
    assert eval_main([str(run), "--tta", "none", "-o", str(tmp_path / "plain"), "--no-heatmap"]) == 0
    assert load_report(tmp_path / "plain").settings["tta"] == "none"
    assert load_report(run).settings["tta"] == "mirror"  # the run's own report is left as it was
