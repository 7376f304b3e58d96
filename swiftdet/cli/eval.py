"""`swiftdet eval CONFIG --weights W [key=value ...] [--output DIR]`."""
from __future__ import annotations

import argparse

from swiftdet.config.core import load_config

NAME = "eval"
HELP = "evaluate a trained model file on the config's test set (COCO box/mask/keypoint AP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="built-in config name, a .py config file or a run's config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.test.json=...")
    parser.add_argument("--weights", required=True, metavar="W", help="model file (.pth) written by swiftdet train")
    parser.add_argument("--output", metavar="DIR", default=None, help="also append the metrics to DIR/metrics.jsonl")


def run(args: argparse.Namespace) -> int:
    from swiftdet.engine.run import run_evaluation

    cfg = load_config(args.config, args.overrides)
    run_evaluation(cfg, args.weights, output_dir=args.output)
    return 0
