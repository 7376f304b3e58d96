"""`swiftdet coco-eval GT.json RESULTS.json --iou-type bbox|segm|keypoints|proposals [--out metrics.json]`.

Prints the standard COCO numbers in the wording and rounding of pycocotools' ``summarize()``, so
the two printouts can be compared line by line, and optionally writes the metrics as json.
"""
from __future__ import annotations

import argparse
import json
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


def run(args: argparse.Namespace) -> int:
    if args.iou_type == "proposals":
        evaluation = run_coco_evaluation(args.gt, args.results, "bbox", use_cats=False, proposals=True)
    else:
        evaluation = run_coco_evaluation(args.gt, args.results, args.iou_type)
    print("\n".join(evaluation.summary_lines()))
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(evaluation.metrics, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise EvaluationError(f"Cannot write the metrics to {str(out)!r} ({exc.strerror}). Choose a writable "
                                  f"path for --out.") from exc
    return 0
