"""Loading and checking COCO ground truth and results into flat numpy arrays.

pycocotools reads both as lists of dicts and walks them in Python for every image and category.
Here each is read once into arrays (one row per annotation / detection) that the vectorised
matcher in :mod:`swiftdet.evaluation.coco_matching` works on. Everything a user can get wrong
(a missing file, a json that is not COCO, unknown image or category ids, a missing field) raises
:class:`DatasetError` (ground truth) or :class:`EvaluationError` (results) naming the culprit.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from swiftdet.errors import DatasetError, EvaluationError

IOU_TYPES = ("bbox", "segm", "keypoints")
_MAX_IDS_IN_MESSAGE = 5


@dataclass
class GroundTruth:
    """COCO ground truth as arrays; ``N`` annotations, in the json's order.

    Images and categories are indexed by their position in the sorted list of ids, which is the
    order pycocotools evaluates them in.
    """

    source: str  # file name or "<dict>", used in messages
    image_ids: list  # sorted image ids
    category_ids: list  # sorted category ids
    category_names: dict  # category id -> name
    image_sizes: dict  # image id -> (height, width), where the json gives them
    ann_ids: np.ndarray  # (N,) annotation ids
    image_index: np.ndarray  # (N,) int64 position of the image in image_ids
    category_index: np.ndarray  # (N,) int64 position of the category in category_ids
    area: np.ndarray  # (N,) float64, the json's "area" field (used for the area ranges)
    iscrowd: np.ndarray  # (N,) bool
    boxes: np.ndarray | None = None  # (N, 4) float64 xywh, for bbox and keypoints
    rles: list | None = None  # N compressed RLEs, for segm
    keypoints: np.ndarray | None = None  # (N, K, 3) float64, for keypoints
    num_keypoints: np.ndarray | None = None  # (N,) int64, for keypoints
    file_names: dict | None = None  # image id -> the json's file_name, where it gives one


@dataclass
class Detections:
    """Results as arrays; ``M`` detections in the results' order."""

    image_index: np.ndarray  # (M,) int64 position of the image in GroundTruth.image_ids
    category_index: np.ndarray  # (M,) int64 position in GroundTruth.category_ids (0 if absent)
    score: np.ndarray  # (M,) float64
    area: np.ndarray  # (M,) float64 area used for the area ranges
    boxes: np.ndarray | None = None  # (M, 4) float64 xywh
    rles: list | None = None  # M compressed RLEs
    keypoints: np.ndarray | None = None  # (M, K, 3) float64
    branch: str | None = None  # the loadRes branch the results take (see loadres_branch); None if empty
    area_source: str = "none"  # where ``area`` comes from: "box", "mask", "keypoints" (extent) or "none"


def _few(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:_MAX_IDS_IN_MESSAGE])
    more = f" and {len(ids) - _MAX_IDS_IN_MESSAGE} more" if len(ids) > _MAX_IDS_IN_MESSAGE else ""
    return shown + more


