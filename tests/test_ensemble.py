"""Ensembles: the ensemble's probabilities are the mean of its runs' probabilities (as a backbone, through
prism-predict and through prism-eval --ensemble); runs that do not share modalities, classes and label map are
refused in one line naming the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST
from prism.cli.evaluate import main as eval_main
from prism.cli.predict import load_runs
from prism.cli.predict import main as predict_main
from prism.cli.train import main as train_main
from prism.data.cache_reader import CacheReader
from prism.data_tools.layouts import BRATS2020
from prism.data_tools.preprocess import PreprocessSettings, build_cache
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache, write_synthetic_nifti
from prism.errors import ConfigError
from prism.evaluation.ensemble import Ensemble
from prism.evaluation.inference import predict_logits
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import get_registry
from prism.runs import load_run

CPU = torch.device("cpu")


def _unet(seed: int, name: str = "multi_unet", modalities=BRATS_MODALITIES, classes: int = 4):
    torch.manual_seed(seed)
    return get_registry().create("backbone", name, modalities, classes, width=4, depth=3).eval()


def test_ensemble_probabilities_are_the_mean_of_its_members():
    """Two different backbones: softmax of the ensemble's logits (forward, combination_logits, and through
    predict_logits with sliding windows and mirroring off) equals the mean of the members' softmax."""
    a, b = _unet(0), _unet(1, "rfnet")
    ensemble = Ensemble([a, b]).eval()
    assert ensemble.size_divisor == 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, 8, generator=g)
    masks = combination_masks(BRATS_MODALITIES)[[0, 9, 14]]
    with torch.no_grad():
        mean = (torch.softmax(a.combination_logits(x, masks), 2) + torch.softmax(b.combination_logits(x, masks), 2)) / 2
        got = torch.softmax(ensemble.combination_logits(x, masks), 2)
        torch.testing.assert_close(got, mean, atol=1e-6, rtol=0)
        mask = masks[1:2].expand(2, -1)
        forward_mean = (torch.softmax(a(x, mask).logits, 1) + torch.softmax(b(x, mask).logits, 1)) / 2
        torch.testing.assert_close(torch.softmax(ensemble(x, mask).logits, 1), forward_mean, atol=1e-6, rtol=0)
    image = torch.randn(4, 12, 8, 8, generator=g)
    got = torch.softmax(predict_logits(ensemble, image, masks, device=CPU), 1)
    each = [torch.softmax(predict_logits(m, image, masks, device=CPU), 1) for m in (a, b)]
    torch.testing.assert_close(got, (each[0] + each[1]) / 2, atol=1e-6, rtol=0)
    assert (each[0] - each[1]).abs().max() > 0.01  # the members differ: the mean is not either of them


def test_members_must_agree_on_modalities_and_classes():
    with pytest.raises(ConfigError, match="ensemble member 1: modalities"):
        Ensemble([_unet(0), _unet(1, modalities=("flair", "t1ce", "t1"))])
    with pytest.raises(ConfigError, match="3 classes differ"):
        Ensemble([_unet(0), _unet(1, classes=3)])


# ---- runs on disk ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Raw NIfTI cases, their cache, two runs on it (different seeds) and one run on a cache with more classes."""
    root = tmp_path_factory.mktemp("ensemble")
    raw = root / "raw"
    write_synthetic_nifti(raw, SynthSettings(cases=3, shape=(14, 16, 12), seed=1))
    cache = root / "cache.h5"
    build_cache(raw, cache, BRATS2020, PreprocessSettings(min_size=8, chunk=8, test_fraction=0.34))
    other = root / "other.h5"
    write_synthetic_cache(str(other), SynthSettings(cases=3, shape=(16, 16, 16), seed=2, extra_classes=True),
                          test_fraction=0.34)
    out = {"raw": raw, "cache": cache, "root": root}
    for name, data, seed in (("a", cache, 0), ("b", cache, 1), ("other", other, 0)):
        out[name] = root / name
        assert train_main([*FAST, f"data.cache={data}", "train.steps=2", "data.patch_size=[8,8,8]",
                           f"train.seed={seed}", "train.checkpoint_every=2", "train.log_every=1", "-o",
                           str(out[name]), "--no-eval"]) == 0
    return out


