"""COCO error analysis: where the AP goes (Hoiem et al.'s breakdown, as the COCO site's ``analyze()``),
a confusion matrix, and the images with the most errors.

The breakdown gives, per category and area range, seven precision/recall curves, each the PR curve
once one more kind of error stops counting (areas between consecutive curves are what each error
costs):

* **C75**, **C50**: the PR curve at IoU 0.75 and 0.50 (the usual AP75 and AP50);
* **Loc**: at IoU 0.10: localisation errors (a detection of the right class on the object, with a
  poor box) no longer count; duplicate detections still do (an object is matched once);
* **Sim**: also at IoU 0.10, detections of the category that land (IoU >= 0.1) on an object of
  another category *of the same supercategory* are ignored (neither true nor false positives);
* **Oth**: the same for an object of any other category;
* **BG**: all remaining false positives (background) removed: precision 1 up to the highest recall
  the Oth curve reaches (the curve is 1 wherever the Oth curve is above 0);
* **FN**: the missed objects too: precision 1 at every recall.

As in the COCO site's MATLAB ``CocoEval.analyze``: maxDets 100; C75/C50/Loc come from one
evaluation with the IoU thresholds (0.75, 0.5, 0.1) and the categories used; Sim and Oth evaluate,
for each category k, only the detections of k, class-agnostically at IoU 0.1, against the ground
truth of k's supercategory (Sim) or of all categories (Oth), the objects of categories other than k
being *ignored*: a detection that matches one is neither a true nor a false positive, and, as an
ignored object that is not a crowd, each absorbs one detection. (mmdetection's
``coco_error_analysis.py`` marks those objects crowd instead, so that they absorb any number of
detections with the crowd IoU; we follow the COCO site.) Matching is :mod:`coco_matching`'s, the
one behind :func:`swiftdet.evaluation.coco.evaluate_coco`, so C75 and C50 averaged over the
categories equal COCO's AP75 and AP50.

Where the categories carry no ``supercategory`` (or an empty one), each such category is a group
of its own: its Sim curve equals its Loc curve, and its confusions with other classes show under
Oth. The overall curves are the mean over the categories that have ground truth in the area range
(COCO's AP leaves the others out too; the MATLAB code averages them in as zeros).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pycocotools import mask as mask_utils

from swiftdet.errors import DatasetError, EvaluationError
from swiftdet.evaluation.coco_inputs import Detections, GroundTruth, load_detections, load_ground_truth
from swiftdet.evaluation.coco_matching import box_iou_pairs, make_groups, make_pairs, mask_iou_pairs, match

__all__ = ["ERROR_STEPS", "AREA_RANGES", "ErrorAnalysis", "ConfusionResult", "analyze_errors", "confusion_matrix",
           "read_coco_json"]

ERROR_STEPS = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
# COCOeval's four object area ranges (pixels^2).
AREA_RANGES = {"all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e5 ** 2)}
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100
ANALYSIS_IOU_TYPES = ("bbox", "segm")


def read_coco_json(path: str | Path) -> dict:
    """The ground-truth json as a dict, with a DatasetError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Ground-truth file {str(path)!r} does not exist. Pass the path of a COCO json.")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Ground-truth file {str(path)!r} is not valid json ({exc}).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise DatasetError(f"Ground truth {str(path)!r} is not a COCO dataset: it needs 'images', 'annotations' and "
                           f"'categories' lists.")
    return data


