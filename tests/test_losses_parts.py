"""Open SegOutput parts: backbones declare extra parts, losses need them by name, the check suggests a provider."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from prism.cli import train as train_cli
from prism.errors import PluginError
from prism.outputs import SegOutput, split_parts, validate_parts
from prism.registry import get_registry, register
from prism.seams import check_provides_needs

EXTRA_NEEDS = {"rfnet_sep": {"sep"}, "shaspec_domain": {"domain_logits"}, "shaspec_consistency": {"shared"}}


@dataclass
class _WithExtra(SegOutput):
    aux: torch.Tensor | None = None


def test_extra_parts_are_read_by_name_and_listed_when_present():
    out = _WithExtra(logits=torch.zeros(1, 2, 1, 1, 1))
    assert out.part("aux") is None and out.present() == {"logits"}
    out.aux = torch.ones(1)
    assert out.part("aux") is out.aux and out.present() == {"logits", "aux"}
    assert out.part("uni") is None and out.part("present") is None and out.part("nonexistent") is None
    assert out.part_names()[:6] == ("logits", "deep", "uni", "uni_deep", "features", "uni_features")


def test_part_names_are_validated():
    assert validate_parts({"logits", "sep"}, "x") == {"logits", "sep"}
    for bad in ("present", "not-an-identifier", "_private"):
        with pytest.raises(PluginError, match=r"backbone 'b' declares invalid SegOutput part name"):
            validate_parts({bad}, "backbone 'b'")
    assert split_parts({"sep", "uni", "logits", "domain_logits"}) == (["logits", "uni"], ["domain_logits", "sep"])


@pytest.mark.parametrize(("loss", "needs"), sorted(EXTRA_NEEDS.items()))
def test_backbone_specific_terms_need_their_real_parts(loss, needs):
    assert get_registry().get("loss", loss).needs == frozenset(needs)


def test_builtin_backbones_declare_their_extra_parts():
    reg = get_registry()
    assert {"sep", "region0"} <= reg.get("backbone", "rfnet").provides
    assert {"shared", "fused", "domain_logits"} <= reg.get("backbone", "shaspec").provides
    assert "sep" not in reg.get("backbone", "unet").provides


def test_missing_extra_part_names_it_and_suggests_a_provider():
    candidates = {"a": {"logits"}, "b": {"logits", "sep"}, "c": {"logits", "sep", "uni"}}
    with pytest.raises(PluginError) as err:
        check_provides_needs("a", {"logits"}, "needs_sep", {"sep"}, candidates=candidates)
    msg = str(err.value)
    assert "\n" not in msg and "['sep']" in msg and "backbone 'a'" in msg and "model.name=b" in msg
    with pytest.raises(PluginError, match="no registered backbone provides them"):
        check_provides_needs("a", {"logits"}, "needs_x", {"x"}, candidates=candidates)
    check_provides_needs("b", {"logits", "sep"}, "needs_sep", {"sep"}, candidates=candidates)  # no error


def test_a_third_party_extra_part_is_suggested_from_the_registry():
    class WithAux(torch.nn.Module):
        provides = frozenset({"logits", "aux_map"})

    register("backbone", "with_aux", WithAux)
    with pytest.raises(PluginError, match=r"part\(s\) \['aux_map'\] .*model.name=with_aux"):
        check_provides_needs("unet", get_registry().get("backbone", "unet").provides, "reads_aux", {"aux_map"})


def test_unet_with_rfnet_sep_is_refused_before_the_first_step(capsys, tiny_cache, tmp_path):
    code = train_cli.main(["--data", str(tiny_cache), "-o", str(tmp_path / "r"), "model.name=unet",
                           "losses=[{name: fuse}, {name: rfnet_sep}]", "train.steps=1",
                           "data.patch_size=[16,16,16]"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "loss 'rfnet_sep' needs SegOutput part(s) ['sep']" in err and "backbone 'unet'" in err
    assert "model.name=rfnet" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def test_options_that_add_parts_are_checked_before_the_first_step(capsys, tiny_cache, tmp_path):
    """prism with separate=true reads RFNet's 'sep': the check uses the built term's needs, not the class's."""
    code = train_cli.main(["--data", str(tiny_cache), "-o", str(tmp_path / "r"), "model.name=multi_unet",
                           "losses=[{name: prism, options: {separate: true}}]", "train.steps=1",
                           "data.patch_size=[16,16,16]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "loss 'prism' needs SegOutput part(s) ['sep']" in err and "model.name=rfnet" in err
    assert not (tmp_path / "r").exists()


def test_rfnet_computes_sep_only_when_a_loss_reads_it():
    from prism.registry import create_backbone

    torch.manual_seed(0)
    model = create_backbone("rfnet", ("flair", "t1ce", "t1", "t2"), 3, width=4, depth=2).train()
    x, mask = torch.randn(1, 4, 8, 8, 8), torch.ones(1, 4, dtype=torch.bool)
    model.request_parts({"uni"})
    assert model(x, mask).sep is None
    model.request_parts({"sep"})
    out = model(x, mask)
    assert out.sep.shape == (1, 4, 3, 8, 8, 8) and out.uni is None and out.region0 is None
    model.request_parts({"region0", "uni"})
    out = model(x, mask)
    assert out.region0.shape == (1, 3, 8, 8, 8) and out.sep is None
    model.request_parts({"region0"})
    torch.testing.assert_close(model(x, mask).region0, out.region0)  # the fused path's map, with or without uni
