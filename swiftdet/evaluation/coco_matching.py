"""Vectorised COCO matching: the per-image work of pycocotools' ``COCOeval.evaluate``.

pycocotools loops in Python over (category, area range, image, threshold, detection, ground
truth). Here the same greedy rule runs on all images and categories at once:

1. detections are ranked per group (an image and category, or an image when categories are not
   used) by score with a stable sort, and capped at the largest maxDets;
2. IoU (or OKS) is computed for every detection / ground-truth pair of a group in one numpy pass;
3. matching steps through detection ranks; each step decides, for every group, area range and IoU
   threshold together, which ground truth the detection of that rank takes.

The matching rule, as pycocotools applies it: a detection takes, among the ground truths not yet
taken (crowd regions can be taken any number of times) whose IoU reaches the threshold, the one with
the highest IoU, ties going to the later one; ground truths that are not ignored (not crowd, inside
the area range) are tried first, ignored ones only when no other matches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from swiftdet.evaluation.coco_inputs import Detections, GroundTruth

# pycocotools caps every threshold at this value so that an IoU of exactly 1 still matches at 1.0.
_MAX_THRESHOLD = 1 - 1e-10


@dataclass
class Groups:
    """Detections and ground truths sorted into groups (image x category, or image).

    Ground truths sorted by (image, category, json order); detections by (group, score descending,
    category, results order), keeping only the first ``max_det`` of each group.
    """

    gt_order: np.ndarray  # (G,) indices into GroundTruth rows
    gt_group: np.ndarray  # (G,) group id of each sorted gt
    dt_order: np.ndarray  # (D,) indices into Detections rows (kept detections only)
    dt_group: np.ndarray  # (D,) group id of each kept detection
    dt_rank: np.ndarray  # (D,) rank of the detection inside its group (0 = highest score)
    num_groups: int


def make_groups(gt: GroundTruth, dets: Detections, use_cats: bool, max_det: int) -> Groups:
    num_cats = len(gt.category_ids)
    if use_cats:
        gt_key = gt.image_index * num_cats + gt.category_index
        dt_key = dets.image_index * num_cats + dets.category_index
        num_groups = len(gt.image_ids) * num_cats
    else:
        gt_key, dt_key = gt.image_index, dets.image_index
        num_groups = len(gt.image_ids)
    # np.lexsort is stable: the last key is the primary one, equal keys keep their input order.
    gt_order = np.lexsort((gt.category_index, gt_key))
    # Without categories pycocotools gathers a group's detections category by category, then sorts by
    # score with a stable sort: ties are broken by (category, results order).
    dt_order = np.lexsort((dets.category_index, -dets.score, dt_key))
    dt_group = dt_key[dt_order]
    dt_rank = _rank_in_group(dt_group)
    keep = dt_rank < max_det
    return Groups(gt_order=gt_order, gt_group=gt_key[gt_order], dt_order=dt_order[keep], dt_group=dt_group[keep],
                  dt_rank=dt_rank[keep], num_groups=num_groups)


def _rank_in_group(sorted_group: np.ndarray) -> np.ndarray:
    """(N,) position of each element inside its run of equal values in a sorted array."""
    n = len(sorted_group)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n) - run_start


@dataclass
class Pairs:
    """Every (kept detection, ground truth) pair sharing a group, detection-major.

    For a group with Dg detections and Gg ground truths the pairs are its Dg x Gg matrix in row-major
    order; ``dt``/``gt`` index the sorted arrays of :class:`Groups`.
    """

    dt: np.ndarray  # (P,) index into Groups.dt_order
    gt: np.ndarray  # (P,) index into Groups.gt_order
    gt_count: np.ndarray  # (D,) number of ground truths in each kept detection's group
    gt_start: np.ndarray  # (D,) index of the group's first gt in Groups.gt_order


def make_pairs(groups: Groups) -> Pairs:
    gt_count_per_group = np.bincount(groups.gt_group, minlength=groups.num_groups)
    gt_start_per_group = np.r_[0, np.cumsum(gt_count_per_group)[:-1]]
    gt_count = gt_count_per_group[groups.dt_group]
    gt_start = gt_start_per_group[groups.dt_group]
    dt = np.repeat(np.arange(len(groups.dt_group)), gt_count)
    pair_start = np.r_[0, np.cumsum(gt_count)[:-1]]
    gt = gt_start[dt] + (np.arange(len(dt)) - pair_start[dt])
    return Pairs(dt=dt, gt=gt, gt_count=gt_count, gt_start=gt_start)


def box_iou_pairs(dt_boxes: np.ndarray, gt_boxes: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes, (P, 4) x (P, 4) -> (P,), with the same float operations as pycocotools' bbIou.

    For a crowd ground truth the union is the detection's area alone.
    """
    dx, dy, dw, dh = dt_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    dt_area = dw * dh
    union = np.where(gt_crowd, dt_area, dt_area + gw * gh - inter)
    out = np.zeros(len(inter))
    overlap = (w > 0) & (h > 0)
    out[overlap] = inter[overlap] / union[overlap]
    return out