def _read_json(path: Path, error: type[Exception], what: str) -> Any:
    if not path.is_file():
        raise error(f"{what} file {str(path)!r} does not exist. Pass the path of an existing json file.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} file {str(path)!r} is not valid json ({exc}). Check that it is a complete, "
                    f"uncorrupted json file.") from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _base_name(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


def _check_file_names(results: Sequence[dict], gt: GroundTruth, source: str) -> None:
    """Results that name their image (``file_name``, as ``swiftdet predict`` writes) must name the
    image their ``image_id`` has in the ground truth, compared by base name; else the ids were not
    the dataset's (e.g. positions in a file list) and the AP would be silently wrong."""
    if not gt.file_names:
        return
    wrong: dict[Any, str] = {}
    for r in results:
        name = r.get("file_name")
        expected = gt.file_names.get(r["image_id"])
        if isinstance(name, str) and expected is not None and _base_name(name) != _base_name(expected):
            wrong.setdefault(r["image_id"], name)
    if wrong:
        image_id, name = next(iter(wrong.items()))
        raise EvaluationError(
            f"Results {source!r}: the results of {len(wrong)} image id(s) name another image than the ground truth "
            f"{gt.source!r} gives that id: image id {image_id!r} is {gt.file_names[image_id]!r} there, but its results "
            f"are for {name!r}. The image ids are not the dataset's (swiftdet predict numbers images by their position "
            f"unless told otherwise): predict again with --coco-json {gt.source if gt.source[0] != '<' else 'GT.json'} "
            f"so that the results carry the ground truth's image ids."
        )


def load_ground_truth(gt: Any, iou_type: str) -> GroundTruth:
    """Read ``gt`` (a path, a COCO-format dict or a ``pycocotools.coco.COCO``) and check it."""
    if isinstance(gt, (str, Path)):
        source = str(gt)
        dataset = _read_json(Path(gt), DatasetError, "Ground-truth")
    elif isinstance(gt, dict):
        source, dataset = "<ground-truth dict>", gt
    elif hasattr(gt, "dataset") and isinstance(getattr(gt, "dataset"), dict):
        source, dataset = "<pycocotools COCO object>", gt.dataset
    else:
        raise DatasetError(f"Ground truth must be a path to a COCO json, a COCO-format dict or a pycocotools "
                           f"COCO object, got {type(gt).__name__}.")
    return _ground_truth_from_dict(dataset, source, iou_type)


def _ground_truth_from_dict(dataset: Any, source: str, iou_type: str) -> GroundTruth:
    if not isinstance(dataset, dict):
        raise DatasetError(f"Ground truth {source!r} is not a COCO dataset: its top level is a "
                           f"{type(dataset).__name__}, expected an object with 'images', 'annotations' and "
                           f"'categories' lists.")
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if missing:
        raise DatasetError(f"Ground truth {source!r} is not a COCO dataset: it has no {missing} key(s). A COCO "
                           f"json needs 'images', 'annotations' and 'categories' lists.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset[key], list):
            raise DatasetError(f"Ground truth {source!r}: '{key}' is a {type(dataset[key]).__name__}, expected a "
                               f"list of objects.")
    images, anns, cats = dataset["images"], dataset["annotations"], dataset["categories"]
    for key, items in (("images", images), ("categories", cats)):
        bad = [i for i, item in enumerate(items) if not isinstance(item, dict) or "id" not in item]
        if bad:
            raise DatasetError(f"Ground truth {source!r}: entries {_few(bad)} of '{key}' are not objects with an "
                               f"'id'. Every image and category needs an 'id'.")
    image_ids = sorted({img["id"] for img in images})
    if len(image_ids) != len(images):
        raise DatasetError(f"Ground truth {source!r}: image ids are not unique. Give every image its own id.")
    category_ids = sorted({c["id"] for c in cats})
    if len(category_ids) != len(cats):
        raise DatasetError(f"Ground truth {source!r}: category ids are not unique. Give every category its own id.")
    image_pos = {i: n for n, i in enumerate(image_ids)}
    cat_pos = {c: n for n, c in enumerate(category_ids)}

    needed = ["id", "image_id", "category_id", "area", "iscrowd"]
    needed += {"bbox": ["bbox"], "segm": ["segmentation"], "keypoints": ["bbox", "keypoints", "num_keypoints"]}[iou_type]
    for ann in anns:
        if not isinstance(ann, dict) or any(k not in ann for k in needed):
            ident = ann.get("id", "?") if isinstance(ann, dict) else "?"
            lacking = [k for k in needed if k not in ann] if isinstance(ann, dict) else needed
            raise DatasetError(f"Ground truth {source!r}: annotation id {ident!r} lacks {lacking}; '{iou_type}' "
                               f"evaluation needs {needed} in every annotation.")
    ann_ids = [a["id"] for a in anns]
    if len(set(ann_ids)) != len(ann_ids):
        seen, dup = set(), []
        for i in ann_ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise DatasetError(f"Ground truth {source!r}: annotation ids {_few(sorted(set(dup)))} occur more than once. "
                           f"Give every annotation its own id (pycocotools would silently evaluate the wrong ones).")
    unknown_img = [a["id"] for a in anns if a["image_id"] not in image_pos]
    if unknown_img:
        raise DatasetError(f"Ground truth {source!r}: {len(unknown_img)} annotation(s) (ids {_few(unknown_img)}) "
                           f"refer to an image_id that is not in 'images'. Add the images or drop the annotations.")
    unknown_cat = [a["id"] for a in anns if a["category_id"] not in cat_pos]
    if unknown_cat:
        raise DatasetError(f"Ground truth {source!r}: {len(unknown_cat)} annotation(s) (ids {_few(unknown_cat)}) "
                           f"have a category_id that is not in 'categories'. Add the categories or fix the ids.")
    bad_area = [a["id"] for a in anns if not _is_number(a["area"])]
    if bad_area:
        raise DatasetError(f"Ground truth {source!r}: annotation(s) {_few(bad_area)} have a non-numeric 'area'.")

    image_sizes = {img["id"]: (img["height"], img["width"]) for img in images if "height" in img and "width" in img}
    gt = GroundTruth(
        source=source,
        image_ids=image_ids,
        category_ids=category_ids,
        category_names={c["id"]: c.get("name", str(c["id"])) for c in cats},
        image_sizes=image_sizes,
        file_names={img["id"]: str(img["file_name"]) for img in images if img.get("file_name")},
        ann_ids=np.array(ann_ids) if ann_ids else np.zeros(0, dtype=np.int64),
        image_index=np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64),
        category_index=np.array([cat_pos[a["category_id"]] for a in anns], dtype=np.int64),
        area=np.array([a["area"] for a in anns], dtype=np.float64),
        iscrowd=np.array([bool(a["iscrowd"]) for a in anns], dtype=bool),
    )
    if iou_type in ("bbox", "keypoints"):
        gt.boxes = _gt_boxes(anns, source)
    if iou_type == "segm":
        gt.rles = [_gt_rle(a, image_sizes, source) for a in anns]
    if iou_type == "keypoints":
        gt.keypoints = _keypoint_array([a["keypoints"] for a in anns], lambda i: f"Ground truth {source!r}: "
                                       f"annotation id {anns[i]['id']!r}", DatasetError)
        gt.num_keypoints = np.array([a["num_keypoints"] for a in anns], dtype=np.int64)
    return gt


def _gt_boxes(anns: list, source: str) -> np.ndarray:
    boxes = _numeric_array([a["bbox"] for a in anns], (len(anns), 4))
    if boxes is not None:
        return boxes
    for a in anns:
        box = a["bbox"]
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(_is_number(v) and math.isfinite(v) for v in box)):
            raise DatasetError(f"Ground truth {source!r}: annotation id {a['id']!r} has bbox {box!r}; expected "
                               f"[x, y, width, height] numbers.")
    raise DatasetError(f"Ground truth {source!r}: the bboxes are not all [x, y, width, height] finite numbers.")


