"""Proposal recall (AR) as detectron2's COCOEvaluator reports it for RPN-only models.

This is detectron2's ``_evaluate_box_proposals`` (itself Detectron's), NOT pycocotools' AR
(:func:`swiftdet.evaluation.coco.evaluate_proposals` gives that one). The two differ:

* Matching is one-to-one and greedy over the whole image: repeatedly the (proposal, ground truth)
  pair of highest IoU among the unused ones is taken and the ground truth's "coverage" is that IoU
  (pycocotools matches proposals in score order, per IoU threshold).
* Only non-crowd ground truth counts (crowd regions are neither targets nor ignored areas); the
  area ranges read the annotations' ``area`` field (as float32, as detectron2's tensors hold it),
  both ends inclusive.
* Recall at IoU t is (ground truths covered with IoU >= t) / (ground truths), t = 0.50, 0.55, ...,
  0.95 (float32); AR is the mean of those 10 recalls.
* An image without proposals, or without non-crowd ground truth, is skipped entirely: its ground
  truth is not counted (a detectron2 quirk, kept so that the numbers agree).
* Proposals are ranked by decreasing score (stable for ties) and the first ``limit`` are used.

Numbers are fractions in [0, 1] like every other swiftdet metric (detectron2 prints them x100),
-1 where a range has no ground truth (detectron2 gives NaN). Names are detectron2's: ``AR@100``,
``ARs@100``, ``ARm@100``, ``ARl@100``, ``AR@1000``, ... IoUs are computed in float32 with
detectron2's ``pairwise_iou`` formula, so ties at a threshold fall the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from swiftdet.errors import EvaluationError
from swiftdet.evaluation.coco_inputs import GroundTruth, load_ground_truth

__all__ = ["PROPOSAL_AREAS", "PROPOSAL_LIMITS", "ProposalRecall", "evaluate_box_proposals", "proposal_metric_names",
           "proposal_recall"]

#: detectron2's area ranges (in the annotations' ``area`` units, pixels^2), ends inclusive.
PROPOSAL_AREAS = {"all": (0.0 ** 2, 1e5 ** 2), "small": (0.0 ** 2, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
                  "large": (96.0 ** 2, 1e5 ** 2)}
#: The proposals per image detectron2's COCOEvaluator evaluates.
PROPOSAL_LIMITS = (100, 1000)
_SUFFIX = {"all": "", "small": "s", "medium": "m", "large": "l"}


def proposal_metric_names(limits: Sequence[int] = PROPOSAL_LIMITS) -> list[str]:
    """The names :func:`evaluate_box_proposals` gives, in its order: AR@100, ARs@100, ARm@100, ARl@100, AR@1000, ..."""
    return [f"AR{_SUFFIX[area]}@{limit:d}" for limit in limits for area in PROPOSAL_AREAS]


@dataclass
class ProposalRecall:
    """One area range and limit: ``ar`` (mean recall, -1 if ``num_pos`` is 0), the recall at each
    threshold, and the sorted IoU coverage of each counted ground truth."""

    ar: float
    recalls: Tensor  # (T,) float32
    thresholds: Tensor  # (T,) float32
    gt_overlaps: Tensor  # (num_pos,) float32, ascending
    num_pos: int


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """(P, 4) x (G, 4) xyxy float32 -> (P, G) IoU; 0 where the boxes do not intersect (detectron2's formula)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(dim=2)
    return torch.where(inter > 0, inter / (area_a[:, None] + area_b - inter), torch.zeros((), dtype=inter.dtype))


def _greedy_coverage(overlaps: Tensor) -> Tensor:
    """(P, G) IoUs -> (G,) coverage: min(P, G) times, the highest remaining pair is recorded for its
    ground truth and both its proposal and its ground truth are used up.

    In numpy (the same float32 values; argmax takes the first of equal maxima, as torch's max does
    in detectron2's loop): a loop of tiny reductions, which torch runs far slower."""
    ious = overlaps.numpy().copy()
    coverage = np.zeros(ious.shape[1], dtype=np.float32)
    for j in range(min(ious.shape)):
        best_proposal = ious.argmax(axis=0)
        best_per_gt = ious[best_proposal, np.arange(ious.shape[1])]
        gt = int(best_per_gt.argmax())
        coverage[j] = best_per_gt[gt]
        ious[best_proposal[gt], :] = -1
        ious[:, gt] = -1
    return torch.from_numpy(coverage)


def _as_tensor(x: Any, shape_tail: tuple, what: str, image_id: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x.detach().cpu(), dtype=torch.float32)
    if t.numel() == 0:
        t = t.reshape(0, *shape_tail)
    if t.dim() != 1 + len(shape_tail) or tuple(t.shape[1:]) != shape_tail:
        raise EvaluationError(f"Proposals of image {image_id!r}: {what} have shape {tuple(t.shape)}, expected "
                              f"(N{', ' if shape_tail else ''}{', '.join(map(str, shape_tail))}).")
    return t


def _prepare(gt: GroundTruth, proposals: Mapping[Any, tuple[Any, Any]]):
    """Per image with proposals: its (P, 4) boxes ranked by score, (G, 4) non-crowd gt boxes xyxy and (G,) areas."""
    known = set(gt.image_ids)
    unknown = [i for i in proposals if i not in known]
    if unknown:
        raise EvaluationError(f"Proposals are given for image ids {unknown[:5]} that are not in the ground truth "
                              f"{gt.source!r}.")
    pos = {image_id: n for n, image_id in enumerate(gt.image_ids)}
    rows_of: dict[int, list[int]] = {}
    for row, index in enumerate(gt.image_index.tolist()):
        if not gt.iscrowd[row]:
            rows_of.setdefault(index, []).append(row)
    prepared = []
    for image_id, (boxes, scores) in proposals.items():
        boxes = _as_tensor(boxes, (4,), "boxes", image_id)
        scores = _as_tensor(scores, (), "scores", image_id)
        if len(scores) != len(boxes):
            raise EvaluationError(f"Proposals of image {image_id!r}: {len(boxes)} boxes but {len(scores)} scores.")
        order = torch.sort(scores, descending=True, stable=True)[1]
        rows = rows_of.get(pos[image_id], [])
        xywh = gt.boxes[rows] if rows else np.zeros((0, 4))
        # xywh -> xyxy in float64 (Python floats in detectron2), then float32 as its tensors.
        gt_boxes = torch.as_tensor(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), dtype=torch.float32)
        areas = torch.as_tensor(gt.area[rows] if rows else np.zeros(0), dtype=torch.float32)
        prepared.append((boxes[order], gt_boxes, areas))
    return prepared


