"""Test-time augmentation (swiftdet.model.tta, test.aug): views at several sizes and mirrored,
detections merged by class-wise NMS, masks averaged over the views; wired into the predictor,
the test loader and the evaluation run."""
from __future__ import annotations

import pytest
import torch

from swiftdet.config.core import load_config
from swiftdet.data.loader import build_test_loader, tta_resizes
from swiftdet.data import load_dataset
from swiftdet.data.transforms import TestTransform as Resize  # (not a pytest class)
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine.run import run_evaluation
from swiftdet.errors import ConfigError, InputError
from swiftdet.inference import Predictor
from swiftdet.model.tta import TestTimeAugmentation
from swiftdet.structures import Boxes, CroppedMasks, Instances
from swiftdet.weights import build_model_with_weights

from test_config_fields import TINY_DENSE, TINY_RCNN


@pytest.fixture(scope="module")
def mask_rcnn():
    """A tiny random Mask R-CNN (the demo's, 64-pixel test size) at a low score threshold, so that
    it gives its full 50 detections per image."""
    torch.manual_seed(0)
    cfg = load_config("demo_mask_rcnn", TINY_RCNN)
    model, _ = build_model_with_weights(cfg)
    model.score_thresh = 0.01
    return cfg, model.eval()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g).float()


def _same(a: Instances, b: Instances) -> None:
    assert a.image_size == b.image_size
    assert torch.equal(a.boxes.tensor, b.boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)
    if a.masks is not None or b.masks is not None:
        assert torch.equal(a.masks.to_bitmasks().tensor, b.masks.to_bitmasks().tensor)


def test_one_view_is_the_plain_model(mask_rcnn, tmp_path):
    cfg, model = mask_rcnn
    image = _image(48, 80)
    plain = model.predict([Resize(64, 64)(image)], [(48, 80)])[0]
    assert len(plain) > 0 and plain.masks is not None
    _same(TestTimeAugmentation(model, [Resize(64, 64)], flip=False).predict([image])[0], plain)
    # The same through the predictor: test.aug hands the original image to the wrapper.
    torch.save(model.state_dict(), tmp_path / "w.pth")
    off = Predictor(cfg, str(tmp_path / "w.pth"), score_thresh=0.01, fast=False)
    on = Predictor(load_config("demo_mask_rcnn", [*TINY_RCNN, "test.aug.enabled=true", "test.aug.flip=false",
                                                  "test.aug.min_sizes=[64]", "test.aug.max_size=64"]),
                   str(tmp_path / "w.pth"), score_thresh=0.01, fast=False)
    assert on.tta is not None and off.tta is None
    assert tuple(on.prepare(image)[0].shape) == (3, 48, 80)  # not resized: the views resize it
    _same(on(image)[0], off(image)[0])
    _same(on(image)[0], plain)


D2_TINY = [*TINY_RCNN[1:], "model.backbone.stem_out_channels=8", "model.backbone.res2_out_channels=16",
           "model.backbone.width_per_group=4"]


@pytest.mark.parametrize("convention", ["torchvision", "detectron2"])
def test_a_repeated_view_merges_back_to_the_plain_model(mask_rcnn, convention):
    """Two identical views: every detection comes twice, NMS keeps one of each pair, and the
    masks, run again on the merged boxes and averaged over the two views, are the plain ones
    (also with detectron2's mapping back: boxes clipped, empty ones dropped, its mask pasting)."""
    _, model = mask_rcnn
    if convention == "detectron2":
        torch.manual_seed(0)
        model, _ = build_model_with_weights(load_config("d2_mask_rcnn_R_50_FPN_1x", D2_TINY))
        model.score_thresh = 0.01
        model.eval()
    assert model.convention == convention
    image = _image(64, 64, seed=1)  # at the test size: the boxes map back without rounding
    plain = model.predict([Resize(64, 64)(image)], [(64, 64)])[0]
    merged = TestTimeAugmentation(model, [Resize(64, 64)] * 2, flip=False).predict([image])[0]
    _same(merged, plain)


