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

__all__ = ["class_wise_nms"]

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
    if boxes.numel() <= limit:
        return batched_nms(boxes, scores, idxs, iou_threshold)
    order = torch.argsort(idxs, stable=True)
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1]
    kept = [members[nms(boxes[members], scores[members], iou_threshold)] for members in order.split(counts.tolist())]
    # Kept indices in increasing index order, then sorted by score: the order torchvision returns.
    keep = torch.cat(kept).sort().values
    return keep[scores[keep].sort(descending=True)[1]]
