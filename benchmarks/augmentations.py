"""What each training augmentation costs per image on this CPU.

    python benchmarks/augmentations.py [--iters 30] [--threads 1] [--masks polygon|bitmap] [--instances 10]

A COCO-sized image (480 x 640, uint8) with ``--instances`` objects, each with a 24-vertex polygon
mask (or its bitmap with ``--masks bitmap``, what an RLE dataset gives) and 17 keypoints, goes
through each augmentation alone (its draw and its application, at the image's own size), then
through whole :class:`swiftdet.data.transforms.TrainTransform` pipelines on top of the default
training resize (shortest edge 800, max 1333) and flip. Each row prints the median milliseconds
per image over ``--iters`` stream positions. The multi-image augmentations get their other images
from memory: decoding them (3 more images for mosaic, 1 for copy-paste) comes on top, about one
JPEG decode each. ``--threads`` is
torch's intra-op threads (the loader's workers run with 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch

from swiftdet.data import augment as A
from swiftdet.data.transforms import (
    TrainTransform,
    apply_augmentation,
    augmentation_rng,
    photometric_distort,
    sample_augmentation,
    sample_photometric,
)
from swiftdet.structures import Boxes, Instances, Keypoints, PolygonMasks

HEIGHT, WIDTH = 480, 640


def make_sample(seed: int, instances: int, bitmap: bool) -> tuple[torch.Tensor, Instances]:
    """A textured image and ``instances`` star-shaped objects with masks and keypoints."""
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8))
    polygons, boxes, keypoints = [], [], []
    for _ in range(instances):
        r = rng.uniform(20, 120)
        cx, cy = rng.uniform(r, WIDTH - r), rng.uniform(r, HEIGHT - r)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
        radii = r * rng.uniform(0.4, 1.0, 24)
        xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        polygons.append([xy.reshape(-1)])
        boxes.append([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
        kp = np.concatenate([xy[rng.integers(0, 24, 17)], np.full((17, 1), 2.0)], axis=1)
        keypoints.append(kp)
    masks = PolygonMasks(polygons)
    inst = Instances((HEIGHT, WIDTH), boxes=Boxes(torch.tensor(np.array(boxes), dtype=torch.float32)),
                     labels=torch.zeros(instances, dtype=torch.int64),
                     masks=masks.to_bitmasks(HEIGHT, WIDTH) if bitmap else masks,
                     keypoints=Keypoints(torch.tensor(np.array(keypoints), dtype=torch.float32)))
    return image, inst


def _time(fn, iters: int) -> float:
    """Median milliseconds of fn(position) over ``iters`` positions, after one warm-up call."""
    fn(10**6)
    times = []
    for position in range(iters):
        start = time.perf_counter()
        fn(position)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=30, help="stream positions timed per row")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--masks", choices=("polygon", "bitmap"), default="polygon")
    parser.add_argument("--instances", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    samples = [make_sample(seed, args.instances, args.masks == "bitmap") for seed in range(4)]
    image, inst = samples[0]
    others = A.OtherImages(len(samples), lambda i: samples[i])
    flip_index = list(range(17))
    fill = (123.675, 116.28, 103.53)
    rng = lambda position: augmentation_rng(0, position)  # noqa: E731
    crop, keeping = A.RandomCrop("relative_range", (0.5, 0.5)), A.RandomCrop("relative_range", (0.5, 0.5), True)
    lsj, mosaic = A.LargeScaleJitter((1024, 1024)), A.Mosaic(1.0, (640, 640))
    # Each augmentation alone: its draw and its application to the 480 x 640 image and targets.
    steps = [
        ("resize to 800 + flip (the default)", lambda p: apply_augmentation(
            image.float(), inst, sample_augmentation(rng(p), (800,), 1333, 0.5), flip_index)),
        ("photometric distortion p=0.5", lambda p: photometric_distort(image, sample_photometric(rng(p), 0.5))),
        ("random crop relative_range 0.5", lambda p: A.random_crop(
            image, inst, A.sample_random_crop(rng(p), HEIGHT, WIDTH, crop))),
        ("  ... keeping instances", lambda p: A.random_crop(
            image, inst, A.sample_random_crop(rng(p), HEIGHT, WIDTH, keeping))),
        ("rotate 90 (k = 1, 2, 3)", lambda p: A.rotate90(image, inst, 1 + p % 3)),
        ("LSJ to 1024 x 1024, s in [0.1, 2.0]", lambda p: A.scale_jitter(
            image.float(), inst, A.sample_scale_jitter(rng(p), HEIGHT, WIDTH, lsj), fill)),
        ("mosaic, 640 x 640 cells (canvas 1280)", lambda p: A.mosaic(
            [samples[0]] + [samples[i] for i in A.sample_mosaic(rng(p), mosaic, 4).indices],
            A.sample_mosaic(rng(p), mosaic, 4), mosaic.size, fill)),
        ("copy-paste (the paste; source ready)", lambda p: A.copy_paste(
            image, inst, *samples[1 + p % 3], np.random.default_rng(p), 100)),
    ]
    base = TrainTransform(min_sizes=(800,), max_size=1333, hflip_prob=0.5, zoom_out_fill=fill)
    # Whole training transforms (what a loader worker does per sample after decoding).
    pipelines = [
        ("default: resize + flip", base),
        ("+ copy-paste (augments a 2nd image)", dataclasses.replace(base, copy_paste=A.CopyPaste(1.0))),
        ("LSJ + copy-paste (Ghiasi et al.)", dataclasses.replace(base, lsj=lsj, copy_paste=A.CopyPaste(1.0))),
        ("all on", dataclasses.replace(
            base, photometric_distort_prob=0.5, random_crop=keeping, rotate90_prob=0.75, lsj=lsj,
            mosaic=A.Mosaic(0.5, (640, 640)), copy_paste=A.CopyPaste(1.0))),
    ]
    print(f"{args.instances} instances with {args.masks} masks and 17 keypoints, {HEIGHT}x{WIDTH} uint8 image, "
          f"{args.threads} thread(s), median of {args.iters} positions, load average {os.getloadavg()[0]:.2f}")
    print("each augmentation alone (draw + apply):")
    for name, fn in steps:
        print(f"  {name:44s} {_time(fn, args.iters):8.1f} ms/image")
    print("whole TrainTransform (decoding of the other images not included):")
    for name, transform in pipelines:
        ms = _time(lambda p: transform(image, inst, rng(p), flip_index, others), args.iters)
        print(f"  {name:44s} {ms:8.1f} ms/image")


if __name__ == "__main__":
    main()