def _rasterised_rle(segm: Any, h: int, w: int) -> dict | None:
    """Polygons (list) or an uncompressed RLE (dict with a list of counts) as a compressed RLE of an
    ``h`` x ``w`` image, converted as pycocotools' annToRLE does; None for anything else.

    Raises ValueError for a polygon point so far outside the image (beyond 16 image sides) that
    rasterising it would exhaust the memory: pycocotools walks every edge pixel by pixel.
    """
    if isinstance(segm, list):
        limit = 16 * max(h, w, 64)
        for polygon in segm:
            if isinstance(polygon, list) and any(_is_number(c) and not -limit <= c <= limit for c in polygon):
                raise ValueError(f"a polygon has a point more than {limit} pixels outside the {w}x{h} image")
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    return None


def _gt_rle(ann: dict, image_sizes: dict, source: str) -> dict:
    """The annotation's mask as a compressed RLE, converted the way pycocotools' annToRLE does."""
    segm = ann["segmentation"]
    if isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
        size = segm.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(type(s) is int and s >= 0 for s in size)):
            raise DatasetError(f"Ground truth {source!r}: the RLE segmentation of annotation id {ann['id']!r} has size "
                               f"{str(size)[:40]}; expected [height, width] integers.")
        expected = image_sizes.get(ann["image_id"])
        if expected is not None and list(size) != [expected[0], expected[1]]:
            raise DatasetError(f"Ground truth {source!r}: the RLE segmentation of annotation id {ann['id']!r} has size "
                               f"{size} but image id {ann['image_id']!r} is {expected[0]}x{expected[1]} (height x width).")
        return segm
    if ann["image_id"] not in image_sizes:
        raise DatasetError(f"Ground truth {source!r}: image id {ann['image_id']!r} has no 'height'/'width', needed "
                           f"to rasterise the polygon / uncompressed RLE of annotation id {ann['id']!r}.")
    h, w = image_sizes[ann["image_id"]]
    try:
        rle = _rasterised_rle(segm, h, w)
    except Exception as exc:  # pycocotools raises bare Exceptions / TypeErrors on malformed polygons
        raise DatasetError(f"Ground truth {source!r}: the segmentation of annotation id {ann['id']!r} cannot be "
                           f"read as COCO polygons or RLE ({exc}).") from exc
    if rle is not None:
        return rle
    raise DatasetError(f"Ground truth {source!r}: annotation id {ann['id']!r} has a segmentation of type "
                       f"{type(segm).__name__}; expected polygons (list) or RLE (dict with 'size' and 'counts').")