@dataclass
class ErrorAnalysis:
    """The seven curves of every category and area range.

    ``precision`` is (7, R, K, A): step (ERROR_STEPS), recall threshold (R = 101), category (the
    sorted ids of ``category_ids``), area range (AREA_RANGES); -1 where a category has no object in
    the area range.
    """

    iou_type: str
    category_ids: list
    category_names: dict
    supercategories: dict  # category id -> supercategory name, None where absent
    precision: np.ndarray
    num_gt: np.ndarray  # (K, A) objects (not crowd) of each category and area range
    notes: list = field(default_factory=list)

    @property
    def area_labels(self) -> list[str]:
        return list(AREA_RANGES)

    def curves(self, category_id: Any = None, area: str = "all") -> np.ndarray | None:
        """(7, R) curves of one category (its id), or the mean over the categories (None) that have
        objects in ``area``; None when there are none."""
        a = self.area_labels.index(area)
        if category_id is not None:
            k = self.category_ids.index(category_id)
            return None if self.num_gt[k, a] == 0 else self.precision[:, :, k, a]
        present = np.flatnonzero(self.num_gt[:, a] > 0)
        if len(present) == 0:
            return None
        return self.precision[:, :, present, a].mean(axis=2)

    def ap(self, category_id: Any = None, area: str = "all") -> dict[str, float]:
        """AP of each step (the mean of its curve over the recall thresholds); -1 where undefined."""
        curves = self.curves(category_id, area)
        if curves is None:
            return {step: -1.0 for step in ERROR_STEPS}
        return {step: float(curves[i].mean()) for i, step in enumerate(ERROR_STEPS)}

    def to_json(self) -> dict:
        return {
            "iou_type": self.iou_type,
            "steps": list(ERROR_STEPS),
            "max_dets": MAX_DETS,
            "notes": list(self.notes),
            "overall": {area: self.ap(None, area) for area in self.area_labels},
            "per_category": {
                str(self.category_names.get(c, c)): {
                    "category_id": c,
                    "supercategory": self.supercategories.get(c),
                    "num_gt": {area: int(self.num_gt[k, a]) for a, area in enumerate(self.area_labels)},
                    "ap": {area: self.ap(c, area) for area in self.area_labels},
                }
                for k, c in enumerate(self.category_ids)
            },
        }


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in ANALYSIS_IOU_TYPES:
        raise EvaluationError(f"Error analysis is for iou_type 'bbox' or 'segm', got {iou_type!r}.")


def _supercategories(dataset: dict, category_ids: list) -> dict:
    found = {c.get("id"): c.get("supercategory") for c in dataset["categories"] if isinstance(c, dict)}
    return {c: (found.get(c) if isinstance(found.get(c), str) and found.get(c) else None) for c in category_ids}


