"""The training augmentations of issue 14: random crop (detectron2's types, and keeping instances),
rotation by 90 degrees, large-scale jitter, mosaic, copy-paste, and photometric distortion for every
architecture. Per augmentation: boxes, masks (polygons and bitmaps) and keypoints stay consistent
with the pixels; the config composes and is validated; a sample is a function of (seed, position);
and a tiny Mask R-CNN trains 2 iterations with all of them on."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from swiftdet.config.core import config_from_yaml, config_to_yaml, load_config
from swiftdet.config.schema import Config
from swiftdet.data import build_train_loader, load_dataset
from swiftdet.data import augment as A
from swiftdet.data.transforms import (
    TrainTransform,
    apply_augmentation,
    augmentation_rng,
    sample_augmentation,
    sample_photometric,
    sample_zoom_out,
)
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.errors import ConfigError, DatasetError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks

# Rectangles (x0, y0, x1, y1) on whole pixels, each painted in channel 0 with its code.
OBJECTS = [(5, 4, 30, 20), (40, 10, 70, 45), (12, 30, 36, 55)]
CODES = [60, 120, 180]
MARK = 250.0  # channel 2 marks the pixels the keypoints sit on
ALL_ON = ["input.crop.type=relative_range", "input.crop.size=[0.6,0.6]", "input.crop.keep_instances=true",
          "input.rotate90_prob=0.75", "input.min_size_train=[800]", "input.max_size_train=1333", "input.resize=lsj",
          "input.lsj.size=[96,96]", "input.lsj.scale_range=[0.5,1.5]", "input.mosaic.prob=0.5",
          "input.mosaic.size=[64,64]", "input.copy_paste.prob=0.8", "input.photometric_distort_prob=0.5"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: more intra-op threads only contend on a shared machine.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _scene(h=60, w=90, bitmasks=False):
    """Image, and instances whose boxes, masks and keypoints match its pixels exactly: object k is
    its code in channel 0; each has a keypoint on its top-left and bottom-right pixel's centre,
    marked in channel 2."""
    image = torch.zeros(3, h, w)
    image[1] = torch.arange(w, dtype=torch.float32)[None] % 7  # texture, so moves are visible
    for (x0, y0, x1, y1), code in zip(OBJECTS, CODES):
        image[0, y0:y1, x0:x1] = code
        image[2, y0, x0] = image[2, y1 - 1, x1 - 1] = MARK
    if bitmasks:
        masks = BitMasks(torch.stack([image[0] == c for c in CODES]))
    else:
        masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in OBJECTS])
    kps = torch.tensor([[[x0 + 0.5, y0 + 0.5, 2], [x1 - 0.5, y1 - 0.5, 2]] for x0, y0, x1, y1 in OBJECTS])
    inst = Instances((h, w), boxes=Boxes(torch.tensor(OBJECTS, dtype=torch.float32)), labels=torch.tensor([0, 1, 2]),
                     masks=masks, keypoints=Keypoints(kps))
    return image, inst


def _pixel_box(region: torch.Tensor) -> list[float]:
    ys, xs = region.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _check_exact(image: torch.Tensor, inst: Instances):
    """Each instance's box, mask and visible keypoints match its object's pixels exactly (moves
    without resampling: crop, rotation, placement)."""
    assert inst.image_size == tuple(image.shape[1:])
    h, w = inst.image_size
    for i, label in enumerate(inst.labels.tolist()):
        region = image[0] == CODES[label]
        assert inst.boxes.tensor[i].tolist() == _pixel_box(region)
        if isinstance(inst.masks, BitMasks):
            assert torch.equal(inst.masks.tensor[i], region)
        else:
            assert torch.equal(inst.masks[i].to_bitmasks(h, w).tensor[0], region)
            assert inst.masks[i].bounding_boxes()[0].tolist() == inst.boxes.tensor[i].tolist()
        for x, y, v in inst.keypoints.tensor[i].tolist():
            inside = 0 <= x < w and 0 <= y < h
            assert (v > 0) == (inside and image[2, int(y), int(x)] == MARK)


def _tight_box_matches(inst: Instances, tol: float):
    """A mask's tight box equals its instance's box up to ``tol`` pixels (polygon vertices: exact
    up to float rounding)."""
    tight = inst.masks.bounding_boxes()
    assert tight.shape == inst.boxes.tensor.shape
    if len(inst):
        assert float((tight - inst.boxes.tensor).abs().max()) <= tol, (tight, inst.boxes.tensor)


def _visible_keypoints_inside(inst: Instances):
    h, w = inst.image_size
    t = inst.keypoints.tensor
    vis = t[..., 2] > 0
    assert ((t[..., 0][vis] >= 0) & (t[..., 0][vis] <= w) & (t[..., 1][vis] >= 0) & (t[..., 1][vis] <= h)).all()


# ------------------------------------------------------------------ rotation by 90 degrees
@pytest.mark.parametrize("bitmasks", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate90_moves_pixels_boxes_masks_and_keypoints(k, bitmasks):
    image, inst = _scene(bitmasks=bitmasks)
    out_image, out = A.rotate90(image, inst, k)
    assert torch.equal(out_image, torch.from_numpy(np.rot90(image.numpy(), k, axes=(1, 2)).copy()))
    assert out.image_size == ((60, 90) if k % 2 == 0 else (90, 60))
    _check_exact(out_image, out)
    # Four quarter turns are the identity; no left/right keypoint swap.
    back = A.rotate90_instances(out, 4 - k) if k else out
    assert torch.allclose(back.boxes.tensor, inst.boxes.tensor) and torch.allclose(back.keypoints.tensor, inst.keypoints.tensor)


def test_rotate90_draws():
    ks = [A.sample_rotate90(np.random.default_rng(s), 0.75) for s in range(400)]
    assert set(ks) == {0, 1, 2, 3} and 60 < ks.count(0) < 140  # 0 with 1 - prob, each other k with prob / 3
    assert all(A.sample_rotate90(np.random.default_rng(s), 0.0) == 0 for s in range(20))


# ------------------------------------------------------------------ random crop
@pytest.mark.parametrize("type,size,check", [
    ("relative", (0.5, 0.8), lambda h, w: (h, w) == (50, 120)),
    ("relative_range", (0.5, 0.8), lambda h, w: 50 <= h <= 100 and 120 <= w <= 150),
    ("absolute", (40, 60), lambda h, w: (h, w) == (40, 60)),
    ("absolute", (400, 60), lambda h, w: (h, w) == (100, 60)),  # capped by the image, as detectron2
    ("absolute_range", (30, 120), lambda h, w: 30 <= h <= 100 and 30 <= w <= 120),
])
def test_crop_window_types(type, size, check):
    heights, widths = set(), set()
    for seed in range(60):
        window = A.sample_crop_window(np.random.default_rng(seed), 100, 150, type, size)
        assert check(window.height, window.width), window
        assert 0 <= window.top <= 100 - window.height and 0 <= window.left <= 150 - window.width
        heights.add(window.height)
        widths.add(window.width)
    if type.endswith("range"):
        assert len(heights) > 5 and len(widths) > 5  # the sizes are drawn


@pytest.mark.parametrize("bitmasks", [False, True])
def test_random_crop_keeps_geometry(bitmasks):
    image, inst = _scene(bitmasks=bitmasks)
    seen = set()
    for seed in range(30):
        windows = A.sample_random_crop(np.random.default_rng(seed), 60, 90, A.RandomCrop("relative_range", (0.3, 0.3)))
        out_image, out = A.random_crop(image, inst, windows)
        assert out_image.shape[1:] == (windows[0].height, windows[0].width)
        _check_exact(out_image, out)
        seen.add(len(out))
    assert len(seen) > 1  # some crops cut objects away


def test_crop_shrinks_the_box_to_the_mask():
    # A triangle whose box corner (40, 40) is outside the triangle: cropping to the bottom-right
    # quarter keeps the triangle's part there, and the box follows the cropped mask.
    tri = PolygonMasks([[[0.0, 0.0, 40.0, 0.0, 0.0, 40.0]]])
    inst = Instances((50, 50), boxes=Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0]])), labels=torch.tensor([0]), masks=tri)
    out = A.crop_instances(inst, A.Crop(top=10, left=10, height=40, width=40))
    assert out.boxes.tensor.tolist() == [[0.0, 0.0, 20.0, 20.0]]
    assert out.masks.area().item() == pytest.approx(200.0)
    # A window that overlaps the box but not the triangle drops the instance (its mask is empty there).
    assert len(A.crop_instances(inst, A.Crop(top=25, left=25, height=20, width=20))) == 0
    # Bitmaps: the same.
    bits = inst.with_fields(masks=tri.to_bitmasks(50, 50))
    out = A.crop_instances(bits, A.Crop(top=10, left=10, height=40, width=40))
    assert out.boxes.tensor.tolist() == out.masks.bounding_boxes().tolist()
    assert len(A.crop_instances(bits, A.Crop(top=25, left=25, height=20, width=20))) == 0


def test_crop_keeping_instances():
    # One small object in a corner: most 30% crops miss it.
    image = torch.zeros(3, 100, 100)
    image[0, 2:8, 2:8] = CODES[0]
    image[2, 2, 2] = image[2, 7, 7] = MARK
    inst = Instances((100, 100), boxes=Boxes(torch.tensor([[2.0, 2.0, 8.0, 8.0]])), labels=torch.tensor([0]),
                     masks=PolygonMasks([[[2, 2, 8, 2, 8, 8, 2, 8]]]),
                     keypoints=Keypoints(torch.tensor([[[2.5, 2.5, 2.0], [7.5, 7.5, 2.0]]])))
    plain, keeping = A.RandomCrop("relative", (0.3, 0.3)), A.RandomCrop("relative", (0.3, 0.3), keep_instances=True)
    empty = kept = 0
    for seed in range(40):
        _, out = A.random_crop(image, inst, A.sample_random_crop(np.random.default_rng(seed), 100, 100, plain))
        empty += len(out) == 0
        windows = A.sample_random_crop(np.random.default_rng(seed), 100, 100, keeping)
        assert len(windows) == A.KEEP_INSTANCES_TRIES
        out_image, out = A.random_crop(image, inst, windows)
        assert len(out) == 1
        _check_exact(out_image, out)
        kept += out_image.shape[1:] == (30, 30)
    assert empty > 20 and kept > 0  # without the constraint most crops lose it; with it, a crop that keeps it is found


# ------------------------------------------------------------------ large-scale jitter
def test_scale_jitter_sizes_follow_detectron2():
    spec = A.LargeScaleJitter((128, 128), (1.0, 1.0))
    draw = A.sample_scale_jitter(np.random.default_rng(0), 100, 200, spec)
    # ResizeScale: fit in 128 * 1 keeping the aspect ratio: scale min(1.28, 0.64) -> (64, 128); no crop.
    assert draw.resized == (64, 128) and draw.window == A.Crop(0, 0, 64, 128) and draw.size == (128, 128)
    spec = A.LargeScaleJitter((128, 128), (2.0, 2.0))
    draw = A.sample_scale_jitter(np.random.default_rng(0), 100, 200, spec)
    assert draw.resized == (128, 256) and (draw.window.height, draw.window.width) == (128, 128)
    assert draw.window.top == 0 and 0 <= draw.window.left <= 128
    scales = [A.sample_scale_jitter(np.random.default_rng(s), 100, 100, A.LargeScaleJitter((100, 100))).resized[0]
              for s in range(200)]
    assert 10 <= min(scales) < 25 and 180 < max(scales) <= 200  # s uniform in [0.1, 2.0]


@pytest.mark.parametrize("bitmasks", [False, True])
def test_scale_jitter_keeps_geometry(bitmasks):
    image, inst = _scene(bitmasks=bitmasks)
    spec = A.LargeScaleJitter((80, 80), (0.3, 2.5))
    fill = (10.0, 20.0, 30.0)
    for seed in range(25):
        draw = A.sample_scale_jitter(np.random.default_rng(seed), 60, 90, spec)
        out_image, out = A.scale_jitter(image, inst, draw, fill)
        assert out_image.shape == (3, 80, 80) and out.image_size == (80, 80)
        rh, rw = draw.window.height, draw.window.width
        if rh < 80:
            assert torch.equal(out_image[:, rh:], torch.tensor(fill)[:, None, None].expand(3, 80 - rh, 80))
        if rw < 80:
            assert torch.equal(out_image[:, :, rw:], torch.tensor(fill)[:, None, None].expand(3, 80, 80 - rw))
        scale = draw.resized[0] / 60
        # Polygons scale exactly; nearest-neighbour bitmaps within a source pixel.
        _tight_box_matches(out, 1e-3 if not bitmasks else scale + 1)
        _visible_keypoints_inside(out)
        # The keypoints moved with the boxes: each visible one is inside (or on) its box.
        tol = scale + 1 if bitmasks else 1e-3
        for box, kps in zip(out.boxes.tensor.tolist(), out.keypoints.tensor.tolist()):
            for x, y, v in kps:
                if v > 0:
                    assert box[0] - tol <= x <= box[2] + tol and box[1] - tol <= y <= box[3] + tol


# ------------------------------------------------------------------ mosaic
def _others(scenes):
    return A.OtherImages(len(scenes), lambda i: scenes[i])


def test_mosaic_places_the_four_images():
    # Cells the size of the images: no resampling, so every tile's pixels and targets are exact.
    tiles = []
    for k in range(4):
        image, inst = _scene(bitmasks=k % 2 == 1)
        image[1] += 10 * k
        tiles.append((image, inst))
    spec = A.Mosaic(1.0, (60, 90), (0.5, 1.5))
    count = 0
    for seed in range(10):
        draw = A.sample_mosaic(np.random.default_rng(seed), spec, 4)
        assert all(0 <= i < 4 for i in draw.indices)
        cx, cy = draw.center
        assert 45 <= cx <= 135 and 30 <= cy <= 90
        canvas, out = A.mosaic(tiles, draw, (60, 90), (1.0, 2.0, 3.0))
        assert canvas.shape == (3, 120, 180) and out.image_size == (120, 180)
        assert isinstance(out.masks, BitMasks)  # polygons and bitmaps together: all bitmaps
        # Each quadrant shows its tile: the corner pixel next to the centre is that tile's.
        for k, (y, x, ty, tx) in enumerate([(cy - 1, cx - 1, 59, 89), (cy - 1, cx, 59, 0), (cy, cx - 1, 0, 89), (cy, cx, 0, 0)]):
            if 0 <= y < 120 and 0 <= x < 180:
                assert torch.equal(canvas[:, y, x], tiles[k][0][:, ty, tx])
        # Every instance matches the canvas pixels (the objects' codes repeat, so compare inside each box).
        for i in range(len(out)):
            x0, y0, x1, y1 = (int(v) for v in out.boxes.tensor[i].tolist())
            assert torch.equal(out.masks.tensor[i], _region_in_box(canvas, CODES[int(out.labels[i])], (x0, y0, x1, y1)))
        _tight_box_matches(out, 0)
        _visible_keypoints_inside(out)
        # Visible keypoints sit on marked pixels, and every marked pixel left on the canvas is one.
        kps = out.keypoints.tensor.reshape(-1, 3)
        visible = kps[kps[:, 2] > 0]
        assert all(canvas[2, int(y), int(x)] == MARK for x, y, _ in visible.tolist())
        assert len(visible) == int((canvas[2] == MARK).sum())
        count += len(out)
    assert count > 10
    assert A.sample_mosaic(np.random.default_rng(0), A.Mosaic(0.0), 4) is None


def _region_in_box(canvas, code, box):
    x0, y0, x1, y1 = box
    region = torch.zeros(canvas.shape[1:], dtype=torch.bool)
    region[y0:y1, x0:x1] = canvas[0, y0:y1, x0:x1] == code
    return region


def test_mosaic_resizes_each_image_into_its_cell():
    image, inst = _scene()
    big = A.Mosaic(1.0, (30, 45))
    draw = A.MosaicDraw((0, 0, 0), (45, 30))  # the centre of the canvas: each tile fits whole
    canvas, out = A.mosaic([(image, inst)] * 4, draw, big.size, (0.0, 0.0, 0.0))
    assert canvas.shape == (3, 60, 90)
    assert len(out) == 12 and isinstance(out.masks, PolygonMasks)
    _tight_box_matches(out, 1e-3)
    # The top-left tile is the image at half size: its boxes are the halved boxes.
    assert torch.allclose(out.boxes.tensor[:3], torch.tensor(OBJECTS, dtype=torch.float32) / 2)


# ------------------------------------------------------------------ copy-paste
def test_copy_paste_updates_and_drops_covered_instances():
    h, w = 60, 90
    image, dst = _scene(bitmasks=True)
    src_image = torch.full((3, h, w), 7.0)
    # Source objects: one covers object 0 entirely, one covers the left half of object 1.
    src_boxes = torch.tensor([[0.0, 0.0, 35.0, 25.0], [38.0, 5.0, 55.0, 50.0]])
    src_masks = torch.zeros(2, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(src_masks, src_boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    src = Instances((h, w), boxes=Boxes(src_boxes), labels=torch.tensor([1, 2]), masks=BitMasks(src_masks),
                    keypoints=Keypoints(torch.zeros(2, 2, 3)))
    # max_pasted=2 with 2 candidates: the count is drawn in 1..2; find a draw that pastes both.
    for seed in range(50):
        out_image, out = A.copy_paste(image, dst, src_image, src, np.random.default_rng(seed), 2)
        if len(out) == 4:
            break
    else:
        raise AssertionError("no draw pasted both instances")
    cover = src_masks.any(0)
    assert torch.equal(out_image, torch.where(cover[None], src_image, image))
    # Object 0 is fully covered: dropped. Object 1 keeps its right part (55..70): box and mask shrink.
    assert out.labels.tolist() == [1, 2, 1, 2]
    assert out.boxes.tensor[0].tolist() == [55.0, 10.0, 70.0, 45.0]
    assert torch.equal(out.masks.tensor[0], dst.masks.tensor[1] & ~cover)
    # Object 2 is untouched; the pasted ones come last with their own masks.
    assert out.boxes.tensor[1].tolist() == list(map(float, OBJECTS[2]))
    assert torch.equal(out.masks.tensor[2:], src_masks)
    _tight_box_matches(out, 0)
    # No pixel belongs to two instances that overlapped only through the paste.
    assert not (out.masks.tensor[0] & cover).any()


def test_copy_paste_selection_draws():
    image, dst = _scene()
    src_image, src = _scene(bitmasks=True)
    src = A.shift_instances(src, 0, 0, (60, 90))
    counts = {len(A.copy_paste(image, dst, src_image, src, np.random.default_rng(s), 100)[1]) - 0 for s in range(40)}
    # 1 to 3 pasted; the 3 destination objects are covered exactly by the same pasted ones, so
    # each pasted one replaces its twin: 3 instances in total whatever is picked.
    assert counts == {3}
    picks = {tuple(A.copy_paste(image, dst, src_image, src, np.random.default_rng(s), 1)[1].labels.tolist())
             for s in range(40)}
    assert all(len(p) == 3 for p in picks) and len(picks) >= 2  # one pasted, drawn among the three


# ------------------------------------------------------------------ the config
def test_config_composes_and_round_trips():
    cfg = load_config("mask_rcnn_R_50_FPN_1x", ALL_ON + ["input.rotate90_prob=0.5"])
    again = config_from_yaml(Config, config_to_yaml(cfg))
    assert again.input == cfg.input
    t = TrainTransform.from_config(again)
    assert t == TrainTransform.from_config(cfg)
    assert t.random_crop == A.RandomCrop("relative_range", (0.6, 0.6), True)
    assert t.rotate90_prob == 0.5 and t.lsj == A.LargeScaleJitter((96, 96), (0.5, 1.5))
    assert t.mosaic == A.Mosaic(0.5, (64, 64), (0.5, 1.5)) and t.copy_paste == A.CopyPaste(0.8, 100)
    assert t.photometric_distort_prob == 0.5 and t.needs_other_images
    # Defaults: all off.
    d = TrainTransform.from_config(load_config("mask_rcnn_R_50_FPN_1x"))
    assert d.random_crop is d.lsj is d.mosaic is d.copy_paste is None and d.rotate90_prob == 0
    assert not d.needs_other_images


@pytest.mark.parametrize("overrides,message", [
    (["input.crop.type=relative", "input.crop.size=[1.5,0.5]"], "fractions of the image side"),
    (["input.crop.type=absolute", "input.crop.size=[0.5,0.5]"], "whole pixels"),
    (["input.crop.type=absolute_range", "input.crop.size=[300,200]"], "min <= max"),
    (["input.crop.type=square"], "input.crop.type"),
    (["input.crop.size=[0.5,0.5]"], "not used with input.crop.type 'none'"),
    (["input.rotate90_prob=1.5"], "rotate90_prob"),
    (["input.lsj.size=[512,512]"], "input.lsj is used only with input.resize 'lsj'"),
    (["input.resize=lsj", "input.lsj.scale_range=[2.0,0.1]"], "min <= max"),
    (["input.resize=lsj", "input.min_size_train=[640]"], r"input.min_size_train=\[800\]"),
    (["input.mosaic.size=[320,320]"], "input.mosaic.prob is 0"),
    (["input.mosaic.prob=1", "input.mosaic.center_range=[1.5,0.5]"], "min <= max"),
    (["input.mosaic.prob=1", "input.mosaic.center_range=[0.5,2.5]"], "center_range"),
    (["input.copy_paste.max_pasted=5"], "input.copy_paste.prob is 0"),
    (["input.copy_paste.prob=1", "input.copy_paste.max_pasted=0"], "max_pasted"),
    (["input.copy_past.prob=1"], "copy_past"),
])
def test_config_is_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("faster_rcnn_R_50_FPN_1x", overrides)


def test_photometric_distortion_reaches_rcnn():
    cfg = load_config("mask_rcnn_R_50_FPN_1x", ["input.photometric_distort_prob=1.0", "input.hflip_prob=0",
                                                  "input.min_size_train=[60]", "input.max_size_train=90"])
    transform = TrainTransform.from_config(cfg)
    assert transform.photometric_distort_prob == 1.0
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 60, 90), dtype=np.uint8))
    got, _ = transform(image, None, augmentation_rng(0, 0))
    plain, _ = apply_augmentation(image.float(), None, sample_augmentation(augmentation_rng(0, 0), (60,), 90, 0.0))
    assert got.shape == plain.shape and not torch.equal(got, plain)


# ------------------------------------------------------------------ the whole pipeline on a dataset
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=6, num_val=2, image_size=(64, 96), seed=0)
    return root


def _data(root):
    return [f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
            f"data.test.json={root / 'annotations' / 'instances_val.json'}", f"data.test.image_root={root}"]


def _key(batches):
    return [[(s.image_id, s.image.sum().item(), s.instances.boxes.tensor.tolist()) for s in b] for b in batches]


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_all_augmentations_are_deterministic_and_consistent(synth):
    cfg = load_config("demo_mask_rcnn", [*_data(synth), *ALL_ON, "seed=5"])
    dataset = load_dataset(cfg.data.train, training=True, verbose=False)
    assert dataset.has_masks and dataset.has_keypoints
    loader = build_train_loader(cfg, dataset, batch_size=2, num_workers=0)
    mapper = loader.mapper
    samples = []
    for position in range(8):
        a, b = mapper(position % len(dataset), position), mapper(position % len(dataset), position)
        assert torch.equal(a.image, b.image) and torch.equal(a.instances.boxes.tensor, b.instances.boxes.tensor)
        assert torch.equal(a.instances.masks.tensor, b.instances.masks.tensor)
        inst = a.instances
        assert a.image.shape == (3, 96, 96) and inst.image_size == (96, 96)
        assert inst.boxes.nonempty().all() and inst.boxes.inside((96, 96)).all()
        assert len(inst.masks) == len(inst.keypoints) == len(inst.labels) == len(inst)
        # Every mask's tight box is its box (nearest-neighbour bitmaps: within about a source pixel).
        _tight_box_matches(inst, 2.5)
        _visible_keypoints_inside(inst)
        samples.append(a.image.sum().item())
    assert len(set(samples)) == 8
    # The loader's batches do not depend on workers, and a resume gives the same batches.
    batches = _take(build_train_loader(cfg, dataset, batch_size=2, num_workers=0), 3)
    resumed = _take(build_train_loader(cfg, dataset, batch_size=2, num_workers=1, start_iter=1), 2)
    assert _key(resumed) == _key(batches)[1:]
    # Another seed, other samples.
    other = _take(build_train_loader(load_config("demo_mask_rcnn", [*_data(synth), *ALL_ON, "seed=6"]), dataset,
                                     batch_size=2, num_workers=0), 1)
    assert _key(other) != _key(batches)[:1]


def test_augmentations_that_are_off_draw_nothing(synth):
    """With the new augmentations off, the transform draws what it drew before they existed (the
    size and flip, the photometric distortion, zoom out), so those samples are unchanged."""
    cfg = load_config("demo_mask_rcnn", [*_data(synth), "input.photometric_distort_prob=0.5"])
    transform = TrainTransform.from_config(cfg)
    image, inst = _scene()
    for position in range(5):
        rng = augmentation_rng(1, position)
        transform(image, inst, rng, flip_index=[1, 0])
        again = augmentation_rng(1, position)
        sample_augmentation(again, transform.min_sizes, transform.max_size, transform.hflip_prob)
        sample_photometric(again, 0.5)
        sample_zoom_out(again, 60, 90, 0.0, 4.0)
        assert rng.bit_generator.state == again.bit_generator.state


def test_copy_paste_needs_masks(synth, tmp_path):
    import json

    data = json.loads((synth / "annotations" / "instances_train.json").read_text())
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    cfg = load_config("demo_mask_rcnn", [f"data.train.json={path}", f"data.train.image_root={synth}",
                                          "input.copy_paste.prob=1", "model.mask_on=false"])
    dataset = load_dataset(cfg.data.train, training=True, verbose=False)
    with pytest.raises(DatasetError, match=r"boxes.json.*input.copy_paste.prob=1.0 pastes instance masks"):
        build_train_loader(cfg, dataset, batch_size=1, num_workers=0)


def test_tiny_training_run_with_every_augmentation(synth, tmp_path):
    from swiftdet.cli import train as train_cmd

    tiny = ["model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
            "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.rpn.pre_nms_topk_test=50",
            "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.conv_dim=16",
            "model.box_head.batch_size_per_image=16", "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1",
            "input.min_size_test=64", "input.max_size_test=96"]
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args([
        "demo_mask_rcnn", *_data(synth), *tiny, *ALL_ON, "input.iou_crop=true", "input.zoom_out_prob=0.5",
        "input.zoom_out_max_scale=2", "solver.max_iter=2", "solver.ims_per_batch=2", "solver.reference_batch_size=2",
        "solver.warmup_iters=1", "solver.checkpoint_period=2", "solver.steps=[1]", "data.num_workers=0",
        f"output_dir={tmp_path / 'run'}",
    ])
    assert train_cmd.run(args) == 0
    assert (tmp_path / "run").is_dir()