def _keypoint_array(rows: list, where, error: type[Exception]) -> np.ndarray:
    lengths = {len(r) if isinstance(r, (list, tuple)) else -1 for r in rows}
    if len(lengths) > 1 or -1 in lengths or (lengths and next(iter(lengths)) % 3):
        for i, r in enumerate(rows):
            if not isinstance(r, (list, tuple)) or len(r) % 3 or len(r) != len(rows[0]):
                raise error(f"{where(i)} has keypoints of length {len(r) if isinstance(r, (list, tuple)) else r!r};"
                            f" expected a flat list [x1, y1, v1, x2, ...] of 3*K numbers, the same K everywhere.")
    if not rows:
        return np.zeros((0, 0, 3))
    arr = np.array(rows, dtype=np.float64)
    return arr.reshape(len(rows), -1, 3)


# Which of pycocotools' ``COCO.loadRes`` branches a results list takes, and what each gives the
# evaluation (areas for the small / medium / large ranges, and the boxes or masks where a result
# does not carry them itself).
LOADRES_BRANCHES = ("bbox", "segmentation", "keypoints")
AREA_FROM = ("loadres", "mask")
AREA_SOURCES = {"bbox": "box", "segmentation": "mask", "keypoints": "keypoints"}


def loadres_branch(results: Sequence[dict], source: str = "<results list>") -> str | None:
    """The branch of pycocotools' ``COCO.loadRes`` that ``results`` go through; None when empty.

    loadRes decides by the FIRST result alone and treats all of them the same way:

    * ``'bbox'`` when it has a non-empty ``bbox``: area = w * h; a missing ``segmentation``
      becomes the box's polygon;
    * ``'segmentation'`` otherwise, when it has a ``segmentation`` (a compressed RLE): area = the
      mask's pixel count; a missing ``bbox`` becomes the mask's bounding box;
    * ``'keypoints'`` otherwise, when it has ``keypoints``: area and box are the extent of all
      keypoints (visible or not), (max x - min x) * (max y - min y).

    Caption results and results with none of these keys cannot be evaluated (loadRes gives them no
    area) and raise :class:`EvaluationError`.
    """
    if not results:
        return None
    first = results[0]
    if "caption" in first:
        raise EvaluationError(f"Results {source!r}: result #0 is a caption result; COCO caption results have no "
                              f"area and cannot be evaluated as detections.")
    if "bbox" in first and not (isinstance(first["bbox"], list) and len(first["bbox"]) == 0):
        return "bbox"
    if "segmentation" in first:
        return "segmentation"
    if "keypoints" in first:
        return "keypoints"
    raise EvaluationError(f"Results {source!r}: result #0 has none of 'bbox' (non-empty), 'segmentation' or "
                          f"'keypoints'; pycocotools' loadRes decides by the first result what the results are, "
                          f"so give it the field(s) of the evaluation.")