def analyze_errors(gt: str | Path | dict, results: Any, iou_type: str = "bbox", *,
                   progress: Callable[[int], None] | None = None) -> ErrorAnalysis:
    """The C75 ... FN breakdown of ``results`` against ``gt``.

    Args:
        gt: a COCO json path or dict; categories may carry ``supercategory`` (used by Sim).
        results: a COCO results json path or list, read as pycocotools' loadRes reads it.
        iou_type: "bbox" or "segm".
        progress: called with 1 after each category is analysed (e.g. a progress bar's update).
    """
    _check_iou_type(iou_type)
    dataset = read_coco_json(gt) if not isinstance(gt, dict) else gt
    gt_data = load_ground_truth(gt, iou_type)
    dets = load_detections(results, gt_data, iou_type, need_category=True)
    num_cats = len(gt_data.category_ids)
    supercats = _supercategories(dataset, gt_data.category_ids)
    notes = []
    missing = [gt_data.category_names.get(c, c) for c, s in supercats.items() if s is None]
    if missing:
        notes.append(f"{len(missing)} of {num_cats} categories have no supercategory ({', '.join(map(str, missing[:5]))}"
                     f"{' ...' if len(missing) > 5 else ''}): each is a group of its own, so its Sim curve equals its "
                     f"Loc curve and its confusions with other classes fall under Oth.")

    precision = -np.ones((len(ERROR_STEPS), len(RECALL_THRESHOLDS), num_cats, len(AREA_RANGES)))
    base = _evaluate(gt_data, dets, use_cats=True, other_ignored=None, thresholds=np.array([0.75, 0.5, 0.1]),
                     iou_type=iou_type, num_cats=num_cats)
    precision[:3] = base
    regular = ~gt_data.iscrowd
    areas = np.array(list(AREA_RANGES.values()))
    inside = (gt_data.area[:, None] >= areas[:, 0]) & (gt_data.area[:, None] <= areas[:, 1])
    num_gt = np.stack([np.bincount(gt_data.category_index[regular & inside[:, a]], minlength=num_cats)
                       for a in range(len(AREA_RANGES))], axis=1)

    for k, cat in enumerate(gt_data.category_ids):
        if num_gt[k, 0] > 0:
            own = _subset_dets(dets, np.flatnonzero(dets.category_index == k))
            group = {c for c in gt_data.category_ids if c == cat or
                     (supercats[cat] is not None and supercats[c] == supercats[cat])}
            group_index = np.array([i for i, c in enumerate(gt_data.category_ids) if c in group])
            for step, rows in (("Sim", np.flatnonzero(np.isin(gt_data.category_index, group_index))),
                               ("Oth", np.arange(len(gt_data.ann_ids)))):
                sub_gt = _subset_gt(gt_data, rows)
                curve = _evaluate(sub_gt, own, use_cats=False, other_ignored=sub_gt.category_index != k,
                                  thresholds=np.array([0.1]), iou_type=iou_type, num_cats=1)
                precision[ERROR_STEPS.index(step), :, k] = curve[0, :, 0]
        if progress is not None:
            progress(1)

    has_gt = num_gt[None, None] > 0  # (1, 1, K, A)
    oth = precision[ERROR_STEPS.index("Oth")]
    precision[ERROR_STEPS.index("BG")] = np.where(has_gt[0], (oth > 0).astype(np.float64), -1.0)
    precision[ERROR_STEPS.index("FN")] = np.where(has_gt[0], 1.0, -1.0)
    return ErrorAnalysis(iou_type=iou_type, category_ids=list(gt_data.category_ids),
                         category_names=dict(gt_data.category_names), supercategories=supercats,
                         precision=precision, num_gt=num_gt, notes=notes)


def _subset_gt(gt: GroundTruth, rows: np.ndarray) -> GroundTruth:
    """The annotations ``rows`` of ``gt`` (same image and category indexing)."""
    return replace(gt, ann_ids=gt.ann_ids[rows], image_index=gt.image_index[rows],
                   category_index=gt.category_index[rows], area=gt.area[rows], iscrowd=gt.iscrowd[rows],
                   boxes=None if gt.boxes is None else gt.boxes[rows],
                   rles=None if gt.rles is None else [gt.rles[i] for i in rows])


def _subset_dets(dets: Detections, rows: np.ndarray) -> Detections:
    return replace(dets, image_index=dets.image_index[rows], category_index=dets.category_index[rows],
                   score=dets.score[rows], area=dets.area[rows],
                   boxes=None if dets.boxes is None else dets.boxes[rows],
                   rles=None if dets.rles is None else [dets.rles[i] for i in rows])


