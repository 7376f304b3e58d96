"""LVIS v1 evaluation (box and mask AP with AP-rare/common/frequent), equal to the ``lvis`` package's
``LVISEval`` (lvis-api), computed with the vectorised COCO matcher of
:mod:`swiftdet.evaluation.coco_matching`.

LVIS is federated: an image is annotated for a few hundred of the 1203 categories only, so a
detection is judged only where the ground truth knows the answer. What differs from COCO's
evaluation, as lvis-api does it:

* at most 300 detections per image, the top by score over all categories (COCO: 100 per category);
* for an image, only the categories with ground truth in it or listed in its ``neg_category_ids``
  are evaluated; detections of any other category are dropped;
* unmatched detections of a category in the image's ``not_exhaustive_category_ids`` are ignored
  (neither true nor false positives);
* ground truth and detections of area 0 are left out (lvis-api selects areas in (0, inf));
  no crowd regions (``iscrowd`` is not read; a ground truth's ``ignore`` flag is honoured);
* AP over IoU 0.50:0.95 and 101 recall points, COCO's small/medium/large ranges, and APr / APc /
  APf: the mean AP of the categories whose ``frequency`` is "r", "c" or "f".

Mask (``segm``) detections are ranged small/medium/large by their mask areas: detectron2's
LVISEvaluator drops ``bbox`` from mask results before handing them to lvis-api, which otherwise
takes the box areas. Values are fractions (lvis-api's; detectron2 prints them times 100), -1
where undefined (e.g. APr of a subset without rare categories).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swiftdet.errors import DatasetError, EvaluationError
from swiftdet.evaluation.coco import IOU_THRESHOLDS, _accumulate
from swiftdet.evaluation.coco_inputs import Detections, GroundTruth, _ground_truth_from_dict, _read_json, load_detections
from swiftdet.evaluation.coco_matching import (_rank_in_group, box_iou_pairs, make_groups, make_pairs, mask_iou_pairs,
                                               match)

__all__ = ["LvisEvaluation", "evaluate_lvis", "run_lvis_evaluation"]

MAX_DETS = 300  # per image, over all categories (lvis-api's LVISResults)
FREQUENCIES = ("r", "c", "f")
_AREAS = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
          "large": (96 ** 2, 1e5 ** 2)}


@dataclass
class LvisEvaluation:
    """Accumulated results, laid out as lvis-api's ``LVISEval.eval``.

    precision: (T, R, K, A) interpolated precision, -1 where the category has no gt in the range.
    recall: (T, K, A) final recall, -1 likewise.
    """

    iou_type: str
    category_ids: list  # K sorted category ids
    frequency_groups: list  # 3 lists of category positions: rare, common, frequent
    precision: np.ndarray
    recall: np.ndarray

    def _summarize(self, ap: bool, iou: float | None = None, area: str = "all", group: int | None = None) -> float:
        aidx = [i for i, label in enumerate(_AREAS) if label == area]
        # The same indexing as lvis-api, so that np.mean sums the same values in the same order.
        s = self.precision if ap else self.recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRESHOLDS)[0]]
        if not ap:
            s = s[:, :, aidx]
        elif group is not None:
            s = s[:, :, self.frequency_groups[group], aidx]
        else:
            s = s[:, :, :, aidx]
        valid = s[s > -1]
        return -1.0 if len(valid) == 0 else float(np.mean(valid))

    @property
    def metrics(self) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300 (lvis-api's names)."""
        out = {"AP": self._summarize(True), "AP50": self._summarize(True, iou=0.5), "AP75": self._summarize(True, iou=0.75),
               "APs": self._summarize(True, area="small"), "APm": self._summarize(True, area="medium"),
               "APl": self._summarize(True, area="large")}
        for g, f in enumerate(FREQUENCIES):
            out[f"AP{f}"] = self._summarize(True, group=g)
        out[f"AR@{MAX_DETS}"] = self._summarize(False)
        for area in ("small", "medium", "large"):
            out[f"AR{area[0]}@{MAX_DETS}"] = self._summarize(False, area=area)
        return out

    def summary_lines(self) -> list[str]:
        """One line per metric, worded as lvis-api's ``print_results``."""
        lines = []
        for key, value in self.metrics.items():
            title, kind = ("Average Precision", "(AP)") if key.startswith("AP") else ("Average Recall", "(AR)")
            iou = f"{int(key[2:]) / 100:0.2f}" if key[2:].isdigit() else f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}"
            group = key[2] if len(key) > 2 and key[2] in FREQUENCIES else "all"
            area = key[2] if len(key) > 2 and key[2] in "sml" else "all"
            lines.append(f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={MAX_DETS:>3d} "
                         f"catIds={group:>3s}] = {value:0.3f}")
        return lines


