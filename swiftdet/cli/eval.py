"""`swiftdet eval CONFIG --weights W [key=value ...] [--output DIR]`."""
from __future__ import annotations

import argparse

from swiftdet.cli.options import add_precision_argument
from swiftdet.config.core import load_config

NAME = "eval"
HELP = ("evaluate a trained model file on the config's test set (COCO box/mask/keypoint AP; an RPN-only model, "
        "model.arch=rpn: detectron2's proposal AR@100/1000)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG",
                        help="built-in config name, a .py config file or a run's config.yaml (OUTPUT/config.yaml of "
                             "swiftdet train)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.test.json=...")
    parser.add_argument("--weights", required=True, metavar="W",
                        help="model file (.pth) written by swiftdet train (OUTPUT/model_final.pth, or a checkpoint: "
                             "checkpoints/last.pth, best.pth, model_*.pth); the model and input settings it stores take "
                             "precedence over CONFIG's (said when they differ), KEY=VALUE overrides win over both")
    parser.add_argument("--output", metavar="DIR", default=None, help="also append the metrics to DIR/metrics.jsonl")
    add_precision_argument(parser)


def run(args: argparse.Namespace) -> int:
    import os

    from swiftdet.engine.run import run_evaluation
    from swiftdet.weights.checkpoint import config_for_weights

    cfg = load_config(args.config, args.overrides)
    # A run's checkpoint is evaluated with its own model and test settings (the overrides still apply).
    cfg, note = config_for_weights(cfg, args.weights, args.overrides)
    if note and os.environ.get("RANK", "0") == "0":  # once, not from every torchrun process
        print(note)
    run_evaluation(cfg, args.weights, output_dir=args.output, precision=args.precision)
    return 0
