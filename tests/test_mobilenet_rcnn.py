"""Faster R-CNN MobileNetV3-Large FPN (faster_rcnn_MV3_FPN, faster_rcnn_MV3_FPN_320) against torchvision's
fasterrcnn_mobilenet_v3_large_fpn / _320_fpn, ImageNet initialisation of the MobileNetV3 trunk,
training from scratch on synthetic shapes, and fine-tuning a converted file with another class count.

The torchvision models get seeded random weights with BatchNorm statistics calibrated on real images
(a training-mode pass, then perturbed), and their BatchNorms become FrozenBatchNorm2d as in
torchvision's pretrained models; both models then see the same real images, which each resizes itself.
"""
from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.io import read_image
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.cli.convert import convert_torchvision
from swiftdet.config.core import load_config
from swiftdet.data.transforms import resize_image
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.errors import ConfigError, WeightsError
from swiftdet.model.backbone import MobileNetV3, mobilenet_v3_state_dict_from_torchvision
from swiftdet.model.build import build_model
from swiftdet.model.layers import fuse_for_inference
from swiftdet.structures import Boxes, Instances
from swiftdet.weights import build_model_with_weights
from swiftdet.weights.checkpoint import load_initial_weights
from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict
from test_rcnn_train import train_steps

NUM_CLASSES = 5
VARIANTS = {
    "faster_rcnn_MV3_FPN": fasterrcnn_mobilenet_v3_large_fpn,
    "faster_rcnn_MV3_FPN_320": fasterrcnn_mobilenet_v3_large_320_fpn,
}
# Weight scale per layer-name fragment: activations O(1) and scores spread out (no ties).
GAINS = {"fpn": 0.5, "rpn.head.cls_logits": 0.1, "rpn.head.bbox_pred": 0.01, "box_predictor.cls_score": 0.3,
         "box_predictor.bbox_pred": 0.05}
VAL_IMAGES = ("000000006818.jpg", "000000017627.jpg")


@pytest.fixture(autouse=True)
def one_thread():
    """These small models run in one thread: on a shared 2-core machine, two threads that wait for
    each other at every op made the training test ~15x slower (128 s against 7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_images(tiny_coco) -> list[torch.Tensor]:
    """Two crops of real photos, 0-255 float, of different sizes and aspect ratios (both <= 320 px)."""
    a = read_image(str(tiny_coco / "val2017" / VAL_IMAGES[0]))[:, :240, :320].float()
    b = read_image(str(tiny_coco / "val2017" / VAL_IMAGES[1]))[:, :300, :200].float()
    return [a, b]


def randomise(tv: nn.Module, images01: list[torch.Tensor], seed: int = 0) -> None:
    """Seeded random weights; BN statistics of a training-mode pass over ``images01``, then frozen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in tv.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                gain = next((v for k, v in GAINS.items() if k in name), 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain * math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1 * min(gain, 1.0))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: exactly the calibration pass's statistics
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        tv.backbone.train()
        tv.backbone(tv.transform(images01)[0].tensors)
        tv.eval()
        body = tv.backbone.body
        for name, bn in [(n, m) for n, m in body.named_modules() if isinstance(m, nn.BatchNorm2d)]:
            frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(bn, key))
            frozen.running_mean.add_(torch.randn(bn.num_features, generator=g) * 0.05)
            parent, leaf = name.rsplit(".", 1)
            setattr(body.get_submodule(parent), leaf, frozen)


def model_pair(name: str, images: list[torch.Tensor]) -> tuple[nn.Module, nn.Module]:
    """(torchvision model calibrated on ``images``, converted swiftdet model of the recipe ``name``)."""
    tv = VARIANTS[name](weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    randomise(tv, [i / 255 for i in images])
    cfg = load_config(name, [f"model.num_classes={NUM_CLASSES}"]).model
    ours = build_model(cfg).eval()
    ours.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg), strict=True)
    return tv, ours


