"""SSD's data side: the fixed-size resize (train and test, torchvision's ``fixed_size``) and the
photometric distortion, zoom out and IoU crop augmentations, with their targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.transforms import v2

from swiftdet.config.core import config_from_yaml, config_to_yaml, load_config
from swiftdet.config.schema import Config, DatasetSpec
from swiftdet.data import build_test_loader, build_train_loader, load_dataset, read_image
from swiftdet.data import transforms as T
from swiftdet.data.transforms import (
    Crop,
    TrainTransform,
    ZoomOut,
    apply_augmentation,
    augmentation_rng,
    crop,
    photometric_distort,
    record_to_instances,
    resize_image_fixed,
    sample_augmentation,
    sample_iou_crop,
    sample_photometric,
    sample_zoom_out,
    transform_instances,
    zoom_out,
)
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.errors import ConfigError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks

SMALL_RCNN = ["model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=16", "model.box_head.fc_dim=16",
              "model.rpn.post_nms_topk_test=20", "model.box_head.detections_per_image=5"]
ALL_AUGMENTATIONS = ["input.photometric_distort_prob=0.5", "input.zoom_out_prob=0.5", "input.zoom_out_max_scale=4",
                     "input.iou_crop=true"]


# ------------------------------------------------------------------ config
def test_config_round_trip_and_test_transform():
    overrides = ["input.resize=fixed", "input.fixed_size=[256,320]", "input.photometric_distort_prob=0.25",
                 "input.zoom_out_prob=0.75", "input.zoom_out_max_scale=3.5", "input.iou_crop=true"]
    cfg = load_config("faster_rcnn_R_50_FPN_1x", overrides)
    again = config_from_yaml(Config, config_to_yaml(cfg))
    assert again.input == cfg.input
    assert again.input.fixed_size == (256, 320) and again.input.resize == "fixed"
    assert T.TestTransform.from_config(again) == T.TestTransform(800, 1333, (256, 320))
    assert T.TestTransform.from_config(again).output_size(427, 640) == (256, 320)
    train = TrainTransform.from_config(again)
    assert train == TrainTransform.from_config(cfg)
    assert (train.fixed_size, train.photometric_distort_prob, train.zoom_out_prob, train.zoom_out_max_scale,
            train.iou_crop) == ((256, 320), 0.25, 0.75, 3.5, True)
    assert train.zoom_out_fill == cfg.model.pixel_mean
    # Defaults: shortest edge, every augmentation off; the existing recipes are unchanged.
    default = load_config("faster_rcnn_R_50_FPN_1x")
    assert T.TestTransform.from_config(default) == T.TestTransform(800, 1333, None)
    d = TrainTransform.from_config(default)
    assert d.fixed_size is None and d.photometric_distort_prob == d.zoom_out_prob == 0.0 and not d.iou_crop


def test_zoom_fill_is_the_mean_in_rgb_order():
    cfg = Config()
    cfg.model.input_format = "BGR"
    cfg.model.pixel_mean = (103.53, 116.28, 123.675)
    assert TrainTransform.from_config(cfg).zoom_out_fill == (123.675, 116.28, 103.53)


@pytest.mark.parametrize("override,message", [
    ("input.zoom_out_max_scale=5", "zoom_out_max_scale"),
    ("input.zoom_out_max_scale=0.5", "zoom_out_max_scale"),
    ("input.photometric_distort_prob=1.5", "photometric_distort_prob"),
    ("input.zoom_out_prob=-0.1", "zoom_out_prob"),
    ("input.resize=stretch", "input.resize"),
    ("input.fixed_size=[300]", "input.fixed_size"),
    ("input.fixed_size=[0,300]", "input.fixed_size"),
])
def test_config_ranges_are_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("faster_rcnn_R_50_FPN_1x", [override])


def test_fixed_resize_refuses_min_and_max_sizes_it_would_ignore():
    with pytest.raises(ConfigError, match=r"input.min_size_test is not used with input.resize 'fixed'.*fixed_size \[300, 300\]"):
        load_config("faster_rcnn_R_50_FPN_1x", ["input.resize=fixed", "input.min_size_test=600"])
    with pytest.raises(ConfigError, match=r"input.min_size_train, input.max_size_train are not used"):
        load_config("faster_rcnn_R_50_FPN_1x", ["input.resize=fixed", "input.min_size_train=[512]", "input.max_size_train=900"])
    # The same sizes with the shortest-edge resize are fine, and so is fixed with the defaults.
    assert load_config("faster_rcnn_R_50_FPN_1x", ["input.min_size_test=600"]).input.min_size_test == 600
    assert load_config("faster_rcnn_R_50_FPN_1x", ["input.resize=fixed"]).input.fixed_size == (300, 300)


# ------------------------------------------------------------------ fixed resize == torchvision
def _tiny_coco_dataset(tiny_coco, count=2):
    spec = DatasetSpec(json=str(tiny_coco / "annotations" / "instances_val.json"), image_root=str(tiny_coco))
    dataset = load_dataset(spec, training=False, field="data.test", verbose=False)
    return dataset.select(list(range(count)))


@pytest.fixture(scope="module")
def fixed_predictor(tmp_path_factory):
    """A tiny Faster R-CNN predictor whose config resizes to a fixed, non-square 256x320."""
    from swiftdet.config.core import config_to_dict
    from swiftdet.inference import Predictor
    from swiftdet.model.build import build_model
    from swiftdet.utils.io import atomic_torch_save
    from swiftdet.weights import make_checkpoint

    torch.manual_seed(0)
    cfg = load_config("faster_rcnn_R_50_FPN_1x", [*SMALL_RCNN, "input.resize=fixed", "input.fixed_size=[256,320]"])
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), {}), path)
    return Predictor(cfg, str(path), score_thresh=0.0)


@pytest.mark.parametrize("fixed_size", [(300, 300), (256, 320)])
def test_fixed_resize_equals_torchvision_on_real_images(tiny_coco, fixed_size):
    h_out, w_out = fixed_size
    # torchvision's fixed_size is (width, height): it calls interpolate(size=[fixed_size[1], fixed_size[0]]).
    tv_plain = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3, fixed_size=(w_out, h_out)).eval()
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    tv_norm = GeneralizedRCNNTransform(800, 1333, [m / 255 for m in mean], [s / 255 for s in std],
                                       fixed_size=(w_out, h_out)).eval()
    transform = T.TestTransform(800, 1333, fixed_size)
    dataset = _tiny_coco_dataset(tiny_coco)
    sizes = set()
    for k in range(len(dataset)):
        record = dataset.get(k)
        image = read_image(record.file_name)
        sizes.add(tuple(image.shape[1:]))
        ours = transform(image.float())
        assert tuple(ours.shape) == (3, h_out, w_out) == (3, *transform.output_size(*image.shape[1:]))
        # The same call on the same tensor: the same pixels, bit for bit.
        inst = record_to_instances(record, with_masks=False, with_keypoints=False)
        expected, target = tv_plain.resize(image.float(), {"boxes": inst.boxes.tensor.clone()})
        assert torch.equal(ours, expected)
        moved = transform_instances(inst, fixed_size)
        assert torch.equal(moved.boxes.tensor, target["boxes"])
        # Against torchvision's whole transform (it normalises first, then resizes and pads).
        batch = tv_norm([image.float() / 255])[0]
        normalised = (ours / 255 - torch.tensor(mean)[:, None, None] / 255) / (torch.tensor(std)[:, None, None] / 255)
        assert batch.image_sizes == [fixed_size]
        torch.testing.assert_close(batch.tensors[0, :, :h_out, :w_out], normalised, atol=1e-5, rtol=0)
    assert len(sizes) == 2  # two real images of different sizes


def test_predictor_and_test_loader_share_the_fixed_resize(tiny_coco, fixed_predictor):
    """Predictor.prepare and the test loader (evaluation, the demo) go through the config's
    TestTransform: both give torchvision's fixed-size pixels, and the predictor's preprocessing
    equals torchvision's normalised batch within 1e-5."""
    predictor = fixed_predictor
    cfg = predictor.cfg
    tv = GeneralizedRCNNTransform(800, 1333, [m / 255 for m in cfg.model.pixel_mean], [s / 255 for s in cfg.model.pixel_std],
                                  fixed_size=(320, 256)).eval()
    dataset = _tiny_coco_dataset(tiny_coco)
    samples = [b[0] for b in build_test_loader(cfg, dataset, batch_size=1, num_workers=0)]
    assert len(samples) == 2 and samples[0].original_size != samples[1].original_size
    for sample in samples:
        resized, original = predictor.prepare(sample.file_name)
        assert original == tuple(sample.original_size)
        assert tuple(resized.shape) == (3, 256, 320) and torch.equal(resized.cpu(), sample.image)
        assert sample.instances.image_size == (256, 320)
        record = dataset.get([s.image_id for s in samples].index(sample.image_id))
        inst = record_to_instances(record, with_masks=False, with_keypoints=False)
        _, target = tv.resize(read_image(sample.file_name).float(), {"boxes": inst.boxes.tensor.clone()})
        assert torch.equal(sample.instances.boxes.tensor, target["boxes"])
        ours = predictor.model.preprocess([resized], [original])
        expected = tv([read_image(sample.file_name).float() / 255])[0]
        assert ours.image_sizes == expected.image_sizes == [(256, 320)]
        assert ours.tensor.shape == expected.tensors.shape
        torch.testing.assert_close(ours.tensor, expected.tensors, atol=1e-5, rtol=0)


