"""The one config mechanism: nested dataclasses, strictly typed, overridable by dotted keys.

A config is an instance of :class:`swiftdet.config.schema.Config`. Named configs are Python files
under ``swiftdet/configs/`` (or any ``.py`` file a user writes) that define ``config() -> Config``,
usually by calling a base and changing fields. Command-line overrides are ``key.sub=value`` strings;
values are parsed as YAML scalars/lists and then checked against the field's type annotation. Any
unknown key is an error naming the nearest valid key (also a field a .py config sets that does not
exist), and every value is type- and range-checked (ranges: :mod:`swiftdet.config.types`), so a typo
can never be silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import traceback
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

from swiftdet.config.types import Range
from swiftdet.errors import ConfigError

__all__ = [
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "config_from_yaml",
    "list_config_names",
    "load_config",
    "validate_config",
]

_CONFIG_PACKAGE = "swiftdet.configs"
_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


# ----------------------------------------------------------------------------------------------
# Type checking and coercion
# ----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        return " ".join([_type_name(base), *(str(e) for e in extras if isinstance(e, Range))])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "list of " + str(len(args)) + " (" + ", ".join(_type_name(a) for a in args) + ")"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)

    def fail() -> ConfigError:
        return ConfigError(
            f"Config key '{key}' expects {_type_name(tp)}, got {value!r} ({type(value).__name__})."
        )

    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = get_args(tp)
        value = _coerce(value, base, key)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, key)
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        choices = get_args(tp)
        if value in choices and not (isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Config key '{key}' must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.{hint}"
        )
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            # A scalar for a variable-length tuple is the common one-element case (e.g. one train size).
            if len(args) == 2 and args[1] is Ellipsis:
                value = [value]
            else:
                raise fail()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail()
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return config_from_dict(tp, value, prefix=key)
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" as a string; a float field should still accept it.
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        # "output_dir=2024" arrives as an int from YAML; a str field takes its text.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail()
    raise TypeError(f"Unsupported config field type {tp!r} at '{key}'")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)  # keep Annotated ranges


def _nearest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.0)
    return f" Did you mean '{close[0]}'?" if close else ""


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        tp = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, full + "."))
    return keys


# ----------------------------------------------------------------------------------------------
# dict / yaml round trip
# ----------------------------------------------------------------------------------------------
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), suitable for YAML/JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, strictly: unknown keys and bad types are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"Config section '{prefix or '<root>'}' must be a mapping, got {type(data).__name__}.")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            raise ConfigError(
                f"Unknown config key '{full}'.{_nearest(full, [f'{prefix}.{n}' if prefix else n for n in names])}"
            )
        kwargs[k] = _coerce(v, hints[k], full)
    return cls(**kwargs)


def config_to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def config_from_yaml(cls: type, text_or_path: str | Path) -> Any:
    path = Path(text_or_path)
    is_file = path.suffix in (".yaml", ".yml") and path.is_file()
    text = path.read_text() if is_file else str(text_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{'Config file ' + repr(str(path)) if is_file else 'Config YAML'} is not valid YAML{where}: "
                          f"{problem}.") from None
    return config_from_dict(cls, data or {})


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------
def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() != "" else ""
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Apply ``key.sub=value`` strings to ``cfg`` in place, type-checked; returns ``cfg``."""
    root_cls = type(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key.sub=value.")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node = cfg
        for i, part in enumerate(parts):
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"Config key '{'.'.join(parts[:i])}' is a value, not a section; cannot set '{key}'.")
            hints = _field_types(type(node))
            if part not in hints:
                raise ConfigError(f"Unknown config key '{key}'.{_nearest(key, _all_keys(root_cls))}")
            if i == len(parts) - 1:
                tp = hints[part]
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(
                        f"Config key '{key}' is a section; set one of its fields, e.g. '{key}.{dataclasses.fields(tp)[0].name}=...'."
                    )
                setattr(node, part, _coerce(_parse_value(text), tp, key))
            else:
                node = getattr(node, part)
    return cfg


# ----------------------------------------------------------------------------------------------
# Validation: every field has its declared type, then each section's own checks
# ----------------------------------------------------------------------------------------------
def validate_config(cfg: Any, prefix: str = "") -> Any:
    """Type-check every field recursively and call each section's ``validate()`` if it has one."""
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(cfg, f.name)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"Config key '{key}' must be a {tp.__name__}, got {type(value).__name__}.")
            validate_config(value, key)
        else:
            setattr(cfg, f.name, _coerce(value, tp, key))
    check = getattr(cfg, "validate", None)
    if callable(check):
        check()
    return cfg


# ----------------------------------------------------------------------------------------------
# Named configs
# ----------------------------------------------------------------------------------------------
def list_config_names() -> list[str]:
    """Names of the built-in configs (files under swiftdet/configs not starting with '_')."""
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Load a built-in config by name or a user's ``.py`` config file, apply overrides, validate.

    The file must define ``config()`` returning a :class:`~swiftdet.config.schema.Config`.
    """
    path = Path(name_or_path)
    if name_or_path.endswith(".py"):
        if not path.is_file():
            raise ConfigError(f"Config file '{name_or_path}' does not exist.")
        spec = importlib.util.spec_from_file_location(f"swiftdet_user_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        origin = str(path)
        _run_user_code(origin, lambda: spec.loader.exec_module(module))
    elif name_or_path.endswith((".yaml", ".yml")):
        from swiftdet.config.schema import Config

        if not path.is_file():
            raise ConfigError(f"Config file '{name_or_path}' does not exist.")
        cfg = config_from_yaml(Config, path)
        return validate_config(apply_overrides(cfg, overrides))
    else:
        names = list_config_names()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
            hint = f" Nearest: {', '.join(close)}." if close else ""
            raise ConfigError(
                f"No config named '{name_or_path}'.{hint} Built-in configs: {', '.join(names)}. "
                "A path to your own .py (defining config()) or a saved config.yaml also works."
            )
        module = importlib.import_module(f"{_CONFIG_PACKAGE}.{name_or_path}")
        origin = name_or_path
    make = getattr(module, "config", None)
    if not callable(make):
        raise ConfigError(f"Config '{origin}' defines no function config() returning a Config.")
    from swiftdet.config.schema import Config

    cfg = _run_user_code(origin, make)
    if not isinstance(cfg, Config):
        raise ConfigError(
            f"config() of '{origin}' returned {type(cfg).__name__}, not a Config"
            + (" (a missing `return cfg`?)." if cfg is None else ".")
        )
    return validate_config(apply_overrides(cfg, overrides))


def _run_user_code(origin: str, run: Any) -> Any:
    """Run a config file's code; its errors become a ConfigError naming the file and line (a
    ConfigError it raises, e.g. for an unknown field, passes through as it is)."""
    try:
        return run()
    except ConfigError:
        raise
    except SyntaxError as error:
        raise ConfigError(f"Config file '{error.filename or origin}' has a syntax error at line {error.lineno}: "
                          f"{error.msg}.") from None
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == origin or
                  Path(f.filename).stem == Path(origin).stem]
        where = f" at line {frames[-1].lineno}" if frames else ""
        raise ConfigError(f"Config '{origin}' failed{where}: {type(error).__name__}: {error}") from None