def load_detections(results: Any, gt: GroundTruth, iou_type: str, *, need_category: bool = True,
                    area_from: str = "loadres") -> Detections:
    """Read ``results`` (a path to a results json or a list of result dicts) and check them against ``gt``.

    What is evaluated follows pycocotools' ``COCO.loadRes`` for every combination of keys (see
    :func:`loadres_branch`): the detection areas of the small / medium / large ranges, the boxes of
    results without a ``bbox`` (from the mask, or the keypoints' extent) and the masks of results
    without a ``segmentation`` (the box as a polygon). ``area_from="mask"`` instead takes the pixel
    count of each detection's mask as evaluated (``segm`` only; detectron2's convention, which drops
    ``bbox`` from mask results before loadRes).

    Where pycocotools would fail (a later result lacking what the first one has, an empty results
    list, ...) an :class:`EvaluationError` names the result, except that an empty list is evaluated as a
    detector that found nothing. The user's dicts are not modified (pycocotools' loadRes writes into
    them).
    """
    if area_from not in AREA_FROM:
        raise EvaluationError(f"area_from {area_from!r} is not one of {list(AREA_FROM)}.")
    if area_from == "mask" and iou_type != "segm":
        raise EvaluationError(f"area_from='mask' is for 'segm' evaluation only (got {iou_type!r}); {iou_type!r} "
                              f"takes its areas as pycocotools' loadRes does.")
    if isinstance(results, (str, Path)):
        source = str(results)
        results = _read_json(Path(results), EvaluationError, "Results")
    else:
        source = "<results list>"
    if not isinstance(results, (list, tuple)):
        raise EvaluationError(f"Results {source!r} must be a list of detection objects (COCO results format), got "
                              f"a {type(results).__name__}.")
    bad = [n for n, r in enumerate(results) if not isinstance(r, dict)]
    if bad:
        raise EvaluationError(f"Results {source!r}: result(s) #{_few(bad)} are not objects; a COCO results json is "
                              f"a list of {{image_id, category_id, score, bbox|segmentation|keypoints}} objects.")
    branch = loadres_branch(results, source)
    needed = ["image_id", "score"] + (["category_id"] if need_category else [])
    # What loadRes reads from every result once the first has chosen the branch ...
    needed += {None: [], "bbox": ["bbox"], "segmentation": ["segmentation"], "keypoints": ["keypoints"]}[branch]
    # ... and what the evaluation reads that loadRes does not make up.
    if iou_type == "keypoints" and "keypoints" not in needed:
        needed.append("keypoints")
    if iou_type == "segm" and branch == "keypoints":
        needed.append("segmentation")
    needed_keys = set(needed)
    for n, r in enumerate(results):
        if not r.keys() >= needed_keys:
            lacking = [k for k in needed if k not in r]
            why = "" if branch is None or not set(lacking) <= {"bbox", "segmentation", "keypoints"} else \
                f" (result #0 has {_first_fields(results[0])}, so pycocotools' loadRes reads that from every result)"
            raise EvaluationError(f"Results {source!r}: result #{n} lacks {lacking}; '{iou_type}' evaluation of these "
                                  f"results needs {needed} in every result{why}.")

    image_pos = {i: n for n, i in enumerate(gt.image_ids)}
    unknown = sorted({r["image_id"] for r in results if r["image_id"] not in image_pos}, key=repr)
    if unknown:
        raise EvaluationError(f"Results {source!r}: {len(unknown)} image id(s) are not in the ground truth "
                              f"{gt.source!r}: {_few(unknown)}. Evaluate against the annotation file the images "
                              f"came from.")
    _check_file_names(results, gt, source)
    cat_pos = {c: n for n, c in enumerate(gt.category_ids)}
    if need_category:
        unknown = sorted({r["category_id"] for r in results if r["category_id"] not in cat_pos}, key=repr)
        if unknown:
            raise EvaluationError(f"Results {source!r}: category id(s) {_few(unknown)} are not categories of the "
                                  f"ground truth {gt.source!r} (known: {_few(gt.category_ids)}). Map the model's "
                                  f"class indices to the dataset's category ids.")
    scores = _numeric_array([r["score"] for r in results], (len(results),))
    if scores is None:
        bad = [n for n, r in enumerate(results) if not _is_number(r["score"]) or not math.isfinite(r["score"])]
        raise EvaluationError(f"Results {source!r}: result(s) #{_few(bad)} have a score that is not a finite "
                              f"number.")

    dets = Detections(
        image_index=np.array([image_pos[r["image_id"]] for r in results], dtype=np.int64),
        category_index=np.array([cat_pos[r["category_id"]] if "category_id" in r else 0 for r in results],
                                dtype=np.int64),
        score=scores,
        area=np.zeros(len(results)),
        branch=branch,
        area_source="none" if branch is None else AREA_SOURCES[branch],
    )
    keypoints = None
    if branch is None:
        dets.boxes, dets.rles, keypoints = np.zeros((0, 4)), [], np.zeros((0, 0, 3))
    elif branch == "bbox":
        dets.boxes = _result_boxes(results, source)
        dets.area = dets.boxes[:, 2] * dets.boxes[:, 3]  # loadRes: bb[2] * bb[3]
    elif branch == "segmentation":
        dets.rles = [_result_compressed_rle(n, r, gt, source) for n, r in enumerate(results)]
        dets.area = _rle_areas(dets.rles)  # loadRes: maskUtils.area
        if iou_type == "bbox":
            dets.boxes = _boxes_or_mask_boxes(results, dets.rles, source)
    else:
        keypoints = _keypoint_array([r["keypoints"] for r in results],
                                    lambda i: f"Results {source!r}: result #{i}", EvaluationError)
        if keypoints.shape[1] == 0:
            raise EvaluationError(f"Results {source!r}: the keypoints are empty lists; give [x1, y1, v1, ...].")
        x, y = keypoints[:, :, 0], keypoints[:, :, 1]
        x0, x1, y0, y1 = x.min(1), x.max(1), y.min(1), y.max(1)
        dets.area = (x1 - x0) * (y1 - y0)  # loadRes: the extent of all keypoints, visible or not
        dets.boxes = np.stack([x0, y0, x1 - x0, y1 - y0], 1)  # and it replaces any given bbox by it

    if iou_type == "segm" and dets.rles is None:
        dets.rles = [_result_any_rle(n, r, gt, source, box_polygon=branch == "bbox") for n, r in enumerate(results)]
    if iou_type == "keypoints":
        if keypoints is None:
            keypoints = _keypoint_array([r["keypoints"] for r in results],
                                        lambda i: f"Results {source!r}: result #{i}", EvaluationError)
        dets.keypoints = keypoints
        if gt.keypoints is not None and len(gt.keypoints) and len(results) and \
                dets.keypoints.shape[1] != gt.keypoints.shape[1]:
            raise EvaluationError(f"Results {source!r} have {dets.keypoints.shape[1]} keypoints per detection, the "
                                  f"ground truth {gt.source!r} has {gt.keypoints.shape[1]}.")
    if area_from == "mask":
        dets.area = _rle_areas(dets.rles)
        dets.area_source = "mask"
    return dets


