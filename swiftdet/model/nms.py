"""Class-wise non-maximum suppression with torchvision's results, without a pass per class.

``torchvision.ops.batched_nms`` handles many boxes (more than 1000 on CPU, 25000 on CUDA) by
looping over the classes, and each iteration scans all N boxes (``idxs == class_id``, then
``nonzero``): with ~90 classes and ~90k candidates (an R-CNN box head at a low score threshold)
that is ~90 full passes. Here the boxes are sorted by class once (stably, so each class keeps its
boxes in their original order) and NMS runs on each contiguous class slice. NMS sees exactly the
boxes, in the order, torchvision's loop gives it, so the kept indices and their order are identical.
Below that size torchvision offsets the boxes per class and runs one NMS; that path is already one
pass, and is used as is.

Detectors keep only each image's best few hundred boxes after NMS, and a box's fate depends only on
the better-scoring boxes of its class. So :func:`best_class_wise_nms` runs NMS on each image's
best-scoring candidates first and widens the set only when it did not yet keep enough: exactly the
first kept boxes of the full NMS, without its quadratic cost over the many low scores behind them.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from swiftdet.model.tracing import count_values, is_tracing

__all__ = ["best_class_wise_nms", "class_wise_nms", "per_image_nms", "stable_argsort"]

# torchvision's batched_nms switches from its one-call coordinate trick to a per-class loop above
# this many box coordinates (boxes.numel()), per device type.
_PER_CLASS_ABOVE = {"cpu": 4000}
_PER_CLASS_ABOVE_OTHER = 100_000


def class_wise_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by NMS within each class, sorted by decreasing score.

    Same contract and result as ``torchvision.ops.batched_nms``.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores.
        idxs: (N,) int64 class (group) of each box; boxes of different groups never suppress each other.
    Returns:
        (K,) int64 indices into ``boxes``.
    """
    limit = _PER_CLASS_ABOVE.get(boxes.device.type, _PER_CLASS_ABOVE_OTHER)
    if is_tracing() or boxes.numel() <= limit:
        # Traced: torchvision's one-call path (the loop below would bake in one input's classes).
        return batched_nms(boxes, scores, idxs, iou_threshold)
    order = torch.argsort(idxs, stable=True)
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1]
    kept = [members[nms(boxes[members], scores[members], iou_threshold)] for members in order.split(counts.tolist())]
    # Kept indices in increasing index order, then sorted by score: the order torchvision returns.
    keep = torch.cat(kept).sort().values
    return keep[scores[keep].sort(descending=True)[1]]


def best_class_wise_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    max_kept: int,
    image_idx: Tensor | None = None,
    num_images: int = 1,
) -> Tensor:
    """The start of :func:`class_wise_nms`'s result that each image's best ``max_kept`` kept boxes need.

    NMS runs on each image's ``4 * max_kept`` best-scoring candidates, doubled until every image
    either keeps ``max_kept`` boxes scoring above its last chosen candidate or had all its
    candidates chosen. A box is kept or suppressed by the better-scoring boxes of its group only
    (ties: the lower index first; torchvision's NMS sorts stably, and the chosen candidates keep
    their index order), all of which are chosen with it, so those boxes get the full NMS's verdict.

    Args:
        boxes, scores, idxs, iou_threshold: as :func:`class_wise_nms`; ``idxs`` groups never span images.
        max_kept: how many kept boxes per image the caller uses (its cap after NMS).
        image_idx: (N,) int64 image of each box (None: one image); num_images: the batch size.
    Returns:
        (K,) int64 indices sorted by decreasing score: every kept box above each image's
        ``max_kept``-th kept score, possibly followed by further kept boxes (callers cap them).
    """
    n = scores.shape[0]
    if is_tracing() or n <= 4 * max_kept:
        return class_wise_nms(boxes, scores, idxs, iou_threshold)
    if image_idx is None:
        image_idx = torch.zeros(n, dtype=torch.int64, device=scores.device)
    counts = count_values(image_idx, num_images)
    # Each candidate's rank by decreasing score within its image (ties: lower index first).
    order = scores.argsort(descending=True, stable=True)
    order = order[image_idx[order].argsort(stable=True)]
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=order.device) - starts[image_idx[order]]
    budget = 4 * max_kept
    while budget < int(counts.max()):
        chosen = torch.nonzero(rank < budget).squeeze(1)  # in index order, as class_wise_nms takes them
        keep = chosen[class_wise_nms(boxes[chosen], scores[chosen], idxs[chosen], iou_threshold)]
        partial = counts > budget
        boundary = torch.full((num_images,), float("-inf"), dtype=scores.dtype, device=scores.device)
        boundary[partial] = scores[order[starts[partial] + budget - 1]]
        kept_images = image_idx[keep]
        settled = count_values(kept_images[scores[keep] > boundary[kept_images]], num_images)
        if bool(((settled >= max_kept) | ~partial).all()):
            return keep
        budget *= 2
    return class_wise_nms(boxes, scores, idxs, iou_threshold)


def stable_argsort(keys: Tensor) -> Tensor:
    """``keys.argsort(stable=True)`` for (N,) int64 keys >= 0. Traced, the keys are made unique
    (key * N + position) so that any sort is stable: exporters do not record ``stable``."""
    if not is_tracing():
        return keys.argsort(stable=True)
    positions = torch.arange(keys.shape[0], device=keys.device)
    return (keys * keys.shape[0] + positions).argsort()


