"""Cascade Mask R-CNN against Mask R-CNN on the synthetic shapes data, at equal iterations.

Both are the demo's ResNet-18-FPN from scratch (configs/demo_mask_rcnn.py and its cascade version,
configs/cascade_mask_rcnn_R_18_FPN_synth.py): same data, input size, optimiser, schedule and seed;
the only difference is the box stages. Each is trained for ``--iters`` iterations, then evaluated
on the validation split; the script prints both models' bbox and segm AP (and AP75, where the
higher-IoU stages should help most) and the seconds each run took.

    python benchmarks/cascade_vs_mask_rcnn.py --iters 300 --threads 2
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from swiftdet.config.core import load_config
from swiftdet.demo.app import DEMO_IMAGE_SIZE, DEMO_OBJECTS_PER_IMAGE
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine.run import run_training

RECIPES = {"mask_rcnn": "demo_mask_rcnn", "cascade_mask_rcnn": "cascade_mask_rcnn_R_18_FPN_synth"}
KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75", "segm/AP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300, help="training iterations of each model")
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workdir", default="", help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        if not (data / "annotations" / "instances_val.json").is_file():
            generate_synthetic_coco(data, num_train=args.train_images, num_val=args.val_images,
                                    image_size=DEMO_IMAGE_SIZE, objects_per_image=DEMO_OBJECTS_PER_IMAGE)
        paths = [f"data.train.json={data / 'annotations' / 'instances_train.json'}", f"data.train.image_root={data}",
                 f"data.test.json={data / 'annotations' / 'instances_val.json'}", f"data.test.image_root={data}"]
        # Warm-up scaled to the run so a short run still spends most of its steps at the full rate.
        schedule = [f"solver.max_iter={args.iters}", f"solver.warmup_iters={min(50, max(args.iters // 10, 1))}",
                    f"solver.checkpoint_period={args.iters}", "test.eval_period=0"]
        results = {}
        for name, recipe in RECIPES.items():
            cfg = load_config(recipe, [*paths, *schedule])
            start = time.perf_counter()
            metrics = run_training(cfg, work / name)
            results[name] = {"seconds": round(time.perf_counter() - start, 1), **{k: metrics.get(k) for k in KEYS}}
            print(name, json.dumps(results[name]), flush=True)
    print(f"\n{args.iters} iterations, batch {cfg.solver.ims_per_batch}, {args.threads} threads (AP in percent)")
    print(f"{'model':<20}" + "".join(f"{k:>11}" for k in KEYS) + f"{'seconds':>10}")
    for name, r in results.items():
        print(f"{name:<20}" + "".join(f"{100 * r[k]:>11.2f}" if r[k] is not None else f"{'-':>11}" for k in KEYS)
              + f"{r['seconds']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
