"""`swiftdet browse DATASET_JSON IMAGE_ROOT --out DIR`: draw a dataset's ground truth on its images.

The dataset is loaded with full validation (as for evaluation: nothing dropped), and each image is
decoded with the same checks as training, so browsing a dataset also checks it.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from swiftdet.data.coco import load_coco
from swiftdet.data.loader import read_record_image
from swiftdet.errors import InputError
from swiftdet.visualization.draw import draw_instances, save_image

NAME = "browse"
HELP = "validate a COCO dataset and write its images with boxes, class names, masks and keypoints drawn"

DEFAULT_LIMIT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("json", metavar="DATASET_JSON", help="COCO-format annotation file")
    parser.add_argument("image_root", metavar="IMAGE_ROOT", help="folder the json's file_name entries are relative to")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write <image id>.png files into")
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
        help=f"draw the first N images in json order (default {DEFAULT_LIMIT}; 0 for all)",
    )
    parser.add_argument("--ids", type=int, nargs="+", default=None, metavar="IMAGE_ID", help="draw these image ids instead")


def run(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise InputError(f"--limit must be >= 0 (0 draws every image), got {args.limit}.")
    dataset = load_coco(args.json, args.image_root, training=False)
    if args.ids:
        indices = dataset.index_of_image_id(args.ids).tolist()
    else:
        count = len(dataset) if args.limit == 0 else min(args.limit, len(dataset))
        indices = list(range(count))
    meta = dataset.meta
    num_classes = meta.num_classes
    # Crowd regions are drawn under their own name so they are told apart from instances.
    class_names = list(meta.class_names) + [f"{n} (crowd)" for n in meta.class_names]
    for i in indices:
        record = dataset.get(i)
        image = read_record_image(dataset, record).permute(1, 2, 0).numpy()
        masks = None
        if dataset.has_masks:
            masks = [s if s is not None else [] for s in record.segmentations]
        drawn = draw_instances(
            image,
            boxes=record.boxes,
            labels=record.labels + num_classes * record.iscrowd.astype(np.int64),
            masks=masks,
            keypoints=record.keypoints,
            class_names=class_names,
            skeleton=meta.skeleton or None,
        )
        save_image(drawn, os.path.join(args.out, f"{record.image_id}.png"))
    print(f"Wrote {len(indices)} images with their ground truth to {args.out}")
    return 0
