from pathlib import Path

import pytest
import yaml

from changedet.config import Config, build_config, list_presets, load_config, parse_set
from changedet.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _keys(node, prefix=""):
    out = set()
    for key, value in node.items():
        out |= _keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def test_default_yaml_equals_model_defaults():
    data = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    assert Config.model_validate(data) == Config()
    assert _keys(data) == _keys(Config().model_dump()), "default.yaml must list every key"


@pytest.mark.parametrize("name", ["vhr-0.5m", "highres-3m", "medium-10m"])
def test_presets_validate_and_differ_from_default(name):
    assert name in list_presets()
    cfg = load_config(preset=name)
    assert cfg != Config()


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("decide:\n  min_aera_m2: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'decide.min_aera_m2'") as err:
        load_config(f)
    assert str(f) in str(err.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"decide.min_area_m2"):
        build_config({"decide": {"min_area_m2": "big"}})


def test_set_parses_dotted_keys_and_yaml_values():
    assert parse_set("decide.min_area_m2=10") == {"decide": {"min_area_m2": 10}}
    assert parse_set("registration.enabled=false") == {"registration": {"enabled": False}}
    with pytest.raises(ConfigError):
        parse_set("novalue")


def test_precedence_default_preset_file_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: highres-3m\ndecide:\n  min_area_m2: 50\n  open_px: 2\n")
    cfg = load_config(f, sets=["decide.open_px=3"])
    assert cfg.objects.trench_min_length_m == load_config(preset="highres-3m").objects.trench_min_length_m
    assert cfg.decide.min_area_m2 == 50  # file beats preset
    assert cfg.decide.open_px == 3  # --set beats file
    assert cfg.measure == Config().measure  # untouched keys keep defaults


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="vhr-0.5m"):
        load_config(preset="nope")


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