def _evaluate(gt: GroundTruth, dets: Detections, *, use_cats: bool, other_ignored: np.ndarray | None,
              thresholds: np.ndarray, iou_type: str, num_cats: int) -> np.ndarray:
    """COCOeval's evaluate + accumulate at ``thresholds``, maxDets 100, the four area ranges.

    ``other_ignored`` (N,) marks annotations to ignore besides crowds and objects outside the area
    range (the ``ignore`` flag of the MATLAB API). Returns precision (T, R, num_cats, A); with
    ``use_cats`` False everything is one category.
    """
    areas = np.array(list(AREA_RANGES.values()))
    groups = make_groups(gt, dets, use_cats, MAX_DETS)
    pairs = make_pairs(groups)
    gt_rows, dt_rows = groups.gt_order, groups.dt_order
    crowd = gt.iscrowd[gt_rows]
    if iou_type == "bbox":
        iou = box_iou_pairs(dets.boxes[dt_rows[pairs.dt]], gt.boxes[gt_rows[pairs.gt]], crowd[pairs.gt])
    else:
        iou = mask_iou_pairs(groups, pairs, dets.rles, gt.rles, gt.iscrowd)
    ignore = crowd.copy()
    if other_ignored is not None:
        ignore |= other_ignored[gt_rows]
    gt_area = gt.area[gt_rows][:, None]
    gt_ignore = ignore[:, None] | (gt_area < areas[:, 0]) | (gt_area > areas[:, 1])  # (G, A)
    matched = match(groups, pairs, iou, gt_ignore, crowd, thresholds).matched_gt  # (D, A, T)

    is_match = matched >= 0
    if len(gt_rows):
        safe = np.where(is_match, matched, 0)
        # As pycocotools (and evaluate_coco): a match to annotation id 0 is recorded as no match.
        recorded = is_match & (gt.ann_ids[gt_rows][safe] != 0)
        matched_ignored = is_match & gt_ignore[safe, np.arange(len(areas))[None, :, None]]
    else:
        recorded = matched_ignored = is_match
    dt_area = dets.area[dt_rows][:, None]
    dt_outside = (dt_area < areas[:, 0]) | (dt_area > areas[:, 1])
    dt_ignore = matched_ignored | (~recorded & dt_outside[:, :, None])
    gt_cat = gt.category_index[gt_rows] if use_cats else np.zeros(len(gt_rows), dtype=np.int64)
    dt_cat = dets.category_index[dt_rows] if use_cats else np.zeros(len(dt_rows), dtype=np.int64)
    return _precision_curves(recorded & ~dt_ignore, ~recorded & ~dt_ignore, dets.score[dt_rows], dt_cat,
                             dets.image_index[dt_rows], groups.dt_rank, gt_cat, gt_ignore, num_cats)


def _precision_curves(tp: np.ndarray, fp: np.ndarray, score: np.ndarray, dt_cat: np.ndarray, dt_image: np.ndarray,
                      dt_rank: np.ndarray, gt_cat: np.ndarray, gt_ignore: np.ndarray, num_cats: int) -> np.ndarray:
    """COCOeval's accumulate for one maxDets: interpolated precision at the 101 recall thresholds.

    The rule of :mod:`swiftdet.evaluation.coco`'s accumulation, which is tied to COCO's ten IoU
    thresholds; here for any thresholds (the analysis needs 0.1). The tests check both agree.

    tp, fp: (D, A, T) flags of the kept detections; gt_ignore (G, A). Returns (T, R, K, A), -1 where
    a category has no object that counts.
    """
    num_thr, num_areas = tp.shape[2], gt_ignore.shape[1]
    out = -np.ones((num_thr, len(RECALL_THRESHOLDS), num_cats, num_areas))
    # pycocotools' stable sort of the image-by-image concatenation: (score desc, image, rank).
    order = np.lexsort((dt_rank, dt_image, -score, dt_cat))
    tp, fp, dt_cat = tp[order], fp[order], dt_cat[order]
    bounds = np.searchsorted(dt_cat, np.arange(num_cats + 1))
    for k in range(num_cats):
        lo, hi = bounds[k], bounds[k + 1]
        for a in range(num_areas):
            num_pos = int(np.count_nonzero((gt_cat == k) & ~gt_ignore[:, a]))
            if num_pos == 0:
                continue
            tp_sum = np.cumsum(tp[lo:hi, a, :].T, axis=1).astype(float)  # (T, nd)
            fp_sum = np.cumsum(fp[lo:hi, a, :].T, axis=1).astype(float)
            if tp_sum.shape[1] == 0:
                out[:, :, k, a] = 0.0
                continue
            rc = tp_sum / num_pos
            pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # best precision at this or higher recall
            for t in range(num_thr):
                inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                reached = inds < rc.shape[1]
                q = np.zeros(len(RECALL_THRESHOLDS))
                q[reached] = pr[t, inds[reached]]
                out[t, :, k, a] = q
    return out


# --------------------------------------------------------------------------------------------------
# Confusion matrix and per-image errors