def evaluate_lvis(gt: str | dict, results: list[dict] | str, iou_type: str) -> dict[str, float]:
    """LVIS metrics of ``results`` against ``gt``, equal to lvis-api's ``LVISEval(...).run()`` results.

    Args:
        gt: path of an LVIS json or its dict (as read, or as :func:`swiftdet.data.lvis.lvis_to_coco`
            returns it): images with ``neg_category_ids`` and ``not_exhaustive_category_ids``,
            categories with ``frequency``, annotations with ``area``, ``bbox``, ``segmentation``.
        results: COCO-format results (path or list): ``image_id``, ``category_id``, ``score``,
            ``bbox`` [x, y, w, h] and, for ``segm``, ``segmentation`` (compressed RLE).
        iou_type: "bbox" or "segm".

    Returns:
        AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300: fractions,
        -1 where undefined.
    """
    return run_lvis_evaluation(gt, results, iou_type).metrics


def run_lvis_evaluation(gt: str | dict, results: list[dict] | str, iou_type: str = "bbox") -> LvisEvaluation:
    """Evaluate and accumulate; :func:`evaluate_lvis` summarises the result."""
    if iou_type not in ("bbox", "segm"):
        raise EvaluationError(f"LVIS evaluation is 'bbox' or 'segm', got iou_type {iou_type!r}.")
    gt_data, base_ignore, negatives, not_exhaustive, frequency = _load_lvis_ground_truth(gt, iou_type)
    dets = load_detections(results, gt_data, iou_type, area_from="mask" if iou_type == "segm" else "loadres")
    if len(dets.score) == 0:
        warnings.warn("No detections to evaluate: AP and AR are 0 wherever the ground truth has objects.", stacklevel=2)
    num_cats = len(gt_data.category_ids)
    dets = _federated_detections(dets, gt_data, negatives, num_cats)

    area_bounds = np.array(list(_AREAS.values()), dtype=np.float64)  # (A, 2)
    groups = make_groups(gt_data, dets, True, MAX_DETS)  # <= 300 per image already: nothing is capped
    pairs = make_pairs(groups)
    gt_rows, dt_rows = groups.gt_order, groups.dt_order
    no_crowd = np.zeros(len(gt_rows), dtype=bool)  # lvis-api matches every gt once: iscrowd is all 0
    if iou_type == "bbox":
        iou = box_iou_pairs(dets.boxes[dt_rows[pairs.dt]], gt_data.boxes[gt_rows[pairs.gt]], no_crowd[pairs.gt])
    else:
        iou = mask_iou_pairs(groups, pairs, dets.rles, gt_data.rles, np.zeros(len(gt_data.ann_ids), dtype=bool))

    gt_area = gt_data.area[gt_rows][:, None]
    gt_ignore = base_ignore[gt_rows][:, None] | (gt_area < area_bounds[:, 0]) | (gt_area > area_bounds[:, 1])  # (G, A)
    matched = match(groups, pairs, iou, gt_ignore, no_crowd, IOU_THRESHOLDS).matched_gt  # (D, A, T)

    dt_area = dets.area[dt_rows][:, None]
    dt_key = dets.image_index[dt_rows] * num_cats + dets.category_index[dt_rows]
    # Unmatched detections outside the area range, or of a category not exhaustively annotated, are ignored.
    dt_excused = (dt_area < area_bounds[:, 0]) | (dt_area > area_bounds[:, 1]) | np.isin(dt_key, not_exhaustive)[:, None]
    is_match = matched >= 0
    if len(gt_rows):
        safe = np.where(is_match, matched, 0)
        # lvis-api records a match by the gt's id, so a match to id 0 reads as "no match" (as pycocotools).
        recorded = is_match & (gt_data.ann_ids[gt_rows][safe] != 0)
        matched_ignored = is_match & gt_ignore[safe, np.arange(len(_AREAS))[None, :, None]]
    else:
        recorded = matched_ignored = is_match
    dt_ignore = matched_ignored | (~recorded & dt_excused[:, :, None])
    precision, recall = _accumulate(recorded & ~dt_ignore, ~recorded & ~dt_ignore, dets.score[dt_rows],
                                    dets.category_index[dt_rows], dets.image_index[dt_rows], groups.dt_rank,
                                    gt_data.category_index[gt_rows], gt_ignore, num_cats, [MAX_DETS])
    groups_by_frequency = [[k for k, c in enumerate(gt_data.category_ids) if frequency[c] == f] for f in FREQUENCIES]
    return LvisEvaluation(iou_type=iou_type, category_ids=list(gt_data.category_ids),
                          frequency_groups=groups_by_frequency, precision=precision[..., 0], recall=recall[..., 0])


