"""prism as a library prints nothing: importing it and training from Python is silent until the application
configures logging; prism-train shows the same lines through its logging handler."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest

from conftest import FAST
from prism.cli.train import main as train_main

SCRIPT = """
import logging, sys
if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from prism.config import build_config
from prism.engine.trainer import Trainer
overrides = {fast!r} + ["train.steps=2", "train.loggers=[csv]", "data.cache=" + sys.argv[1]]
trainer = Trainer(build_config(None, overrides), sys.argv[3], cache_path=sys.argv[1])
trainer.fit()
trainer.close()
"""


def _train_from_python(cache, run, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # third-party warnings are not prism's output
    return subprocess.run([sys.executable, "-c", SCRIPT.format(fast=FAST), str(cache), mode, str(run)],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_training_from_python_prints_nothing_unless_logging_is_configured(tiny_cache, tmp_path):
    silent = _train_from_python(tiny_cache, tmp_path / "a", "silent")
    assert silent.returncode == 0, silent.stderr
    assert silent.stdout == "" and silent.stderr == ""
    configured = _train_from_python(tiny_cache, tmp_path / "b", "configured")
    assert configured.returncode == 0, configured.stderr
    lines = configured.stderr.strip().splitlines()
    assert lines[-1].startswith("prism.engine.progress: step 2/2  loss ")


def test_importing_prism_adds_only_a_null_handler():
    import logging

    import prism

    handlers = logging.getLogger(prism.__name__).handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


@pytest.mark.slow
def test_prism_train_prints_one_line_per_log_interval_when_not_on_a_terminal(tiny_cache, tmp_path, capsys):
    assert train_main(["--data", str(tiny_cache), "-o", str(tmp_path / "run"), "--no-eval", *FAST,
                       "train.loggers=[csv]"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"run folder: {tmp_path / 'run'}  device: cpu  strategy: standard")
    pattern = re.compile(r"^step (\d)/6  loss \d+\.\d{4}  \d+\.\d (samples/s|s/sample)  ETA \d+:\d\d:\d\d$")
    steps = [int(m.group(1)) for line in lines[1:] if (m := pattern.match(line))]
    assert steps == [2, 4, 6] and len(lines) == 4
    assert err == ""


@pytest.mark.slow
def test_the_deprecated_step_name_warns(tiny_cache, tmp_path):
    from conftest import fast_config
    from prism.engine.trainer import Trainer

    trainer = Trainer(fast_config("train.steps=1", cache=tiny_cache), tmp_path / "run", cache_path=tiny_cache)
    ctx = trainer.ctx
    loss, _ = ctx.compute_loss(ctx.next_batch())
    ctx.backward(loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx.clip_and_step()
    trainer.close()
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "clip_and_step is deprecated; call optimizer_step" in str(caught[0].message)