@dataclass
class ImageErrors:
    """What one image's detections (above the score threshold) did, for drawing it."""

    image_id: Any
    num_fp: int  # detections that are not a correct-class match: background plus wrong class
    num_fn: int  # objects (not crowd) no detection of their class matched
    det_rows: list  # rows (into the results) of the detections above the threshold, by decreasing score
    gt_rows: list  # rows (into the json's annotations) of the image's objects
    gt_boxes: np.ndarray  # (G, 4) x0, y0, x1, y1 of the objects (of the masks' extent for segm)
    gt_category_ids: list
    gt_crowd: list  # crowd flag of each object
    det_boxes: np.ndarray  # (D, 4) x0, y0, x1, y1 of the detections
    det_category_ids: list
    det_scores: list


@dataclass
class ConfusionResult:
    """Counts of (ground-truth class, detected class) at one IoU and score threshold.

    ``matrix`` is (K + 1, K + 1) int64: row = the object's category (the sorted ids of
    ``category_ids``), last row "background" (a detection on no object); column = the detection's
    category, last column "missed" (an object no detection matched).
    """

    category_ids: list
    category_names: dict
    matrix: np.ndarray
    iou_thresh: float
    score_thresh: float
    images: list  # ImageErrors of every image, in the ground truth's image id order
    file_names: dict  # image id -> the json's file_name

    @property
    def labels(self) -> list[str]:
        return [str(self.category_names.get(c, c)) for c in self.category_ids]

    def worst(self, kind: str, count: int) -> list[ImageErrors]:
        """The ``count`` images with the most false positives (kind "fp") or misses ("fn"), none of
        them without such an error; ties in the ground truth's image id order."""
        if kind not in ("fp", "fn"):
            raise ValueError(f"kind must be 'fp' or 'fn', got {kind!r}")
        errors = [(img.num_fp if kind == "fp" else img.num_fn, i) for i, img in enumerate(self.images)]
        ranked = sorted((e for e in errors if e[0] > 0), key=lambda e: (-e[0], e[1]))
        return [self.images[i] for _, i in ranked[:count]]

    def to_json(self) -> dict:
        labels = self.labels
        return {"iou_thresh": self.iou_thresh, "score_thresh": self.score_thresh,
                "rows": labels + ["background"], "columns": labels + ["missed"],
                "note": "row: the object's category (background: a detection on no object); column: the "
                        "detection's category (missed: no detection matched the object).",
                "matrix": self.matrix.tolist()}