def mask_iou_pairs(groups: Groups, pairs: Pairs, dt_rles: list, gt_rles: list, gt_crowd: np.ndarray) -> np.ndarray:
    """Mask IoU of every pair, (P,), computed group by group with pycocotools' RLE code.

    ``dt_rles``, ``gt_rles`` and ``gt_crowd`` are indexed by Detections / GroundTruth rows.
    """
    out = np.zeros(len(pairs.dt))
    if len(out) == 0:
        return out
    # Pairs are detection-major and a group's detections are contiguous: one pycocotools call per group.
    dt_group = groups.dt_group
    run_starts = np.flatnonzero(np.r_[True, dt_group[1:] != dt_group[:-1]])
    run_ends = np.r_[run_starts[1:], len(dt_group)]
    pair_start = np.r_[0, np.cumsum(pairs.gt_count)[:-1]]
    for s, e in zip(run_starts.tolist(), run_ends.tolist()):
        g0, ng = int(pairs.gt_start[s]), int(pairs.gt_count[s])
        if ng == 0:
            continue
        d = [dt_rles[i] for i in groups.dt_order[s:e]]
        gidx = groups.gt_order[g0:g0 + ng]
        g = [gt_rles[i] for i in gidx]
        iou = mask_utils.iou(d, g, gt_crowd[gidx].astype(np.uint8).tolist())
        out[pair_start[s]:pair_start[s] + (e - s) * ng] = np.asarray(iou, dtype=np.float64).reshape(-1)
    return out


def oks_pairs(dt_kpts: np.ndarray, gt_kpts: np.ndarray, gt_boxes: np.ndarray, gt_area: np.ndarray,
              sigmas: np.ndarray) -> np.ndarray:
    """Object keypoint similarity of paired instances, (P, K, 3) x (P, K, 3) -> (P,).

    Follows pycocotools' computeOks operation by operation (so the floats are identical): over the
    visible gt keypoints when there are any, else over all keypoints with the distance measured to
    the gt box grown by its size on each side.
    """
    variances = (sigmas * 2) ** 2
    xd, yd = dt_kpts[:, :, 0], dt_kpts[:, :, 1]
    xg, yg, vg = gt_kpts[:, :, 0], gt_kpts[:, :, 1], gt_kpts[:, :, 2]
    visible = vg > 0
    num_visible = visible.sum(1)
    has_visible = num_visible > 0

    x0 = (gt_boxes[:, 0] - gt_boxes[:, 2])[:, None]
    x1 = (gt_boxes[:, 0] + gt_boxes[:, 2] * 2)[:, None]
    y0 = (gt_boxes[:, 1] - gt_boxes[:, 3])[:, None]
    y1 = (gt_boxes[:, 1] + gt_boxes[:, 3] * 2)[:, None]
    zero = np.zeros_like(xd)
    dx = np.where(has_visible[:, None], xd - xg, np.maximum(zero, x0 - xd) + np.maximum(zero, xd - x1))
    dy = np.where(has_visible[:, None], yd - yg, np.maximum(zero, y0 - yd) + np.maximum(zero, yd - y1))
    e = (dx ** 2 + dy ** 2) / variances / (gt_area[:, None] + np.spacing(1)) / 2
    similarity = np.exp(-e)

    out = np.empty(len(e))
    # The mean runs over the visible keypoints only. numpy's summation order depends on the number of
    # terms, so each count is summed separately over compacted rows to give bit-identical sums.
    none_visible = ~has_visible
    out[none_visible] = similarity[none_visible].sum(1) / similarity.shape[1]
    for k in np.unique(num_visible[has_visible]):
        rows = np.flatnonzero(num_visible == k)
        # A stable argsort of "not visible" brings the visible columns to the front, in order.
        cols = np.argsort(~visible[rows], axis=1, kind="stable")[:, :k]
        picked = np.ascontiguousarray(np.take_along_axis(similarity[rows], cols, axis=1))
        out[rows] = picked.sum(1) / k
    return out


@dataclass
class MatchResult:
    """Outcome of matching for every kept detection, area range and IoU threshold."""

    matched_gt: np.ndarray  # (D, A, T) int64 index into Groups.gt_order, -1 when unmatched