def per_image_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_idx: Tensor,
    num_images: int,
    num_labels: int,
    iou_threshold: float,
    max_per_image: int,
) -> tuple[Tensor, Tensor]:
    """Class-wise NMS within each image of a batch in one call, and each image's best ``max_per_image``.

    Args:
        boxes: (P, 4) xyxy candidates of all images; scores: (P,).
        labels: (P,) int64 class in [0, num_labels); image_idx: (P,) int64 image of each candidate.
    Returns:
        keep: (N,) indices into the candidates, grouped by image, each image's by decreasing score;
        num_per_image: (num_images,) int64.
    """
    # An (image, class) pair is one NMS group: images never suppress each other's boxes.
    groups = image_idx * num_labels + labels
    if torch.onnx.is_in_onnx_export():
        # ONNX only (a TorchScript trace of this layout replayed another batch wrongly; it keeps
        # the single NMS below). One NMS per group, at most max_per_image kept each (a group's boxes past its own best
        # max_per_image have that many better ones in their image, so the cap changes nothing).
        keep = _grouped_nms_traced(boxes, scores, groups, num_images * num_labels, iou_threshold, max_per_image)
        keep = keep[scores[keep].argsort(descending=True)]
    else:
        keep = best_class_wise_nms(boxes, scores, groups, iou_threshold, max_per_image, image_idx, num_images)
    # keep is sorted by decreasing score; a stable sort by image keeps that order within each image.
    keep = keep[stable_argsort(image_idx[keep])]
    kept_images = image_idx[keep]
    counts = count_values(kept_images, num_images)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_images]
    keep = keep[rank < max_per_image]
    return keep, count_values(image_idx[keep], num_images)


class _GroupNms(torch.autograd.Function):
    """ONNX's NonMaxSuppression on groups laid out as its batch: boxes (G, W, 4), scores (G, 1, W)
    with -inf in the unused slots -> (S, 3) int64 rows (group, 0, slot) of the kept boxes, at
    most ``max_per_group`` per group. Exported as that one standard operator, whose runtimes then
    compare each box only with the kept boxes of its own group (its forward, what the exporter's
    trace runs, is torchvision's NMS of the same boxes)."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float) -> Tensor:
        return _group_nms(boxes, scores, max_per_group, iou_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_group: int, iou_threshold: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_group], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
                    # Every finite score passes; the unused slots' -inf do not.
                    g.op("Constant", value_t=torch.tensor([torch.finfo(torch.float32).min], dtype=torch.float32)))


def _group_nms(boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float) -> Tensor:
    """What :class:`_GroupNms` computes, with torchvision's NMS."""
    width = boxes.shape[1]
    flat = scores.reshape(-1)
    used = torch.nonzero(flat > float("-inf")).squeeze(1)
    group = used // width
    keep = batched_nms(boxes.reshape(-1, 4)[used], flat[used], group, iou_threshold)
    keep = keep[stable_argsort(group[keep])]  # by group, each by decreasing score
    kept_groups = group[keep]
    counts = count_values(kept_groups, boxes.shape[0])
    rank = torch.arange(keep.numel(), device=keep.device) - (counts.cumsum(0) - counts)[kept_groups]
    keep = keep[rank < max_per_group]
    slots = used[keep] % width
    return torch.stack((group[keep], torch.zeros_like(slots), slots), dim=1)


def _grouped_nms_traced(boxes: Tensor, scores: Tensor, groups: Tensor, num_groups, iou_threshold: float,
                        max_per_group: int) -> Tensor:
    """Indices of the boxes NMS keeps within each group (at most ``max_per_group`` each), for an
    ONNX export: the (P,) candidates are laid out as (num_groups, W) slots, W the largest group, and run
    as one batched NMS (:class:`_GroupNms`) instead of one NMS over offset boxes, whose runtimes
    compare every box with every kept box of the whole batch (quadratic in the candidates)."""
    order = stable_argsort(groups)
    sorted_groups = groups[order]
    counts = count_values(sorted_groups, num_groups)
    starts = counts.cumsum(0) - counts
    position = torch.arange(groups.shape[0], device=groups.device)
    slot = position - starts[sorted_groups]
    # (W,) slot numbers 0..W-1, W read from the counts at run time (a top-k of a run-time k: an int
    # here would bake the traced input's largest group into the graph).
    width = torch.arange(groups.shape[0] + 1, device=groups.device).topk(counts.max(), largest=False).values
    grid = counts[:, None] * 0 + width[None, :]  # (G, W), shapes from tensors only
    flat = sorted_groups * torch._shape_as_tensor(grid)[1] + slot
    dense_scores = torch.full_like(grid, 0, dtype=scores.dtype).fill_(float("-inf")).reshape(-1)
    dense_scores = dense_scores.scatter(0, flat, scores[order]).reshape_as(grid)[:, None, :]
    layout = torch.zeros_like(grid, dtype=boxes.dtype)[..., None].expand(-1, -1, 4)  # (G, W, 4)
    dense_boxes = layout.reshape(-1, 4).index_put((flat,), boxes[order]).reshape_as(layout)
    selected = _GroupNms.apply(dense_boxes, dense_scores, int(max_per_group), float(iou_threshold))
    return order[starts[selected[:, 0]] + selected[:, 2]]
