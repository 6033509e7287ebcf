"""Dataset descriptions read like configs, and modality files found through symbolic links."""

from __future__ import annotations

import pytest

from prism.data_tools.layouts import find_file, layout_from_description
from prism.errors import DataError


def test_a_full_description_reads_with_every_key(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text('name: lesions\nmodalities: {flair: "{case}_FLAIR.nii.gz", t1: ["{case}_T1.nii.gz", '
                    '"{case}_t1.nii"]}\nlabel: "{case}_mask.nii.gz"\nlabels: {0: background, 1: lesion}\n'
                    "label_map: {0: 0, 255: 1}\nsite_file: centres.csv\n")
    layout = layout_from_description(path)
    assert layout.name == "lesions" and layout.modalities == ("flair", "t1")
    assert layout.files["t1"] == ("{case}_T1.nii.gz", "{case}_t1.nii")
    assert layout.label_map == {0: 0, 255: 1} and layout.site_file == "centres.csv"


@pytest.mark.parametrize("key, close", [("labelmap", "label_map"), ("sitefile", "site_file"),
                                        ("modality", "modalities"), ("lables", "labels")])
def test_misspelt_keys_are_errors_naming_the_closest_key(tmp_path, key, close):
    path = tmp_path / "d.yaml"
    path.write_text(f'modalities: {{flair: "{{case}}_f.nii.gz"}}\nlabel: "{{case}}_seg.nii.gz"\n{key}: x\n')
    with pytest.raises(DataError, match=rf"d\.yaml: {key}: unknown key; did you mean '{close}'\?"):
        layout_from_description(path)


def test_a_valid_symbolic_link_is_followed_and_a_broken_one_named(tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "volume.nii.gz"
    real.write_bytes(b"x")
    (tmp_path / "c1_flair.nii.gz").symlink_to(real)
    assert find_file(tmp_path, "c1", ("{case}_flair.nii.gz",)) == tmp_path / "c1_flair.nii.gz"
    assert find_file(tmp_path, "c1", ("{case}_t2.nii.gz",)) is None  # absent: a missing modality
    real.unlink()
    with pytest.raises(DataError, match=r"case c1: .*c1_flair\.nii\.gz is a symbolic link to a missing file"):
        find_file(tmp_path, "c1", ("{case}_flair.nii.gz",))
