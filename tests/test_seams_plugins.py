"""A third party's plugins with planted mistakes (tests/planted_plugins.py, installed as the distribution
``prism-planted``), trained with ``prism-train``: each mistake is reported in one header line naming the plugin
that made it (kind, name, distribution, version), with exit code 1 for a bug (its traceback after the line) or 2
for a user mistake (one line only), before any checkpoint or log of the run changes.

Resumed runs: a run of prism's own plugins trains 2 steps and checkpoints; it is resumed with the planted plugin
in its place, which fails in the first step of the resumed process; ``last.pt`` and ``train_log.csv`` must be
byte for byte what they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import planted_plugins
import pytest

from prism.cli.train import main as train_main
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.registry import reset_registry

PLANTED = f"({planted_plugins.DISTRIBUTION} {planted_plugins.VERSION})"
SMALL = ["data.patch_size=[16,16,16]", "data.batch_size=2", "train.threads=1", "train.deterministic=true",
         "train.log_every=1", "train.checkpoint_every=2", "train.loggers=[csv]"]
BASE = ["model.options.width=4", "model.options.depth=3", *SMALL]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_plugins.install(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training cases that lack modalities, so a mask marking an absent one is seen in the first batch."""
    path = tmp_path_factory.mktemp("cache") / "missing.h5"
    write_synthetic_cache(str(path), SynthSettings(cases=6, shape=(24, 24, 24), seed=3), test_fraction=0.34,
                          missing_rates="flair=0.9,t1ce=0.9,t1=0.9")
    return path


@pytest.fixture
def planted(site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    return site


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A run of prism's own plugins, 2 steps, checkpointed at step 2."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert train_main(["--data", str(cache), "-o", str(run), "--no-eval", *BASE, "train.steps=2"]) == 0
    return run


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("prism-train: error:", "prism-eval: error:"))]


def run_files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("last.pt", "train_log.csv")}


def check_failure(stderr: str, code: int, expected_code: int, header: str, fragment: str) -> str:
    lines = error_lines(stderr)
    assert code == expected_code, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"prism-train: error: {header}"), line
    assert fragment in line, line
    if expected_code == 1:
        assert line.endswith("; its traceback follows") and "Traceback" in stderr
    else:
        assert stderr.strip().splitlines()[-1] == line  # one line, no traceback
    return line


#: (override, expected exit code, header (the plugin named first), fragment of the same line)
RESUMED = [
    # the strategy's step() return value
    ("strategy.name=planted_returns_tensor", 1, f"meta-strategy 'planted_returns_tensor' {PLANTED} ",
     "returned Tensor float32 [] on cpu from step(); expected a dict of named scalar tensors holding 'loss'"),
    ("strategy.name=planted_returns_float", 1, f"meta-strategy 'planted_returns_float' {PLANTED} ",
     "returned float from step()"),
    ("strategy.name=planted_returns_none", 1, f"meta-strategy 'planted_returns_none' {PLANTED} ",
     "returned None from step()"),
    ("strategy.name=planted_returns_list", 1, f"meta-strategy 'planted_returns_list' {PLANTED} ",
     "returned list of 1 from step()"),
    ("strategy.name=planted_returns_no_loss", 1, f"meta-strategy 'planted_returns_no_loss' {PLANTED} ",
     "returned a dict without 'loss' from step() (keys ['total'])"),
    # state dicts a checkpoint cannot store
    ("strategy.name=planted_state_numpy", 1, f"meta-strategy 'planted_state_numpy' {PLANTED} ",
     "returned a state_dict() that a weights-only checkpoint cannot store"),
    ("masking.train.name=planted_mask_object_state", 1, f"masking policy 'planted_mask_object_state' {PLANTED} ",
     "cannot store (it holds object)"),
    ("losses=[{name: planted_loss_numpy_state}]", 1, f"loss 'planted_loss_numpy_state' {PLANTED} ",
     "cannot store"),
    # the masking policy's mask
    ("masking.train.name=planted_mask_all_off", 1, f"masking policy 'planted_mask_all_off' {PLANTED} ",
     "returned a mask with no modality in row(s) [0, 1]"),
    ("masking.train.name=planted_mask_absent_on", 1, f"masking policy 'planted_mask_absent_on' {PLANTED} ",
     "marked an unavailable modality as available"),
    ("masking.train.name=planted_mask_float", 1, f"masking policy 'planted_mask_float' {PLANTED} ",
     "returned a float32 mask; expected torch.bool"),
    ("masking.train.name=planted_mask_wide", 1, f"masking policy 'planted_mask_wide' {PLANTED} ",
     "returned a mask of shape [2, 5] for availability [2, 4]"),
    # the loss's value
    ("losses=[{name: planted_loss_float}]", 1, f"loss 'planted_loss_float' {PLANTED} ",
     "returned a total of float; expected a floating scalar tensor"),
    ("losses=[{name: planted_loss_vector}]", 1, f"loss 'planted_loss_vector' {PLANTED} ",
     "returned a total of Tensor float32 [2] on cpu; expected a floating scalar tensor"),
    ("losses=[{name: planted_loss_nan}]", 1, f"loss 'planted_loss_nan' {PLANTED} ",
     "returned a non-finite total (nan) for finite inputs"),
    # an exception inside a plugin the standard strategy calls is blamed on that plugin
    ("masking.train.name=planted_mask_raises", 1,
     f"masking policy 'planted_mask_raises' {PLANTED} from plugin 'planted_masking' raised IndexError",
     "while running step 3 (called by meta-strategy 'standard' (prism-seg"),
    ("losses=[{name: planted_loss_raises}]", 1,
     f"loss 'planted_loss_raises' {PLANTED} from plugin 'planted_losses' raised ValueError",
     "while running step 3 (called by meta-strategy 'standard' (prism-seg"),
    # user mistakes in a plugin's options: one line, exit 2
    ("losses=[{name: planted_loss, options: {strictness: 9}}]", 2, f"loss 'planted_loss' {PLANTED}: ",
     "strictness=9 is not allowed here"),
    ("strategy.name=planted_strategy", 2, f"meta-strategy 'planted_strategy' {PLANTED}: ",
     "strictness: at most 3, got 5"),
]
IDS = [case[0].split("=", 1)[1].strip("[]{} ").removeprefix("name: ").split(",")[0] for case in RESUMED]


