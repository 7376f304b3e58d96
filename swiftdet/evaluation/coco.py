"""COCO evaluation (box, mask and keypoint AP; proposal AR) with the numbers of pycocotools' COCOeval.

The results equal ``COCOeval.evaluate(); accumulate(); summarize()`` bit for bit: the same area
ranges and maxDets, crowd regions matched by the crowd IoU, ignore flags, the stable ('mergesort')
score ordering, the 101-point interpolated precision, -1 where a value is undefined, keypoint OKS
with per-keypoint sigmas. What pycocotools does in Python loops per image, category, threshold and
detection is done here with numpy on all of them at once (see :mod:`swiftdet.evaluation.coco_matching`),
which is several times faster.

Choices where pycocotools leaves the user alone:

* Empty results are evaluated as a detector that found nothing (pycocotools fails on them): AP and
  AR are 0 where the ground truth has objects and -1 where it has none; a warning says so.
* Results are read as pycocotools' ``COCO.loadRes`` reads them, for every combination of keys (see
  :func:`swiftdet.evaluation.coco_inputs.loadres_branch`): the first result decides whether the
  detection areas of the small/medium/large ranges are the boxes' w*h (it has a non-empty
  ``bbox``), the masks' pixel counts (it has a ``segmentation``) or the keypoints' extent, and
  results without a ``bbox`` or ``segmentation`` get the one loadRes makes up. So ``segm`` results
  that also carry boxes are ranged by their BOX areas, as in pycocotools. ``area_from="mask"``
  (``swiftdet coco-eval --area-from mask``) ranges ``segm`` detections by their mask areas instead,
  detectron2's convention (it drops ``bbox`` from mask results before loadRes); the trainer's
  evaluation uses it and says so.
* Ground truth with duplicate annotation ids, or annotations of unknown images or categories, is
  rejected (pycocotools silently evaluates other annotations or drops them).
* A ground-truth annotation with id 0 is, as in pycocotools, counted as never matched (its match
  counts as a false positive); a warning names it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from swiftdet.errors import EvaluationError
from swiftdet.evaluation.coco_inputs import IOU_TYPES, Detections, GroundTruth, load_detections, load_ground_truth
from swiftdet.evaluation.coco_matching import (box_iou_pairs, make_groups, make_pairs, mask_iou_pairs, match,
                                               oks_pairs)

# COCO's 17 person keypoint sigmas (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO_PERSON_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89,
                               .89]) / 10.0

# As pycocotools builds them (linspace, not arange, so that 0.75 is exactly 0.75).
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)

_DETECTION_AREAS = {"all": (0 ** 2, 1e5 ** 2), "small": (0 ** 2, 32 ** 2), "medium": (32 ** 2, 96 ** 2),
                    "large": (96 ** 2, 1e5 ** 2)}
_KEYPOINT_AREAS = {"all": (0 ** 2, 1e5 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e5 ** 2)}


@dataclass(frozen=True)
class MetricSpec:
    """One summary number: AP or AR at an IoU threshold (None: mean over 0.50:0.95), area range, maxDets."""

    name: str
    average_precision: bool
    iou: float | None
    area: str
    max_dets: int

    def summary_line(self, value: float) -> str:
        """The metric in the exact wording and precision of pycocotools' ``summarize()`` printout."""
        title = "Average Precision" if self.average_precision else "Average Recall"
        kind = "(AP)" if self.average_precision else "(AR)"
        iou = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}" if self.iou is None else f"{self.iou:0.2f}"
        return f" {title:<18} {kind} @[ IoU={iou:<9} | area={self.area:>6s} | maxDets={self.max_dets:>3d} ] = {value:0.3f}"


def detection_metric_specs(max_dets: Sequence[int]) -> list[MetricSpec]:
    """The 12 bbox/segm numbers of pycocotools, for ``max_dets`` = (m0, m1, m2), default (1, 10, 100)."""
    m0, m1, m2 = max_dets
    return [MetricSpec("AP", True, None, "all", m2), MetricSpec("AP50", True, .5, "all", m2),
            MetricSpec("AP75", True, .75, "all", m2), MetricSpec("APs", True, None, "small", m2),
            MetricSpec("APm", True, None, "medium", m2), MetricSpec("APl", True, None, "large", m2),
            MetricSpec(f"AR{m0}", False, None, "all", m0), MetricSpec(f"AR{m1}", False, None, "all", m1),
            MetricSpec(f"AR{m2}", False, None, "all", m2), MetricSpec("ARs", False, None, "small", m2),
            MetricSpec("ARm", False, None, "medium", m2), MetricSpec("ARl", False, None, "large", m2)]