def test_predictor_maps_fixed_size_boxes_back_per_axis(tiny_coco, fixed_predictor):
    predictor = fixed_predictor
    path = _tiny_coco_dataset(tiny_coco, 1).get(0).file_name
    resized, (h0, w0) = predictor.prepare(path)
    results = predictor(path)[0]
    assert results.image_size == (h0, w0) and len(results) > 0
    in_resized = predictor.model.predict([resized], [(256, 320)])[0]
    ratio = torch.tensor([w0 / 320, h0 / 256, w0 / 320, h0 / 256], dtype=torch.float32)
    torch.testing.assert_close(results.boxes.tensor, in_resized.boxes.tensor * ratio, atol=1e-3, rtol=1e-5)


# ------------------------------------------------------------------ photometric distortion
def _random_image(h=48, w=64, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def test_photometric_distortion_equals_torchvisions_and_keeps_range_and_dtype():
    image = _random_image()
    tv = v2.RandomPhotometricDistort(p=0.5)
    changed = 0
    for seed in range(12):
        params = sample_photometric(np.random.default_rng(seed), 0.5)
        ours = photometric_distort(image, params)
        assert ours.dtype == torch.uint8 and ours.shape == image.shape
        expected = tv.transform(image, {
            "brightness_factor": params.brightness, "contrast_factor": params.contrast,
            "saturation_factor": params.saturation, "hue_factor": params.hue, "contrast_before": params.contrast_before,
            "channel_permutation": None if params.permutation is None else torch.tensor(params.permutation),
        })
        assert torch.equal(ours, expected)
        changed += not torch.equal(ours, image)
        # Float 0-255 images stay float and in range.
        as_float = photometric_distort(image.float() * 1.0, params)
        assert as_float.dtype == torch.float32 and float(as_float.min()) >= 0 and float(as_float.max()) <= 255
    assert changed >= 8
    # prob 1: every step, strong values still clamp to 0-255; prob 0: the image as it was.
    bright = T.Photometric(brightness=1.125, contrast=1.5, saturation=1.5, hue=0.05, contrast_before=False,
                           permutation=(2, 0, 1))
    out = photometric_distort(torch.full((3, 8, 8), 250, dtype=torch.uint8), bright)
    assert out.dtype == torch.uint8 and int(out.max()) <= 255
    out = photometric_distort(torch.full((3, 8, 8), 250.0), bright)
    assert 0 <= float(out.min()) and float(out.max()) <= 255
    every = sample_photometric(np.random.default_rng(1), 1.0)
    assert None not in (every.brightness, every.contrast, every.saturation, every.hue, every.permutation)
    assert sample_photometric(np.random.default_rng(1), 0.0).identity
    assert photometric_distort(image, sample_photometric(np.random.default_rng(1), 0.0)) is image


# ------------------------------------------------------------------ geometry: boxes, masks, keypoints follow the pixels
# Box-shaped objects of distinct codes in channel 0 (background 0), as (x0, y0, x1, y1) pixel edges.
OBJECTS = [(5, 8, 30, 40), (40, 10, 85, 35), (20, 42, 70, 58)]
CODES = [50, 100, 150]


def _scene(h=60, w=90, bitmasks=False):
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.integers(0, 40, (3, h, w)).astype(np.float32))
    image[0] = 0
    for (x0, y0, x1, y1), code in zip(OBJECTS, CODES):
        image[0, y0:y1, x0:x1] = code
    boxes = torch.tensor(OBJECTS, dtype=torch.float32)
    if bitmasks:
        masks = BitMasks(torch.stack([image[0] == c for c in CODES]))
    else:
        masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in OBJECTS])
    # A keypoint at the centre of each object's top-left pixel and one at its bottom-right pixel.
    kps = torch.tensor([[[x0 + 0.5, y0 + 0.5, 2], [x1 - 0.5, y1 - 0.5, 2]] for x0, y0, x1, y1 in OBJECTS])
    inst = Instances((h, w), boxes=Boxes(boxes), labels=torch.tensor([0, 1, 2]), masks=masks, keypoints=Keypoints(kps))
    return image, inst


