"""`swiftdet analyze GT.json RESULTS.json --out DIR [--iou-type bbox|segm] [--score-thresh S]
[--image-root ROOT] [--num-images N]`: where a detector's AP goes.

Writes into DIR:

* ``analysis.json``: the AP of each step of the COCO error analysis (C75, C50, Loc, Sim, Oth, BG,
  FN; see :mod:`swiftdet.evaluation.analysis`), overall and per category, for the four area ranges;
* ``overall-<area>.png``: the filled PR curves of the mean over the categories, one per area range,
  and ``per_category/<name>.png`` (area "all") for every category with objects;
* ``confusion_matrix.png`` / ``.json``: object class x detected class (plus background / missed) at
  IoU 0.5 (``--iou-thresh``) for the detections scoring at least ``--score-thresh``;
* with ``--image-root``: the ``--num-images`` images with the most false positives (background or
  wrong class) in ``worst_fp/`` and with the most missed objects in ``worst_fn/``, objects in green,
  detections in red (``<rank>_<image id>.png``).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from swiftdet.cli.progress import Progress
from swiftdet.data.transforms import read_image
from swiftdet.errors import EvaluationError, InputError
from swiftdet.evaluation.analysis import (ERROR_STEPS, RECALL_THRESHOLDS, ConfusionResult, analyze_errors,
                                          confusion_matrix)
from swiftdet.utils.io import atomic_write
from swiftdet.visualization.draw import save_image
from swiftdet.visualization.plots import (draw_gt_and_detections, plot_confusion_matrix, plot_error_breakdown)

NAME = "analyze"
HELP = ("COCO error analysis of a results json: C75/C50/Loc/Sim/Oth/BG/FN PR curves, a confusion matrix, and the "
        "images with the most false positives and misses")

DEFAULT_NUM_IMAGES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt", metavar="GT.json", help="COCO ground-truth json (categories may carry 'supercategory')")
    parser.add_argument("results", metavar="RESULTS.json", help="COCO results json (swiftdet predict / eval writes one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the plots and analysis.json into")
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"], help="boxes or masks (default bbox)")
    parser.add_argument("--score-thresh", type=float, default=0.3, metavar="S",
                        help="confusion matrix and worst images: detections scoring at least S (default 0.3)")
    parser.add_argument("--iou-thresh", type=float, default=0.5, metavar="T",
                        help="confusion matrix and worst images: IoU a detection needs with an object (default 0.5)")
    parser.add_argument("--image-root", default=None, metavar="ROOT",
                        help="folder the json's file_name entries are relative to; draws worst_fp/ and worst_fn/")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, metavar="N",
                        help=f"how many worst images of each kind to draw (default {DEFAULT_NUM_IMAGES})")


def _safe_name(name: str) -> str:
    """A category name as a file name (COCO has 'hair drier', LVIS names with slashes ...)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "category"


def _write_json(path: Path, data: dict) -> None:
    try:
        text = json.dumps(data, indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text), mode="w")
    except OSError as error:
        raise InputError(f"Cannot write {str(path)!r} ({error.strerror or error}). Choose a writable --out.") from None


