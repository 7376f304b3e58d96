"""Drawing boxes, masks, labels and keypoints on numpy images."""
from __future__ import annotations

import time

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from swiftdet.errors import InputError
from swiftdet.visualization import draw_instances, instance_color, save_image

H, W = 120, 160


def _gray_image(value: int = 100) -> np.ndarray:
    return np.full((H, W, 3), value, dtype=np.uint8)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.any(before != after, axis=2)


def test_box_outline_changes_pixels_on_the_box_only():
    image = _gray_image()
    out = draw_instances(image, boxes=np.array([[40.0, 50.0, 100.0, 90.0]]))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image and np.all(image == 100)  # the input is left alone
    changed = _changed(image, out)
    assert changed[50, 40:101].all() and changed[50:91, 40].all()  # top and left edges
    assert not changed[60:80, 50:90].any()  # interior untouched without a mask
    assert not changed[:45].any() and not changed[:, :35].any() and not changed[:, 105:].any()


def test_mask_is_blended_inside_and_nothing_far_outside():
    image = _gray_image()
    mask = np.zeros((1, H, W), dtype=bool)
    mask[0, 30:60, 70:110] = True
    out = draw_instances(image, masks=mask, alpha=0.5)
    changed = _changed(image, out)
    assert changed[30:60, 70:110].all()
    outside = np.ones((H, W), dtype=bool)
    outside[28:62, 68:112] = False
    assert not changed[outside].any()
    color = np.array(instance_color(0), dtype=float)
    interior = out[40, 90].astype(float)
    assert np.allclose(interior, 0.5 * 100 + 0.5 * color, atol=1)


def test_polygon_and_rle_masks_draw_like_the_bool_mask():
    polygon = [[70.0, 30.0, 110.0, 30.0, 110.0, 60.0, 70.0, 60.0]]
    dense = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, H, W))).astype(bool)
    rle = mask_utils.encode(np.asfortranarray(dense.astype(np.uint8)))
    rle_json = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    image = _gray_image()
    from_array = draw_instances(image, masks=dense[None])
    assert np.array_equal(draw_instances(image, masks=[polygon]), from_array)
    assert np.array_equal(draw_instances(image, masks=[rle_json]), from_array)


def test_labels_keypoints_and_skeleton():
    image = _gray_image()
    keypoints = np.array([[[20.0, 20.0, 2.0], [60.0, 20.0, 2.0], [140.0, 100.0, 0.0]]])
    out = draw_instances(
        image,
        boxes=np.array([[10.0, 40.0, 70.0, 110.0]]),
        labels=np.array([1]),
        scores=np.array([0.93]),
        class_names=["circle", "star"],
        keypoints=keypoints,
        skeleton=[(0, 1), (1, 2)],
    )
    changed = _changed(image, out)
    assert changed[20, 20] and changed[20, 60]  # dots
    assert changed[20, 40]  # the skeleton line between two shown points
    assert not changed[95:106, 135:146].any()  # a point under the threshold is not drawn
    assert changed[25:40, 10:40].any()  # the label sits above the box
    with pytest.raises(InputError, match="0-based"):
        draw_instances(image, keypoints=keypoints, skeleton=[(1, 3)])


def test_colours_are_stable_and_distinct():
    assert instance_color(3) == instance_color(3)
    assert len({instance_color(i) for i in range(20)}) == 20
    boxes = np.array([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 100.0, 100.0]])
    first = draw_instances(_gray_image(), boxes=boxes)
    assert np.array_equal(first, draw_instances(_gray_image(), boxes=boxes))
    assert tuple(first[10, 30]) == instance_color(0) and tuple(first[60, 80]) == instance_color(1)
    by_class = draw_instances(_gray_image(), boxes=boxes, labels=np.array([4, 4]), color_by="class")
    assert tuple(by_class[10, 30]) == tuple(by_class[60, 80]) == instance_color(4)


def test_empty_inputs_return_the_image_unchanged():
    image = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    for kwargs in ({}, {"boxes": np.zeros((0, 4))}, {"masks": np.zeros((0, H, W), bool), "labels": np.zeros(0)}):
        out = draw_instances(image, **kwargs)
        assert out is not image and np.array_equal(out, image)


def test_grayscale_is_drawn_as_rgb_and_bad_images_are_refused():
    gray = np.full((H, W), 80, dtype=np.uint8)
    out = draw_instances(gray, boxes=np.array([[5.0, 5.0, 30.0, 30.0]]))
    assert out.shape == (H, W, 3) and np.all(out[60, 60] == 80)
    with pytest.raises(InputError, match="shape"):
        draw_instances(np.zeros((H, W, 4), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        draw_instances(np.zeros((H, W, 3), np.float32))


def test_inconsistent_inputs_raise_input_error():
    image = _gray_image()
    with pytest.raises(InputError, match="different numbers"):
        draw_instances(image, boxes=np.zeros((2, 4)), labels=np.array([0]))
    with pytest.raises(InputError, match="class_names"):
        draw_instances(image, boxes=np.zeros((1, 4)), labels=np.array([5]), class_names=["a", "b"])
    with pytest.raises(InputError, match="masks"):
        draw_instances(image, masks=np.zeros((1, H + 1, W), bool))
    with pytest.raises(InputError, match="boxes"):
        draw_instances(image, boxes=np.zeros(4))


def test_large_image_is_fast():
    height, width = 2000, 3000
    image = np.zeros((height, width, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 2700, size=(30, 2))
    boxes = np.concatenate([corners, corners + 250], axis=1)
    polygons = [[[x1, y1, x2, y1, x2, y2, x1, y2]] for x1, y1, x2, y2 in boxes]
    start = time.perf_counter()
    out = draw_instances(image, boxes=boxes, masks=polygons, labels=np.arange(30), scores=rng.uniform(size=30))
    elapsed = time.perf_counter() - start
    assert _changed(image, out).any()
    assert elapsed < 5.0, f"drawing 30 instances on a 2000x3000 image took {elapsed:.1f} s"


def test_save_image_round_trips(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = save_image(image, tmp_path / "nested" / "drawn.png")
    with Image.open(path) as picture:
        assert np.array_equal(np.asarray(picture), image)
    with pytest.raises(InputError, match="ending"):
        save_image(image, tmp_path / "drawn.unknownext")
