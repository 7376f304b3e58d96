"""swiftdet's R-CNNs reproduce torchvision's Faster/Mask R-CNN (v1 and v2) after weight conversion.

Both models get the same random weights (frozen BN statistics and biases included) and the same
images; proposals, detections and masks must agree. Feeding images whose short side already
equals min_size, with mean 0 / std 1, makes torchvision's transform the identity, so the
comparison isolates the networks; a separate test runs the full pipelines with real
normalisation and resizing.
"""
from __future__ import annotations

import contextlib
import functools
import math

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN, MaskRCNN, fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.config.core import load_config
from swiftdet.data.transforms import resize_image
from swiftdet.errors import WeightsError
from swiftdet.model.build import build_model
from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS
from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

NUM_CLASSES = 5
CONFIG_NAMES = {
    "faster_v1": "faster_rcnn_R_50_FPN_1x",
    "mask_v1": "mask_rcnn_R_50_FPN_1x",
    "faster_v2": "faster_rcnn_R_50_FPN_v2",
    "mask_v2": "mask_rcnn_R_50_FPN_v2",
}
# Weight scale per layer-name fragment, so activations stay O(1) through the random network and
# scores spread out (no saturated sigmoids / softmaxes that would make the ranking a tie).
GAINS = {
    "fpn": 0.5,
    "rpn.head.cls_logits": 0.1,
    "rpn.head.bbox_pred": 0.01,
    "box_predictor.cls_score": 0.3,
    "box_predictor.bbox_pred": 0.05,
    "mask_fcn_logits": 0.3,
}
TV_KWARGS = dict(box_score_thresh=0.01, rpn_post_nms_top_n_test=50, box_detections_per_img=10)
MIN_SIZE = 256


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                fan_in = m.weight.shape[0] if isinstance(m, torch.nn.ConvTranspose2d) else m.weight[0].numel()
                gain = next((v for k, v in GAINS.items() if k in name), 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1 * min(gain, 1.0))
            elif isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def torchvision_model(kind: str, **kwargs) -> torch.nn.Module:
    """torchvision's model; v1 with FrozenBN as in its pretrained checkpoints."""
    kwargs = {"num_classes": NUM_CLASSES + 1, "min_size": MIN_SIZE, "max_size": 1333, **TV_KWARGS, **kwargs}
    if kind.endswith("v1"):
        body = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3)
        model = (MaskRCNN if kind.startswith("mask") else FasterRCNN)(body, **kwargs)
    else:
        fn = maskrcnn_resnet50_fpn_v2 if kind.startswith("mask") else fasterrcnn_resnet50_fpn_v2
        model = fn(weights=None, weights_backbone=None, **kwargs)
    randomise(model)
    return model.eval()


def swiftdet_model(kind: str, tv: torch.nn.Module):
    cfg = load_config(CONFIG_NAMES[kind], []).model
    cfg.num_classes = NUM_CLASSES
    cfg.box_head.score_thresh = TV_KWARGS["box_score_thresh"]
    cfg.rpn.post_nms_topk_test = TV_KWARGS["rpn_post_nms_top_n_test"]
    cfg.box_head.detections_per_image = TV_KWARGS["box_detections_per_img"]
    model = build_model(cfg).eval()
    model.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg))
    return model