def test_flip_results_mirror_with_the_image(mask_rcnn):
    """With flip, an image and its mirror image have the same views (swapped), so their merged
    detections are mirror images of each other, and every detection is a plain detection of the
    image or of its mirror, mapped back."""
    _, model = mask_rcnn
    image = _image(48, 80, seed=2)
    tta = TestTimeAugmentation(model, [Resize(64, 64)], flip=True)
    a, b = tta.predict([image])[0], tta.predict([image.flip(-1)])[0]
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-6)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.boxes.tensor, b.boxes.hflip(80).tensor, rtol=0, atol=1e-4)
    same = (a.masks.to_bitmasks().tensor == b.masks.to_bitmasks().tensor.flip(-1)).float().mean()
    assert same > 0.99  # pixels within rounding of the threshold may differ
    plain = model.predict([Resize(64, 64)(image)], [(48, 80)])[0]
    mirror = model.predict([Resize(64, 64)(image.flip(-1))], [(48, 80)])[0]
    candidates = torch.cat([plain.boxes.tensor, mirror.boxes.hflip(80).tensor])
    distance = (a.boxes.tensor[:, None] - candidates[None]).abs().amax(-1).amin(1)
    assert float(distance.max()) < 1e-3
    # Both views contribute to the merged set.
    from_plain = (a.boxes.tensor[:, None] - plain.boxes.tensor[None]).abs().amax(-1).amin(1) < 1e-3
    assert 0 < int(from_plain.sum()) < len(a)


def test_merging_keeps_the_higher_scoring_duplicate(mask_rcnn):
    _, model = mask_rcnn
    tta = TestTimeAugmentation(model, [Resize(64, 64)], flip=True)
    detections = Instances(
        (64, 64),
        boxes=Boxes(torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0], [11.0, 10.0, 31.0, 30.0],
                                  [40.0, 40.0, 60.0, 60.0]])),
        scores=torch.tensor([0.6, 0.9, 0.7, 0.5]),
        labels=torch.tensor([1, 1, 2, 1]),
    )
    merged = tta._merge(detections)
    # The 0.6 box overlaps the 0.9 box of its class (IoU 0.9 > 0.5) and goes; another class stays.
    assert merged.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert merged.labels.tolist() == [1, 2, 1]
    model.roi_heads.detections_per_image, kept = 2, model.roi_heads.detections_per_image
    try:
        assert tta._merge(detections).scores.tolist() == pytest.approx([0.9, 0.7])
    finally:
        model.roi_heads.detections_per_image = kept


def test_masks_of_several_sizes_and_flip(mask_rcnn):
    _, model = mask_rcnn
    tta = TestTimeAugmentation(model, [Resize(48, 96), Resize(80, 96)], flip=True)
    assert tta.num_views == 4
    result = tta.predict([_image(50, 70, seed=3)], [(50, 70)])[0]
    assert result.image_size == (50, 70) and 0 < len(result) <= model.roi_heads.detections_per_image
    assert isinstance(result.masks, CroppedMasks)
    masks = result.masks.to_bitmasks().tensor
    assert masks.shape == (len(result), 50, 70) and masks.dtype == torch.bool and bool(masks.any())
    boxes = result.boxes.tensor
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 70).all() and (boxes[:, 3] <= 50).all())
    assert bool((result.scores[:-1] >= result.scores[1:]).all())
    # Mask pixels lie in their (slightly grown, as pasting grows them) boxes.
    ys, xs = torch.arange(50)[:, None], torch.arange(70)[None]
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        outside = mask & ~((xs >= x0 - 2) & (xs <= x1 + 2) & (ys >= y0 - 2) & (ys <= y1 + 2))
        assert not bool(outside.any())
    # The mask head of the model is back on after the views ran with it off.
    assert model.roi_heads.mask_on
    with pytest.raises(InputError, match="original size"):
        tta.predict([_image(50, 70)], [(100, 140)])


# RetinaNet at two sizes and flipped, FCOS (whose 80-class candidates cost more) flipped.
@pytest.mark.parametrize("name, sizes", [("retinanet_R_50_FPN_1x", ((48, 80), (64, 96))), ("fcos_R_50_FPN_1x", ((48, 80),))])
def test_dense_detectors_merge_the_union(name, sizes):
    torch.manual_seed(0)
    model, _ = build_model_with_weights(load_config(name, TINY_DENSE))
    model.score_thresh = 0.005  # a random head scores about its prior, 0.01
    model.eval()
    image = _image(48, 80, seed=4)
    tta = TestTimeAugmentation(model, [Resize(*size) for size in sizes], flip=True)
    result = tta.predict([image])[0]
    assert result.masks is None and 0 < len(result) <= model.detections_per_image
    views = []
    for size in sizes:
        resized = Resize(*size)(image)
        views.append(model.predict([resized], [(48, 80)])[0].boxes.tensor)
        views.append(model.predict([resized.flip(-1)], [(48, 80)])[0].boxes.hflip(80).tensor)
    distance = (result.boxes.tensor[:, None] - torch.cat(views)[None]).abs().amax(-1).amin(1)
    assert float(distance.max()) < 1e-3  # every merged box is one view's detection