@pytest.mark.parametrize("name", [pytest.param("faster_rcnn_MV3_FPN", marks=pytest.mark.slow), "faster_rcnn_MV3_FPN_320"])
def test_matches_torchvision(name, tiny_coco):
    # The 800-pixel model runs both networks on two 800 x 1067 / 1200 x 800 images (~15 s): slow.
    images = real_images(tiny_coco)
    tv, ours = model_pair(name, images)
    cfg = load_config(name)
    with torch.no_grad():
        expected = tv([i / 255 for i in images])
        resized = [resize_image(im, cfg.input.min_size_test, cfg.input.max_size_test) for im in images]
        results = ours.predict(resized, original_sizes=[tuple(im.shape[-2:]) for im in images])
    for r, e, im in zip(results, expected, images):
        assert r.image_size == tuple(im.shape[-2:])
        assert len(r) == len(e["boxes"]) > 10
        assert torch.equal(r.labels, e["labels"] - 1)
        torch.testing.assert_close(r.scores, e["scores"], rtol=0, atol=1e-4)
        # 1e-4 pixels, plus 2e-7 of the coordinate: the two pipelines resize and normalise in another
        # order, so their inputs differ by float rounding, which a box of a few hundred pixels keeps.
        torch.testing.assert_close(r.boxes.tensor, e["boxes"], rtol=2e-7, atol=1e-4)

    # The fast path (fuse_for_inference) folds every FrozenBN of the trunk and pools by gathering
    # (its sums run in another order); both round differently, hence the 1e-4 score
    # tolerance and the looser box one (as tests/test_fast_inference.py).
    fused = fuse_for_inference(ours)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.backbone.modules())
    for r, e in zip(fused.predict(resized, original_sizes=[tuple(im.shape[-2:]) for im in images]), expected):
        assert len(r) == len(e["boxes"])
        torch.testing.assert_close(r.scores, e["scores"], rtol=0, atol=1e-4)
        assert_same_detections_up_to_ties(r.boxes.tensor, r.scores, r.labels, e["boxes"], e["scores"], e["labels"] - 1,
                                          score_tol=1e-4)


def assert_same_detections_up_to_ties(boxes, scores, labels, exp_boxes, exp_scores, exp_labels, score_tol=1e-5,
                                      box_tol=1e-3) -> None:
    """Each detection equals the expected one at its rank, or one of the same label whose score is
    within ``score_tol`` (two boxes of one class scoring 6e-7 apart swap places when rounding moves
    either score): a one-to-one match, boxes within ``box_tol`` px."""
    unused = set(range(len(exp_scores)))
    for i in range(len(scores)):
        near = [j for j in sorted(unused, key=lambda j: abs(j - i)) if labels[i] == exp_labels[j]
                and abs(float(scores[i] - exp_scores[j])) <= score_tol
                and float((boxes[i] - exp_boxes[j]).abs().max()) <= box_tol]
        assert near, f"detection {i} (label {int(labels[i])}, score {float(scores[i]):.7f}) matches none expected"
        unused.remove(near[0])