@functools.lru_cache(maxsize=None)
def model_pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(torchvision model, converted swiftdet model), built once per module run."""
    torch.manual_seed(0)
    tv = torchvision_model(kind)
    return tv, swiftdet_model(kind, tv)


@contextlib.contextmanager
def identity_normalisation(tv: torch.nn.Module, ours: torch.nn.Module):
    """Mean 0 / std 1 in both models for the duration."""
    saved = (tv.transform.image_mean, tv.transform.image_std, ours.pixel_mean.clone(), ours.pixel_std.clone())
    tv.transform.image_mean, tv.transform.image_std = [0.0] * 3, [1.0] * 3
    ours.pixel_mean.zero_()
    ours.pixel_std.fill_(1.0)
    try:
        yield
    finally:
        tv.transform.image_mean, tv.transform.image_std = saved[0], saved[1]
        ours.pixel_mean.copy_(saved[2])
        ours.pixel_std.copy_(saved[3])


@contextlib.contextmanager
def capture_outputs(tv: torch.nn.Module, ours: torch.nn.Module):
    """Record RPN proposals and raw RoI-head outputs (copied: torchvision edits its dicts later)."""
    store: dict = {}
    handles = [
        tv.rpn.register_forward_hook(lambda m, i, o: store.__setitem__("tv_props", [p.clone() for p in o[0]])),
        ours.rpn.register_forward_hook(lambda m, i, o: store.__setitem__("our_props", [p.clone() for p in o[0]])),
        tv.roi_heads.register_forward_hook(
            lambda m, i, o: store.__setitem__("tv_raw", [{k: v.clone() for k, v in d.items()} for d in o[0]])
        ),
    ]
    yield store
    for h in handles:
        h.remove()


def assert_same_detections(tv_out: dict, ours, atol: float = 1e-4) -> None:
    assert len(ours) == len(tv_out["boxes"]) > 0
    assert torch.equal(ours.labels, tv_out["labels"] - 1)
    torch.testing.assert_close(ours.boxes.tensor, tv_out["boxes"], rtol=0, atol=atol)
    torch.testing.assert_close(ours.scores, tv_out["scores"], rtol=0, atol=atol)


@pytest.mark.parametrize("kind", list(CONFIG_NAMES))
def test_matches_torchvision(kind):
    tv, ours = model_pair(kind)
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, MIN_SIZE, 320, generator=g), torch.randn(3, 288, MIN_SIZE, generator=g)]
    with torch.no_grad(), identity_normalisation(tv, ours), capture_outputs(tv, ours) as store:
        expected = tv(images)
        batch = ours.preprocess(images)
        raw = ours(batch)

    for p_tv, p_ours in zip(store["tv_props"], store["our_props"]):
        assert p_tv.shape == p_ours.shape and p_tv.shape[0] == TV_KWARGS["rpn_post_nms_top_n_test"]
        torch.testing.assert_close(p_ours, p_tv, rtol=0, atol=1e-4)
    for r, tv_raw, size in zip(raw, store["tv_raw"], batch.image_sizes):
        assert r.image_size == tuple(size)
        assert_same_detections(tv_raw, r)
        if kind.startswith("mask"):
            assert r.mask_probs.shape == (len(r), 28, 28)
            torch.testing.assert_close(r.mask_probs, tv_raw["masks"][:, 0], rtol=0, atol=1e-4)
        else:
            assert r.mask_probs is None

    # Post-processing to (here unchanged) original sizes: pasted masks equal torchvision's > 0.5.
    final = ours.postprocess(raw, batch)
    for f, e in zip(final, expected):
        assert_same_detections(e, f)
        if kind.startswith("mask"):
            assert f.masks.tensor.dtype == torch.bool and f.masks.tensor.shape == (len(f),) + f.image_size
            mismatch = (f.masks.tensor != (e["masks"][:, 0] > 0.5)).sum().item()
            assert mismatch <= (0 if kind == "mask_v1" else 20), mismatch


def test_full_pipeline_matches_torchvision():
    """Real normalisation, resizing of odd-sized images and rescaling back, through predict()."""
    tv, ours = model_pair("mask_v1")
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 200, 266, generator=g) * 255, torch.rand(3, 301, 260, generator=g) * 255]
    with torch.no_grad():
        expected = tv([im / 255 for im in images])
    resized = [resize_image(im, MIN_SIZE, 1333) for im in images]
    results = ours.predict(resized, original_sizes=[tuple(im.shape[-2:]) for im in images])
    for r, e, im in zip(results, expected, images):
        assert r.image_size == tuple(im.shape[-2:])
        assert_same_detections(e, r, atol=1e-3)
        agree = (r.masks.tensor == (e["masks"][:, 0] > 0.5)).float().mean().item()
        assert agree > 0.999, agree


def _meta_tv_state_dict(fn, num_classes: int) -> dict:
    with torch.device("meta"):
        return fn(weights=None, weights_backbone=None, num_classes=num_classes).state_dict()


def test_coco_head_selects_the_80_categories():
    sd = _meta_tv_state_dict(fasterrcnn_resnet50_fpn, 91)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.arange(91.0)[:, None].repeat(1, 1024)
    sd["roi_heads.box_predictor.cls_score.bias"] = torch.arange(91.0)
    sd["roi_heads.box_predictor.bbox_pred.bias"] = torch.arange(91.0 * 4)
    cfg = load_config("faster_rcnn_R_50_FPN_1x", []).model
    out = convert_rcnn_state_dict(sd, cfg)
    assert out["roi_heads.box_predictor.cls_score.bias"].tolist() == [0.0] + [float(c) for c in COCO_CATEGORY_IDS]
    assert out["roi_heads.box_predictor.cls_score.weight"][:, 0].tolist() == [0.0] + [float(c) for c in COCO_CATEGORY_IDS]
    bias = out["roi_heads.box_predictor.bbox_pred.bias"].view(81, 4)
    assert bias[5].tolist() == [COCO_CATEGORY_IDS[4] * 4 + i for i in range(4)]


def test_converter_rejects_mismatched_checkpoints():
    cfg_v1 = load_config("faster_rcnn_R_50_FPN_1x", []).model
    cfg_v1.num_classes = NUM_CLASSES
    v2 = _meta_tv_state_dict(fasterrcnn_resnet50_fpn_v2, NUM_CLASSES + 1)
    with pytest.raises(WeightsError, match="v2"):
        convert_rcnn_state_dict(v2, cfg_v1)

    v1 = _meta_tv_state_dict(fasterrcnn_resnet50_fpn, NUM_CLASSES + 1)
    mask_cfg = load_config("mask_rcnn_R_50_FPN_1x", []).model
    mask_cfg.num_classes = NUM_CLASSES
    with pytest.raises(WeightsError, match="mask_on"):
        convert_rcnn_state_dict(v1, mask_cfg)

    with pytest.raises(WeightsError, match="num_classes"):
        convert_rcnn_state_dict(v1, load_config("faster_rcnn_R_50_FPN_1x", []).model)

    with torch.device("meta"):
        retina = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(WeightsError, match="not a torchvision Faster/Mask R-CNN"):
        convert_rcnn_state_dict(retina, cfg_v1)

    partial = {k: v for k, v in v1.items() if not k.startswith("backbone.body.layer4.")}
    with pytest.raises(WeightsError, match="missing") as info:
        convert_rcnn_state_dict(partial, cfg_v1)
    assert "backbone.layer4" in str(info.value)


def test_converted_legacy_coco_file_runs_with_frozen_bn_eps_0(tmp_path, capsys):
    """torchvision loads its v1 COCO files with FrozenBN eps 0 (overwrite_eps); `swiftdet convert`
    gives such a file the same eps, and a model at the default 1e-5 would not match it."""
    from torchvision.models.detection._utils import overwrite_eps

    from swiftdet.cli.main import main
    from swiftdet.inference import Predictor

    torch.manual_seed(0)
    tv = torchvision_model("faster_v1")
    with torch.no_grad():  # channels of tiny variance, as trained networks have: there eps matters
        for m in tv.backbone.body.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_var[::8] = 2e-5
                m.weight[::8] *= math.sqrt(2e-5)
    overwrite_eps(tv, 0.0)
    source = tmp_path / "fasterrcnn_legacy.pth"
    torch.save(tv.state_dict(), source)
    settings = [f"model.num_classes={NUM_CLASSES}", "model.box_head.score_thresh=0.01", "model.rpn.post_nms_topk_test=50",
                "model.box_head.detections_per_image=10", f"input.min_size_test={MIN_SIZE}"]
    converted = tmp_path / "converted.pth"
    assert main(["convert", "torchvision", str(source), str(converted), *settings, "--config", "faster_rcnn_R_50_FPN_1x"]) == 0
    assert "FrozenBN eps 0" in capsys.readouterr().out
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, MIN_SIZE, 320, generator=g) * 255]
    with torch.no_grad():
        [expected] = tv([im / 255 for im in images])
    predictor = Predictor.from_config("faster_rcnn_R_50_FPN_1x", weights=str(converted), overrides=settings, fast=False)
    assert predictor.cfg.model.backbone.norm_eps == 0.0
    [got] = predictor([im.permute(1, 2, 0).numpy() for im in images])
    assert_same_detections(expected, got, atol=1e-3)
    # The same weights at eps 1e-5 are another model: the eps is what makes the detections equal.
    at_default = Predictor.from_config("faster_rcnn_R_50_FPN_1x", weights=str(converted),
                                       overrides=[*settings, "model.backbone.norm_eps=1e-5"], fast=False)
    [other] = at_default([im.permute(1, 2, 0).numpy() for im in images])
    differs = len(other) != len(got) or not torch.allclose(other.scores, got.scores, atol=1e-3, rtol=0)
    assert differs
