"""`swiftdet demo [--output DIR]`: synthetic data, train a small Mask R-CNN on the CPU, evaluate, draw."""
from __future__ import annotations

import argparse

NAME = "demo"
HELP = "end-to-end demo: make a synthetic dataset, train a small Mask R-CNN on it, evaluate and draw predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR", default="swiftdet_demo",
                        help="folder for the data, the training run and the drawn predictions (default ./swiftdet_demo)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="changes to the demo's config (demo_mask_rcnn), e.g. solver.max_iter=300 for a quicker try")


def run(args: argparse.Namespace) -> int:
    from swiftdet.demo.app import run_demo

    result = run_demo(args.output, args.overrides)
    print(
        f"Demo done in {result.seconds / 60:.1f} min. Box AP {result.metrics.get('bbox/AP', float('nan')):.3f}, "
        f"mask AP {result.metrics.get('segm/AP', float('nan')):.3f}. Predictions: "
        f"{', '.join(str(p) for p in result.prediction_images[:2])}{' ...' if len(result.prediction_images) > 2 else ''}"
    )
    return 0