def keypoint_metric_specs(max_dets: int) -> list[MetricSpec]:
    """The 10 keypoint numbers of pycocotools, default ``max_dets`` 20."""
    return [MetricSpec("AP", True, None, "all", max_dets), MetricSpec("AP50", True, .5, "all", max_dets),
            MetricSpec("AP75", True, .75, "all", max_dets), MetricSpec("APm", True, None, "medium", max_dets),
            MetricSpec("APl", True, None, "large", max_dets), MetricSpec("AR", False, None, "all", max_dets),
            MetricSpec("AR50", False, .5, "all", max_dets), MetricSpec("AR75", False, .75, "all", max_dets),
            MetricSpec("ARm", False, None, "medium", max_dets), MetricSpec("ARl", False, None, "large", max_dets)]


def proposal_metric_specs(max_dets: Sequence[int]) -> list[MetricSpec]:
    """Class-agnostic recall: AR@m for every m, and per area range at the largest m."""
    last = max_dets[-1]
    specs = [MetricSpec(f"AR@{m}", False, None, "all", m) for m in max_dets]
    return specs + [MetricSpec(f"AR{a[0]}@{last}", False, None, area, last)
                    for a, area in (("s", "small"), ("m", "medium"), ("l", "large"))]


@dataclass
class CocoEvaluation:
    """Accumulated results, laid out as pycocotools' ``COCOeval.eval``.

    precision: (T, R, K, A, M) interpolated precision, -1 where the category has no regular gt.
    recall: (T, K, A, M) final recall, -1 likewise.
    """

    iou_type: str
    category_ids: list  # K category ids, or [-1] when categories are not used
    category_names: dict
    area_labels: list  # A labels ("all", "small", ...)
    max_dets: list  # M sorted maxDets
    precision: np.ndarray
    recall: np.ndarray
    specs: list  # MetricSpec of the summary numbers
    area_from: str = "loadres"  # the convention asked for: "loadres" (pycocotools) or "mask"
    area_source: str = "none"  # what the detection areas were: "box", "mask", "keypoints" (extent), "none"

    def area_note(self) -> str:
        """One line saying where the detections' areas for the small/medium/large ranges came from."""
        what = {"box": "from the boxes (w*h)", "mask": "from the masks (pixel count)",
                "keypoints": "from the keypoints' extent", "none": "none (no detections)"}[self.area_source]
        why = ("area_from=mask: detectron2's convention, not pycocotools' loadRes" if self.area_from == "mask"
               else "pycocotools loadRes")
        return f"detection areas: {what} ({why})"

    def summarize(self, ap: bool, iou: float | None, area: str, max_dets: int) -> float:
        """Mean of precision (ap) or recall over the valid entries of one setting; -1 if none is valid."""
        aind = [i for i, label in enumerate(self.area_labels) if label == area]
        mind = [i for i, m in enumerate(self.max_dets) if m == max_dets]
        # Same indexing as pycocotools so that np.mean sums the same values in the same order.
        if ap:
            s = self.precision
            if iou is not None:
                s = s[np.where(iou == IOU_THRESHOLDS)[0]]
            s = s[:, :, :, aind, mind]
        else:
            s = self.recall
            if iou is not None:
                s = s[np.where(iou == IOU_THRESHOLDS)[0]]
            s = s[:, :, aind, mind]
        valid = s[s > -1]
        return -1.0 if len(valid) == 0 else float(np.mean(valid))

    @property
    def metrics(self) -> dict[str, float]:
        return {spec.name: self.summarize(spec.average_precision, spec.iou, spec.area, spec.max_dets)
                for spec in self.specs}

    def summary_lines(self) -> list[str]:
        """One line per metric, worded and rounded as pycocotools' ``summarize()`` prints them."""
        metrics = self.metrics
        return [spec.summary_line(metrics[spec.name]) for spec in self.specs]

    def per_category_ap(self) -> dict[str, float]:
        """AP@[.50:.95] of each category at area 'all' and the largest maxDets, -1 where undefined."""
        out = {}
        for k, cat in enumerate(self.category_ids):
            s = self.precision[:, :, k, 0, -1]
            valid = s[s > -1]
            out[str(self.category_names.get(cat, cat))] = -1.0 if len(valid) == 0 else float(np.mean(valid))
        return out


