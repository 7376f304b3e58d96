"""Predicted masks stay box-sized crops (CroppedMasks) until written: the same RLEs, drawings and
structure methods as full-size masks, in the memory of the boxes (issue 16: one 8000x8000 image
with 50 masks peaked at 10.5 GB when every mask was pasted at full size)."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from swiftdet.evaluation.results import _crop_rle, instances_to_coco_results
from swiftdet.model.postprocess import paste_masks_cropped, paste_masks_in_image, postprocess_instances
from swiftdet.structures import BitMasks, Boxes, CroppedMasks, Instances
from swiftdet.visualization.draw import draw_instances


def _detections(n: int, height: int, width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Some boxes reach past the image's edges and one lies wholly outside it.
    x0 = torch.rand(n, generator=g) * width * 1.2 - 0.1 * width
    y0 = torch.rand(n, generator=g) * height * 1.2 - 0.1 * height
    w = 1 + torch.rand(n, generator=g) * width / 3
    h = 1 + torch.rand(n, generator=g) * height / 3
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
    boxes[0] = torch.tensor([width + 5.0, height + 5.0, width + 20.0, height + 30.0])
    probs = torch.rand(n, 1, 28, 28, generator=g)
    return boxes, probs


def test_cropped_paste_equals_full_paste_inside_the_boxes():
    height, width = 150, 230
    boxes, probs = _detections(40, height, width)
    cropped = paste_masks_cropped(probs, boxes, (height, width))
    full = paste_masks_in_image(probs, boxes, (height, width))
    assert isinstance(cropped, CroppedMasks) and len(cropped) == 40 and cropped.image_size == (height, width)
    assert torch.equal(cropped.to_bitmasks().tensor, full)
    assert full.any()
    grown = boxes.clone()
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * 30 / 28
    grown = torch.cat([centre - half, centre + half], dim=1)
    for crop, (x0, y0), box in zip(cropped.crops, cropped.offsets.tolist(), grown.tolist()):
        h, w = crop.shape
        # Each crop lies in the image and within its grown box (+1 for torchvision's integer box).
        assert 0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height
        if h and w:
            assert x0 >= int(box[0]) and x0 + w <= int(box[2]) + 1 and y0 >= int(box[1]) and y0 + h <= int(box[3]) + 1
    assert cropped.crops[0].numel() == 0  # the box outside the image


def test_postprocess_keeps_crops_the_size_of_the_boxes_on_a_large_image():
    """On a 2000x3000 image 30 small boxes must cost their own pixels, not 30 full images."""
    boxes = torch.tensor([[10.0 + 100 * i, 20.0 + 50 * i, 60.0 + 100 * i, 90.0 + 50 * i] for i in range(30)])
    probs = torch.rand(30, 28, 28, generator=torch.Generator().manual_seed(1))
    raw = Instances((400, 600), boxes=Boxes(boxes / 5), labels=torch.zeros(30, dtype=torch.int64),
                    scores=torch.ones(30), mask_probs=probs)
    out = postprocess_instances(raw, (2000, 3000))
    assert isinstance(out.masks, CroppedMasks) and out.mask_probs is None
    stored = sum(c.numel() for c in out.masks.crops)
    box_area = float(((boxes[:, 2:] - boxes[:, :2]) * 30 / 28 + 2).prod(dim=1).sum())
    assert stored <= box_area < 30 * 2000 * 3000 / 100
    expected = paste_masks_in_image(probs[:, None], out.boxes.tensor, (2000, 3000))
    for crop, (x0, y0), plane in zip(out.masks.crops, out.masks.offsets.tolist(), expected):
        assert int(crop.sum()) == int(plane.sum())
        assert torch.equal(plane[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]], crop)


def test_crop_rle_equals_pycocotools_encode_of_the_full_mask():
    rng = np.random.default_rng(0)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(1, 25, 2))
        h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        crop = rng.random((h, w)) < rng.random()
        full = np.zeros((height, width), dtype=np.uint8)
        full[y0 : y0 + h, x0 : x0 + w] = crop
        expected = mask_utils.encode(np.asfortranarray(full))
        got = _crop_rle(crop, x0, y0, height, width)
        assert got["counts"] == expected["counts"] and list(got["size"]) == [height, width]


def _instances(masks, boxes) -> Instances:
    n = len(boxes)
    return Instances(masks.image_size, boxes=Boxes(boxes), labels=torch.arange(n) % 3,
                     scores=torch.linspace(1, 0.1, n), masks=masks)


def test_results_and_drawing_from_crops_equal_those_from_full_masks():
    height, width = 120, 160
    boxes, probs = _detections(25, height, width, seed=3)
    cropped = paste_masks_cropped(probs, boxes, (height, width))
    full = cropped.to_bitmasks()
    from_crops = instances_to_coco_results(_instances(cropped, boxes), 7, [1, 2, 3])
    from_full = instances_to_coco_results(_instances(full, boxes), 7, [1, 2, 3])
    assert from_crops == from_full and len(from_crops) == 25
    decoded = mask_utils.decode([{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}
                                 for r in from_crops])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), full.tensor.numpy())

    image = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
    drawn_crops = draw_instances(image, boxes=boxes.numpy(), labels=np.zeros(25, dtype=np.int64), masks=cropped)
    drawn_full = draw_instances(image, boxes=boxes.numpy(), labels=np.zeros(25, dtype=np.int64), masks=full.tensor.numpy())
    assert np.array_equal(drawn_crops, drawn_full) and not np.array_equal(drawn_crops, image)


def test_cropped_masks_select_concatenate_and_measure_like_bitmasks():
    boxes, probs = _detections(12, 60, 80, seed=5)
    cropped = paste_masks_cropped(probs, boxes, (60, 80))
    full = cropped.to_bitmasks()
    assert torch.equal(cropped.area(), full.area())
    assert torch.equal(cropped.bounding_boxes(), full.bounding_boxes())
    keep = torch.arange(12) % 2 == 0
    for index in (keep, torch.tensor([3, 1]), slice(2, 7), 4):
        expected = full[index].tensor
        assert torch.equal(cropped[index].to_bitmasks().tensor, expected)
    both = CroppedMasks.cat([cropped[:5], cropped[5:]])
    assert torch.equal(both.tensor, full.tensor)
    selected = _instances(cropped, boxes)[keep]
    assert isinstance(selected.masks, CroppedMasks) and len(selected.masks) == 6
    with pytest.raises(ValueError, match="does not lie inside"):
        CroppedMasks([torch.ones(5, 5, dtype=torch.bool)], torch.tensor([[78, 0]]), (60, 80))
    with pytest.raises(ValueError, match="different sizes"):
        CroppedMasks.cat([cropped, paste_masks_cropped(probs, boxes, (61, 80))])
    assert BitMasks(full.tensor).image_size == (60, 80)