def _first_fields(first: dict) -> str:
    shown = [k for k in ("bbox", "segmentation", "keypoints") if k in first]
    return " and ".join(f"'{k}'" + (" (empty)" if k == "bbox" and first[k] == [] else "") for k in shown)


def _boxes_or_mask_boxes(results: Sequence[dict], rles: list, source: str) -> np.ndarray:
    """The results' own ``bbox`` where they have one, else the bounding box of the mask (loadRes)."""
    given = [n for n, r in enumerate(results) if "bbox" in r]
    boxes = np.zeros((len(results), 4))
    missing = [n for n, r in enumerate(results) if "bbox" not in r]
    if given:
        boxes[given] = _result_boxes([results[n] for n in given], source, rows=given)
    if missing:
        boxes[missing] = _rle_boxes([rles[n] for n in missing])
    return boxes


def _rle_areas(rles: list) -> np.ndarray:
    """(M,) float64 pixel counts of compressed RLEs."""
    # pycocotools' area() overflows on lists of more than 255 masks (with numpy 2), so go in chunks.
    chunk = 128
    areas = [np.asarray(mask_utils.area(rles[i:i + chunk]), dtype=np.float64) for i in range(0, len(rles), chunk)]
    return np.concatenate(areas) if areas else np.zeros(0)


def _result_boxes(results: Sequence[dict], source: str, rows: Sequence[int] | None = None) -> np.ndarray:
    """(M, 4) float64 xywh of the results' ``bbox``; ``rows`` are their numbers in the results (messages)."""
    boxes = _numeric_array([r["bbox"] for r in results], (len(results), 4))
    if boxes is None:
        for i, r in enumerate(results):
            box = r["bbox"]
            if (not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4
                    or not all(_is_number(v) and math.isfinite(v) for v in box)):
                n = i if rows is None else rows[i]
                raise EvaluationError(f"Results {source!r}: result #{n} (image id {r['image_id']!r}) has bbox "
                                      f"{box!r}; expected [x, y, width, height] finite numbers.")
        raise EvaluationError(f"Results {source!r}: the bboxes are not all [x, y, width, height] finite numbers.")
    return boxes