def _recall(prepared, area: str, limit: int | None, thresholds: Tensor | None) -> ProposalRecall:
    lo, hi = PROPOSAL_AREAS[area]
    coverages, num_pos = [], 0
    for boxes, gt_boxes, areas in prepared:
        if len(gt_boxes) == 0 or len(boxes) == 0:
            continue  # detectron2: such an image's ground truth is not counted at all
        in_range = (areas >= lo) & (areas <= hi)
        g = gt_boxes[in_range]
        num_pos += len(g)
        if len(g) == 0:
            continue
        p = boxes if limit is None else boxes[:limit]
        coverages.append(_greedy_coverage(_pairwise_iou(p, g)))
    overlaps = torch.sort(torch.cat(coverages) if coverages else torch.zeros(0))[0]
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    if num_pos == 0:
        recalls = torch.full_like(thresholds, -1.0)
        return ProposalRecall(-1.0, recalls, thresholds, overlaps, 0)
    recalls = torch.stack([(overlaps >= t).float().sum() / float(num_pos) for t in thresholds])
    return ProposalRecall(float(recalls.mean()), recalls, thresholds, overlaps, num_pos)


def proposal_recall(gt: Any, proposals: Mapping[Any, tuple[Any, Any]], *, area: str = "all", limit: int | None = None,
                    thresholds: Sequence[float] | None = None) -> ProposalRecall:
    """detectron2's proposal recall (module docstring) for one area range and limit.

    Args:
        gt: COCO ground truth (path, dict or pycocotools COCO).
        proposals: ``{image_id: (boxes, scores)}``: (P, 4) xyxy boxes in the original image's pixels
            and (P,) scores (any monotone objectness: logits or probabilities), arrays or tensors.
            Only these images are evaluated.
        area: "all", "small", "medium" or "large".
        limit: proposals per image used (the top ``limit`` by score); None: all.
        thresholds: IoU thresholds (default 0.50:0.05:0.95).
    """
    if area not in PROPOSAL_AREAS:
        raise EvaluationError(f"Unknown proposal area range {area!r}; choose one of {list(PROPOSAL_AREAS)}.")
    th = None if thresholds is None else torch.as_tensor(list(thresholds), dtype=torch.float32)
    return _recall(_prepare(load_ground_truth(gt, "bbox"), proposals), area, limit, th)


def evaluate_box_proposals(gt: Any, proposals: Mapping[Any, tuple[Any, Any]], *,
                           limits: Sequence[int] = PROPOSAL_LIMITS) -> dict[str, float]:
    """``{"AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", ...}``: detectron2's proposal AR
    (module docstring) per limit and area range, as fractions (-1 where a range has no ground truth).
    ``proposals`` as in :func:`proposal_recall`."""
    prepared = _prepare(load_ground_truth(gt, "bbox"), proposals)
    values = [_recall(prepared, area, limit, None).ar for limit in limits for area in PROPOSAL_AREAS]
    return dict(zip(proposal_metric_names(limits), values))
