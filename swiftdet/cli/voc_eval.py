"""`swiftdet voc-eval GT.json RESULTS.json [--metric voc07|area] [--iou-thresh 0.5] [--out metrics.json]`.

Pascal VOC box AP (per class at one IoU threshold, difficult objects ignored) with the numbers of
the reference ``voc_eval``; the rules are in :mod:`swiftdet.evaluation.voc`. The ground truth is a
COCO json as ``swiftdet convert-data voc`` writes it (each annotation's ``difficult`` flag kept),
the results a COCO results json (``swiftdet predict`` writes one). Prints a per-class table;
``--out`` writes the metrics as one flat json object: ``{"mAP": 75.3, "AP-aeroplane": 78.1, ...}``,
AP in percent, -1 for a class without ground truth (left out of mAP) -- the same keys, behind
``bbox/``, that ``swiftdet eval`` reports on a VOC config.
"""
from __future__ import annotations

import argparse

from swiftdet.cli.coco_eval import write_metrics
from swiftdet.evaluation.voc import evaluate_voc

NAME = "voc-eval"
HELP = "Pascal VOC mAP (IoU 0.5, difficult objects ignored) of a COCO results json against a VOC ground truth in COCO json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", metavar="GT.json", help="ground truth: COCO json as 'swiftdet convert-data voc' writes it (difficult flags kept)")
    parser.add_argument("results", metavar="RESULTS.json", help="COCO results json: a list of {image_id, category_id, bbox, score}")
    parser.add_argument("--metric", default="area", choices=["voc07", "area"],
                        help="'area' (default): VOC2010+ area under the precision envelope; 'voc07': VOC2007's "
                             "11-point AP (the number VOC2007-test papers report)")
    parser.add_argument("--iou-thresh", type=float, default=0.5, metavar="T",
                        help="a detection matches an object it overlaps by more than this (default 0.5)")
    parser.add_argument("--out", default=None, metavar="metrics.json",
                        help='write the metrics to this file as one flat json object {"mAP": .., "AP-<class name>": '
                             '.., ...}, AP in percent, -1 for a class without ground truth')


def run(args: argparse.Namespace) -> int:
    evaluation = evaluate_voc(args.gt, args.results, metric=args.metric, iou_thresh=args.iou_thresh)
    print("\n".join(evaluation.summary_lines()))
    if args.out:
        write_metrics(args.out, evaluation.metrics)
    return 0
