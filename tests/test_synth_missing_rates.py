"""``prism-data synth --missing-rates``: a fixed, seeded availability per training case; other splits keep all
four modalities; mistakes are one line."""

from __future__ import annotations

import numpy as np
import pytest

from prism.cli.data import main as data_main
from prism.data.cache_reader import CacheReader

FLAIR, T1CE, T1, T2 = range(4)


def test_synth_missing_rates_draw_a_fixed_availability_per_training_case(tmp_path, capsys):
    path = tmp_path / "rates.h5"
    args = ["synth", "-o", str(path), "--cases", "40", "--shape", "8", "8", "8", "--test-fraction", "0.25",
            "--missing-rates", "0.6", "0.4", "0.2", "0.8"]
    assert data_main(args) == 0
    reader = CacheReader(path)
    train, test = reader.split("train"), reader.split("test")
    train_avail = np.array([reader.info(c).availability for c in train])  # [N, 4]: FLAIR, T1ce, T1, T2
    assert all(all(reader.info(c).availability) for c in test)  # evaluation cases keep every modality
    assert train_avail.any(axis=1).all() and not train_avail.all()
    # rarest T2, then FLAIR, T1ce, T1 (30 cases: the order of the four rates shows through the draw's noise)
    missing = 1 - train_avail.mean(axis=0)
    assert missing[T2] > missing[FLAIR] > missing[T1] and missing[T1CE] > missing[T1]
    assert reader.preprocessing["missing_rates"] == "flair=0.6,t1ce=0.4,t1=0.2,t2=0.8"
    reader.close()
    again = tmp_path / "again.h5"
    assert data_main([*args[:2], str(again), *args[3:]]) == 0
    reread = CacheReader(again)
    assert [reread.info(c).availability for c in train] == [tuple(row) for row in train_avail.tolist()]
    reread.close()
    capsys.readouterr()


@pytest.mark.parametrize("extra, message", [
    (["--missing-rates", "0.6", "0.4", "1.0", "0.8"], "missing rates: each must be in [0, 1)"),
    (["--missing-rates", "0.6", "0.4"], "argument --missing-rates: expected 4 arguments"),
    (["--missing-rates", "0.6", "0.4", "x", "0.8"], "argument --missing-rates: invalid float value: 'x'"),
    (["--missing-rates", "0.6", "0.4", "0.2", "0.8", "--nifti"], "--missing-rates: a NIfTI folder"),
])
def test_synth_missing_rates_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out.h5"
    try:
        code = data_main(["synth", "-o", str(out), "--cases", "4", "--shape", "8", "8", "8", *extra])
    except SystemExit as exc:  # argparse's own mistakes
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("prism-data") and ": error: " in err and "\n" not in err
    assert message in err
    assert list(tmp_path.iterdir()) == []
