"""Class-wise non-maximum suppression with torchvision's results, without a pass per class.

``torchvision.ops.batched_nms`` handles many boxes (more than 1000 on CPU, 25000 on CUDA) by
looping over the classes, and each iteration scans all N boxes (``idxs == class_id``, then
``nonzero``): with ~90 classes and ~90k candidates (an R-CNN box head at a low score threshold)
that is ~90 full passes. Here the boxes are sorted by class once (stably, so each class keeps its
boxes in their original order) and NMS runs on each contiguous class slice. NMS sees exactly the
boxes, in the order, torchvision's loop gives it, so the kept indices and their order are identical.
Below that size torchvision offsets the boxes per class and runs one NMS; that path is already one
pass, and is used as is.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from swiftdet.model.tracing import count_values, is_tracing

__all__ = ["class_wise_nms", "per_image_nms", "stable_argsort"]

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
    keep = class_wise_nms(boxes, scores, image_idx * num_labels + labels, iou_threshold)
    # keep is sorted by decreasing score; a stable sort by image keeps that order within each image.
    keep = keep[stable_argsort(image_idx[keep])]
    kept_images = image_idx[keep]
    counts = count_values(kept_images, num_images)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[kept_images]
    keep = keep[rank < max_per_image]
    return keep, count_values(image_idx[keep], num_images)