@pytest.mark.slow
def test_predict_with_two_runs_averages_their_probabilities(runs, tmp_path, capsys):
    single = {}
    for name in ("a", "b"):
        assert predict_main([str(runs[name]), str(runs["raw"]), "-o", str(tmp_path / name),
                             "--save-probabilities"]) == 0
        single[name] = tmp_path / name
    out = tmp_path / "ens"
    assert predict_main([str(runs["a"]), str(runs["b"]), str(runs["raw"]), "-o", str(out),
                         "--save-probabilities"]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    cases = sorted(p.name for p in runs["raw"].iterdir() if p.is_dir())
    differ = 0.0
    for case in cases:
        pa, pb, pe = (np.load(d / f"{case}.npz")["probabilities"] for d in (single["a"], single["b"], out))
        np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-6)
        differ = max(differ, float(np.abs(pa - pb).max()))
    assert differ > 1e-3  # two different runs, not one run twice


@pytest.mark.slow
def test_eval_ensemble_writes_its_report_elsewhere(runs, tmp_path):
    """prism-eval --ensemble A B -o DIR: the report in DIR records the runs; the runs' folders are not written;
    its Dice per case equals that of the argmax of the two runs' mean probabilities, computed here."""
    from prism.evaluation.compare import load_report
    from prism.evaluation.metrics import mask_dice, region_masks, regions_for

    out = tmp_path / "ens"
    before = {n: sorted(p.name for p in runs[n].iterdir()) for n in ("a", "b")}
    assert eval_main(["--ensemble", str(runs["a"]), str(runs["b"]), "-o", str(out), "--no-hd95",
                      "--no-heatmap"]) == 0
    assert {n: sorted(p.name for p in runs[n].iterdir()) for n in ("a", "b")} == before
    report = load_report(out)
    assert report.settings["ensemble"] == [str(runs["a"]), str(runs["b"])]
    members = [load_run(runs[n]).model for n in ("a", "b")]
    reader = CacheReader(runs["cache"])
    try:
        case = report.case_ids[0]
        image, label = reader.read_case(case)
        masks = combination_masks(reader.modalities)
        available = torch.tensor(reader.info(case).availability)
        scored = ~(masks & ~available).any(1)
        probs = sum(torch.softmax(predict_logits(m, torch.from_numpy(image), masks[scored], device=CPU), 1)
                    for m in members) / 2
        p, g = region_masks(probs.argmax(1), torch.from_numpy(label), regions_for(reader.labels), len(reader.labels))
        expected = mask_dice(p, g).numpy()
    finally:
        reader.close()
    np.testing.assert_allclose(report.dice[0][scored.numpy()], expected, atol=1e-6)
    assert np.isnan(report.dice[0][~scored.numpy()]).all()


def _one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.mark.slow
def test_runs_that_differ_are_refused_in_one_line_naming_the_run(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict_main([str(runs["a"]), str(runs["other"]), str(runs["raw"]), "-o", str(out)]) == 2
    err = _one_line(capsys, "prism-predict")
    assert f"{runs['other']}: its classes" in err and str(runs["a"]) in err
    assert not out.exists()
    assert eval_main(["--ensemble", str(runs["a"]), str(runs["other"]), "-o", str(out)]) == 2
    assert f"{runs['other']}: its classes" in _one_line(capsys, "prism-eval")
    assert eval_main(["--ensemble", str(runs["a"]), str(runs["b"])]) == 2
    assert "--ensemble: needs -o DIR" in _one_line(capsys, "prism-eval")
    assert eval_main([str(runs["a"]), "--ensemble", str(runs["b"]), str(runs["b"]), "-o", str(out)]) == 2
    assert "not also RUN_DIR" in _one_line(capsys, "prism-eval")
    assert predict_main([str(runs["a"]), str(runs["b"]), str(runs["raw"]), "-o", str(out), "--adapt",
                         str(runs["raw"])]) == 2
    assert "--adapt: adapts one run" in _one_line(capsys, "prism-predict")
    assert not out.exists()


def test_one_run_loads_as_itself(runs):
    run = load_runs([runs["a"]])
    assert not isinstance(run.model, Ensemble)
    both = load_runs([runs["a"], runs["b"]])
    assert isinstance(both.model, Ensemble) and len(both.model.members) == 2
    assert both.config.train.seed == 0  # the first run's settings
