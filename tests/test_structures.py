"""Boxes, masks, keypoints, Instances and ImageList (swiftdet/structures)."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from swiftdet.structures import (
    Boxes,
    ImageList,
    Instances,
    Keypoints,
    PolygonMasks,
    flip_indices,
    pairwise_iou,
    polygons_to_bitmask,
    rle_to_bitmask,
)

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]


def test_boxes_basics():
    b = Boxes(torch.tensor([[0.0, 0.0, 10.0, 5.0], [4.0, 4.0, 4.0, 9.0], [-3.0, 2.0, 12.0, 8.0]]))
    assert b.area().tolist() == [50.0, 0.0, 90.0]
    assert b.nonempty().tolist() == [True, False, True]
    assert b.clip((6, 11)).tensor.tolist() == [[0, 0, 10, 5], [4, 4, 4, 6], [0, 2, 11, 6]]
    assert b.inside((10, 11)).tolist() == [True, True, False]
    assert b.inside((10, 12), tolerance=3).tolist() == [True, True, True]
    assert torch.equal(Boxes.from_xywh(b.to_xywh()).tensor, b.tensor)
    assert b.scale(2.0, 0.5).tensor[0].tolist() == [0.0, 0.0, 20.0, 2.5]
    assert torch.equal(b.hflip(20).hflip(20).tensor, b.tensor)
    assert b.hflip(20).tensor[0].tolist() == [10.0, 0.0, 20.0, 5.0]
    assert len(b[1]) == 1 and len(b[b.nonempty()]) == 2
    assert Boxes(torch.zeros(0, dtype=torch.int64)).tensor.shape == (0, 4)
    assert len(Boxes.cat([b, b[:1]])) == 4 and len(Boxes.cat([])) == 0
    with pytest.raises(ValueError):
        Boxes(torch.zeros(3, 5))


def test_pairwise_iou():
    a = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    b = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]]))
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0]]))


def test_flip_indices_coco_and_explicit_map():
    fi = flip_indices(COCO_KEYPOINTS)
    assert fi[:5] == [0, 2, 1, 4, 3]
    assert all(COCO_KEYPOINTS[fi[i]].replace("left", "X").replace("right", "left").replace("X", "right") == n
               for i, n in enumerate(COCO_KEYPOINTS))
    assert flip_indices(["a", "b", "c"], [("a", "c")]) == [2, 1, 0]
    assert flip_indices(["tip", "wing_left", "wing_right", "left", "right"]) == [0, 2, 1, 4, 3]
    with pytest.raises(ValueError, match="not in"):
        flip_indices(["a", "b"], [("a", "z")])


def test_keypoints_flip_twice_is_identity():
    kp = Keypoints(torch.rand(4, 17, 3) * 50)
    fi = flip_indices(COCO_KEYPOINTS)
    torch.testing.assert_close(kp.hflip(64, fi).hflip(64, fi).tensor, kp.tensor)
    flipped = kp.hflip(64, fi).tensor
    torch.testing.assert_close(flipped[:, 1, 0], 64 - kp.tensor[:, 2, 0])  # left_eye <- mirrored right_eye
    assert kp.scale(2.0, 3.0).tensor[..., 2].equal(kp.tensor[..., 2])


def _square_polygons() -> PolygonMasks:
    return PolygonMasks([
        [np.array([2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0])],
        [np.array([10.0, 1.0, 14.0, 1.0, 14.0, 9.0]), np.array([0.0, 8.0, 3.0, 8.0, 3.0, 10.0, 0.0, 10.0])],
    ])


def test_polygon_masks_geometry_agrees_with_bitmaps():
    poly = _square_polygons()
    bits = poly.to_bitmasks(12, 16)
    assert bits.tensor.shape == (2, 12, 16)
    assert bits.tensor[0].sum() == 24 and bits.tensor[0, 2:6, 2:8].all()
    torch.testing.assert_close(poly.area(), torch.tensor([24.0, 16.0 + 6.0]))
    assert poly.bounding_boxes().tolist() == [[2, 2, 8, 6], [0, 1, 14, 10]]
    assert bits.bounding_boxes().tolist() == [[2, 2, 8, 6], [0, 1, 14, 10]]
    # Flipping the polygons then rasterising equals rasterising then flipping.
    assert torch.equal(poly.hflip(16).to_bitmasks(12, 16).tensor[0], bits.hflip().tensor[0])
    assert torch.equal(poly.scale(2.0, 2.0).to_bitmasks(24, 32).tensor[0], bits.resize(24, 32).tensor[0])
    assert len(poly[torch.tensor([False, True])]) == 1 and len(poly[np.array([1, 0, 1])]) == 3
    assert len(PolygonMasks.cat([poly, poly[0]])) == 3


def test_crop_and_resize_polygon_and_bitmask_agree():
    poly = _square_polygons()[0:1]
    boxes = torch.tensor([[2.0, 2.0, 8.0, 6.0]])
    p = poly.crop_and_resize(boxes, 8)
    b = poly.to_bitmasks(12, 16).crop_and_resize(boxes, 8)
    assert p.shape == b.shape == (1, 8, 8)
    # The box is exactly the square: all foreground. RoIAlign's bilinear samples at the box edge
    # reach half outside the square, so only the bitmap's border cells are below 1.
    assert p.min() == 1.0 and b[:, 1:-1, 1:-1].min() > 0.99 and b.min() >= 0.5
    wide = torch.tensor([[0.0, 0.0, 16.0, 12.0]])
    assert abs(poly.crop_and_resize(wide, 16).mean().item() - 24 / 192) < 0.03


def test_crop_and_resize_with_indices_equals_cropping_the_indexed_masks():
    """The mask loss crops one ground-truth mask in many proposals: ``indices`` gives each box its
    instance, with the values of indexing first (and one float copy per used instance)."""
    poly = _square_polygons()
    bits = poly.to_bitmasks(12, 16)
    boxes = torch.tensor([[2.0, 2.0, 8.0, 6.0], [0.0, 1.0, 14.0, 10.0], [1.0, 1.0, 9.0, 7.0], [3.0, 0.0, 12.0, 11.0]])
    indices = torch.tensor([1, 1, 0, 1])
    for masks in (bits, poly):
        ours = masks.crop_and_resize(boxes, 8, indices=indices)
        assert torch.equal(ours, masks[indices].crop_and_resize(boxes, 8))
        assert not torch.equal(ours[1], masks[torch.tensor([0])].crop_and_resize(boxes[1:2], 8)[0])  # instance 1, not 0
    assert bits.crop_and_resize(boxes[:0], 8, indices=indices[:0]).shape == (0, 8, 8)


def test_rle_and_polygon_rasterisers():
    m = np.zeros((5, 7), dtype=np.uint8, order="F")
    m[1:3, 2:6] = 1
    rle = mask_utils.encode(m)
    assert np.array_equal(rle_to_bitmask(rle, 5, 7), m.astype(bool))
    assert np.array_equal(rle_to_bitmask({"size": [5, 7], "counts": rle["counts"].decode()}, 5, 7), m.astype(bool))
    uncompressed = {"size": [5, 7], "counts": [7, 5, 23]}
    assert rle_to_bitmask(uncompressed, 5, 7).sum() == 5
    assert polygons_to_bitmask([], 4, 4).shape == (4, 4)


def test_instances_indexing_cat_and_checks():
    inst = Instances(
        (12, 16),
        boxes=Boxes(torch.tensor([[2.0, 2.0, 8.0, 6.0], [0.0, 1.0, 14.0, 10.0]])),
        labels=torch.tensor([3, 5]),
        masks=_square_polygons(),
        keypoints=Keypoints(torch.zeros(2, 3, 3)),
    )
    one = inst[1]
    assert len(one) == 1 and one.labels.tolist() == [5] and len(one.masks) == 1
    assert inst[-1].labels.tolist() == [5]
    sel = inst[torch.tensor([False, True])]
    assert sel.labels.tolist() == [5] and sel.masks.polygons[0][0].tolist() == [10.0, 1.0, 14.0, 1.0, 14.0, 9.0]
    both = Instances.cat([inst, inst[0]])
    assert len(both) == 3 and len(both.masks) == 3 and both.keypoints.tensor.shape == (3, 3, 3)
    assert len(Instances.empty((4, 4))) == 0
    with pytest.raises(ValueError, match="labels has 1 entries"):
        Instances((4, 4), boxes=Boxes(torch.zeros(2, 4)), labels=torch.tensor([1]))
    assert inst.with_fields(scores=torch.tensor([0.1, 0.2])).scores is not None and inst.scores is None


def test_image_list_pads_to_divisibility():
    a, b = torch.ones(3, 20, 30), torch.ones(3, 33, 10) * 2
    il = ImageList.from_tensors([a, b], size_divisibility=32, pad_value=-1.0, original_sizes=[(40, 60), (66, 20)])
    assert il.tensor.shape == (2, 3, 64, 32)
    assert il.image_sizes == [(20, 30), (33, 10)] and il.original_sizes == [(40, 60), (66, 20)]
    assert (il.tensor[0, :, :20, :30] == 1).all() and (il.tensor[0, :, 20:] == -1).all() and (il.tensor[0, :, :, 30:] == -1).all()
    assert (il.tensor[1, :, :33, :10] == 2).all()
    assert ImageList.from_tensors([a]).original_sizes == [(20, 30)]
    with pytest.raises(ValueError):
        ImageList.from_tensors([])