def _pixel_box(region: torch.Tensor) -> list[float]:
    ys, xs = region.nonzero(as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _check_consistent(image: torch.Tensor, inst: Instances, codes: list[int]):
    """Each instance's box, mask and visible keypoints match its object's pixels exactly."""
    assert inst.image_size == tuple(image.shape[1:])
    h, w = inst.image_size
    for i, label in enumerate(inst.labels.tolist()):
        region = image[0] == codes[label]
        assert inst.boxes.tensor[i].tolist() == _pixel_box(region)
        if isinstance(inst.masks, BitMasks):
            assert torch.equal(inst.masks.tensor[i], region)
        else:
            assert inst.masks.bounding_boxes()[i].tolist() == _pixel_box(region)
        for x, y, v in inst.keypoints.tensor[i].tolist():
            inside = 0 <= x <= w and 0 <= y <= h
            assert (v > 0) == inside
            if v > 0:
                assert bool(region[int(y), int(x)])


@pytest.mark.parametrize("bitmasks", [False, True])
def test_zoom_out_crop_and_flip_move_targets_with_the_pixels(bitmasks):
    fill = (123.675, 116.28, 103.53)
    crops = 0
    for seed in range(30):
        image, inst = _scene(bitmasks=bitmasks)
        rng = np.random.default_rng(seed)
        zoom = sample_zoom_out(rng, 60, 90, 1.0, 4.0)
        image, inst = zoom_out(image, inst, zoom, fill)
        _check_consistent(image, inst, CODES)
        window = sample_iou_crop(rng, *image.shape[1:], inst.boxes.tensor)
        if window is not None:
            before = inst.boxes.tensor
            image, inst = crop(image, inst, window)
            crops += 1
            assert len(inst) == int(window.centres_inside(before).sum()) >= 1
        _check_consistent(image, inst, CODES)
        image, inst = apply_augmentation(image, inst, T.Augmentation(min(image.shape[1:]), 10**4, hflip=True),
                                         flip_index=[1, 0])
        # The flip swaps the two keypoints of each object (top-left <-> bottom-right here).
        _check_consistent(image, inst, CODES)
    assert crops >= 15


def test_zoom_out_fills_with_the_mean_and_places_the_image():
    image, inst = _scene()
    fill = (123.675, 116.28, 103.53)
    zoom = ZoomOut(height=130, width=200, top=37, left=61)
    out, moved = zoom_out(image, inst, zoom, fill)
    assert out.shape == (3, 130, 200) and moved.image_size == (130, 200)
    assert torch.equal(out[:, 37:97, 61:151], image)
    outside = torch.ones(130, 200, dtype=torch.bool)
    outside[37:97, 61:151] = False
    for c in range(3):
        assert (out[c][outside] == torch.tensor(fill[c], dtype=torch.float32)).all()
    assert torch.equal(moved.boxes.tensor, inst.boxes.tensor + torch.tensor([61.0, 37, 61, 37]))
    # Normalised with the same mean, the canvas becomes exactly 0 (what the model pads with).
    assert ((out[0][outside] / 255 - torch.tensor(fill[0] / 255)) == 0).all()


def test_zoom_out_draws():
    for seed in range(100):
        z = sample_zoom_out(np.random.default_rng(seed), 50, 70, 1.0, 2.5)
        assert 50 <= z.height <= 125 and 70 <= z.width <= 175
        assert 0 <= z.top <= z.height - 50 and 0 <= z.left <= z.width - 70
    assert sample_zoom_out(np.random.default_rng(0), 50, 70, 0.0, 4.0) is None
    draws = [sample_zoom_out(np.random.default_rng(s), 50, 70, 0.5, 4.0) for s in range(200)]
    assert 60 <= sum(d is None for d in draws) <= 140
    assert max(d.width for d in draws if d is not None) > 200  # up to 4x


def test_iou_crop_follows_torchvisions_rules(monkeypatch):
    rng = np.random.default_rng(0)
    h, w = 120, 160
    outcomes = []
    for seed in range(300):
        xy = rng.uniform(0, [w, h], size=(4, 2))
        wh = rng.uniform(8, 60, size=(4, 2))
        boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1), dtype=torch.float32)
        window = sample_iou_crop(np.random.default_rng(seed), h, w, boxes)
        outcomes.append(window)
        if window is None:
            continue
        assert int(0.3 * w) <= window.width <= w and int(0.3 * h) <= window.height <= h
        assert 0.5 <= window.width / window.height <= 2.0
        assert 0 <= window.left <= w - window.width and 0 <= window.top <= h - window.height
        inside = window.centres_inside(boxes)
        assert inside.any()
        inst = Instances((h, w), boxes=Boxes(boxes), labels=torch.arange(4))
        image, cropped = crop(torch.zeros(3, h, w), inst, window)
        assert image.shape == (3, window.height, window.width) and cropped.image_size == (window.height, window.width)
        assert cropped.labels.tolist() == inside.nonzero().flatten().tolist()  # centre outside: dropped
        t = cropped.boxes.tensor
        assert (t[:, 0] >= 0).all() and (t[:, 1] >= 0).all() and (t[:, 2] <= window.width).all() and (t[:, 3] <= window.height).all()
        assert cropped.boxes.nonempty().all()
    # torchvision leaves the image uncropped when it draws the 1.0 option (one of seven).
    # Windows for a high minimum IoU often fail all trials and the option is drawn again, so "no crop"
    # comes out more often than 1 in 7.
    assert 15 <= sum(o is None for o in outcomes) <= 200
    # A minimum IoU that every accepted window meets.
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [90.0, 40.0, 150.0, 110.0]])
    monkeypatch.setattr(T, "IOU_CROP_MIN_IOUS", (0.7,))
    from torchvision.ops import box_iou
    for seed in range(50):
        window = sample_iou_crop(np.random.default_rng(seed), h, w, boxes)
        rect = torch.tensor([[window.left, window.top, window.left + window.width, window.top + window.height]], dtype=torch.float32)
        assert float(box_iou(boxes[window.centres_inside(boxes)], rect).max()) >= 0.7
    monkeypatch.setattr(T, "IOU_CROP_MIN_IOUS", (1.0,))
    assert sample_iou_crop(np.random.default_rng(0), h, w, boxes) is None
    monkeypatch.undo()
    assert sample_iou_crop(np.random.default_rng(0), h, w, torch.zeros(0, 4)) is None  # nothing to keep


