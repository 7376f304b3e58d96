"""Every numeric config field declares its range and a value outside it is refused at load time;
a config file cannot set a field that does not exist; broken config files end in one ConfigError.
(Issue 16, points 6 and 9: typos and nonsensical values that were silently kept and crashed later.)"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Annotated, get_args, get_origin

import pytest

from swiftdet.cli.main import main
from swiftdet.config import Config, load_config
from swiftdet.config.types import Range
from swiftdet.errors import ConfigError

BASE = "mask_rcnn_R_50_FPN_1x"


def _numeric_fields(cls: type = Config, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, annotation) of every field holding numbers (alone or in tuples)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls, include_extras=True)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out.extend(_numeric_fields(tp, key + "."))
        elif _leaves(tp):
            out.append((key, tp))
    return out


def _leaves(tp) -> list:
    """The scalar numeric annotations inside ``tp`` (Literal choices are not free numbers)."""
    origin = get_origin(tp)
    if origin is Annotated or tp in (int, float):
        base = get_args(tp)[0] if origin is Annotated else tp
        return [tp] if base in (int, float) else []
    if origin is tuple:
        return [leaf for arg in get_args(tp) if arg is not Ellipsis for leaf in _leaves(arg)]
    return []


def _range(tp) -> Range | None:
    return next((e for e in get_args(tp)[1:] if isinstance(e, Range)), None) if get_origin(tp) is Annotated else None


def _bad_scalar(tp) -> object:
    r = _range(tp)
    base = get_args(tp)[0]
    if r.low is not None:
        below = r.low if r.low_open else r.low - 1
        return int(below) if base is int else float(below) - (0.5 if not r.low_open else 0.0)
    if r.high is not None:
        return r.high + 1
    return math.inf


def _bad_value(tp, default) -> str:
    """A YAML value of the right shape with one entry out of range."""
    if get_origin(tp) is tuple:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        value = list(default) if default else [None]
        if get_origin(args[0]) is tuple:  # anchor sizes: a tuple of tuples
            return f"[[{_bad_scalar(get_args(args[0])[0])}]]"
        value = [v if v is not None else 1 for v in value]
        value[0] = _bad_scalar(args[0])
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(_bad_scalar(tp))


FIELDS = _numeric_fields()


def test_the_schema_has_numeric_fields_to_check():
    keys = {k for k, _ in FIELDS}
    assert {"solver.log_period", "solver.checkpoint_period", "test.ims_per_batch", "solver.base_lr"} <= keys
    assert len(FIELDS) > 60


@pytest.mark.parametrize("key,tp", FIELDS, ids=[k for k, _ in FIELDS])
def test_every_numeric_field_has_a_range_and_refuses_values_outside_it(key, tp):
    leaves = _leaves(tp)
    assert all(_range(leaf) is not None for leaf in leaves), f"{key}: annotate its range (swiftdet.config.types)"
    default = load_config(BASE)
    for part in key.split("."):
        default = getattr(default, part)
    bad = _bad_value(tp, default)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(BASE, [f"{key}={bad}"])


@pytest.mark.parametrize("override", ["solver.log_period=0", "solver.checkpoint_period=0", "test.ims_per_batch=0",
                                      "solver.base_lr=inf", "solver.base_lr=.nan"])
def test_the_reported_values_are_refused_with_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(BASE, [override])


def test_defaults_and_every_named_config_are_inside_the_ranges():
    from swiftdet.config import list_config_names

    for name in list_config_names():
        load_config(name)


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("line,key,nearest", [
    ("cfg.solver.bse_lr = 0.5", "solver.bse_lr", "base_lr"),
    ("cfg.model.num_clases = 3", "model.num_clases", "num_classes"),
    ("cfg.model.rpn.anchors.size = ((8.0,),)", "model.rpn.anchors.size", "sizes"),
])
def test_a_typo_in_a_py_config_is_an_error_with_the_nearest_name(tmp_path, line, key, nearest):
    path = _write(tmp_path, "typo.py", f"from swiftdet.configs.{BASE} import config as base\n\n\n"
                                       f"def config():\n    cfg = base()\n    {line}\n    return cfg\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        load_config(path)
    assert f"Did you mean '{nearest}'" in str(info.value)


def test_fields_that_exist_are_still_set_and_copies_work():
    import copy

    cfg = load_config(BASE)
    cfg.solver.base_lr = 0.5
    clone = copy.deepcopy(cfg)
    assert clone.solver.base_lr == 0.5 and dataclasses.replace(cfg.solver, max_iter=7).max_iter == 7


@pytest.mark.parametrize("name,text,expected", [
    ("none.py", "def config():\n    pass\n", "returned NoneType, not a Config"),
    ("syntax.py", "def config(:\n    return 1\n", "syntax error at line 1"),
    ("raises.py", "def config():\n    return undefined_name\n", "failed at line 2: NameError"),
    ("nofunc.py", "x = 1\n", "defines no function config()"),
    ("broken.yaml", "model:\n  num_classes: [3\n", "is not valid YAML at line"),
])
def test_broken_config_files_end_in_one_clear_error(tmp_path, capsys, name, text, expected):
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
    # On the command line: exit code 2 and one message, no traceback.
    assert main(["config", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("swiftdet: error:") and "Traceback" not in err
