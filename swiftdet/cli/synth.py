"""`swiftdet synth OUT_DIR --images N`: write the synthetic shapes dataset in COCO format."""
from __future__ import annotations

import argparse

from swiftdet.demo.synth import SYNTH_SHAPES, generate_synthetic_coco
from swiftdet.errors import ConfigError

NAME = "synth"
HELP = "write a synthetic COCO dataset of shapes (boxes, masks, keypoints) for demos and tests"

DEFAULT_TRAIN_IMAGES = 400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write annotations/, train/ and val/ into")
    parser.add_argument(
        "--images", type=int, default=DEFAULT_TRAIN_IMAGES, metavar="N",
        help=f"number of train images (default {DEFAULT_TRAIN_IMAGES})",
    )
    parser.add_argument(
        "--val-images", type=int, default=None, metavar="M",
        help="number of val images (default N // 5, at least 1)",
    )
    parser.add_argument(
        "--size", type=int, nargs="+", default=[256, 256], metavar="PIXELS",
        help="image size: one number for square images, or HEIGHT WIDTH (default 256 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files (default 0)")


def run(args: argparse.Namespace) -> int:
    if len(args.size) not in (1, 2):
        raise ConfigError(f"--size takes one number (square) or two (HEIGHT WIDTH), got {len(args.size)}: {args.size}.")
    height, width = (args.size[0], args.size[0]) if len(args.size) == 1 else args.size
    if args.images <= 0:
        raise ConfigError(f"--images must be a positive number of train images, got {args.images}.")
    num_val = max(1, args.images // 5) if args.val_images is None else args.val_images
    if num_val <= 0:
        raise ConfigError(f"--val-images must be a positive number of val images, got {num_val}.")

    paths = generate_synthetic_coco(
        args.out_dir, num_train=args.images, num_val=num_val, image_size=(height, width), seed=args.seed
    )
    action = "already present with the same parameters, kept" if paths.reused else "written"
    print(f"Synthetic dataset ({args.images} train + {num_val} val images, {height}x{width}, seed {args.seed}) {action}:")
    print(f"  train annotations: {paths.train_json}")
    print(f"  val annotations:   {paths.val_json}")
    print(f"  image root:        {paths.image_root}  (images in train/ and val/)")
    print(f"  categories:        {', '.join(SYNTH_SHAPES)}; keypoints top, left, bottom, right")
    return 0