def test_polygons_are_clipped_to_the_crop():
    tri = PolygonMasks([[[0.0, 0.0, 40.0, 0.0, 0.0, 40.0]]])
    inst = Instances((50, 50), boxes=Boxes(torch.tensor([[0.0, 0.0, 40.0, 40.0]])), labels=torch.tensor([0]), masks=tri)
    _, out = crop(torch.zeros(3, 50, 50), inst, Crop(top=10, left=10, height=30, width=30))
    (poly,) = out.masks.polygons[0]
    xy = poly.reshape(-1, 2)
    assert xy.min() >= 0 and xy[:, 0].max() <= 30 and xy[:, 1].max() <= 30
    # The triangle's part inside the window is the triangle (0,0), (20,0), (0,20) after the shift.
    assert out.masks.area().item() == pytest.approx(200.0)
    assert out.boxes.tensor.tolist() == [[0.0, 0.0, 30.0, 30.0]]


# ------------------------------------------------------------------ the whole training transform
def _all_on(**changes) -> TrainTransform:
    base = dict(min_sizes=(64,), max_size=128, hflip_prob=0.5, fixed_size=(64, 80), photometric_distort_prob=0.5,
                zoom_out_prob=0.5, zoom_out_max_scale=4.0, zoom_out_fill=(123.675, 116.28, 103.53), iou_crop=True)
    base.update(changes)
    return TrainTransform(**base)


