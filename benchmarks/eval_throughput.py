"""Evaluation throughput: `swiftdet eval` end to end vs torchvision's reference evaluation loop.

    python benchmarks/eval_throughput.py [--model mask_rcnn|faster_rcnn] [--images 50] [--workers 2] [--threads 2]

The same random weights in both (``rcnn_inference.build_models``: torchvision's R50-FPN model converted
into swiftdet's), score threshold 0 and 100 detections per image in both, so every image carries the
same, worst-case number of boxes and masks. Images: the first ``--images`` of tiny_coco's validation
split (``../shared/datasets/tiny_coco``) at the standard test size (shortest side 800, longest 1333).

torchvision's side is the loop of its ``references/detection`` scripts (written out here, since the
references are not part of the wheel): a DataLoader of decoded PIL images turned into float tensors,
the model on each batch of one (it resizes and pastes full-image masks itself), every mask
thresholded at 0.5 and RLE-encoded over the whole image, then pycocotools' COCOeval (evaluate,
accumulate, summarize) for ``bbox`` and ``segm``. swiftdet's side is ``run_evaluation``, the function
behind ``swiftdet eval``: its loader, model, cropped-mask RLE and its own COCO evaluation. Both use
``--workers`` data-loading processes. Each side runs ``--repeats`` times, alternating; the best time
of each is printed as images per second, with the ratio and both sides' AP as a check that they
evaluated the same detections.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rcnn_inference import build_models

TINY_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tiny_coco"


def subset_json(source: Path, count: int, folder: Path) -> Path:
    """The first ``count`` images of a COCO json (and their annotations), written into ``folder``."""
    data = json.loads(source.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:count]
    keep = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    # torchvision's COCO models have a slot per category id 1..90 (the 10 unused ones "N/A"); the
    # json lists all 90 so that swiftdet's model has the same classes (unused ones have no ground truth,
    # which COCO evaluation leaves out of the mean).
    names = {c["id"]: c["name"] for c in data["categories"]}
    data["categories"] = [{"id": i, "name": names.get(i, f"N/A {i}"), "supercategory": ""} for i in range(1, 91)]
    path = folder / "subset.json"
    path.write_text(json.dumps(data))
    return path


class _CocoImages(torch.utils.data.Dataset):
    """(float image tensor 0-1, image id) of a COCO json, decoded with PIL as torchvision's CocoDetection."""

    def __init__(self, gt_json: Path, image_root: Path):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(gt_json))
        self.ids = sorted(self.coco.imgs)
        self.root = image_root

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        info = self.coco.imgs[self.ids[index]]
        image = Image.open(self.root / info["file_name"]).convert("RGB")
        return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True), self.ids[index]


def torchvision_evaluation(tv, gt_json: Path, image_root: Path, workers: int) -> dict[str, float]:
    """torchvision's reference evaluation of ``tv`` (which normalises 0-1 images); {iou_type: AP}."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = _CocoImages(gt_json, image_root)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=workers,
                                         collate_fn=lambda batch: tuple(zip(*batch)))
    results = []
    with torch.no_grad():
        for images, ids in loader:
            for output, image_id in zip(tv(list(images)), ids):
                boxes = output["boxes"].clone()
                boxes[:, 2:] -= boxes[:, :2]
                masks = (output["masks"] > 0.5).numpy()
                for k in range(len(boxes)):
                    rle = mask_utils.encode(np.array(masks[k, 0, :, :, None], dtype=np.uint8, order="F"))[0]
                    rle["counts"] = rle["counts"].decode("utf-8")
                    results.append({"image_id": image_id, "category_id": int(output["labels"][k]),
                                    "bbox": boxes[k].tolist(), "score": float(output["scores"][k]),
                                    "segmentation": rle})
    aps = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        for iou_type in ("bbox", "segm"):
            dt = gt.loadRes([dict(r) for r in results]) if results else COCO()
            evaluation = COCOeval(gt, dt, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            aps[iou_type] = float(evaluation.stats[0])
    return aps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mask_rcnn",), default="mask_rcnn",
                        help="the architecture (Mask R-CNN: boxes and masks, the full evaluation)")
    parser.add_argument("--images", type=int, default=50, help="first N validation images of tiny_coco (it has 50)")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes of both loops")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of each side; the best is printed")
    args = parser.parse_args()
    if not TINY_COCO.is_dir():
        raise SystemExit(f"{TINY_COCO} is missing: this benchmark evaluates on ../shared/datasets/tiny_coco.")
    torch.set_num_threads(args.threads)
    logging.getLogger("swiftdet").setLevel(logging.WARNING)  # the tables would interleave with the figures

    from swiftdet.config.core import load_config
    from swiftdet.engine.run import run_evaluation
    from swiftdet.weights.checkpoint import make_checkpoint

    tv, ours = build_models(args.model, fast=False)
    folder = Path(tempfile.mkdtemp(prefix="swiftdet_eval_bench_"))
    gt_json = subset_json(TINY_COCO / "annotations" / "instances_val.json", args.images, folder)
    image_root = TINY_COCO  # file_name entries start with val2017/
    cfg = load_config("mask_rcnn_R_50_FPN_1x", [
        "model.num_classes=90", "model.box_head.score_thresh=0.0", "model.box_head.detections_per_image=100",
        f"data.test.json={gt_json}", f"data.test.image_root={image_root}", f"data.num_workers={args.workers}"])
    # torchvision's 91 outputs are COCO category ids 0..90; swiftdet's 90 classes are ids 1..90 in order
    # (the dataset's categories), so both write the same category ids.
    weights = folder / "model.pth"
    torch.save(make_checkpoint(ours, cfg), weights)

    times: dict[str, list[float]] = {"torchvision": [], "swiftdet": []}
    aps: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        aps["torchvision"] = torchvision_evaluation(tv, gt_json, image_root, args.workers)
        times["torchvision"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            metrics = run_evaluation(cfg, weights)
        times["swiftdet"].append(time.perf_counter() - start)
        aps["swiftdet"] = {"bbox": metrics["bbox/AP"] / 100, "segm": metrics["segm/AP"] / 100}

    from swiftdet.utils.cpu import cpu_description

    print(f"{args.model} R50-FPN, {args.images} tiny_coco val images at 800/1333, {args.workers} workers, "
          f"{args.threads} threads; {cpu_description()}")
    best = {name: min(t) for name, t in times.items()}
    for name in ("torchvision", "swiftdet"):
        print(f"  {name:<12} {args.images / best[name]:6.2f} images/s ({best[name]:.1f} s)  "
              f"bbox AP {aps[name]['bbox']:.4f}  segm AP {aps[name]['segm']:.4f}")
    print(f"  throughput swiftdet / torchvision: {best['torchvision'] / best['swiftdet']:.2f}x")


if __name__ == "__main__":
    main()