def run_coco_evaluation(gt: Any, results: Any, iou_type: str = "bbox", *, use_cats: bool = True,
                        max_dets: Sequence[int] | None = None, kpt_sigmas: Sequence[float] | None = None,
                        proposals: bool = False, area_from: str = "loadres") -> CocoEvaluation:
    """Evaluate and accumulate; :func:`evaluate_coco` and :func:`evaluate_proposals` summarise the result.

    ``proposals`` selects the class-agnostic recall summary (needs ``use_cats=False``, iou_type bbox).
    ``area_from``: "loadres" (default) takes the detection areas as pycocotools' ``loadRes`` does;
    "mask" (``segm`` only) takes each detection's mask area.
    """
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"iou_type {iou_type!r} is not one of {list(IOU_TYPES)}.")
    if iou_type == "keypoints" and not use_cats:
        # pycocotools' class-agnostic keypoint path looks OKS up under category -1 and matches nothing.
        raise EvaluationError("Keypoint evaluation is per category: use_cats=False is supported for 'bbox' and "
                              "'segm' only.")
    max_dets = _check_max_dets(iou_type, max_dets, proposals)
    areas = _KEYPOINT_AREAS if iou_type == "keypoints" else _DETECTION_AREAS
    gt_data = load_ground_truth(gt, iou_type)
    dets = load_detections(results, gt_data, iou_type, need_category=use_cats, area_from=area_from)
    if len(dets.score) == 0:
        warnings.warn("No detections to evaluate: AP and AR are 0 wherever the ground truth has objects.",
                      stacklevel=2)
    sigmas = None
    if iou_type == "keypoints":
        sigmas = _check_sigmas(gt_data, kpt_sigmas)
    _warn_zero_gt_ids(gt_data)

    area_bounds = np.array(list(areas.values()), dtype=np.float64)  # (A, 2)
    groups = make_groups(gt_data, dets, use_cats, max_dets[-1])
    pairs = make_pairs(groups)
    gt_rows, dt_rows = groups.gt_order, groups.dt_order
    crowd = gt_data.iscrowd[gt_rows]
    iou = _pair_ious(iou_type, gt_data, dets, groups, pairs, sigmas)

    gt_area = gt_data.area[gt_rows][:, None]
    gt_ignore = crowd.copy()
    if iou_type == "keypoints":
        gt_ignore |= gt_data.num_keypoints[gt_rows] == 0
    gt_ignore = gt_ignore[:, None] | (gt_area < area_bounds[:, 0]) | (gt_area > area_bounds[:, 1])  # (G, A)
    matched = match(groups, pairs, iou, gt_ignore, crowd, IOU_THRESHOLDS).matched_gt  # (D, A, T)

    dt_area = dets.area[dt_rows][:, None]
    dt_outside = (dt_area < area_bounds[:, 0]) | (dt_area > area_bounds[:, 1])  # (D, A)
    is_match = matched >= 0
    if len(gt_rows):
        safe = np.where(is_match, matched, 0)
        # pycocotools records a match by the gt's id, so a match to id 0 reads as "no match".
        recorded = is_match & (gt_data.ann_ids[gt_rows][safe] != 0)
        matched_ignored = is_match & gt_ignore[safe, np.arange(len(areas))[None, :, None]]
    else:
        recorded = matched_ignored = is_match
    # Unmatched detections outside the area range are ignored too.
    dt_ignore = matched_ignored | (~recorded & dt_outside[:, :, None])
    gt_cat = gt_data.category_index[gt_rows] if use_cats else np.zeros(len(gt_rows), dtype=np.int64)
    dt_cat = dets.category_index[dt_rows] if use_cats else np.zeros(len(dt_rows), dtype=np.int64)
    num_cats = len(gt_data.category_ids) if use_cats else 1
    precision, recall = _accumulate(recorded & ~dt_ignore, ~recorded & ~dt_ignore, dets.score[dt_rows], dt_cat,
                                    dets.image_index[dt_rows], groups.dt_rank, gt_cat, gt_ignore, num_cats, max_dets)
    if proposals:
        specs = proposal_metric_specs(max_dets)
    elif iou_type == "keypoints":
        specs = keypoint_metric_specs(max_dets[0])
    else:
        specs = detection_metric_specs(max_dets)
    return CocoEvaluation(iou_type=iou_type, category_ids=gt_data.category_ids if use_cats else [-1],
                          category_names=gt_data.category_names, area_labels=list(areas), max_dets=list(max_dets),
                          precision=precision, recall=recall, specs=specs, area_from=area_from,
                          area_source=dets.area_source)