def test_train_transform_is_deterministic_and_keeps_targets_in_the_image():
    transform = _all_on()
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 60, 90), dtype=np.uint8))
    _, inst = _scene()
    outputs = []
    for position in range(20):
        a_img, a = transform(image, inst, augmentation_rng(5, position), flip_index=[1, 0])
        b_img, b = transform(image, inst, augmentation_rng(5, position), flip_index=[1, 0])
        assert torch.equal(a_img, b_img) and torch.equal(a.boxes.tensor, b.boxes.tensor)
        assert torch.equal(a.keypoints.tensor, b.keypoints.tensor)
        assert a_img.dtype == torch.float32 and a_img.shape == (3, 64, 80) and a.image_size == (64, 80)
        assert float(a_img.min()) >= 0 and float(a_img.max()) <= 255
        t = a.boxes.tensor
        assert len(a) >= 1 and a.boxes.nonempty().all()
        assert (t[:, 0::2] >= 0).all() and (t[:, 0::2] <= 80).all() and (t[:, 1::2] >= 0).all() and (t[:, 1::2] <= 64).all()
        outputs.append((a_img.sum().item(), t.tolist()))
    assert len({str(o) for o in outputs}) == 20  # every position augments differently


def test_train_transform_boxes_bound_the_objects_after_the_fixed_resize():
    transform = _all_on(photometric_distort_prob=0.0, fixed_size=(90, 120))
    # Object k is 200 in channel k and 0 elsewhere; no other pixel (background 0, zoom fill at
    # most 123.675) nor a blend of them exceeds 123.675 in that channel.
    _, inst = _scene(bitmasks=True)
    base_image = torch.zeros(3, 60, 90)
    for k, (x0, y0, x1, y1) in enumerate(OBJECTS):
        base_image[k, y0:y1, x0:x1] = 200
    for position in range(20):
        image, out = transform(base_image, inst, augmentation_rng(1, position), flip_index=[1, 0])
        for i, label in enumerate(out.labels.tolist()):
            # Bilinear resizing blurs the edges: the object's pure core lies inside its box, and every
            # pixel the object touched lies within a pixel of it.
            x0, y0, x1, y1 = out.boxes.tensor[i].tolist()
            touched = image[label] > 124
            tx0, ty0, tx1, ty1 = _pixel_box(touched)
            assert x0 - 1 <= tx0 and tx1 <= x1 + 1 and y0 - 1 <= ty0 and ty1 <= y1 + 1
            core = image[label] > 199.5
            if core.any():
                cx0, cy0, cx1, cy1 = _pixel_box(core)
                assert x0 - 1 <= cx0 and cx1 <= x1 + 1 and y0 - 1 <= cy0 and cy1 <= y1 + 1
            # The box is not larger than what the object touched (by more than a pixel).
            assert tx0 <= x0 + 1 and x1 - 1 <= tx1 and ty0 <= y0 + 1 and y1 - 1 <= ty1
            # Bitmaps are resized nearest-neighbour (as torchvision), which shifts edges by up to
            # half the upscaling factor: the mask covers the object, not pixel for pixel.
            mask = out.masks.tensor[i]
            assert float((mask & touched).sum()) / float((mask | touched).sum()) > 0.6


