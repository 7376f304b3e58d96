"""`swiftdet config NAME [key=value ...]`: print a resolved config (or list the built-in ones)."""
from __future__ import annotations

import argparse

from swiftdet.config import config_to_yaml, list_config_names, load_config

NAME = "config"
HELP = "print a resolved config as YAML, or list the built-in configs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="built-in config name, a .py config file, or a saved config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.01")
    parser.add_argument("--list", action="store_true", help="list the built-in config names")


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        print("\n".join(list_config_names()))
        return 0
    print(config_to_yaml(load_config(args.name, args.overrides)), end="")
    return 0
