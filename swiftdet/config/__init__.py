"""Typed configuration: the schema (dataclasses) and the mechanism (load, override, validate, dump)."""
from swiftdet.config.core import (
    apply_overrides,
    config_from_dict,
    config_from_yaml,
    config_to_dict,
    config_to_yaml,
    list_config_names,
    load_config,
    validate_config,
)
from swiftdet.config.schema import Config

__all__ = [
    "Config",
    "apply_overrides",
    "config_from_dict",
    "config_from_yaml",
    "config_to_dict",
    "config_to_yaml",
    "list_config_names",
    "load_config",
    "validate_config",
]
