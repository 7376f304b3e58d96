"""Converted torchvision RetinaNet (v1, v2) and FCOS models give torchvision's detections.

torchvision's models are built with random weights (no download), made well-conditioned (BN
statistics calibrated on the test images, random biases and norm affines) so that scores spread
over a range and boxes are sensible, then converted; both run on the same images whose short side
equals ``min_size`` (torchvision's resize is then the identity).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
from torchvision.models.detection import fasterrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.config import load_config
from swiftdet.errors import WeightsError
from swiftdet.model.build import build_model
from swiftdet.model.dense_head import topk_above_threshold
from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS
from swiftdet.weights.torchvision_dense import convert_dense_state_dict

NUM_CLASSES = 5
MIN_SIZE = 256
VARIANTS = {
    "retinanet_v1": (retinanet_resnet50_fpn, "retinanet_R_50_FPN_1x"),
    "retinanet_v2": (retinanet_resnet50_fpn_v2, "retinanet_R_50_FPN_v2"),
    "fcos": (fcos_resnet50_fpn, "fcos_R_50_FPN_1x"),
}


def _images(g: torch.Generator) -> list[torch.Tensor]:
    # Short side MIN_SIZE each; different shapes so the batch is padded (to 288 x 320: P7 is 3 x 3,
    # so torchvision's anchor stride there is 96 x 106, not 128).
    return [torch.rand(3, 256, 320, generator=g) * 255, torch.rand(3, 288, 256, generator=g) * 255]


def _randomise(tv: nn.Module, images01: list[torch.Tensor], g: torch.Generator) -> None:
    with torch.no_grad():
        for mod in tv.modules():
            if isinstance(mod, nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None  # cumulative average: the statistics of the calibration pass
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            elif isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(torch.rand(mod.num_channels, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_channels, generator=g) * 0.1)
        tv.backbone.train()
        tv.backbone(tv.transform(images01)[0].tensors)
        tv.eval()


def _freeze_like(tv: nn.Module, ours: nn.Module) -> None:
    """Give torchvision FrozenBatchNorm2d where our backbone has it, as torchvision itself does for
    pretrained backbones (so both run the same kernels; eval-mode BN and FrozenBN differ by ulps)."""
    for name, mod in ours.backbone.named_modules():
        if isinstance(mod, FrozenBatchNorm2d):
            parent = tv.backbone.body.get_submodule(name.rsplit(".", 1)[0]) if "." in name else tv.backbone.body
            leaf = name.rsplit(".", 1)[-1]
            bn = getattr(parent, leaf)
            frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(bn, key).detach())
            setattr(parent, leaf, frozen)


def _pair(variant: str, **overrides):
    fn, config_name = VARIANTS[variant]
    g = torch.Generator().manual_seed(0)
    tv = fn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=1000, **overrides)
    images = _images(g)
    _randomise(tv, [i / 255 for i in images], g)
    head = "fcos" if variant == "fcos" else "retinanet"
    cfg_overrides = [f"model.num_classes={NUM_CLASSES}"]
    names = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "detections_per_img": "detections_per_image",
             "topk_candidates": "topk_candidates"}
    cfg_overrides += [f"model.{head}.{names[k]}={v}" for k, v in overrides.items()]
    cfg = load_config(config_name, cfg_overrides).model
    ours = build_model(cfg).eval()
    _freeze_like(tv, ours)
    ours.load_state_dict(convert_dense_state_dict(tv.state_dict(), cfg))
    return tv, ours, images


def _assert_same(ref: dict, out) -> None:
    assert len(out) == len(ref["boxes"]) > 0
    assert torch.equal(out.labels, ref["labels"])
    torch.testing.assert_close(out.scores, ref["scores"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.boxes.tensor, ref["boxes"], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "variant,overrides",
    [
        # Scores of these random models lie around 0.5-0.97: thresholds inside that range, a top-k
        # smaller than the candidates of the finest level, and a per-image cap that bites.
        ("retinanet_v1", dict(score_thresh=0.6, topk_candidates=200, detections_per_img=150)),
        ("retinanet_v2", dict(score_thresh=0.6, topk_candidates=200, detections_per_img=150)),
        ("fcos", dict(score_thresh=0.5, topk_candidates=200, detections_per_img=60)),
    ],
)
def test_matches_torchvision(variant, overrides):
    tv, ours, images = _pair(variant, **overrides)
    with torch.no_grad():
        ref = tv([i / 255 for i in images])
    out = ours.predict(images)
    for r, o, img in zip(ref, out, images):
        assert o.image_size == tuple(img.shape[-2:])
        _assert_same(r, o)


def test_postprocess_rescales_like_torchvision():
    """With original sizes given, boxes are mapped back as torchvision maps them after its resize
    (a batch of one image, which also takes the single-image candidate selection)."""
    tv, ours, images = _pair("fcos", score_thresh=0.5)
    with torch.no_grad():
        ref = tv([images[0] / 255])[0]
    out = ours.predict([images[0]], original_sizes=[(384, 480)])[0]
    assert out.image_size == (384, 480)
    torch.testing.assert_close(out.boxes.tensor, ref["boxes"] * 1.5, atol=2e-4, rtol=0)
    assert torch.equal(out.labels, ref["labels"])


def test_converter_rejects_other_architectures():
    v1_cfg = load_config("retinanet_R_50_FPN_1x", [f"model.num_classes={NUM_CLASSES}"]).model
    v2_cfg = load_config("retinanet_R_50_FPN_v2", [f"model.num_classes={NUM_CLASSES}"]).model
    fcos_cfg = load_config("fcos_R_50_FPN_1x", [f"model.num_classes={NUM_CLASSES}"]).model
    v1 = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    v2 = retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    fcos = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    frcnn = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    with pytest.raises(WeightsError, match="missing"):
        convert_dense_state_dict(v2, v1_cfg)
    with pytest.raises(WeightsError, match="missing"):
        convert_dense_state_dict(v1, v2_cfg)
    with pytest.raises(WeightsError, match="not recognised"):
        convert_dense_state_dict(fcos, v1_cfg)
    with pytest.raises(WeightsError, match="not recognised"):
        convert_dense_state_dict(frcnn, fcos_cfg)
    with pytest.raises(WeightsError, match="num_classes=7"):
        convert_dense_state_dict(fcos, load_config("fcos_R_50_FPN_1x", ["model.num_classes=7"]).model)
    # The matching pairs convert.
    assert convert_dense_state_dict(v1, v1_cfg) and convert_dense_state_dict(fcos, fcos_cfg)


def test_converter_selects_coco_classes_from_91_slot_head():
    """torchvision's COCO heads have 91 slots indexed by category id; an 80-class model keeps the
    rows of COCO_CATEGORY_IDS, per anchor."""
    cfg = load_config("retinanet_R_50_FPN_1x").model
    assert cfg.num_classes == len(COCO_CATEGORY_IDS) == 80
    sd = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    out = convert_dense_state_dict(sd, cfg)
    w, b = sd["head.classification_head.cls_logits.weight"], sd["head.classification_head.cls_logits.bias"]
    for anchor in (0, 8):
        for label, cat_id in ((0, 1), (11, 13), (79, 90)):
            assert torch.equal(out["head.cls_score.weight"][anchor * 80 + label], w[anchor * 91 + cat_id])
            assert out["head.cls_score.bias"][anchor * 80 + label] == b[anchor * 91 + cat_id]
    fcos_cfg = load_config("fcos_R_50_FPN_1x").model
    fcos = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    cls_bias = convert_dense_state_dict(fcos, fcos_cfg)["head.cls_score.bias"]
    assert torch.equal(cls_bias, fcos["head.classification_head.cls_logits.bias"][list(COCO_CATEGORY_IDS)])


def test_converter_accepts_pre_0_13_retinanet_head_keys():
    """RetinaNet checkpoints saved by older torchvision (and its COCO v1 file) use flat tower keys."""
    cfg = load_config("retinanet_R_50_FPN_1x", [f"model.num_classes={NUM_CLASSES}"]).model
    sd = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).state_dict()
    legacy = {}
    for key, value in sd.items():
        for tower in ("classification_head.conv.", "regression_head.conv."):
            if tower in key:
                i, rest = key.split(tower)[1].split(".0.", 1)
                key = key.split(tower)[0] + tower + f"{2 * int(i)}.{rest}"
        legacy[key] = value
    assert convert_dense_state_dict(legacy, cfg).keys() == convert_dense_state_dict(sd, cfg).keys()
    new = convert_dense_state_dict(sd, cfg)
    for key, value in convert_dense_state_dict(legacy, cfg).items():
        assert torch.equal(value, new[key])


@pytest.mark.parametrize("num_images", [1, 3])
def test_candidate_selection_matches_a_per_image_loop(num_images):
    """Vectorised threshold + per-image top-k = torchvision's loop over images (same sets)."""
    g = torch.Generator().manual_seed(1)
    values = torch.rand(num_images, 400, generator=g)
    values[-1, :] = 0.0  # an image without any candidate
    rows, cols = topk_above_threshold(values, 0.3, 50)
    for b in range(num_images):
        above = torch.where(values[b] > 0.3)[0]
        expected = above[values[b, above].topk(min(50, above.numel())).indices]
        assert sorted(cols[rows == b].tolist()) == sorted(expected.tolist())
    assert rows.tolist() == sorted(rows.tolist())