def test_keypoints_come_from_the_view_of_each_detection():
    torch.manual_seed(0)
    cfg = load_config("keypoint_rcnn_R_50_FPN_1x", [*TINY_RCNN, "model.num_classes=2", "model.keypoint_head.conv_dim=16",
                                                    "model.keypoint_head.num_convs=1"])
    model, _ = build_model_with_weights(cfg)
    model.score_thresh = 0.01
    model.eval()
    with pytest.raises(ConfigError, match="test.aug.flip"):
        TestTimeAugmentation(model, [Resize(64, 64)], flip=True)
    image = _image(48, 80, seed=5)
    result = TestTimeAugmentation(model, [Resize(48, 80), Resize(64, 96)], flip=False).predict([image])[0]
    assert len(result) > 0 and result.keypoints.tensor.shape == (len(result), 17, 3)
    # Each detection's keypoints are the ones its view predicted for the same box.
    found = torch.zeros(len(result), dtype=torch.bool)
    for size, max_size in ((48, 80), (64, 96)):
        view = model.predict([Resize(size, max_size)(image)], [(48, 80)])[0]
        match = (result.boxes.tensor[:, None] - view.boxes.tensor[None]).abs().amax(-1) < 1e-4
        for i, j in match.nonzero().tolist():
            torch.testing.assert_close(result.keypoints.tensor[i], view.keypoints.tensor[j])
            found[i] = True
    assert bool(found.all())


def test_config_and_refusals(mask_rcnn):
    cfg = load_config("demo_mask_rcnn", ["test.aug.enabled=true", "test.aug.min_sizes=[100,200]", "test.aug.max_size=300"])
    assert [(t.min_size, t.max_size) for t in tta_resizes(cfg)] == [(100, 300), (200, 300)]
    assert load_config("demo_mask_rcnn").test.aug.enabled is False
    with pytest.raises(ConfigError, match="at least one size"):
        load_config("demo_mask_rcnn", ["test.aug.enabled=true", "test.aug.min_sizes=[]"])
    with pytest.raises(ConfigError, match="test.aug.flip"):
        load_config("keypoint_rcnn_R_50_FPN_1x", ["test.aug.enabled=true"])
    load_config("keypoint_rcnn_R_50_FPN_1x", ["test.aug.enabled=true", "test.aug.flip=false"])
    with pytest.raises(ConfigError, match="ssd"):
        load_config("ssdlite320_MV3", ["test.aug.enabled=true"])
    with pytest.raises(ConfigError):
        load_config("demo_mask_rcnn", ["test.aug.min_sizes=[0]"])


def test_eval_with_test_aug_runs_end_to_end(mask_rcnn, tmp_path):
    cfg, model = mask_rcnn
    root = tmp_path / "synth"
    generate_synthetic_coco(root, num_train=1, num_val=2, image_size=(60, 72), seed=0)
    data = [f"data.test.json={root / 'annotations' / 'instances_val.json'}", f"data.test.image_root={root}"]
    on = load_config("demo_mask_rcnn", [*TINY_RCNN, *data, "test.aug.enabled=true", "test.aug.min_sizes=[48,64]",
                                        "test.aug.max_size=96", "model.box_head.score_thresh=0.01"])
    # The test loader hands the images at their size on disk when test-time augmentation is on.
    samples = [s for batch in build_test_loader(on, load_dataset(on.data.test, training=False), num_workers=0, original_images=True)
               for s in batch]
    assert all(tuple(s.image.shape[1:]) == s.original_size == (60, 72) for s in samples)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    metrics = run_evaluation(on, tmp_path / "w.pth")
    assert {"bbox/AP", "segm/AP"} <= set(metrics)
    assert 0.0 <= metrics["bbox/AP"] <= 1.0 and 0.0 <= metrics["segm/AP"] <= 1.0
