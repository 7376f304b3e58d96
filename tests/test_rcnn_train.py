"""A tiny Mask R-CNN trains: named finite losses that drop, gradients in the heads, frozen parts frozen."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.config.core import load_config
from swiftdet.config.schema import ModelConfig
from swiftdet.errors import InputError
from swiftdet.model.build import build_model
from swiftdet.structures import Boxes, CroppedMasks, Instances, PolygonMasks

LOSS_NAMES = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


def tiny_config(name: str = "mask_rcnn_R_50_FPN_1x") -> ModelConfig:
    cfg = load_config(name, []).model
    cfg.num_classes = 3
    # Random weights: keep inputs O(1) whatever the named config's (caffe: std 1) normalisation.
    cfg.pixel_std = (57.0, 57.0, 57.0)
    cfg.backbone.depth = 18
    cfg.fpn.out_channels = 32
    cfg.rpn.anchors.sizes = ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,)) if cfg.layout == "fpn" else ((16.0, 32.0, 64.0),)
    cfg.rpn.pre_nms_topk_train = cfg.rpn.pre_nms_topk_test = 200
    cfg.rpn.post_nms_topk_train = cfg.rpn.post_nms_topk_test = 50
    cfg.box_head.fc_dim = 64
    cfg.box_head.batch_size_per_image = 64
    cfg.mask_head.conv_dim = 32
    cfg.box_head.detections_per_image = 20
    if cfg.layout == "c4":
        # res5 runs once per RoI: keep RoIs few and small.
        cfg.box_head.batch_size_per_image = 16
        cfg.box_head.pooler_resolution = 8
    return cfg


def synthetic_batch() -> tuple[list[torch.Tensor], list[Instances]]:
    """Two 96x120 images with coloured polygons (rectangles, a triangle) and their targets."""
    images, targets = [], []
    shapes = [
        [(0, [20, 20, 80, 20, 80, 70, 20, 70]), (1, [90, 100, 150, 100, 120, 30])],
        [(2, [10, 60, 60, 60, 60, 120, 10, 120]), (0, [100, 10, 150, 10, 150, 60, 100, 60])],
    ]
    colours = torch.tensor([[230.0, 40, 40], [40, 230, 40], [40, 40, 230]])
    for objs in shapes:
        img = torch.full((3, 96, 120), 110.0)
        polys, boxes, labels = [], [], []
        for label, poly in objs:
            p = np.array(poly, dtype=np.float64) * 0.75
            mask = PolygonMasks([[p]]).to_bitmasks(96, 120).tensor[0]
            img[:, mask] = colours[label][:, None]
            polys.append([p])
            boxes.append([p[0::2].min(), p[1::2].min(), p[0::2].max(), p[1::2].max()])
            labels.append(label)
        images.append(img)
        targets.append(Instances((96, 120), boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)),
                                 labels=torch.tensor(labels), masks=PolygonMasks(polys)))
    return images, targets


def train_steps(model, batch, targets, names: set[str], steps: int, opt, after_first_backward=None) -> list[float]:
    """``steps`` optimiser steps on one batch; every step's losses are exactly ``names``, scalar and
    finite. ``after_first_backward()`` runs once, with the first step's gradients in place.
    Returns the total loss of each step."""
    totals = []
    for step in range(steps):
        losses = model(batch, targets)
        assert set(losses) == names
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if step == 0 and after_first_backward is not None:
            after_first_backward()
        opt.step()
        totals.append(total.item())
    return totals


@pytest.mark.parametrize("name,steps", [("mask_rcnn_R_50_FPN_1x", 20), ("mask_rcnn_R_50_C4_1x", 12)])
def test_tiny_mask_rcnn_learns(name, steps):
    torch.manual_seed(0)
    cfg = tiny_config(name)
    model = build_model(cfg)
    model.train()
    images, targets = synthetic_batch()
    batch = model.preprocess(images)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))}
    trainable_before = model.backbone.layer2[0].conv1.weight.detach().clone()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def heads_have_gradients():
        for mod in (model.rpn.head, model.roi_heads.box_predictor, model.roi_heads.mask_head, model.roi_heads.box_head):
            grads = [p.grad for p in mod.parameters() if p.requires_grad]
            assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    totals = train_steps(model, batch, targets, LOSS_NAMES, steps, opt, heads_have_gradients)
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:3]), totals
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), f"frozen {k} changed"
    assert not torch.equal(model.backbone.layer2[0].conv1.weight, trainable_before)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules() if "BatchNorm" in type(m).__name__)

    model.eval()
    results = model.predict(images)
    assert [r.image_size for r in results] == [(96, 120), (96, 120)]
    for r in results:
        assert isinstance(r.masks, CroppedMasks) and r.masks.image_size == (96, 120)
        assert r.labels.dtype == torch.int64 and (r.labels.numel() == 0 or 0 <= int(r.labels.min()) <= int(r.labels.max()) < 3)
    assert model.training is False


def test_image_without_objects_and_bad_labels():
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.mask_on = False
    model = build_model(cfg).train()
    images, targets = synthetic_batch()
    empty = Instances((96, 120), boxes=Boxes(torch.zeros(0, 4)), labels=torch.zeros(0, dtype=torch.int64))
    losses = model(model.preprocess(images), [targets[0], empty])
    assert set(losses) == LOSS_NAMES - {"loss_mask"} and all(torch.isfinite(v) for v in losses.values())
    bad = targets[0].with_fields(labels=torch.tensor([0, 3]))
    with pytest.raises(InputError, match="num_classes"):
        model(model.preprocess(images), [bad, targets[1]])


def test_bn_backbone_trains_unfrozen_stages_only():
    cfg = tiny_config("faster_rcnn_R_50_FPN_v2")
    cfg.backbone.freeze_at = 1
    model = build_model(cfg).train()
    assert isinstance(model.backbone.bn1, FrozenBatchNorm2d)
    bn = model.backbone.layer1[0].bn1
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.weight.requires_grad
    before = bn.running_mean.clone()
    images, targets = synthetic_batch()
    model(model.preprocess(images), targets)
    assert not torch.equal(bn.running_mean, before)
