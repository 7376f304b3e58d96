"""`swiftdet coco-eval GT.json RESULTS.json --iou-type bbox|segm|keypoints|proposals [--out metrics.json]
[--area-from loadres|mask]`.

Prints the standard COCO numbers in the wording and rounding of pycocotools' ``summarize()``, so
the two printouts can be compared line by line, and optionally writes the metrics as json.

The results file is read as pycocotools' ``COCO.loadRes`` reads it, whatever keys its entries
carry, so the numbers are those of ``loadRes`` + ``COCOeval`` on the same file. In particular the
detection areas of the small/medium/large ranges are the boxes' w*h when the first result has a
non-empty ``bbox`` -- also for ``--iou-type segm`` -- the masks' pixel counts when it has a
``segmentation`` but no box, and the keypoints' extent otherwise. ``--area-from mask`` ranges
``segm`` detections by their mask areas instead (detectron2's convention, which is what the
trainer's evaluation reports). Where the areas came from is said on stderr, so that stdout stays
line for line pycocotools' printout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swiftdet.errors import EvaluationError
from swiftdet.evaluation.coco import run_coco_evaluation

NAME = "coco-eval"
HELP = "evaluate a COCO results json against a COCO annotation json (same numbers as pycocotools, faster)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", help="COCO ground-truth json (e.g. instances_val2017.json)")
    parser.add_argument("results", help="COCO results json: a list of {image_id, category_id, score, bbox|"
                                        "segmentation|keypoints}")
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm", "keypoints", "proposals"],
                        help="what to evaluate; 'proposals' is class-agnostic box recall (AR@100, AR@1000)")
    parser.add_argument("--out", default=None, help="write the metrics as a json object to this file")
    parser.add_argument("--area-from", default="loadres", choices=["loadres", "mask"],
                        help="detection areas for the small/medium/large ranges: 'loadres' (default) as "
                             "pycocotools' COCO.loadRes takes them (box w*h when the first result has a "
                             "non-empty bbox, else mask pixels, else keypoint extent); 'mask' (segm only): "
                             "each detection's mask pixel count, detectron2's convention and the trainer's")


def evaluate(args: argparse.Namespace):
    """The :class:`~swiftdet.evaluation.coco.CocoEvaluation` that :func:`run` prints."""
    area_from = getattr(args, "area_from", "loadres")
    if area_from == "mask" and args.iou_type != "segm":
        raise EvaluationError(f"--area-from mask is for --iou-type segm only (got {args.iou_type}); the other "
                              f"types take their areas as pycocotools' loadRes does.")
    if args.iou_type == "proposals":
        return run_coco_evaluation(args.gt, args.results, "bbox", use_cats=False, proposals=True)
    return run_coco_evaluation(args.gt, args.results, args.iou_type, area_from=area_from)


def run(args: argparse.Namespace) -> int:
    evaluation = evaluate(args)
    print("\n".join(evaluation.summary_lines()))
    print(evaluation.area_note(), file=sys.stderr)
    if args.out:
        write_metrics(args.out, evaluation.metrics)
    return 0


def write_metrics(path: str, metrics: dict) -> None:
    """``--out metrics.json`` of the evaluation verbs."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"Cannot write the metrics to {str(out)!r} ({exc.strerror}). Choose a writable "
                              f"path for --out.") from exc
