"""The config mechanism: named configs, overrides with type checks, nearest-key errors, round trip."""
from __future__ import annotations

import subprocess
import sys

import pytest

from swiftdet.cli.main import main
from swiftdet.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_from_yaml,
    config_to_dict,
    config_to_yaml,
    list_config_names,
    load_config,
    validate_config,
)
from swiftdet.errors import ConfigError

ISSUE_CONFIGS = [
    "faster_rcnn_R_50_FPN_1x",
    "faster_rcnn_R_50_FPN_3x",
    "faster_rcnn_R_101_FPN_3x",
    "faster_rcnn_X_101_32x8d_FPN_3x",
    "mask_rcnn_R_50_FPN_1x",
    "mask_rcnn_R_50_FPN_3x",
    "mask_rcnn_R_101_FPN_3x",
    "mask_rcnn_R_50_C4_1x",
    "faster_rcnn_R_50_FPN_v2",
    "mask_rcnn_R_50_FPN_v2",
]


@pytest.mark.parametrize("name", list_config_names())
def test_every_named_config_loads_validates_and_round_trips(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    again = validate_config(config_from_yaml(Config, config_to_yaml(cfg)))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_issue_configs_exist():
    assert set(ISSUE_CONFIGS) <= set(list_config_names())
    assert load_config("mask_rcnn_R_50_FPN_1x").model.mask_on
    assert not load_config("faster_rcnn_R_50_FPN_1x").model.mask_on
    x101 = load_config("faster_rcnn_X_101_32x8d_FPN_3x").model.backbone
    assert (x101.depth, x101.groups, x101.width_per_group) == (101, 32, 8)


def test_overrides_are_typed():
    cfg = load_config("faster_rcnn_R_50_FPN_1x", ["solver.base_lr=1e-3", "input.min_size_train=[600,700]",
                                                  "model.num_classes=3", "data.train.json=x.json", "solver.amp=bf16"])
    assert cfg.solver.base_lr == 1e-3 and isinstance(cfg.solver.base_lr, float)
    assert cfg.input.min_size_train == (600, 700)
    assert cfg.model.num_classes == 3
    assert cfg.data.train.json == "x.json"
    assert cfg.solver.amp == "bf16"
    # A scalar for a list-valued key is the one-element list.
    assert apply_overrides(cfg, ["input.min_size_train=512"]).input.min_size_train == (512,)
    # An int where a float is expected is fine; a str of a number for a str field too.
    assert apply_overrides(cfg, ["solver.base_lr=1"]).solver.base_lr == 1.0
    assert apply_overrides(cfg, ["output_dir=2024"]).output_dir == "2024"


@pytest.mark.parametrize(
    "override, words",
    [
        ("solver.base_lrr=0.1", ["solver.base_lrr", "solver.base_lr"]),
        ("modle.num_classes=3", ["modle.num_classes", "model.num_classes"]),
        ("solver.max_iter=ten", ["solver.max_iter", "int", "'ten'"]),
        ("solver.max_iter=1.5", ["solver.max_iter", "int"]),
        ("model.mask_on=3", ["model.mask_on", "bool"]),
        ("model.backbone.depth=51", ["model.backbone.depth", "50"]),
        ("model.backbone.norm=frozenbn", ["model.backbone.norm", "FrozenBN"]),
        ("model.backbone=1", ["model.backbone", "section"]),
        ("solver.base_lr", ["key.sub=value"]),
        ("model.num_classes.x=1", ["model.num_classes", "value"]),
        ("model.pixel_mean=[1,2]", ["model.pixel_mean"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    cfg = Config()
    with pytest.raises(ConfigError) as e:
        apply_overrides(cfg, [override])
    for w in words:
        assert w in str(e.value)


def test_validation_catches_inconsistent_values():
    with pytest.raises(ConfigError, match="solver.steps"):
        load_config("faster_rcnn_R_50_FPN_1x", ["solver.max_iter=100"])
    cfg = load_config("faster_rcnn_R_50_FPN_1x", ["solver.max_iter=100", "solver.steps=[]"])
    assert cfg.solver.steps == ()
    with pytest.raises(ConfigError, match="mask_on"):
        load_config("faster_rcnn_R_50_FPN_1x", ["model.arch=fcos", "model.mask_on=true"])
    with pytest.raises(ConfigError, match="num_classes"):
        load_config("faster_rcnn_R_50_FPN_1x", ["model.num_classes=-1"])  # 0 means: from the training data


def test_unknown_config_name_suggests_nearest():
    with pytest.raises(ConfigError) as e:
        load_config("mask_rcnn_R50_FPN_1x")
    assert "mask_rcnn_R_50_FPN_1x" in str(e.value)


def test_strict_dict_loading():
    with pytest.raises(ConfigError, match="model.backbone.dpth.*model.backbone.depth"):
        config_from_dict(Config, {"model": {"backbone": {"dpth": 50}}})
    with pytest.raises(ConfigError, match="model.num_classes"):
        config_from_dict(Config, {"model": {"num_classes": "eighty"}})


def test_user_python_config_file(tmp_path):
    path = tmp_path / "my_cfg.py"
    path.write_text(
        "from swiftdet.configs._base import rcnn_fpn\n"
        "def config():\n"
        "    cfg = rcnn_fpn(mask=True)\n"
        "    cfg.model.num_classes = 7\n"
        "    return cfg\n"
    )
    cfg = load_config(str(path), ["model.backbone.depth=18"])
    assert cfg.model.num_classes == 7 and cfg.model.backbone.depth == 18
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert config_to_dict(load_config(str(saved))) == config_to_dict(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.py"))


def test_cli_config_prints_yaml_and_errors_without_traceback(capsys):
    assert main(["config", "mask_rcnn_R_50_FPN_1x", "model.num_classes=3"]) == 0
    out = capsys.readouterr().out
    assert "num_classes: 3" in out and "mask_on: true" in out
    assert main(["config", "mask_rcnn_R_50_FPN_1x", "solver.bse_lr=1"]) == 2
    err = capsys.readouterr().err
    assert "solver.base_lr" in err and "Traceback" not in err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "swiftdet.cli.main", "config", "--list"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "mask_rcnn_R_50_FPN_1x" in proc.stdout.split()
