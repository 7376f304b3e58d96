"""Cascade (Mask) R-CNN: inference against a hand-written re-computation of the three stages,
class-agnostic decoding, training losses, state-dict names, tracing and build errors."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from test_detector_contract import _batch, _canonical, _check_raw
from test_rcnn_train import synthetic_batch, train_steps
from torch.nn import functional as F

from swiftdet.config.core import load_config
from swiftdet.errors import ConfigError
from swiftdet.model.build import build_model
from swiftdet.model.cascade import CascadeRoIHeads, _ScaleGradient

TINY = ["model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=32", "model.box_head.fc_dim=64",
        "model.mask_head.conv_dim=16", "model.rpn.post_nms_topk_test=60", "model.rpn.post_nms_topk_train=60",
        "model.box_head.batch_size_per_image=64", "model.box_head.detections_per_image=500",
        "model.pixel_std=[57.0,57.0,57.0]"]
WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))


def _model(name: str = "cascade_mask_rcnn_R_50_FPN_1x", overrides: tuple[str, ...] = ()) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(name, [*TINY, *overrides]).model).eval()
    model.score_thresh = 0.0
    with torch.no_grad():
        for k, p in model.roi_heads.box_predictors.named_parameters():
            # Spread scores and boxes: the predictors' init (std 0.01 / 0.001) ties every class near
            # 1/(K+1) and leaves each stage's boxes where they came in.
            if "cls_score.weight" in k:
                p.normal_(0.0, 0.3)
            elif "bbox_pred.weight" in k:
                p.normal_(0.0, 0.05)
            elif "bbox_pred.bias" in k:
                p.normal_(0.0, 0.2)
    return model


def _hand_stages(model, features, rois, sizes):
    """The three stages written out: fc layers, softmax, decode, clip; the mean of the probabilities."""
    heads = model.roi_heads
    image_of_roi = rois[:, 0].long()
    h = sizes[image_of_roi, 0].float()
    w = sizes[image_of_roi, 1].float()
    boxes = rois[:, 1:]
    probs = []
    for k in range(3):
        x = heads.box_pooler.pool(features, torch.cat([rois[:, :1], boxes], 1)).flatten(1)
        fcs = heads.box_heads[k].fcs
        x = F.relu(x @ fcs[0].weight.T + fcs[0].bias)
        x = F.relu(x @ fcs[1].weight.T + fcs[1].bias)
        pred = heads.box_predictors[k]
        logits = x @ pred.cls_score.weight.T + pred.cls_score.bias
        d = x @ pred.bbox_pred.weight.T + pred.bbox_pred.bias
        assert d.shape == (rois.shape[0], 4)
        e = logits.exp()
        probs.append(e / e.sum(1, keepdim=True))
        wx, wy, ww, wh = WEIGHTS[k]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        cx, cy = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
        pcx, pcy = d[:, 0] / wx * bw + cx, d[:, 1] / wy * bh + cy
        pw = torch.exp((d[:, 2] / ww).clamp(max=math.log(1000 / 16))) * bw
        ph = torch.exp((d[:, 3] / wh).clamp(max=math.log(1000 / 16))) * bh
        x0 = torch.minimum((pcx - 0.5 * pw).clamp(min=0), w)
        x1 = torch.minimum((pcx + 0.5 * pw).clamp(min=0), w)
        y0 = torch.minimum((pcy - 0.5 * ph).clamp(min=0), h)
        y1 = torch.minimum((pcy + 0.5 * ph).clamp(min=0), h)
        boxes = torch.stack([x0, y0, x1, y1], 1)
    return (probs[0] + probs[1] + probs[2]) / 3, boxes, probs[0]


def test_inference_equals_a_hand_computation_of_the_three_stages():
    model = _model()
    assert isinstance(model.roi_heads, CascadeRoIHeads)
    images, sizes = _batch(0, [(128, 150), (100, 160)])
    with torch.no_grad():
        features = model.extract_features(images)
        proposals, _ = model.rpn(images, sizes, features)
        rois = proposals if isinstance(proposals, torch.Tensor) else torch.cat(
            [torch.cat([torch.full_like(p[:, :1], i), p], 1) for i, p in enumerate(proposals)])
        probs, boxes, probs0 = _hand_stages(model, features, rois, sizes)
        got_probs, got_boxes = model.roi_heads._predict(features, rois, sizes)
        raw = model.core(images, sizes)
    assert set(rois[:, 0].long().tolist()) == {0, 1}
    torch.testing.assert_close(got_probs, probs, rtol=0, atol=1e-5)
    assert got_boxes.shape == (rois.shape[0], 4, 4)
    for slot in range(4):  # class-agnostic: the one box in every slot
        torch.testing.assert_close(got_boxes[:, slot], boxes, rtol=0, atol=1e-4)
    # The averaging matters (a stage-0-only score would differ), and the last stage moved the boxes.
    assert (probs - probs0).abs().max() > 1e-2
    assert (boxes - rois[:, 1:]).abs().max() > 1.0

    _check_raw(raw, sizes, 3, mask=True)
    assert int(raw["num_detections"].min()) > 0
    image = torch.repeat_interleave(torch.arange(2), raw["num_detections"])
    for i in range(raw["boxes"].shape[0]):
        same_image = rois[:, 0].long() == image[i]
        err = (boxes - raw["boxes"][i]).abs().amax(1).masked_fill(~same_image, float("inf"))
        j = int(err.argmin())
        assert float(err[j]) < 1e-4
        assert abs(float(probs[j, raw["labels"][i] + 1]) - float(raw["scores"][i])) < 1e-4


def test_traced_core_replays_the_eager_results_on_another_batch():
    model = _model()
    first = _batch(0, [(128, 150), (100, 160)])
    second = _batch(1, [(120, 160), (128, 96)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"core": first}, check_trace=False, strict=False)
        eager, replay = model.core(*second), traced.core(*second)
    assert torch.equal(replay["num_detections"], eager["num_detections"])
    replay, eager = _canonical(replay), _canonical(eager)
    assert torch.equal(replay["labels"], eager["labels"])
    for key in set(eager) - {"num_detections", "labels"}:
        torch.testing.assert_close(replay[key], eager[key], rtol=1e-5, atol=1e-4)


def test_state_dict_names_follow_the_design():
    model = _model()
    sd = model.state_dict()
    for k in range(3):
        assert sd[f"roi_heads.box_heads.{k}.fcs.0.weight"].shape == (64, 32 * 7 * 7)
        assert sd[f"roi_heads.box_heads.{k}.fcs.1.weight"].shape == (64, 64)
        assert sd[f"roi_heads.box_predictors.{k}.cls_score.weight"].shape == (4, 64)
        assert sd[f"roi_heads.box_predictors.{k}.bbox_pred.weight"].shape == (4, 64)
        assert sd[f"roi_heads.box_predictors.{k}.bbox_pred.bias"].shape == (4,)
    assert "roi_heads.box_heads.3.fcs.0.weight" not in sd
    assert not [k for k in sd if k.startswith(("roi_heads.box_head.", "roi_heads.box_predictor."))]
    assert "roi_heads.mask_head.predictor.weight" in sd
    # The three stages start from different random weights.
    assert not torch.equal(sd["roi_heads.box_heads.0.fcs.0.weight"], sd["roi_heads.box_heads.1.fcs.0.weight"])
    plain = _model("cascade_rcnn_R_50_FPN_1x")
    assert not [k for k in plain.state_dict() if "mask_head" in k]


def test_training_step_losses_and_gradients():
    _train(steps=2)


@pytest.mark.slow
def test_training_losses_fall():
    totals = _train(steps=16)
    assert np.mean(totals[-4:]) < 0.7 * np.mean(totals[:3]), totals


def _train(steps: int) -> list[float]:
    """SGD steps of a tiny Cascade Mask R-CNN on two images: named finite losses, gradients in every stage."""
    torch.manual_seed(0)
    model = build_model(load_config("cascade_mask_rcnn_R_50_FPN_1x", [*TINY, "model.rpn.anchors.sizes=[[16],[32],[64],[128],[256]]"]).model)
    model.train()
    images, targets = synthetic_batch()
    batch = model.preprocess(images)
    names = {"loss_rpn_cls", "loss_rpn_box", "loss_mask", *(f"loss_{t}_stage{k}" for t in ("cls", "box") for k in range(3))}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

    def every_stage_has_gradients():
        for k in range(3):
            for mod in (model.roi_heads.box_heads[k], model.roi_heads.box_predictors[k]):
                assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())

    return train_steps(model, batch, targets, names, steps, opt, every_stage_has_gradients)


def test_later_stages_train_on_the_previous_stages_boxes():
    model = _model()
    heads = model.roi_heads
    sizes = torch.tensor([[100, 120], [80, 90]])
    boxes = torch.tensor([[-5.0, 10, 50, 60], [10, 10, 10, 40], [20, 30, 130, 90], [0, 0, 95, 70], [5, 5, 6, 90]])
    image_of_roi = torch.tensor([0, 0, 0, 1, 1])
    props = heads._next_proposals(boxes, image_of_roi, sizes, 2)
    # Clipped to each image, the empty box (zero width) dropped.
    assert torch.equal(props[0], torch.tensor([[0.0, 10, 50, 60], [20, 30, 120, 90]]))
    assert torch.equal(props[1], torch.tensor([[0.0, 0, 90, 70], [5, 5, 6, 80]]))
    # Stage k's matcher: IoU >= ious[k] foreground, else background, no ignored band.
    _, targets = synthetic_batch()
    gt = targets[0].boxes.tensor[:1]
    shifted = gt + torch.tensor([4.0, 0, 4, 0])  # the 45-pixel-wide box moved 4: IoU 0.84; moved 15: 0.5
    labels, _ = heads._match([torch.cat([gt, shifted, gt + torch.tensor([15.0, 0, 15, 0])])], [targets[0]], 2)
    assert labels[0].tolist() == [targets[0].labels[0] + 1, targets[0].labels[0] + 1, 0]


def test_each_stage_scales_the_gradient_into_the_features_by_one_over_the_stages():
    x = torch.randn(5, requires_grad=True)
    _ScaleGradient.apply(x, 0.25).sum().backward()
    assert torch.equal(x.grad, torch.full((5,), 0.25))
    model = _model()
    heads = model.roi_heads
    feats = {k: torch.randn(1, 32, 128 // s, 128 // s, requires_grad=True) for k, s in zip(["p2", "p3", "p4", "p5"], [4, 8, 16, 32])}
    rois = torch.tensor([[0.0, 10, 10, 60, 70], [0, 30, 20, 100, 120]])
    grads = []
    for training in (True, False):
        heads.train(training)
        for f in feats.values():
            f.grad = None
        with torch.enable_grad():
            logits, deltas = heads._run_stage(feats, rois, 1)
            (logits.sum() + deltas.sum()).backward()
        grads.append(torch.cat([f.grad.flatten() for f in feats.values()]))
    heads.eval()
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1] / 3)


@pytest.mark.parametrize("override,message", [
    ("model.box_head.cls_agnostic_bbox_reg=false", "cls_agnostic_bbox_reg"),
    ("model.cascade.ious=[0.6,0.6,0.7]", "ious\\[0\\]"),
    ("model.box_head.box_reg_weights=[20,20,10,10]", "box_reg_weights"),
    ("model.cascade.num_stages=2", "2 stages need as many ious"),
    ("model.cascade.num_stages=1", "plain R-CNN"),
    ("model.layout=c4", "layout 'fpn'"),
])
def test_bad_cascade_configs_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        build_model(load_config("cascade_rcnn_R_50_FPN_1x", [*TINY, override]).model)


def test_named_configs():
    for name, mask in (("cascade_mask_rcnn_R_50_FPN_1x", True), ("cascade_rcnn_R_50_FPN_1x", False),
                       ("cascade_mask_rcnn_R_18_FPN_synth", True)):
        cfg = load_config(name, [])
        m = cfg.model
        assert (m.cascade.num_stages, m.cascade.ious, m.box_head.cls_agnostic_bbox_reg, m.mask_on) == (3, (0.5, 0.6, 0.7), True, mask)
        assert m.cascade.box_reg_weights == WEIGHTS and m.convention == "torchvision"
    demo = load_config("demo_mask_rcnn", []).model
    synth = load_config("cascade_mask_rcnn_R_18_FPN_synth", []).model
    # The synthetic recipe is the demo's Mask R-CNN but for the box stages.
    assert (synth.backbone, synth.rpn, synth.mask_head) == (demo.backbone, demo.rpn, demo.mask_head)
