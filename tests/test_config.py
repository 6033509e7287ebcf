import pytest

from prism.config import build_config, load_yaml, parse_override
from prism.errors import ConfigError


def test_defaults_validate_and_overrides_apply():
    cfg = build_config(None, ["optim.lr=1e-3", "data.patch_size=[64, 64, 32]", "train.amp=none",
                              "model.options.width=16", "losses.0.weight=2"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.patch_size == (64, 64, 32)
    assert cfg.train.amp == "none" and cfg.model.options == {"width": 16} and cfg.losses[0].weight == 2.0


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.02\n  name: sgd\ntrain:\n  steps: 10\n")
    cfg = build_config(load_yaml(path), ["train.steps=20"], source=str(path))
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.steps) == ("sgd", 0.02, 20)
    assert cfg.optim.weight_decay == build_config().optim.weight_decay  # untouched fields keep defaults


@pytest.mark.parametrize("override, expected", [
    ("optim.lrr=1", "optim.lrr: unknown field; did you mean 'lr'? allowed: "),
    ("optim.name=adamax", "optim.name: Input should be 'adamw', 'adam' or 'sgd'"),
    ("train.steps=-3", "train.steps: Input should be greater than or equal to 1"),
    ("train.amp=fp8", "train.amp: Input should be 'bf16', 'fp16' or 'none'"),
    ("data.patch_size=[0,16,16]", "data.patch_size: Value error, every patch size must be positive"),
    ("trian.steps=3", "trian: unknown field; did you mean 'train'?"),
])
def test_mistakes_name_the_dotted_field(override, expected):
    with pytest.raises(ConfigError) as err:
        build_config(None, [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_syntax_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must look like field.sub=value"):
        parse_override("optim.lr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: line 2 invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)


def test_override_values_are_typed():
    assert parse_override("a.b=1e-3") == (["a", "b"], 1e-3)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=adamw") == (["a"], "adamw")