def confusion_matrix(gt: str | Path | dict, results: Any, iou_type: str = "bbox", *, iou_thresh: float = 0.5,
                     score_thresh: float = 0.3) -> ConfusionResult:
    """Match each image's detections scoring at least ``score_thresh`` to its objects, class-agnostically.

    In score order (highest first), a detection takes the free object (not crowd) of its own class
    with the highest IoU reaching ``iou_thresh``; failing that, one of a crowd region of its class
    (counted nowhere, like COCO's crowd matches); failing that, the free object of another class with
    the highest IoU (a confusion); else it is background. Objects left free are missed.
    """
    _check_iou_type(iou_type)
    if not 0.0 < iou_thresh <= 1.0:
        raise EvaluationError(f"iou_thresh must be in (0, 1], got {iou_thresh}.")
    gt_data = load_ground_truth(gt, iou_type)
    dets = load_detections(results, gt_data, iou_type, need_category=True)
    num_cats = len(gt_data.category_ids)
    matrix = np.zeros((num_cats + 1, num_cats + 1), dtype=np.int64)
    keep = np.flatnonzero(dets.score >= score_thresh)
    gt_xyxy = _xyxy(gt_data.boxes if gt_data.boxes is not None else _rle_boxes(gt_data.rles))
    dt_xyxy = _xyxy(dets.boxes if dets.boxes is not None else _rle_boxes(dets.rles))
    gt_by_image = _rows_by_image(gt_data.image_index, len(gt_data.image_ids))
    dt_by_image = _rows_by_image(dets.image_index[keep], len(gt_data.image_ids))
    images = []
    for i, image_id in enumerate(gt_data.image_ids):
        g_rows = gt_by_image[i]
        d_rows = keep[dt_by_image[i]]
        d_rows = d_rows[np.argsort(-dets.score[d_rows], kind="stable")]
        g_cat = gt_data.category_index[g_rows]
        d_cat = dets.category_index[d_rows]
        crowd = gt_data.iscrowd[g_rows]
        iou = _image_iou(gt_data, dets, g_rows, d_rows, iou_type)  # (Di, Gi)
        taken = np.zeros(len(g_rows), dtype=bool)
        found = np.zeros(len(g_rows), dtype=bool)  # taken by a detection of the object's own class
        num_fp = 0
        for d in range(len(d_rows)):
            reach = iou[d] >= iou_thresh
            same = d_cat[d] == g_cat
            choice = -1
            for pool in (reach & same & ~crowd & ~taken, reach & same & crowd, reach & ~same & ~crowd & ~taken):
                if pool.any():
                    candidates = np.flatnonzero(pool)
                    choice = int(candidates[np.argmax(iou[d][candidates])])
                    break
            if choice < 0:
                matrix[num_cats, d_cat[d]] += 1
                num_fp += 1
            elif not crowd[choice]:
                taken[choice] = True
                found[choice] = bool(same[choice])
                matrix[g_cat[choice], d_cat[d]] += 1
                num_fp += int(not same[choice])
        missed = ~taken & ~crowd
        np.add.at(matrix, (g_cat[missed], num_cats), 1)
        # For ranking the images, an object taken by a wrong-class detection is a miss too.
        num_fn = int(np.count_nonzero(~crowd & ~found))
        cats = gt_data.category_ids
        images.append(ImageErrors(image_id=image_id, num_fp=num_fp, num_fn=num_fn, det_rows=d_rows.tolist(),
                                  gt_rows=g_rows.tolist(), gt_boxes=gt_xyxy[g_rows],
                                  gt_category_ids=[cats[c] for c in g_cat], gt_crowd=crowd.tolist(), det_boxes=dt_xyxy[d_rows],
                                  det_category_ids=[cats[c] for c in d_cat], det_scores=dets.score[d_rows].tolist()))
    return ConfusionResult(category_ids=list(gt_data.category_ids), category_names=dict(gt_data.category_names),
                           matrix=matrix, iou_thresh=iou_thresh, score_thresh=score_thresh, images=images,
                           file_names=dict(gt_data.file_names or {}))


def _rows_by_image(image_index: np.ndarray, num_images: int) -> list[np.ndarray]:
    """For each image position, the rows of ``image_index`` that belong to it (in row order)."""
    order = np.argsort(image_index, kind="stable")
    bounds = np.searchsorted(image_index[order], np.arange(num_images + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(num_images)]


def _image_iou(gt: GroundTruth, dets: Detections, g_rows: np.ndarray, d_rows: np.ndarray, iou_type: str) -> np.ndarray:
    """(D, G) IoU of one image's detections and objects (crowd regions: the crowd IoU)."""
    if len(g_rows) == 0 or len(d_rows) == 0:
        return np.zeros((len(d_rows), len(g_rows)))
    crowd = gt.iscrowd[g_rows].astype(np.uint8).tolist()
    if iou_type == "bbox":
        iou = mask_utils.iou(dets.boxes[d_rows], gt.boxes[g_rows], crowd)
    else:
        iou = mask_utils.iou([dets.rles[i] for i in d_rows], [gt.rles[i] for i in g_rows], crowd)
    return np.asarray(iou, dtype=np.float64).reshape(len(d_rows), len(g_rows))


def _rle_boxes(rles: list) -> np.ndarray:
    if not rles:
        return np.zeros((0, 4))
    return np.asarray(mask_utils.toBbox(rles), dtype=np.float64).reshape(-1, 4)


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