def _load_lvis_ground_truth(gt: Any, iou_type: str) -> tuple[GroundTruth, np.ndarray, np.ndarray, np.ndarray, dict]:
    """(ground truth of the annotations lvis-api evaluates, (N,) bool ignore flags, sorted (image, category)
    keys of the negative and of the not-exhaustive categories, category id -> frequency)."""
    if isinstance(gt, (str, Path)):
        source = str(gt)
        data = _read_json(Path(gt), DatasetError, "Ground-truth")
    elif isinstance(gt, dict):
        source, data = "<ground-truth dict>", gt
    else:
        raise DatasetError(f"LVIS ground truth must be a path to an LVIS json or its dict, got {type(gt).__name__}.")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"Ground truth {source!r} is not an LVIS dataset: it needs 'images', 'annotations' and "
                           f"'categories' lists.")
    frequency = {}
    for c in data["categories"]:
        if isinstance(c, dict) and "id" in c:
            if c.get("frequency") not in FREQUENCIES:
                raise DatasetError(f"Ground truth {source!r}: category id {c['id']!r} has frequency "
                                   f"{c.get('frequency')!r}; LVIS's evaluation groups categories by 'frequency' "
                                   f"'r', 'c' or 'f' (APr, APc, APf). Evaluate a COCO file with format 'coco'.")
            frequency[c["id"]] = c["frequency"]
    for im in data["images"]:
        if isinstance(im, dict) and "id" in im:
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                if not isinstance(im.get(key), list):
                    raise DatasetError(f"Ground truth {source!r} (image id {im['id']!r}): "
                                       f"{'no' if key not in im else 'a non-list'} '{key}'; LVIS's federated "
                                       f"evaluation needs the list on every image ([] when none).")

    def evaluated(a: Any) -> bool:
        # lvis-api selects annotations of area in (0, inf); a non-numeric area is left to the checks to reject.
        area = a.get("area") if isinstance(a, dict) else None
        return not isinstance(area, (int, float)) or isinstance(area, bool) or 0 < area < float("inf")

    anns = [{**a, "iscrowd": 0} if isinstance(a, dict) else a for a in data["annotations"] if evaluated(a)]
    gt_data = _ground_truth_from_dict({"images": data["images"], "annotations": anns, "categories": data["categories"]},
                                      source, iou_type)
    ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    num_cats = len(gt_data.category_ids)
    image_pos = {i: n for n, i in enumerate(gt_data.image_ids)}
    cat_pos = {c: n for n, c in enumerate(gt_data.category_ids)}

    def keys(key: str) -> np.ndarray:
        # Category ids unknown to 'categories' match no detection (lvis-api ignores them too).
        found = [image_pos[im["id"]] * num_cats + cat_pos[c] for im in data["images"] for c in im[key] if c in cat_pos]
        return np.unique(np.array(found, dtype=np.int64))

    return gt_data, ignore, keys("neg_category_ids"), keys("not_exhaustive_category_ids"), frequency


def _federated_detections(dets: Detections, gt: GroundTruth, negatives: np.ndarray, num_cats: int) -> Detections:
    """The detections lvis-api evaluates, in the results' order: the top 300 of each image by score
    (ties: results order), of positive area, of a category the image has ground truth of or lists as
    negative."""
    n = len(dets.score)
    order = np.lexsort((np.arange(n), -dets.score, dets.image_index))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = _rank_in_group(dets.image_index[order])
    key = dets.image_index * num_cats + dets.category_index
    positives = np.unique(gt.image_index * num_cats + gt.category_index)
    keep = (rank < MAX_DETS) & (dets.area > 0) & (dets.area < np.inf) & (np.isin(key, positives) | np.isin(key, negatives))
    idx = np.flatnonzero(keep)
    return Detections(
        image_index=dets.image_index[idx], category_index=dets.category_index[idx], score=dets.score[idx],
        area=dets.area[idx], boxes=None if dets.boxes is None else dets.boxes[idx],
        rles=None if dets.rles is None else [dets.rles[i] for i in idx], keypoints=None, branch=dets.branch,
        area_source=dets.area_source,
    )
