"""Predictions as COCO result dicts (the format of COCO's results json and of ``evaluate_coco``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch

from swiftdet.structures import BitMasks, Instances

__all__ = ["instances_to_coco_results"]


def _mask_array(masks: object, count: int) -> np.ndarray:
    """(N, H, W) bool numpy array from predicted masks pasted at the image size (BitMasks)."""
    if not isinstance(masks, BitMasks) or len(masks) != count:
        got = f"{len(masks)} BitMasks" if isinstance(masks, BitMasks) else type(masks).__name__
        raise ValueError(
            f"instances_to_coco_results needs {count} masks pasted at the image size (BitMasks); got {got}. "
            "Call model.postprocess first."
        )
    return masks.tensor.detach().cpu().numpy()


def instances_to_coco_results(
    instances: Instances,
    image_id: int,
    category_ids: Sequence[int],
    *,
    file_name: str | None = None,
) -> list[dict]:
    """One COCO result dict per predicted instance of one image.

    Args:
        instances: predictions in original-image pixels (after ``model.postprocess``): boxes, labels,
            scores, and optionally masks (BitMasks at the image size) and keypoints (N, K, 3).
        image_id: the image's id in the dataset.
        category_ids: dataset category id of each contiguous label (``meta["category_ids"]``).
        file_name: added to every dict when given (handy for results of images outside a dataset).

    Returns:
        Dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h] and, when present,
        ``segmentation`` (compressed RLE, ``counts`` a str) and ``keypoints`` [x1, y1, s1, ...].
    """
    count = len(instances)
    if count == 0:
        return []
    if instances.labels is None or instances.scores is None:
        raise ValueError("instances_to_coco_results needs predictions with labels and scores")
    boxes = instances.boxes.tensor.detach().to("cpu", torch.float64)
    xywh = torch.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1).tolist()
    scores = instances.scores.detach().float().cpu().tolist()
    labels = instances.labels.detach().cpu().tolist()
    bad = [label for label in labels if not 0 <= label < len(category_ids)]
    if bad:
        raise ValueError(f"predicted label {bad[0]} has no category id ({len(category_ids)} categories)")

    if instances.mask_probs is not None and instances.masks is None:
        raise ValueError("instances_to_coco_results got mask probabilities (mask_probs) but no pasted masks. "
                         "Call model.postprocess first.")
    rles = None
    if instances.masks is not None:
        masks = _mask_array(instances.masks, count)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    keypoints = None
    if instances.keypoints is not None:
        keypoints = instances.keypoints.tensor.detach().float().cpu().reshape(count, -1).tolist()

    results = []
    for i in range(count):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[labels[i]]),
            "bbox": [round(v, 3) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            rle = rles[i]
            result["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        if keypoints is not None:
            result["keypoints"] = [float(v) for v in keypoints[i]]
        if file_name is not None:
            result["file_name"] = file_name
        results.append(result)
    return results
