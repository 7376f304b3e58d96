"""Cityscapes instance segmentation AP, computed by cityscapesscripts (the ``cityscapes`` extra).

The predictions are written in the format of the Cityscapes benchmark (one
``<name>_pred.txt`` per image, each line "<mask png> <label id> <score>", and one binary PNG per
instance; :func:`write_cityscapes_predictions`, also what a test-server submission holds), then
``cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling`` scores them against the
split's ``gtFine/<split>/<city>/*_gtFine_instanceIds.png``, as detectron2's
``CityscapesInstanceEvaluator`` drives it.

The script runs in a child Python process (``_SCRIPT_DRIVER``): it keeps its settings in a
module-level object, writes files into the current folder and quits the process (``sys.exit``) on
bad input, and under numpy >= 2.4 it needs ``numpy.in1d`` back; in a child, none of that touches
the caller.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from swiftdet.errors import DatasetError, EvaluationError, InputError

__all__ = ["evaluate_cityscapes", "write_cityscapes_predictions"]

# The 8 evaluated classes of cityscapesscripts' labels.py (hasInstances and not ignoreInEval).
_CLASS_NAMES = {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train", 32: "motorcycle",
                33: "bicycle"}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_INSTALL = 'pip install -e ".[cityscapes]" (or pip install cityscapesscripts)'


def _stem(file_name: str) -> str:
    base = os.path.basename(file_name)
    if not base.endswith(_IMAGE_SUFFIX):
        raise InputError(f"Image file '{file_name}' is not a Cityscapes image name (<city>_<seq>_<frame>{_IMAGE_SUFFIX}); "
                         "its ground truth and prediction files are named after it.")
    return base[: -len(_IMAGE_SUFFIX)]


def _check_result(position: int, r: Any, image_files: Mapping[int, str]) -> None:
    if not isinstance(r, dict):
        raise InputError(f"results[{position}] is a {type(r).__name__}, not a dict with image_id, category_id, score "
                         "and segmentation.")
    if r.get("image_id") not in image_files:
        raise InputError(f"results[{position}] has image_id {r.get('image_id')!r}, which is not an image of the evaluated set.")
    if r.get("category_id") not in _CLASS_NAMES:
        raise InputError(f"results[{position}] has category_id {r.get('category_id')!r}; Cityscapes results use the "
                         f"label ids of its 8 instance classes: {sorted(_CLASS_NAMES)}.")
    segm = r.get("segmentation")
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise InputError(f"results[{position}] (image {r['image_id']}) has no RLE 'segmentation'; Cityscapes "
                         "evaluation scores instance masks, so the model needs its mask head (model.mask_on=true).")
    if not isinstance(r.get("score"), (int, float, np.number)) or isinstance(r.get("score"), bool):
        raise InputError(f"results[{position}] (image {r['image_id']}) has no numeric 'score'.")


def _decode_mask(segm: dict) -> np.ndarray:
    import pycocotools.mask as mask_utils

    counts = segm["counts"]
    rle = {"size": list(segm["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def write_cityscapes_predictions(results: Sequence[dict], image_files: Mapping[int, str],
                                 out_dir: str | os.PathLike) -> dict[int, str]:
    """Write COCO-format mask results in the Cityscapes instance format.

    Args:
        results: dicts with ``image_id``, ``category_id`` (a Cityscapes label id: person 24 ...
            bicycle 33), ``score`` and ``segmentation`` (compressed RLE of the whole image).
        image_files: image id -> the image's file name ("<city>/<name>_leftImg8bit.png"); every
            image gets a (possibly empty) ``<name>_pred.txt``, as the script requires one per image.
        out_dir: folder to write into (created).

    Returns:
        image id -> the path of its ``_pred.txt``.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for position, r in enumerate(results):
        _check_result(position, r, image_files)
        by_image[r["image_id"]].append(r)
    txt_files = {}
    for image_id, file_name in image_files.items():
        stem = _stem(file_name)
        lines = []
        for i, r in enumerate(by_image.get(image_id, [])):
            png = f"{stem}_{i}_{_CLASS_NAMES[r['category_id']]}.png"
            # 1-bit PNGs at zlib level 1: the script reads any non-zero pixel as the mask, and these write about
            # 3x faster than 8-bit ones (tens of thousands of full-size masks on Cityscapes val)
            Image.fromarray(_decode_mask(r["segmentation"])).save(out / png, compress_level=1)
            lines.append(f"{png} {r['category_id']} {float(r['score'])!r}\n")
        txt = out / f"{stem}_pred.txt"
        txt.write_text("".join(lines))
        txt_files[image_id] = str(txt)
    return txt_files


def _ground_truth_files(root: str | os.PathLike, split: str, image_files: Mapping[int, str]) -> dict[int, str]:
    gt_dir = Path(root) / "gtFine" / split
    files = {}
    for image_id, file_name in image_files.items():
        city = os.path.basename(os.path.dirname(file_name)) or _stem(file_name).split("_")[0]
        path = gt_dir / city / f"{_stem(file_name)}_gtFine_instanceIds.png"
        if not path.is_file():
            raise DatasetError(f"Cityscapes image '{file_name}' (id {image_id}) has no ground truth {path}; the evaluation "
                               f"reads gtFine/{split}/<city>/<name>_gtFine_instanceIds.png for every evaluated image.")
        files[image_id] = str(path.resolve())
    return files