def _check_max_dets(iou_type: str, max_dets: Sequence[int] | None, proposals: bool) -> list[int]:
    if max_dets is None:
        return [100, 1000] if proposals else [20] if iou_type == "keypoints" else [1, 10, 100]
    values = sorted(int(m) for m in max_dets)
    expected = 1 if iou_type == "keypoints" and not proposals else 3 if not proposals else None
    if any(m <= 0 for m in values) or len(set(values)) != len(values) or not values or \
            (expected is not None and len(values) != expected):
        what = f"{expected} distinct positive integers" if expected else "distinct positive integers"
        raise EvaluationError(f"max_dets {list(max_dets)!r} is not valid for {iou_type!r}: give {what}.")
    return values


def _check_sigmas(gt: GroundTruth, kpt_sigmas: Sequence[float] | None) -> np.ndarray:
    sigmas = COCO_PERSON_SIGMAS if kpt_sigmas is None else np.asarray(kpt_sigmas, dtype=np.float64)
    num_kpts = gt.keypoints.shape[1] if len(gt.keypoints) else len(sigmas)
    if sigmas.ndim != 1 or len(sigmas) != num_kpts:
        raise EvaluationError(f"Ground truth {gt.source!r} has {num_kpts} keypoints per instance but "
                              f"{len(sigmas)} keypoint sigmas are given{' (the COCO person default)' if kpt_sigmas is None else ''}."
                              f" Pass kpt_sigmas with one value per keypoint.")
    return sigmas


def _warn_zero_gt_ids(gt: GroundTruth) -> None:
    if len(gt.ann_ids) and np.any(gt.ann_ids == 0):
        warnings.warn(f"Ground truth {gt.source!r} has an annotation with id 0: like pycocotools, matches to it "
                      f"count as false positives. Number annotations from 1.", stacklevel=3)


def _pair_ious(iou_type: str, gt: GroundTruth, dets: Detections, groups, pairs, sigmas) -> np.ndarray:
    gt_rows = groups.gt_order[pairs.gt]
    dt_rows = groups.dt_order[pairs.dt]
    if iou_type == "bbox":
        return box_iou_pairs(dets.boxes[dt_rows], gt.boxes[gt_rows], gt.iscrowd[gt_rows])
    if iou_type == "segm":
        return mask_iou_pairs(groups, pairs, dets.rles, gt.rles, gt.iscrowd)
    return oks_pairs(dets.keypoints[dt_rows], gt.keypoints[gt_rows], gt.boxes[gt_rows], gt.area[gt_rows], sigmas)


