"""prism-export: ONNX and torch.export artifacts for a fixed modality set reproduce the eager model within the
stated tolerance (checked here again on a shape of their own), the card beside them says so, and mistakes are one
line with exit code 2 and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST
from prism.cli.export import main
from prism.cli.train import main as train_main
from prism.errors import ConfigError
from prism.export import PARITY_RTOL, ExportError, card_path, export_backbone
from prism.modalities import BRATS_MODALITIES
from prism.registry import get_registry

pytestmark = pytest.mark.slow  # each export traces the model (seconds on a CPU)


def _backbone(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_registry().create("backbone", name, BRATS_MODALITIES, 4, width=4, depth=3).eval()


def _runner(fmt: str, path: Path):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"image": x.numpy()})[0]
    module = torch.export.load(path).module()
    return lambda x: module(x).detach().numpy()


def _require(fmt: str) -> None:
    if fmt == "onnx":
        for name in ("onnx", "onnxruntime", "onnxscript"):
            pytest.importorskip(name, reason="the optional extra 'export' is not installed")


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("name", ["multi_unet", "rfnet"])
def test_exported_logits_match_the_eager_model(name, fmt, tmp_path):
    """FLAIR and T2 present: the artifact takes [B, 2, D, H, W]; on a batch of 3 and a shape not traced, its
    logits equal the eager model's on the full input with T1ce and T1 zeroed and masked out, within the card's
    tolerance; the card records a passed parity check and the input description."""
    _require(fmt)
    backbone = _backbone(name)
    path = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt2'}"
    card = export_backbone(backbone, path, fmt=fmt, modalities=["T2", "flair"])
    saved = json.loads(card_path(path).read_text())
    parity = saved["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= parity["tolerance"]
    assert parity["tolerance"] == pytest.approx(PARITY_RTOL * max(1.0, parity["max_abs_logit"]))
    assert saved["inputs"]["modalities"] == ["flair", "t2"]  # the run's channel order, not the order given
    assert saved["inputs"]["shape"] == ["B", 2, "D", "H", "W"] and saved["outputs"]["shape"][1] == 4
    assert card.format == fmt and saved["artifact"] == path.name
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, 12, 8, 16, generator=g)
    full = torch.zeros(3, 4, 12, 8, 16)
    full[:, 0], full[:, 3] = x[:, 0], x[:, 1]
    mask = torch.tensor([[True, False, False, True]]).expand(3, -1)
    with torch.no_grad():
        eager = backbone(full, mask).logits.numpy()
    got = _runner(fmt, path)(x)
    assert got.shape == eager.shape
    assert np.abs(got - eager).max() <= PARITY_RTOL * max(1.0, float(np.abs(eager).max()))


def test_a_failed_parity_check_writes_nothing(tmp_path, monkeypatch):
    import prism.export as export

    original = export._runner

    def off_by_one(fmt, path):
        run = original(fmt, path)
        return lambda x: run(x) + 1e-2

    monkeypatch.setattr(export, "_runner", off_by_one)
    path = tmp_path / "model.pt2"
    with pytest.raises(ExportError, match=r"parity check failed: .* > tolerance .*; nothing written"):
        export_backbone(_backbone("multi_unet"), path, fmt="torch-export")
    assert list(tmp_path.iterdir()) == []


def test_library_mistakes_are_config_errors(tmp_path):
    backbone = _backbone("multi_unet")
    with pytest.raises(ConfigError, match="--format: unknown format 'tflite'"):
        export_backbone(backbone, tmp_path / "m", fmt="tflite")
    with pytest.raises(ConfigError, match="--modalities: 'FLAIR' given twice"):
        export_backbone(backbone, tmp_path / "m", fmt="torch-export", modalities=["flair", "FLAIR"])
    with pytest.raises(ConfigError, match=r"spatial: \[6, 8, 8\] must be multiples of 4, at least 8"):
        export_backbone(backbone, tmp_path / "m", fmt="torch-export", spatial=(6, 8, 8))
    assert list(tmp_path.iterdir()) == []


# ---- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tiny_cache, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "run"
    assert train_main([*FAST, f"data.cache={tiny_cache}", "train.steps=1", "train.checkpoint_every=1",
                       "-o", str(folder), "--no-eval"]) == 0
    return folder


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("prism-export: error: "), err
    return err


def test_cli_exports_a_run_for_named_modalities(run, tiny_cache, tmp_path, capsys):
    from prism.data.cache_reader import CacheReader

    out = tmp_path / "flair_t1ce.pt2"
    assert main([str(run), "--format", "torch-export", "--modalities", "FLAIR", "T1ce", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "input [B, 2, D, H, W] (flair, t1ce)" in printed and "parity max |diff|" in printed
    card = json.loads(card_path(out).read_text())
    assert card["inputs"]["modalities"] == ["flair", "t1ce"] and card["inputs"]["absent_modalities"] == ["t1", "t2"]
    reader = CacheReader(tiny_cache)
    labels, label_map = dict(reader.labels), dict(reader.label_map or {})
    reader.close()
    assert card["classes"] == {str(k): v for k, v in labels.items()}
    raw = {stored: raw for raw, stored in sorted(label_map.items(), reverse=True)}  # the smallest raw value
    assert card["label_values"] == {str(k): raw.get(k, k) for k in labels}
    assert card["source"] == str(run) and card["parity"]["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flair_t1ce.pt2", "flair_t1ce.pt2.json"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--modalities", "FLAIR", "T3"], "--modalities: unknown modality 'T3'; the run's modalities: flair, t1ce, t1, t2"),
    (["--format", "keras"], "argument --format: invalid choice: 'keras'"),
], ids=["unknown-modality", "unknown-format"])
def test_cli_mistakes_are_one_line_exit_2_nothing_written(run, tmp_path, capsys, args, needle):
    out = tmp_path / "out" / "m.pt2"
    base = [str(run), "-o", str(out)] + ([] if "--format" in args else ["--format", "torch-export"])
    try:
        code = main([*base, *args])
    except SystemExit as exc:  # argparse's own errors (one line too, see OneLineParser)
        code = exc.code
    assert code == 2
    assert needle in _one_line(capsys)
    assert not (tmp_path / "out").exists()


def test_cli_names_the_extra_when_onnx_is_missing(run, tmp_path, capsys, monkeypatch):
    from importlib import metadata

    real = metadata.version

    def without_onnxruntime(name: str) -> str:
        if name == "onnxruntime":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", without_onnxruntime)
    out = tmp_path / "m.onnx"
    assert main([str(run), "--format", "onnx", "-o", str(out)]) == 2
    assert _one_line(capsys).endswith("--format onnx needs onnxruntime: pip install 'prism-seg[export]'")
    assert list(tmp_path.iterdir()) == []
