"""Pascal VOC box AP: per-class average precision at one IoU threshold, with the numbers of the reference ``voc_eval``.

The reference is ``voc_eval`` of py-faster-rcnn (the Python port of the devkit's ``VOCevaldet.m``,
which detectron2's ``PascalVOCDetectionEvaluator`` calls); every rule below is its rule:

* **Coordinates.** Ground truth and results are COCO ``[x, y, w, h]``; both are mapped to VOC's
  1-based inclusive pixels ``(x + 1, y + 1, x + w, y + h)``, which is what detectron2 writes back
  (``xmin + 1``, ``ymin + 1``) before calling ``voc_eval``, and the inverse of
  :func:`swiftdet.data.voc.voc_to_coco`. Areas and intersections then count pixels with the
  devkit's ``+ 1`` (``(xmax - xmin + 1) * (ymax - ymin + 1)``), in the same float64 operations, so
  the overlaps are the reference's to the last bit. (Unlike detectron2 we do not round the
  results to ``%.1f`` coordinates and ``%.3f`` scores on the way.)
* **Matching.** Per class, detections in decreasing score order; each is compared with the ground
  truth of its image and class and takes the one it overlaps most (the first of equal overlaps).
  It is a true positive when that overlap is **greater than** ``iou_thresh`` (``voc_eval``'s
  ``ovmax > ovthresh``; the MATLAB devkit's ``>=`` differs only for an overlap of exactly 0.5) and
  that object is not yet taken; a second detection of a taken object is a false positive (even when
  another object overlaps it enough); so is a detection without such an overlap. A detection whose
  best object is *difficult* (or ``iscrowd``) counts as neither. Equal scores keep the results'
  order (a stable sort, as MATLAB's ``sort``; numpy's default ``argsort`` in ``voc_eval`` leaves
  their order unspecified).
* **Precision/recall.** ``recall = cumsum(tp) / npos`` with ``npos`` the class's objects that are
  not difficult; ``precision = cumsum(tp) / max(cumsum(tp) + cumsum(fp), eps)``.
* **AP.** ``metric="voc07"``: VOC2007's 11-point AP, the mean over ``t`` in
  ``numpy.arange(0, 1.1, 0.1)`` of the best precision at recall >= t (0 where none); so
  ``t = 0.3`` is ``0.30000000000000004`` and a recall of exactly 3/10 does not reach it, as in
  ``voc_eval``. ``metric="area"`` (VOC2010 and later): the area under the precision envelope
  (precision made non-increasing from the right), summed where recall changes.

Reported as detectron2's evaluator reports them: AP in **percent**, ``mAP`` the mean of the
classes' APs. Choices where the reference is undefined: a class with no (non-difficult) ground
truth has AP ``-1`` (``voc_eval`` divides by zero there) and is left out of ``mAP`` (``-1`` when no
class has ground truth, as COCO's "-1 where undefined"); a class without detections has AP 0.
Detections of images or categories the ground truth does not have are refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swiftdet.errors import DatasetError, EvaluationError
from swiftdet.evaluation.coco_inputs import _ground_truth_from_dict, load_detections

__all__ = ["VocEvaluation", "VOC_METRICS", "evaluate_voc", "voc_average_precision"]

VOC_METRICS = ("voc07", "area")
_METRIC_TITLES = {"voc07": "VOC2007 11-point AP", "area": "VOC2010+ area AP"}


@dataclass
class VocEvaluation:
    """Per-class results of :func:`evaluate_voc`; K classes in increasing category id order."""

    metric: str  # "voc07" or "area"
    iou_thresh: float
    class_names: list  # K names
    ap: np.ndarray  # (K,) float64 AP in [0, 1]; nan for a class without (non-difficult) ground truth
    num_ground_truth: np.ndarray  # (K,) int64 objects that are not difficult
    num_difficult: np.ndarray  # (K,) int64 difficult (or crowd) objects, ignored
    num_detections: np.ndarray  # (K,) int64
    num_true_positives: np.ndarray  # (K,) int64

    @property
    def metrics(self) -> dict[str, float]:
        """``{"mAP": .., "AP-<class name>": .., ...}`` in percent; -1 where undefined (no ground truth)."""
        percent = self.ap * 100
        valid = ~np.isnan(percent)
        out = {"mAP": float(np.mean(percent[valid])) if valid.any() else -1.0}
        for name, value, ok in zip(self.class_names, percent, valid):
            out[f"AP-{name}"] = float(value) if ok else -1.0
        return out

    def summary_lines(self) -> list[str]:
        """A per-class table: AP (percent), objects, difficult objects, detections, true positives."""
        width = max([len("class")] + [len(n) for n in self.class_names])
        lines = [f"{_METRIC_TITLES[self.metric]} (percent) at IoU > {self.iou_thresh:g}, difficult objects ignored",
                 f"{'class':<{width}}  {'AP':>6}  {'gt':>6}  {'diff':>5}  {'dets':>7}  {'tp':>6}"]
        for k, name in enumerate(self.class_names):
            ap = "-" if np.isnan(self.ap[k]) else f"{self.ap[k] * 100:6.2f}"
            lines.append(f"{name:<{width}}  {ap:>6}  {self.num_ground_truth[k]:>6d}  {self.num_difficult[k]:>5d}  "
                         f"{self.num_detections[k]:>7d}  {self.num_true_positives[k]:>6d}")
        counted = int((~np.isnan(self.ap)).sum())
        m = self.metrics["mAP"]
        lines.append(f"{'mAP':<{width}}  {m:6.2f}  over {counted} of {len(self.class_names)} classes"
                     + ("" if counted == len(self.class_names) else " (the others have no ground truth: AP '-')"))
        return lines


def voc_average_precision(recall: np.ndarray, precision: np.ndarray, metric: str) -> float:
    """AP of one class from its cumulative recall and precision (R,) in score order (``voc_eval``'s ``voc_ap``)."""
    if metric == "voc07":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # arange, not linspace: the reference's thresholds, bit for bit
            reached = recall >= t
            ap = ap + (float(np.max(precision[reached])) if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _voc_boxes(xywh: np.ndarray) -> np.ndarray:
    """(N, 4) COCO xywh -> VOC 1-based inclusive (xmin, ymin, xmax, ymax), float64."""
    x, y, w, h = xywh.T
    return np.stack([x + 1.0, y + 1.0, x + w, y + h], 1)


def _class_matches(d_image: np.ndarray, d_boxes: np.ndarray, g_image: np.ndarray, g_boxes: np.ndarray,
                   g_ignore: np.ndarray, iou_thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) (D,) float64 of one class's D detections, given in decreasing score order.

    Vectorised ``voc_eval``: each detection's best object is found over (detection, object of its
    image) pairs; the earliest detection of an object takes it, which is the reference's greedy loop
    since a detection's best object does not depend on what earlier detections took.
    """
    nd = len(d_image)
    order = np.argsort(g_image, kind="stable")  # objects of an image stay in the file's order
    g_sorted = g_image[order]
    start = np.searchsorted(g_sorted, d_image, "left")
    counts = np.searchsorted(g_sorted, d_image, "right") - start
    pair_det = np.repeat(np.arange(nd), counts)
    offsets = np.cumsum(counts) - counts
    pair_gt = order[start[pair_det] + np.arange(len(pair_det)) - offsets[pair_det]]
    bb, gt = d_boxes[pair_det], g_boxes[pair_gt]
    # The reference's arithmetic, operation for operation.
    iw = np.maximum(np.minimum(gt[:, 2], bb[:, 2]) - np.maximum(gt[:, 0], bb[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], bb[:, 3]) - np.maximum(gt[:, 1], bb[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    uni = (bb[:, 2] - bb[:, 0] + 1.0) * (bb[:, 3] - bb[:, 1] + 1.0) + \
        (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters
    with np.errstate(divide="ignore", invalid="ignore"):
        overlaps = inters / uni
    ovmax = np.full(nd, -np.inf)
    np.maximum.at(ovmax, pair_det, overlaps)
    best = np.flatnonzero(overlaps == ovmax[pair_det])
    dets, first = np.unique(pair_det[best], return_index=True)  # the first object of equal overlaps
    jmax = np.full(nd, -1)
    jmax[dets] = pair_gt[best[first]]

    matched = ovmax > iou_thresh  # False for NaN overlaps (degenerate boxes), as in the reference
    ignored = matched & g_ignore[np.where(matched, jmax, 0)] if len(g_ignore) else np.zeros(nd, bool)
    candidates = np.flatnonzero(matched & ~ignored)
    _, first = np.unique(jmax[candidates], return_index=True)
    tp = np.zeros(nd)
    tp[candidates[first]] = 1.0
    fp = (~matched | (matched & ~ignored)).astype(np.float64) - tp
    return tp, fp


def _read_ground_truth(gt: Any) -> tuple[dict, str]:
    if isinstance(gt, (str, Path)):
        path = Path(gt)
        if not path.is_file():
            raise DatasetError(f"Ground-truth file {str(path)!r} does not exist. Pass the COCO json of the VOC "
                               f"annotations (swiftdet convert-data voc writes one).")
        try:
            return json.loads(path.read_text(encoding="utf-8")), str(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"Ground-truth file {str(path)!r} is not valid json ({exc}).") from None
    if isinstance(gt, dict):
        return gt, "<ground-truth dict>"
    raise DatasetError(f"Ground truth must be a path to a COCO json or a COCO-format dict, got {type(gt).__name__}.")


def evaluate_voc(gt: str | dict, results: list[dict] | str, *, metric: str = "area",
                 iou_thresh: float = 0.5) -> VocEvaluation:
    """VOC AP of COCO-format box results against a COCO-format ground truth.

    Args:
        gt: a COCO json path or dict, as :func:`swiftdet.data.voc.voc_to_coco` makes it: annotations
            with ``bbox`` and ``"difficult": 0|1`` (absent: 0; ``iscrowd`` 1 is ignored as difficult).
        results: a COCO results json path or list of ``{image_id, category_id, bbox, score}``.
        metric: "voc07" (11-point) or "area" (VOC2010+).
        iou_thresh: a detection matches an object overlapping it by more than this.
    """
    if metric not in VOC_METRICS:
        raise EvaluationError(f"VOC metric {metric!r} is not one of {list(VOC_METRICS)}: 'voc07' for VOC2007's "
                              f"11-point AP, 'area' for the VOC2010+ area under the curve.")
    if not 0.0 <= iou_thresh < 1.0:
        raise EvaluationError(f"iou_thresh {iou_thresh} must lie in [0, 1).")
    dataset, source = _read_ground_truth(gt)
    if isinstance(dataset, dict) and isinstance(dataset.get("annotations"), list):
        # voc_eval reads neither; COCO's checks would refuse annotations without them.
        dataset = dict(dataset, annotations=[
            {"area": 0.0, "iscrowd": 0, **a} if isinstance(a, dict) and not {"area", "iscrowd"} <= a.keys() else a
            for a in dataset["annotations"]])
    truth = _ground_truth_from_dict(dataset, source, "bbox")
    difficult = []
    for a in dataset["annotations"]:
        flag = a.get("difficult", 0)
        if flag not in (0, 1):  # also True / False
            raise DatasetError(f"Ground truth {source!r}: annotation id {a['id']!r} has 'difficult' {flag!r}; it must "
                               f"be 0 or 1.")
        difficult.append(bool(flag))
    ignore = np.array(difficult, dtype=bool) | truth.iscrowd
    names = [str(truth.category_names[c]) for c in truth.category_ids]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(f"Ground truth {source!r}: category name(s) {repeated} belong to more than one category "
                           f"id; the VOC metrics are keyed by class name ('AP-<name>').")
    dets = load_detections(results, truth, "bbox")

    g_boxes = _voc_boxes(truth.boxes)
    d_boxes = _voc_boxes(dets.boxes)
    k = len(truth.category_ids)
    ap = np.full(k, np.nan)
    counts = {n: np.zeros(k, dtype=np.int64) for n in ("gt", "difficult", "dets", "tp")}
    for c in range(k):
        g_sel = truth.category_index == c
        npos = int((g_sel & ~ignore).sum())
        d_sel = np.flatnonzero(dets.category_index == c)
        d_sel = d_sel[np.argsort(-dets.score[d_sel], kind="stable")]
        tp, fp = _class_matches(dets.image_index[d_sel], d_boxes[d_sel], truth.image_index[g_sel], g_boxes[g_sel],
                                ignore[g_sel], iou_thresh)
        counts["gt"][c], counts["difficult"][c] = npos, int((g_sel & ignore).sum())
        counts["dets"][c], counts["tp"][c] = len(d_sel), int(tp.sum())
        if npos == 0:
            continue  # AP undefined (voc_eval divides by zero)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[c] = voc_average_precision(recall, precision, metric)
    return VocEvaluation(metric=metric, iou_thresh=iou_thresh, class_names=names, ap=ap,
                         num_ground_truth=counts["gt"], num_difficult=counts["difficult"],
                         num_detections=counts["dets"], num_true_positives=counts["tp"])
