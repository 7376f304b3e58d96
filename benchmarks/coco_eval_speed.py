"""Time pycocotools' COCOeval against swiftdet's COCO evaluation on the same detections.

    python benchmarks/coco_eval_speed.py [--iou-type bbox|segm|keypoints] [--per-image 100] [--repeat 3]

Detections come from ../shared/datasets/tiny_coco when it is there (jittered copies of the ground
truth plus random false positives, ``--per-image`` per image), else from a synthetic COCO dict. The
pycocotools time covers ``evaluate()`` + ``accumulate()`` only (its result loading is not counted);
swiftdet's covers the whole call from the result dicts, checks included. Best of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swiftdet.evaluation.coco import run_coco_evaluation

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tiny_coco" / "annotations"


def synthetic_gt(seed: int, num_images: int = 50, keypoints: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    cats = [{"id": 1, "name": "person"}] if keypoints else [{"id": i + 1, "name": f"c{i + 1}"} for i in range(20)]
    images, anns = [], []
    for image_id in range(1, num_images + 1):
        h, w = 480, 640
        images.append({"id": image_id, "height": h, "width": w})
        for _ in range(int(rng.integers(0, 15))):
            bw, bh = rng.uniform(5, 300), rng.uniform(5, 300)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            poly = [x, y, x + bw, y, x + bw, y + bh, x, y + bh]
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.choice([c["id"] for c in cats])),
                   "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0, "segmentation": [poly]}
            if keypoints:
                k = np.c_[x + rng.random(17) * bw, y + rng.random(17) * bh, np.full(17, 2)]
                ann["keypoints"], ann["num_keypoints"] = k.reshape(-1).tolist(), 17
            anns.append(ann)
    return {"images": images, "annotations": anns, "categories": cats}


def make_detections(gt: dict, iou_type: str, per_image: int, seed: int) -> list[dict]:
    """About ``per_image`` detections per image: 1-3 jittered copies of each gt, the rest random."""
    rng = np.random.default_rng(seed)
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    cat_ids = [c["id"] for c in gt["categories"]]
    results = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        anns = coco.imgToAnns[img["id"]]
        entries = [(a["category_id"], a["bbox"], a) for a in anns for _ in range(int(rng.integers(1, 4)))]
        while len(entries) < per_image:
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            entries.append((int(rng.choice(cat_ids)), [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh], None))
        for cat, (x, y, bw, bh), ann in entries:
            j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            box = [x + j[0], y + j[1], max(bw + j[2], 1.0), max(bh + j[3], 1.0)]
            r = {"image_id": img["id"], "category_id": cat, "score": float(rng.random())}
            if iou_type == "bbox":
                r["bbox"] = box
            elif iou_type == "segm":
                mask = np.zeros((h, w), dtype=np.uint8, order="F")
                x0, y0 = int(max(box[0], 0)), int(max(box[1], 0))
                mask[y0:int(box[1] + box[3]) + 1, x0:int(box[0] + box[2]) + 1] = 1
                rle = mask_utils.encode(mask)
                r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                if ann is not None and ann.get("num_keypoints", 0) > 0:
                    k = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
                    k[:, :2] += rng.normal(0, 4, (len(k), 2))
                else:
                    k = np.c_[box[0] + rng.random(17) * box[2], box[1] + rng.random(17) * box[3], np.zeros(17)]
                k[:, 2] = 1
                r["keypoints"] = k.reshape(-1).tolist()
            results.append(r)
    return results


def time_pycocotools(gt: dict, results: list[dict], iou_type: str) -> tuple[float, COCOeval]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        start = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        elapsed = time.perf_counter() - start
        ev.summarize()
    return elapsed, ev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm", "keypoints"])
    parser.add_argument("--per-image", type=int, default=100, help="detections per image")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    name = "person_keypoints_val.json" if args.iou_type == "keypoints" else "instances_val.json"
    if (TINY_COCO / name).is_file():
        source, gt = f"tiny_coco/{name}", json.loads((TINY_COCO / name).read_text())
    else:
        source, gt = "synthetic", synthetic_gt(0, keypoints=args.iou_type == "keypoints")
    per_image = 20 if args.iou_type == "keypoints" else args.per_image
    results = make_detections(gt, args.iou_type, per_image, seed=1)
    print(f"{args.iou_type}: {len(results)} detections on {len(gt['images'])} images ({source}), "
          f"{len(gt['annotations'])} gt annotations")

    ref_times, our_times = [], []
    for _ in range(args.repeat):
        elapsed, ev = time_pycocotools(gt, results, args.iou_type)
        ref_times.append(elapsed)
        start = time.perf_counter()
        ours = run_coco_evaluation(gt, results, args.iou_type)
        our_times.append(time.perf_counter() - start)
    agree = (np.array_equal(ours.precision, ev.eval["precision"]) and np.array_equal(ours.recall, ev.eval["recall"])
             and list(ours.metrics.values()) == ev.stats.tolist())
    ref, mine = min(ref_times), min(our_times)
    print(f"pycocotools evaluate+accumulate: {ref:.3f} s")
    print(f"swiftdet (load+check+evaluate+accumulate): {mine:.3f} s")
    print(f"speed-up: {ref / mine:.1f}x")
    print(f"numbers identical (precision, recall, stats): {agree}")


if __name__ == "__main__":
    main()