def run(args: argparse.Namespace) -> int:
    if args.num_images < 0:
        raise InputError(f"--num-images must be >= 0, got {args.num_images}.")
    if not 0.0 <= args.score_thresh <= 1.0:
        raise EvaluationError(f"--score-thresh must be in [0, 1], got {args.score_thresh}.")
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise InputError(f"--image-root {args.image_root!r} is not a folder. Give the folder the json's file_name "
                         f"entries are relative to.")
    # The confusion matrix first: it is quick, and picks the images to draw, whose files are checked
    # before anything is written.
    confusion = confusion_matrix(args.gt, args.results, args.iou_type, iou_thresh=args.iou_thresh,
                                 score_thresh=args.score_thresh)
    worst = {}
    if args.image_root is not None and args.num_images > 0:
        worst = {kind: confusion.worst(kind, args.num_images) for kind in ("fp", "fn")}
        for images in worst.values():
            for img in images:
                _image_path(confusion, img.image_id, args.image_root)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(total=len(confusion.category_ids), unit="cat", desc="analyze") as bar:
        analysis = analyze_errors(args.gt, args.results, args.iou_type, progress=bar.update)
    for note in analysis.notes:
        print(f"note: {note}")

    plotted = []
    for area in analysis.area_labels:
        curves = analysis.curves(None, area)
        if curves is not None:
            plot_error_breakdown(RECALL_THRESHOLDS, curves, ERROR_STEPS, f"{args.iou_type}: overall, area {area}",
                                 out / f"overall-{area}.png")
            plotted.append(f"overall-{area}.png")
    files: dict[str, str] = {}
    for c in analysis.category_ids:
        curves = analysis.curves(c, "all")
        if curves is None:
            continue
        name = str(analysis.category_names.get(c, c))
        file_name = _safe_name(name)
        if f"per_category/{file_name}.png" in files.values():  # two names that read the same as files
            file_name = f"{file_name}_{c}"
        files[name] = f"per_category/{file_name}.png"
        super_name = analysis.supercategories.get(c)
        title = f"{args.iou_type}: {super_name + ' / ' if super_name else ''}{name}"
        plot_error_breakdown(RECALL_THRESHOLDS, curves, ERROR_STEPS, title, out / files[name])

    labels = confusion.labels
    plot_confusion_matrix(confusion.matrix, labels + ["background"], labels + ["missed"],
                          f"{args.iou_type}: IoU >= {args.iou_thresh:g}, score >= {args.score_thresh:g}",
                          out / "confusion_matrix.png")
    _write_json(out / "confusion_matrix.json", confusion.to_json())
    report = analysis.to_json()
    report["plots"] = {"overall": plotted, "per_category": files}
    _write_json(out / "analysis.json", report)

    overall = analysis.ap(None, "all")
    print(f"{args.iou_type} error analysis (AP of each step, all areas, mean over categories):")
    print("  " + "  ".join(f"{step} {value:.3f}" for step, value in overall.items()))
    print(f"Wrote {out / 'analysis.json'}, the PR plots and {out / 'confusion_matrix.png'}")
    if worst:
        _draw_worst(confusion, worst, args.image_root, out)
        print(f"Drew {len(worst['fp'])} images into {out / 'worst_fp'} and {len(worst['fn'])} into "
              f"{out / 'worst_fn'} (objects green, detections red)")
    return 0


def _image_path(confusion: ConfusionResult, image_id, image_root: str) -> Path:
    file_name = confusion.file_names.get(image_id)
    if not file_name:
        raise InputError(f"Image id {image_id!r} has no file_name in the ground truth; cannot draw it.")
    path = Path(image_root) / file_name
    if not path.is_file():
        raise InputError(f"Image {str(path)!r} (image id {image_id!r}) does not exist. Pass the folder the json's "
                         f"file_name entries are relative to as --image-root.")
    return path


def _draw_worst(confusion: ConfusionResult, worst: dict, image_root: str, out: Path) -> None:
    """Draw the chosen images (``worst``: "fp" / "fn" -> ImageErrors, worst first)."""
    names = confusion.category_names
    for kind, images in worst.items():
        for rank, img in enumerate(images):
            image = read_image(_image_path(confusion, img.image_id, image_root)).permute(1, 2, 0).numpy()
            gt_texts = [f"{names.get(c, c)}{' (crowd)' if crowd else ''}"
                        for c, crowd in zip(img.gt_category_ids, img.gt_crowd)]
            det_texts = [f"{names.get(c, c)} {s:.2f}" for c, s in zip(img.det_category_ids, img.det_scores)]
            picture = draw_gt_and_detections(image, img.gt_boxes, gt_texts, img.det_boxes, det_texts)
            save_image(picture, out / f"worst_{kind}" / f"{rank:02d}_{img.image_id}.png")