def test_defaults_give_the_samples_of_before():
    """With the SSD augmentations off, the transform draws and applies exactly what the loader did
    before they existed (sample_augmentation + apply_augmentation)."""
    transform = TrainTransform(min_sizes=(24, 32, 40), max_size=64, hflip_prob=0.5)
    image = _random_image(30, 45)
    _, inst = _scene()
    inst = transform_instances(inst, (30, 45))
    for position in range(10):
        got_image, got = transform(image, inst, augmentation_rng(7, position), flip_index=[1, 0])
        aug = sample_augmentation(augmentation_rng(7, position), (24, 32, 40), 64, 0.5)
        want_image, want = apply_augmentation(image.float(), inst, aug, flip_index=[1, 0])
        assert torch.equal(got_image, want_image) and torch.equal(got.boxes.tensor, want.boxes.tensor)
        assert torch.equal(got.keypoints.tensor, want.keypoints.tensor)


def test_fixed_training_resize_is_the_test_resize():
    transform = TrainTransform(min_sizes=(800,), max_size=1333, hflip_prob=0.0, fixed_size=(40, 50))
    image = _random_image(30, 45)
    got, _ = transform(image, None, augmentation_rng(0, 0))
    assert torch.equal(got, resize_image_fixed(image.float(), (40, 50)))
    assert torch.equal(got, T.TestTransform(800, 1333, (40, 50))(image.float()))


