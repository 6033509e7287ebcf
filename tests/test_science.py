"""On the synthetic data, a trained model's 15-combination table shows what real MRI shows."""

from __future__ import annotations

import numpy as np
import pytest

from prism.config import build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache
from prism.engine.trainer import Trainer


@pytest.mark.slow
def test_missing_t1ce_hurts_et_and_missing_flair_t2_hurts_wt(tmp_path):
    cache = tmp_path / "science.h5"
    write_synthetic_cache(str(cache), SynthSettings(cases=12, shape=(32, 32, 32), seed=11), test_fraction=0.34)
    config = build_config(None, [f"data.cache={cache}", "train.steps=150", "train.log_every=50", "eval.hd95=false",
                                 "train.checkpoint_every=1000", "data.foreground_fraction=0.5"])
    trainer = Trainer(config, tmp_path / "run", cache_path=cache)
    trainer.fit()
    report = trainer.evaluate()
    dice = report.mean_dice()  # [15, 3]: WT, TC, ET
    members = [set(name.split("+")) for name in report.combinations]
    with_t1ce = [i for i, m in enumerate(members) if "T1ce" in m]
    without_t1ce = [i for i, m in enumerate(members) if "T1ce" not in m]
    with_flair_or_t2 = [i for i, m in enumerate(members) if m & {"FLAIR", "T2"}]
    without_flair_t2 = [i for i, m in enumerate(members) if not m & {"FLAIR", "T2"}]
    et, wt = dice[:, 2], dice[:, 0]
    assert np.mean(et[with_t1ce]) > np.mean(et[without_t1ce]) + 0.05, dice
    assert np.mean(wt[with_flair_or_t2]) > np.mean(wt[without_flair_t2]) + 0.05, dice