@pytest.mark.slow
@pytest.mark.parametrize("override, code, header, fragment", RESUMED, ids=IDS)
def test_planted_mistake_in_a_resumed_run_is_named_and_changes_no_run_file(
        planted, trained, cache, tmp_path, capsys, override, code, header, fragment):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = run_files(run)
    extra = ["strategy.options={strictness: 5}"] if override == "strategy.name=planted_strategy" else []
    got = train_main(["--resume", str(run), "train.steps=4", override, *extra])
    check_failure(capsys.readouterr().err, got, code, header, fragment)
    assert run_files(run) == before  # the checkpoint and the log are what they were


@pytest.mark.slow
def test_a_plugins_own_frames_stay_in_the_traceback(planted, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert train_main(["--resume", str(run), "train.steps=4", "losses=[{name: planted_loss_raises}]"]) == 1
    err = capsys.readouterr().err
    assert 'prism_planted/core.py", line' in err and "planted failure inside the loss" in err
    assert err.rstrip().splitlines()[-1] == "ValueError: planted failure inside the loss"


#: fresh runs of a planted backbone: (override, header, fragment)
BACKBONES = [
    ("model.name=planted_net_raises", f"backbone 'planted_net_raises' {PLANTED} from plugin 'planted_backbones' "
     "raised RuntimeError", "while running step 1 (called by meta-strategy 'standard' (prism-seg"),
    ("model.name=planted_net_tensor", f"backbone 'planted_net_tensor' {PLANTED} ",
     "returned Tensor float32 [2, 4, 16, 16, 16] on cpu; expected a prism.outputs.SegOutput"),
    ("model.name=planted_net_wrong_shape", f"backbone 'planted_net_wrong_shape' {PLANTED} ",
     "returned part 'logits' of shape [2, 1, 16, 16, 16]; expected [2, 4, 16, 16, 16]"),
    ("model.name=planted_net_nan", f"backbone 'planted_net_nan' {PLANTED} ",
     "returned non-finite logits for a finite input"),
    ("model.name=planted_net_no_uni", f"backbone 'planted_net_no_uni' {PLANTED} ",
     "returned no ['uni'] (present: ['logits']) although the losses need them and its provides declares them"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override, header, fragment", BACKBONES, ids=[b[0].rsplit("_", 1)[-1] for b in BACKBONES])
def test_planted_backbone_mistake_is_named_before_the_first_checkpoint(planted, cache, tmp_path, capsys, override,
                                                                       header, fragment):
    run = tmp_path / "run"
    losses = "losses=[{name: planted_needs_uni}]" if override.endswith("no_uni") else "losses=[{name: planted_loss}]"
    got = train_main(["--data", str(cache), "-o", str(run), "--no-eval", *SMALL, "train.steps=2", override, losses])
    check_failure(capsys.readouterr().err, got, 1, header, fragment)
    assert not (run / "last.pt").exists()


@pytest.mark.slow
def test_option_names_like_prisms_own_words_are_plain_options(planted, cache, tmp_path, capsys):
    run = tmp_path / "run"
    options = "model.options={kind: wide, name: mine, field_name: 2}"
    assert train_main(["--data", str(cache), "-o", str(run), "--no-eval", *SMALL, "train.steps=1",
                       "model.name=planted_net", options, "losses=[{name: planted_loss}]"]) == 0
    bad = train_main(["--data", str(cache), "-o", str(tmp_path / "bad"), "--no-eval", *SMALL,
                      "model.name=planted_net", "model.options={field_name: 0}"])
    line = check_failure(capsys.readouterr().err, bad, 2, f"model.options.field_name: backbone 'planted_net' {PLANTED}",
                         "Input should be greater than or equal to 1 (got 0)")
    assert "\n" not in line and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_backbone_raising_while_a_run_is_evaluated_is_named(planted, cache, tmp_path, capsys):
    from prism.cli.evaluate import main as eval_main

    run = tmp_path / "run"
    assert train_main(["--data", str(cache), "-o", str(run), "--no-eval", *SMALL, "train.steps=1",
                       "model.name=planted_net_raises_in_eval", "losses=[{name: planted_loss}]"]) == 0
    capsys.readouterr()
    assert eval_main([str(run), "--max-cases", "1"]) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"prism-eval: error: backbone 'planted_net_raises_in_eval' {PLANTED} from plugin "
                                "'planted_backbones' raised RuntimeError; its traceback follows"]
    assert "planted failure inside the backbone's forward" in err
