"""Predictions as COCO result dicts (the format of COCO's results json and of ``evaluate_coco``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch

from swiftdet.structures import BitMasks, CroppedMasks, Instances

__all__ = ["instances_to_coco_results"]


def _crop_rle(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """COCO compressed RLE of a (h, w) bool crop placed at (x0, y0) in a height x width image,
    equal to ``mask_utils.encode`` of the pasted full mask but built in the memory of the crop.

    COCO RLE runs down the columns (Fortran order). Each crop column, padded with a zero above and
    below, gives the column-major image positions where the value changes; everything between the
    crop's columns, and above and below the crop, is zeros. A run of ones that ends at the image's
    bottom and goes on at the top of the next column (a crop as tall as the image) yields an end
    and a start at the same position: both are dropped, as a mask encoded whole has no change there.
    """
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=np.int8)  # the crop transposed: one row per image column
    padded[:, 1:-1] = crop.T
    column, row = np.nonzero(np.diff(padded, axis=1))  # change from crop row r - 1 to row r
    change = (x0 + column.astype(np.int64)) * height + y0 + row  # row-major over (column, row): sorted
    if change.size > 1:
        joined = np.flatnonzero(change[1:] == change[:-1])
        change = np.delete(change, np.concatenate([joined, joined + 1]))
    if change.size and change[-1] == height * width:  # ones up to the last pixel: no run after them
        change = change[:-1]
    # Runs between the changes; the first is of zeros (of length 0 when the image starts with a one).
    counts = np.diff(np.concatenate(([0], change, [height * width]))).tolist()
    return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)


def _mask_rles(masks: object, count: int) -> list[dict]:
    """COCO compressed RLEs of predicted masks pasted at the image size (CroppedMasks or BitMasks)."""
    if not isinstance(masks, (CroppedMasks, BitMasks)) or len(masks) != count:
        got = f"{len(masks)} {type(masks).__name__}" if isinstance(masks, (CroppedMasks, BitMasks)) else type(masks).__name__
        raise ValueError(
            f"instances_to_coco_results needs {count} masks pasted at the image size (CroppedMasks or BitMasks); "
            f"got {got}. Call model.postprocess first."
        )
    if isinstance(masks, BitMasks):
        array = masks.tensor.detach().cpu().numpy()
        return mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8)))
    height, width = masks.image_size
    return [
        _crop_rle(crop.detach().cpu().numpy(), x0, y0, height, width)
        for crop, (x0, y0) in zip(masks.crops, masks.offsets.tolist())
    ]


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
            scores, and optionally masks (CroppedMasks or BitMasks at the image size) and keypoints (N, K, 3).
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
        rles = _mask_rles(instances.masks, count)
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