def _accumulate(tp: np.ndarray, fp: np.ndarray, score: np.ndarray, dt_cat: np.ndarray, dt_image: np.ndarray,
                dt_rank: np.ndarray, gt_cat: np.ndarray, gt_ignore: np.ndarray, num_cats: int,
                max_dets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``accumulate`` for every category, area range and maxDets.

    Args:
        tp, fp: (D, A, T) true / false positive flags of each kept detection (ignored ones are neither).
        score, dt_cat, dt_image, dt_rank: (D,) per detection.
        gt_cat: (G,) category of each gt; gt_ignore: (G, A).
    Returns:
        precision (T, R, K, A, M) and recall (T, K, A, M).
    """
    num_thr, num_rec, num_areas, num_m = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), gt_ignore.shape[1], len(max_dets)
    precision = -np.ones((num_thr, num_rec, num_cats, num_areas, num_m))
    recall = -np.ones((num_thr, num_cats, num_areas, num_m))
    # pycocotools concatenates the images' detections (image by image, each by rank) and sorts them by
    # score with a stable sort: the order is (score descending, image, rank), per category.
    order = np.lexsort((dt_rank, dt_image, -score, dt_cat))
    tp, fp, dt_rank, dt_cat = tp[order], fp[order], dt_rank[order], dt_cat[order]
    bounds = np.searchsorted(dt_cat, np.arange(num_cats + 1))
    num_regular = np.stack([np.bincount(gt_cat[~gt_ignore[:, a]], minlength=num_cats) for a in range(num_areas)], 1)
    for k in range(num_cats):
        lo, hi = bounds[k], bounds[k + 1]
        for m, max_det in enumerate(max_dets):
            keep = lo + np.flatnonzero(dt_rank[lo:hi] < max_det)
            for a in range(num_areas):
                npig = num_regular[k, a]
                if npig == 0:
                    continue
                tp_sum = np.cumsum(tp[keep, a, :].T, axis=1).astype(dtype=float)  # (T, nd)
                fp_sum = np.cumsum(fp[keep, a, :].T, axis=1).astype(dtype=float)
                nd = tp_sum.shape[1]
                if nd == 0:
                    recall[:, k, a, m] = 0
                    precision[:, :, k, a, m] = 0
                    continue
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                # Precision envelope: the best precision at this or any higher recall.
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                recall[:, k, a, m] = rc[:, -1]
                for t in range(num_thr):
                    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    q = np.zeros(num_rec)
                    reached = inds < nd
                    q[reached] = pr[t, inds[reached]]
                    precision[t, :, k, a, m] = q
    return precision, recall


def evaluate_coco(gt: Any, results: Any, iou_type: str = "bbox", *, use_cats: bool = True,
                  max_dets: Sequence[int] | None = None,
                  kpt_sigmas: Sequence[float] | None = None, area_from: str = "loadres") -> dict[str, float]:
    """COCO metrics of ``results`` against ``gt``, equal to pycocotools' ``COCOeval(...).stats``.

    Args:
        gt: path of a COCO json, a COCO-format dict, or a ``pycocotools.coco.COCO``.
        results: path of a COCO results json, or a list of result dicts with ``image_id``,
            ``category_id``, ``score`` and ``bbox`` [x, y, w, h] | ``segmentation`` (compressed RLE,
            counts str or bytes; polygons or uncompressed RLE alongside a bbox) | ``keypoints``
            [x1, y1, v1, ...], read as pycocotools' ``loadRes`` reads them.
        iou_type: "bbox", "segm" or "keypoints".
        use_cats: False evaluates class-agnostically (bbox/segm; category_id then optional and only
            orders score ties, as in pycocotools).
        max_dets: bbox/segm: three values (default 1, 10, 100); keypoints: one (default 20). AP uses
            the largest.
        kpt_sigmas: per-keypoint OKS sigmas (default COCO's 17 person sigmas).
        area_from: "loadres" (default): the detection areas of the small/medium/large ranges as
            pycocotools' ``loadRes`` takes them (box w*h when the first result has a bbox, else mask
            pixels, else keypoint extent); "mask" (segm only): each detection's mask pixel count.

    Returns:
        bbox/segm: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl;
        keypoints: AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl. Fractions; -1 where undefined.
    """
    return run_coco_evaluation(gt, results, iou_type, use_cats=use_cats, max_dets=max_dets,
                               kpt_sigmas=kpt_sigmas, area_from=area_from).metrics


def evaluate_proposals(gt: Any, proposals_results: Any, *, max_dets: Sequence[int] = (100, 1000)) -> dict[str, float]:
    """Class-agnostic proposal recall, as ``COCOeval`` with ``useCats=0`` on boxes.

    ``proposals_results`` are bbox results (``category_id`` optional). Returns AR@m for each m in
    ``max_dets`` (default AR@100, AR@1000) and ARs/ARm/ARl at the largest m: recall averaged over
    IoU 0.50:0.95.
    """
    return run_coco_evaluation(gt, proposals_results, "bbox", use_cats=False, max_dets=max_dets,
                               proposals=True).metrics


def format_metrics(metrics: dict[str, float], title: str = "") -> str:
    """A two-column name / value table (fractions, 4 decimals; "-" where a value is undefined, i.e. -1)."""
    width = max([len(name) for name in metrics] + [6])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  {'value':>6}")
    lines.append("-" * (width + 8))
    for name, value in metrics.items():
        shown = "-" if value < 0 else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown:>6}")
    return "\n".join(lines)