def _check_results(results: Sequence[dict], image_files: Mapping[int, str], gt_files: Mapping[int, str]) -> None:
    """Every result valid, its mask the size of its image's ground truth."""
    from PIL import Image

    sizes: dict[int, list[int]] = {}
    for position, r in enumerate(results):
        _check_result(position, r, image_files)
        image_id = r["image_id"]
        if image_id not in sizes:
            with Image.open(gt_files[image_id]) as im:
                sizes[image_id] = [im.size[1], im.size[0]]
        if list(r["segmentation"]["size"]) != sizes[image_id]:
            raise InputError(f"results[{position}] (image {image_id}) has a mask of size {list(r['segmentation']['size'])} "
                             f"(height, width) but its ground truth {gt_files[image_id]} is {sizes[image_id]}.")


def evaluate_cityscapes(root: str | os.PathLike, split: str, results: Sequence[dict],
                        image_files: Mapping[int, str], *, work_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Cityscapes instance-level AP of ``results``, as cityscapesscripts computes it.

    Args:
        root: the Cityscapes root (with ``gtFine/<split>/``).
        split: the evaluated split ("val"; "train" works the same way).
        results: COCO-format mask results (see :func:`write_cityscapes_predictions`).
        image_files: image id -> file name of every evaluated image; the ground truth is these
            images' instanceIds PNGs (a subset of a split scores that subset).
        work_dir: where to write the predictions and the script's files (kept); default a
            temporary folder, removed afterwards.

    Returns:
        "AP" (mean over the 10 overlaps 0.5:0.95 and the classes), "AP50", and "AP-<class>",
        "AP50-<class>" for the 8 classes, as fractions in [0, 1] as cityscapesscripts computes them
        (its table prints the same fractions; detectron2 reports them times 100). -1 where
        undefined: a class with neither ground truth nor predictions (the script's NaN; it leaves
        such classes out of the means).
    """
    try:
        import cityscapesscripts  # noqa: F401  (the child process imports it; fail here with the hint)
    except ImportError:
        raise EvaluationError(f"Cityscapes evaluation needs cityscapesscripts, which is not installed: {_INSTALL}.") from None
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="swiftdet_cityscapes_") as tmp:
            return evaluate_cityscapes(root, split, results, image_files, work_dir=tmp)
    if not image_files:
        raise InputError("evaluate_cityscapes: image_files is empty; there is nothing to evaluate.")
    work = Path(work_dir).resolve()
    gt_files = _ground_truth_files(root, split, image_files)
    _check_results(results, image_files, gt_files)
    pred_files = write_cityscapes_predictions(results, image_files, work / "predictions")
    ids = sorted(image_files)
    task = {"predictions": [pred_files[i] for i in ids], "ground_truth": [gt_files[i] for i in ids],
            "prediction_root": str(work / "predictions"), "gt_instances": str(work / "gtInstances.json"),
            "export": str(work / "averages.json")}
    (work / "task.json").write_text(json.dumps(task))
    (work / "gtInstances.json").unlink(missing_ok=True)  # the script would read a cache left by an earlier run
    child = subprocess.run([sys.executable, "-c", _SCRIPT_DRIVER, str(work / "task.json")], cwd=work,
                           capture_output=True, text=True)
    if child.returncode != 0:
        said = (child.stdout + child.stderr).strip().splitlines()
        raise EvaluationError("cityscapesscripts' evalInstanceLevelSemanticLabeling failed on the predictions in "
                              f"{work / 'predictions'}: " + " | ".join(said[-5:]))
    return _metrics(json.loads((work / "averages.json").read_text()))


def _number(value: Any) -> float:
    value = float(value)
    return -1.0 if math.isnan(value) else value


def _metrics(averages: dict) -> dict[str, float]:
    metrics = {"AP": _number(averages["allAp"]), "AP50": _number(averages["allAp50%"])}
    for name, values in averages["classes"].items():
        metrics[f"AP-{name}"] = _number(values["ap"])
        metrics[f"AP50-{name}"] = _number(values["ap50%"])
    return metrics


# What the child process runs: the steps of the script's evaluateImgLists, without its debugging
# dump matches.json (under numpy >= 2.3 its json writer refuses the numpy integers that
# count_nonzero now returns); the averages are written by json here. numpy 2.4 removed in1d, which
# cityscapesscripts 2.3.0 still calls (on a flat result that it reshapes): the child aliases it to
# isin, its replacement. The child imports nothing of swiftdet.
_SCRIPT_DRIVER = """
import json, sys
import numpy as np
if not hasattr(np, "in1d"):
    np.in1d = lambda a, b, assume_unique=False, invert=False: np.isin(
        a, b, assume_unique=assume_unique, invert=invert).ravel()
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as script

with open(sys.argv[1]) as f:
    task = json.load(f)
args = script.args
args.predictionPath = task["prediction_root"]
args.predictionWalk = None
args.gtInstancesFile = task["gt_instances"]  # default: a cache file inside the installed package
args.quiet = True
script.setInstanceLabels(args)
gt_instances = script.getGtInstances(task["ground_truth"], args)
matches = script.matchGtWithPreds(task["predictions"], task["ground_truth"], gt_instances, args)
averages = script.computeAverages(script.evaluateMatches(matches, args), args)
with open(task["export"], "w") as f:
    json.dump(averages, f, default=float)  # numpy floats; NaN stays NaN
"""
