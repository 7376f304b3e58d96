"""instances_to_coco_results: the COCO result format the evaluator and the predictor write."""
from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from swiftdet.evaluation.results import instances_to_coco_results
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints


def test_boxes_masks_keypoints_in_coco_format():
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:6, 0:2] = True
    instances = Instances(
        (6, 8),
        boxes=Boxes(torch.tensor([[2.0, 1.0, 5.0, 3.0], [0.0, 4.0, 2.5, 6.0]])),
        labels=torch.tensor([1, 0]),
        scores=torch.tensor([0.9, 0.25]),
        masks=BitMasks(masks),
        keypoints=Keypoints(torch.arange(12, dtype=torch.float32).view(2, 2, 3)),
    )
    results = instances_to_coco_results(instances, 42, [7, 9], file_name="a.jpg")
    json.dumps(results)  # plain JSON types only
    assert [r["category_id"] for r in results] == [9, 7]
    assert results[0]["bbox"] == [2.0, 1.0, 3.0, 2.0] and results[1]["bbox"] == [0.0, 4.0, 2.5, 2.0]
    assert results[0]["image_id"] == 42 and results[0]["file_name"] == "a.jpg"
    assert results[1]["score"] == pytest.approx(0.25)
    assert results[1]["keypoints"] == [float(v) for v in range(6, 12)]
    rle = results[0]["segmentation"]
    assert isinstance(rle["counts"], str) and rle["size"] == [6, 8]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), masks[0].numpy())


def test_empty_and_unpasted_masks():
    assert instances_to_coco_results(Instances.empty((4, 4)), 1, [1]) == []
    one = dict(boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]])), labels=torch.tensor([0]), scores=torch.tensor([0.5]))
    unpasted = Instances((4, 4), **one, mask_probs=torch.rand(1, 28, 28))
    with pytest.raises(ValueError, match="postprocess"):
        instances_to_coco_results(unpasted, 1, [1])


def test_masks_hold_one_kind_of_thing():
    """Probabilities belong in mask_probs and pasted bool masks in BitMasks, never a bare tensor in masks."""
    one = dict(boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]])), labels=torch.tensor([0]), scores=torch.tensor([0.5]))
    for raw in (torch.rand(1, 28, 28), torch.ones(1, 4, 4, dtype=torch.bool)):
        with pytest.raises(TypeError, match="mask_probs"):
            Instances((4, 4), **one, masks=raw)