# ------------------------------------------------------------------ the training loader on synthetic data
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=8, num_val=2, image_size=(96, 128), seed=0)
    return root


def _ssd_cfg(root, name="retinanet_R_50_FPN_1x", extra=()):
    return load_config(name, [
        "model.backbone.depth=18", "model.fpn.out_channels=16", "model.retinanet.num_convs=1",
        f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
        "input.resize=fixed", "input.fixed_size=[64,80]", *ALL_AUGMENTATIONS, "seed=3", *extra,
    ])


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def test_train_loader_with_every_augmentation_runs_and_resumes_exactly(synth):
    cfg = _ssd_cfg(synth)
    dataset = load_dataset(cfg.data.train, training=True, verbose=False)
    assert dataset.has_masks and dataset.has_keypoints
    batches = _take(build_train_loader(cfg, dataset, batch_size=2, num_workers=0), 4)
    for batch in batches:
        for s in batch:
            assert s.image.shape == (3, 64, 80) and s.image.dtype == torch.float32
            # Bilinear weights sum to 1 within float rounding: 255 may come out a few ulps above.
            assert float(s.image.min()) >= -1e-3 and float(s.image.max()) <= 255 + 1e-3
            inst = s.instances
            assert inst.image_size == (64, 80) and len(inst) >= 1
            t = inst.boxes.tensor
            assert inst.boxes.nonempty().all() and (t[:, 0::2] <= 80).all() and (t[:, 1::2] <= 64).all() and (t >= 0).all()
            assert len(inst.masks) == len(inst.keypoints) == len(inst)
    key = [[(s.image_id, s.image.sum().item(), s.instances.boxes.tensor.tolist()) for s in b] for b in batches]
    resumed = _take(build_train_loader(cfg, dataset, batch_size=2, num_workers=1, start_iter=2), 2)
    assert [[(s.image_id, s.image.sum().item(), s.instances.boxes.tensor.tolist()) for s in b] for b in resumed] == key[2:]
    # A training step of a small detector on these targets.
    from swiftdet.weights import build_model_with_weights

    model, _ = build_model_with_weights(_ssd_cfg(synth, extra=[f"model.num_classes={len(dataset.meta.class_names)}"]))
    model.train()
    batch = batches[0]
    losses = model(model.preprocess([s.image for s in batch]), [s.instances for s in batch])
    assert losses and all(torch.isfinite(v) for v in losses.values())
