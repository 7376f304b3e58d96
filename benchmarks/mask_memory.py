"""Peak memory of writing and drawing the masks of one large image: box-sized crops vs full-size masks.

    python benchmarks/mask_memory.py [--size 8000] [--masks 50] [--peer full|torchvision] [--seed 0]

What ``swiftdet predict`` does with one image's detections after the network: paste the (N, 28, 28)
mask probabilities at the original size, encode them as COCO RLE for ``predictions.json`` and draw
them on the image. Three ways of doing it, each in a fresh process (peak RSS above the RSS before):

* ``swiftdet``: ``postprocess_instances`` keeps each mask as the crop of its box
  (``CroppedMasks``); the RLE writer and the drawing work crop by crop.
* ``full`` (default peer): the same pasting to (N, H, W) bool masks at full size
  (``paste_masks_in_image``, what predict did before), encoded and drawn from the full array.
* ``torchvision``: ``torchvision.models.detection.roi_heads.paste_masks_in_image`` (float masks at
  full size), thresholded, encoded with pycocotools and drawn from the full array. It needs
  N * H * W * 4 bytes: use it with a smaller ``--size`` on a small machine.

Detections: ``--masks`` boxes with sides from 2% to 30% of the image side, random 28x28
probabilities; the RLEs of the three ways are checked to be equal.
"""
from __future__ import annotations

import argparse
import hashlib
import resource

import numpy as np
import torch

from _harness import in_fresh_process, rss_bytes


def _detections(size: int, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    side = size * (0.02 + 0.28 * torch.rand(count, 2, generator=g))
    corner = (size - side) * torch.rand(count, 2, generator=g)
    boxes = torch.cat([corner, corner + side], dim=1)
    probs = torch.rand(count, 28, 28, generator=g)
    return boxes, probs


def _work(way: str, size: int, count: int, seed: int, queue) -> None:
    from swiftdet.evaluation.results import instances_to_coco_results
    from swiftdet.model.postprocess import paste_masks_in_image, postprocess_instances
    from swiftdet.structures import BitMasks, Boxes, Instances
    from swiftdet.visualization.draw import draw_instances

    boxes, probs = _detections(size, count, seed)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    labels, scores = torch.zeros(count, dtype=torch.int64), torch.linspace(1, 0.5, count)
    before = rss_bytes()
    if way == "swiftdet":
        raw = Instances((size, size), boxes=Boxes(boxes), labels=labels, scores=scores, mask_probs=probs)
        masks = postprocess_instances(raw, (size, size)).masks
    else:
        if way == "full":
            full = paste_masks_in_image(probs[:, None], boxes, (size, size))
        else:
            from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

            full = tv_paste(probs[:, None], boxes, (size, size))[:, 0] > 0.5
        masks = BitMasks(full)
        del full
    instances = Instances((size, size), boxes=Boxes(boxes), labels=labels, scores=scores, masks=masks)
    results = instances_to_coco_results(instances, 1, [1])
    drawn_masks = masks if way == "swiftdet" else masks.tensor.numpy()
    draw_instances(image, boxes=boxes.numpy(), masks=drawn_masks)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256("".join(r["segmentation"]["counts"] for r in results).encode()).hexdigest()[:16]
    queue.put((max(peak - before, 0), digest))


def measure(way: str, size: int, count: int, seed: int) -> tuple[int, str]:
    return in_fresh_process(_work, way, size, count, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=8000, help="image side in pixels (square image)")
    parser.add_argument("--masks", type=int, default=50, help="number of detections with masks")
    parser.add_argument("--peer", choices=("full", "torchvision"), default="full")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ours, ours_digest = measure("swiftdet", args.size, args.masks, args.seed)
    peer, peer_digest = measure(args.peer, args.size, args.masks, args.seed)
    print(f"{args.masks} masks on a {args.size}x{args.size} image: paste, COCO RLE, draw (peak RSS above the start)")
    print(f"  swiftdet (crops)     {ours / 2**20:9.1f} MiB")
    print(f"  {args.peer + ' (full size)':20s} {peer / 2**20:9.1f} MiB")
    print(f"  ratio swiftdet / {args.peer}: {ours / max(peer, 1):.3f}")
    print(f"  RLEs equal: {ours_digest == peer_digest}")


if __name__ == "__main__":
    main()