def _rle_boxes(rles: list) -> np.ndarray:
    """(M, 4) float64 xywh bounding boxes of compressed RLEs (pycocotools' toBbox)."""
    chunk = 128  # as _rle_areas
    boxes = [np.asarray(mask_utils.toBbox(rles[i:i + chunk]), dtype=np.float64).reshape(-1, 4)
             for i in range(0, len(rles), chunk)]
    return np.concatenate(boxes) if boxes else np.zeros((0, 4))


def _numeric_array(values: list, shape: tuple) -> np.ndarray | None:
    """``values`` as a float64 array of ``shape`` if they are all finite numbers, else None.

    One numpy conversion checks them all at once; the callers search item by item only on failure,
    to name the culprit.
    """
    if not values:
        return np.zeros(shape)
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged
        return None
    if arr.shape != shape or (arr.size and arr.dtype.kind not in "iuf"):
        return None
    arr = arr.astype(np.float64)
    return arr if np.isfinite(arr).all() else None


def _is_compressed_rle(segm: Any) -> bool:
    return isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)) and "size" in segm


def _check_rle_size(n: int, r: dict, segm: dict, gt: GroundTruth, source: str) -> dict:
    if not (isinstance(segm["size"], list) and len(segm["size"]) == 2 and all(type(s) is int for s in segm["size"])):
        raise EvaluationError(f"Results {source!r}: result #{n} has a mask of size {str(segm['size'])[:40]}; expected "
                              f"[height, width] integers.")
    size = gt.image_sizes.get(r["image_id"])
    if size is not None and list(segm["size"]) != [size[0], size[1]]:
        raise EvaluationError(f"Results {source!r}: result #{n} has a mask of size {list(segm['size'])} but image "
                              f"id {r['image_id']!r} is {size[0]}x{size[1]} (height x width). Paste masks at the "
                              f"original image resolution.")
    return segm


def _result_compressed_rle(n: int, r: dict, gt: GroundTruth, source: str) -> dict:
    """The mask of a result of loadRes' segmentation branch, which must be a compressed RLE."""
    segm = r["segmentation"]
    if not _is_compressed_rle(segm):
        raise EvaluationError(f"Results {source!r}: result #{n} (image id {r['image_id']!r}) has a segmentation "
                              f"that is not a compressed RLE dict {{'size': [h, w], 'counts': str}}. Encode masks "
                              f"with pycocotools.mask.encode(np.asfortranarray(mask)); pycocotools' loadRes takes "
                              f"polygons or uncompressed RLE only when the first result also has a non-empty bbox.")
    return _check_rle_size(n, r, segm, gt, source)


def _result_any_rle(n: int, r: dict, gt: GroundTruth, source: str, *, box_polygon: bool) -> dict:
    """The result's mask as pycocotools' annToRLE makes it: a compressed RLE as is, polygons and
    uncompressed RLE rasterised at the image size; with ``box_polygon`` (loadRes' bbox branch) a
    result without a segmentation is its box as a polygon."""
    if "segmentation" in r:
        segm = r["segmentation"]
    elif box_polygon:
        bb = r["bbox"]
        x1, x2, y1, y2 = [bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]]  # as loadRes, in Python floats
        segm = [[x1, y1, x1, y2, x2, y2, x2, y1]]
    else:  # load_detections has checked that the segmentation is there
        raise AssertionError("result without segmentation")
    if _is_compressed_rle(segm):
        return _check_rle_size(n, r, segm, gt, source)
    if r["image_id"] not in gt.image_sizes:
        raise EvaluationError(f"Results {source!r}: result #{n} has a polygon / uncompressed RLE segmentation but "
                              f"image id {r['image_id']!r} has no 'height'/'width' in the ground truth to "
                              f"rasterise it at.")
    h, w = gt.image_sizes[r["image_id"]]
    try:
        rle = _rasterised_rle(segm, h, w)
    except Exception as exc:  # pycocotools raises bare Exceptions / TypeErrors on malformed input
        raise EvaluationError(f"Results {source!r}: the segmentation of result #{n} (image id "
                              f"{r['image_id']!r}) cannot be read as COCO polygons or RLE ({exc}).") from exc
    if rle is not None:
        return rle
    raise EvaluationError(f"Results {source!r}: result #{n} (image id {r['image_id']!r}) has a segmentation of type "
                          f"{type(segm).__name__}; expected a compressed RLE dict {{'size': [h, w], 'counts': str}} "
                          f"(or polygons / uncompressed RLE alongside a bbox).")