def test_recipes_state_torchvisions_settings():
    """What the equivalence rests on, stated against torchvision's own modules."""
    for name, fn in VARIANTS.items():
        with torch.device("meta"):
            tv = fn(weights=None, weights_backbone=None, num_classes=91)
        cfg = load_config(name)
        assert (cfg.input.min_size_test, cfg.input.max_size_test) == (tv.transform.min_size[0], tv.transform.max_size)
        assert cfg.input.min_size_train == tuple(tv.transform.min_size)
        rpn = tv.rpn
        assert cfg.model.rpn.score_thresh == rpn.score_thresh == 0.05
        assert (cfg.model.rpn.pre_nms_topk_test, cfg.model.rpn.post_nms_topk_test) == (rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"])
        assert (cfg.model.rpn.pre_nms_topk_train, cfg.model.rpn.post_nms_topk_train) == (rpn._pre_nms_top_n["training"], rpn._post_nms_top_n["training"])
        anchors = rpn.anchor_generator
        assert cfg.model.rpn.anchors.sizes == tuple(tuple(float(s) for s in level) for level in anchors.sizes)
        assert all(tuple(r) == cfg.model.rpn.anchors.aspect_ratios for r in anchors.aspect_ratios)
        assert len(cfg.model.rpn.in_features) == len(anchors.sizes) == 3
    assert load_config("faster_rcnn_MV3_FPN_320").model.rpn.pre_nms_topk_test == 150
    assert load_config("faster_rcnn_MV3_FPN").model.rpn.pre_nms_topk_test == 1000


def test_frozen_stages_and_norms_as_torchvision():
    """trainable_backbone_layers=3 (torchvision's default with pretrained weights) is freeze_at=3; its
    pretrained norm is FrozenBatchNorm2d with eps 1e-5; the parameters frozen are the same."""
    tv = _mobilenet_extractor(torchvision.models.mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    cfg = load_config("faster_rcnn_MV3_FPN", ["model.num_classes=3"]).model
    ours = build_model(cfg)
    tv_grad = {k: p.requires_grad for k, p in tv.body.named_parameters()}
    renamed = mobilenet_v3_state_dict_from_torchvision({f"features.{k}": p for k, p in tv.body.named_parameters()})
    assert {k: p.requires_grad for k, p in renamed.items()} == {
        k: p.requires_grad for k, p in ours.backbone.named_parameters()}
    assert sum(tv_grad.values()) == sum(p.requires_grad for p in ours.backbone.parameters()) > 0
    norms = [m for m in ours.backbone.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) and m.eps == 1e-5 for m in norms)
    # The FPN sees blocks 13 and 16 (160 and 960 channels, both stride 32), then a max-pooled level.
    assert ours.backbone.output_shape() == {"block13": (160, 32), "block16": (960, 32)}
    assert ours.fpn.output_shape() == {"p5": (256, 32), "p5_2": (256, 32), "p6": (256, 64)}


@pytest.mark.parametrize("reduced_tail,dilated", [(False, False), (True, False), (False, True)])
def test_trunk_matches_torchvision_features(reduced_tail, dilated):
    """Every option of the trunk, and the features SSDlite takes (block 13's expansion, the last conv),
    equal torchvision's mobilenet_v3_large(...).features with BN eps 1e-3 (its training norm)."""
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_large(norm_layer=partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03),
                                               reduced_tail=reduced_tail, dilated=dilated)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 128, 96, generator=g)
    with torch.no_grad():
        tv.train()
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        tv.features(x)
    tv.eval()
    ours = MobileNetV3(("block4", "block13_expand", "block13", "block16"), norm="BN", norm_eps=1e-3,
                       norm_momentum=0.03, reduced_tail=reduced_tail, dilated=dilated).eval()
    ours.load_state_dict(mobilenet_v3_state_dict_from_torchvision(tv.state_dict()), strict=True)
    assert all(m.eps == 1e-3 and m.momentum == 0.03 for m in ours.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        out = ours(x)
        f = tv.features
        c4 = f[:13](x)
        expected = {"block4": f[:5](x), "block13_expand": f[13].block[0](c4), "block13": f[13](c4), "block16": f(x)}
    tail = 2 if reduced_tail else 1
    stride = 16 if dilated else 32
    assert ours.output_shape() == {"block4": (40, 8), "block13_expand": (672, 16), "block13": (160 // tail, stride),
                                   "block16": (960 // tail, stride)}
    for key, value in expected.items():
        assert out[key].shape[1] == ours.output_shape()[key][0]
        assert out[key].shape[-1] == -(-96 // ours.output_shape()[key][1])
        torch.testing.assert_close(out[key], value, rtol=0, atol=1e-5)


def test_imagenet_state_dict_initialises_the_backbone(tmp_path):
    torch.manual_seed(0)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    with torch.no_grad():
        for name, buf in classifier.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    path = tmp_path / "mobilenet_v3_large.pth"
    torch.save(classifier.state_dict(), path)
    cfg = load_config("faster_rcnn_MV3_FPN_320", ["model.num_classes=3", f"model.backbone.weights={path}"])
    model, report = build_model_with_weights(cfg)
    backbone_keys = {f"backbone.{k}" for k in model.backbone.state_dict()}
    assert backbone_keys and set(report.loaded) == backbone_keys
    assert not report.missing and not report.skipped
    assert not report.unexpected  # the classifier is dropped; num_batches_tracked has no place in FrozenBN
    expected = mobilenet_v3_state_dict_from_torchvision(classifier.state_dict())
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key

    # A ResNet file is refused for a MobileNet backbone rather than loading nothing.
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(WeightsError, match="does not fit"):
        load_initial_weights(model, load_config("faster_rcnn_MV3_FPN_320", ["model.num_classes=3",
                                                                          f"model.backbone.weights={resnet}"]).model)


def _synth_batch(root, count: int) -> tuple[list[torch.Tensor], list[Instances]]:
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    category_index = {c["id"]: i for i, c in enumerate(data["categories"])}
    images, targets = [], []
    for info in data["images"][:count]:
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        images.append(read_image(str(root / info["file_name"])).float())
        targets.append(Instances((info["height"], info["width"]), boxes=Boxes(boxes.reshape(-1, 4)),
                                 labels=torch.tensor([category_index[a["category_id"]] for a in anns])))
    return images, targets


def _tiny(name: str, overrides: list[str]):
    return load_config(name, [
        "model.fpn.out_channels=32", "model.box_head.fc_dim=64", "model.box_head.batch_size_per_image=64",
        "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=50", "model.rpn.pre_nms_topk_test=200",
        "model.rpn.post_nms_topk_test=50", *overrides])


def test_tiny_mobilenet_rcnn_learns_synthetic_shapes(tmp_path):
    """From scratch, torchvision-style without pretrained weights (BN, every stage trainable)."""
    generate_synthetic_coco(tmp_path, num_train=4, num_val=1, image_size=(128, 128), seed=0)
    images, targets = _synth_batch(tmp_path, 4)
    torch.manual_seed(0)
    cfg = _tiny("faster_rcnn_MV3_FPN_320", ["model.num_classes=5", "model.backbone.norm=BN", "model.backbone.freeze_at=0"])
    cfg.model.rpn.anchors.sizes = ((16.0, 32.0, 64.0, 128.0, 256.0),) * 3
    model = build_model(cfg.model).train()
    assert all(p.requires_grad for p in model.parameters())
    batch = model.preprocess(images)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = train_steps(model, batch, targets, {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}, 30, opt)
    assert np.mean(totals[-5:]) < 0.6 * np.mean(totals[:3]), totals
    model.eval()
    results = model.predict(images[:2])
    assert [r.image_size for r in results] == [(128, 128), (128, 128)]


def test_finetune_a_converted_file_with_another_class_count(tmp_path):
    """torchvision's 91-slot COCO head converts to the recipe's 80 classes; fine-tuning that file on
    3 classes keeps every other tensor and trains with frozen stages unchanged."""
    torch.manual_seed(0)
    tv = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    tv_file, converted = tmp_path / "tv.pth", tmp_path / "converted.pth"
    torch.save(tv.state_dict(), tv_file)
    meta = convert_torchvision(str(tv_file), str(converted), load_config("faster_rcnn_MV3_FPN_320"))
    assert len(meta["class_names"]) == 80
    cfg = load_config("faster_rcnn_MV3_FPN_320", ["model.num_classes=3", f"model.weights={converted}",
                                                   "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=50"])
    model, report = build_model_with_weights(cfg)
    assert report.num_classes_in_file == 80
    assert sorted(s.split(":")[0] for s in report.skipped) == sorted(
        f"roi_heads.box_predictor.{k}" for k in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"))
    assert not report.missing and not report.unexpected
    file_sd = torch.load(converted, weights_only=True)["model"]
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.features.0.", "backbone.features.6."))}
    assert frozen and all(torch.equal(v, file_sd[k]) for k, v in frozen.items())
    assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == 4

    generate_synthetic_coco(tmp_path / "synth", num_train=2, num_val=1, image_size=(96, 96), seed=1)
    images, targets = _synth_batch(tmp_path / "synth", 2)
    targets = [t.with_fields(labels=t.labels.clamp(max=2)) for t in targets]
    head_before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    for _ in range(2):
        losses = model(model.preprocess(images), targets)
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    assert not torch.equal(model.roi_heads.box_predictor.cls_score.weight, head_before)


def test_backbone_settings_of_another_network_are_refused():
    with pytest.raises(ConfigError, match="model.backbone.depth does not apply to model.backbone.name 'mobilenet_v3_large'"):
        load_config("faster_rcnn_MV3_FPN", ["model.backbone.depth=18"])
    with pytest.raises(ConfigError, match="model.backbone.reduced_tail does not apply to model.backbone.name 'resnet'"):
        load_config("faster_rcnn_R_50_FPN_1x", ["model.backbone.reduced_tail=true"])
    with pytest.raises(ConfigError, match="unknown names"):
        load_config("faster_rcnn_MV3_FPN", ["model.backbone.out_features=[res4]"])
    with pytest.raises(ConfigError, match="5 stages"):
        load_config("faster_rcnn_R_50_FPN_1x", ["model.backbone.freeze_at=6"])
    with pytest.raises(ConfigError, match="needs arch 'rcnn'"):
        load_config("retinanet_R_50_FPN_1x", ["model.backbone.name=mobilenet_v3_large", "model.backbone.out_features=[block16]"])
    # Every stage can be frozen (torchvision's trainable_backbone_layers=0).
    cfg = load_config("faster_rcnn_MV3_FPN", ["model.num_classes=2", "model.backbone.freeze_at=6"]).model
    assert not any(p.requires_grad for p in build_model(cfg).backbone.parameters())


def test_converter_names_the_backbone_mismatch():
    with torch.device("meta"):
        mobilenet = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=6).state_dict()
        resnet = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=6).state_dict()
    with pytest.raises(WeightsError, match="mobilenet_v3_large"):
        convert_rcnn_state_dict(resnet, load_config("faster_rcnn_MV3_FPN", ["model.num_classes=5"]).model)
    with pytest.raises(WeightsError, match="mobilenet_v3_large"):
        convert_rcnn_state_dict(mobilenet, load_config("faster_rcnn_R_50_FPN_1x", ["model.num_classes=5"]).model)


def test_core_traces_on_one_batch_and_replays_another():
    """The detector contract (tests/test_detector_contract.py) for the MobileNet R-CNN: documented raw
    tensors, and a trace recorded on one batch gives the eager results on another."""
    import warnings

    from test_detector_contract import _batch, _canonical, _check_raw

    torch.manual_seed(0)
    cfg = _tiny("faster_rcnn_MV3_FPN_320", ["model.num_classes=3", "model.box_head.detections_per_image=500"]).model
    model = build_model(cfg).eval()
    model.score_thresh = 0.0
    first, second = _batch(0, [(128, 150), (100, 160)]), _batch(1, [(120, 160), (128, 96)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-only constants (anchors per padded size)
        traced = torch.jit.trace_module(model, {"core": first}, check_trace=False, strict=False)
        eager, replay = model.core(*second), traced.core(*second)
        first_counts = model.core(*first)["num_detections"]
    _check_raw(eager, second[1], 3, mask=False)
    assert int(eager["num_detections"].min()) > 0
    assert not torch.equal(first_counts, eager["num_detections"]), "the batches should keep different counts"
    assert torch.equal(replay["num_detections"], eager["num_detections"])
    replay, eager = _canonical(replay), _canonical(eager)
    assert torch.equal(replay["labels"], eager["labels"])
    for key in ("boxes", "scores"):
        torch.testing.assert_close(replay[key], eager[key], rtol=1e-5, atol=1e-4)