def match(groups: Groups, pairs: Pairs, iou: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray,
          iou_thresholds: np.ndarray) -> MatchResult:
    """Greedy matching of every group, area range and threshold at once.

    Args:
        iou: (P,) IoU of each pair.
        gt_ignore: (G, A) ignore flag of each sorted gt per area range (crowd, outside the range, ...).
        gt_crowd: (G,) crowd flag of each sorted gt.
        iou_thresholds: (T,).
    """
    num_dt = len(groups.dt_group)
    num_areas = gt_ignore.shape[1]
    thresholds = np.minimum(iou_thresholds, _MAX_THRESHOLD)
    matched_gt = np.full((num_dt, num_areas, len(thresholds)), -1, dtype=np.int64)
    if len(iou) == 0:
        return MatchResult(matched_gt)

    # Only detections reaching the lowest threshold with some gt can ever match: the others are left
    # out of the stepping, which shortens it to the few plausible detections per group.
    pair_start = np.r_[0, np.cumsum(pairs.gt_count)[:-1]]
    has_pairs = pairs.gt_count > 0
    best = np.full(num_dt, -np.inf)
    best[has_pairs] = np.maximum.reduceat(iou, pair_start[has_pairs])
    candidate = best >= thresholds.min()
    cand_idx = np.flatnonzero(candidate)
    if len(cand_idx) == 0:
        return MatchResult(matched_gt)
    cand_group = groups.dt_group[cand_idx]
    group_first = np.r_[True, cand_group[1:] != cand_group[:-1]]
    group_starts = np.flatnonzero(group_first)
    group_sizes = np.diff(np.r_[group_starts, len(cand_idx)])
    slot = np.arange(len(cand_idx)) - np.repeat(group_starts, group_sizes)  # candidate's step in its group
    gt_count = pairs.gt_count[cand_idx[group_starts]]

    # Groups of similar size share a padded block so the padding stays small.
    block_key = np.ceil(np.log2(gt_count)).astype(np.int64) * 64 + np.ceil(np.log2(group_sizes)).astype(np.int64)
    for key in np.unique(block_key):
        members = np.flatnonzero(block_key == key)
        _match_block(members, group_starts, group_sizes, gt_count, cand_idx, slot, pairs, pair_start, iou,
                     gt_ignore, gt_crowd, thresholds, matched_gt)
    return MatchResult(matched_gt)


def _match_block(members, group_starts, group_sizes, gt_count, cand_idx, slot, pairs, pair_start, iou,
                 gt_ignore, gt_crowd, thresholds, matched_gt) -> None:
    """Match the groups ``members`` (indices into the candidate groups) in one padded block."""
    n = len(members)
    steps = int(group_sizes[members].max())
    width = int(gt_count[members].max())
    num_areas, num_thr = gt_ignore.shape[1], len(thresholds)

    # Padded per-group arrays: (n, steps, width) IoU, -1 where padding (never reaches a threshold).
    dets = np.concatenate([cand_idx[group_starts[m]:group_starts[m] + group_sizes[m]] for m in members])
    det_row = np.repeat(np.arange(n), group_sizes[members])
    det_slot = slot[np.concatenate([np.arange(group_starts[m], group_starts[m] + group_sizes[m]) for m in members])]
    block_iou = np.full((n, steps, width), -1.0)
    ng = gt_count[members][det_row]
    pair_rows = np.repeat(np.arange(len(dets)), ng)
    col = np.arange(len(pair_rows)) - np.repeat(np.r_[0, np.cumsum(ng)[:-1]], ng)
    block_iou[det_row[pair_rows], det_slot[pair_rows], col] = iou[pair_start[dets][pair_rows] + col]

    gt_first = pairs.gt_start[cand_idx[group_starts[members]]]  # (n,)
    gt_cols = gt_first[:, None] + np.arange(width)[None, :]
    valid_col = np.arange(width)[None, :] < gt_count[members][:, None]
    gt_cols = np.where(valid_col, gt_cols, 0)
    ignore = gt_ignore[gt_cols].transpose(0, 2, 1)[:, :, None, :]  # (n, A, 1, width)
    crowd = (gt_crowd[gt_cols] & valid_col)[:, None, None, :]  # (n, 1, 1, width)
    thr = thresholds[None, None, :, None]

    taken = np.zeros((n, num_areas, num_thr, width), dtype=bool)
    result = np.full((n, steps, num_areas, num_thr), -1, dtype=np.int64)
    reversed_cols = width - 1
    for s in range(steps):
        row = block_iou[:, s, None, None, :]  # (n, 1, 1, width)
        reachable = (row >= thr) & (~taken | crowd)
        best_col = np.full((n, num_areas, num_thr), -1, dtype=np.int64)
        for pool in (~ignore, ignore):  # regular gts first, ignored ones only if no regular one matches
            cand = reachable & pool
            value = np.where(cand, row, -np.inf)
            # The last column holding the maximum: ties go to the later gt, as in pycocotools.
            last = reversed_cols - np.argmax(value[..., ::-1], axis=-1)
            found = cand.any(-1) & (best_col < 0)
            best_col = np.where(found, last, best_col)
        result[:, s] = best_col
        hit = np.nonzero(best_col >= 0)
        taken[hit + (best_col[hit],)] = True

    valid = np.arange(steps)[None, :] < group_sizes[members][:, None]
    rows, steps_idx = np.nonzero(valid)
    cols = result[rows, steps_idx]  # (V, A, T) column or -1
    # Rows of ``valid`` in row-major order list the block's detections in the order of ``dets``.
    matched_gt[dets] = np.where(cols >= 0, cols + gt_first[rows][:, None, None], -1)
