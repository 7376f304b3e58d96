"""RetinaNet in detectron2's convention (``model.convention = "detectron2"``).

The inference of the model is compared with an independent re-implementation, written here from
detectron2's description (``RetinaNet.inference_single_image``, ``DenseDetector._decode_per_level_predictions``
and ``Box2BoxTransform.apply_deltas``): per image and level, sigmoid, ``score > thresh``, the top-k
candidates, decoded; class-wise NMS across levels on the unclipped boxes, the first
``detections_per_image``; then clipped. The anchors are checked against detectron2's formula
(size-major cell anchors, centres at (i + offset) * nominal stride). The torchvision convention is
covered by tests/test_dense_equivalence.py and tests/test_export.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import batched_nms

from swiftdet.config import load_config
from swiftdet.errors import ConfigError
from swiftdet.model.build import build_model
from swiftdet.structures import Boxes, Instances

NUM_CLASSES = 4


def _cfg(*overrides: str):
    base = [f"model.num_classes={NUM_CLASSES}", "model.backbone.depth=18", "model.backbone.norm=BN",
            "model.fpn.out_channels=32", "model.retinanet.num_convs=2"]
    return load_config("d2_retinanet_R_50_FPN_1x", base + list(overrides)).model


def _reference_anchors(sizes, ratios, strides, offset, grids) -> torch.Tensor:
    """detectron2's DefaultAnchorGenerator: per level, location-major (row by row), then size-major
    cell anchors; unrounded; centres at (i + offset) * stride."""
    out = []
    for level_sizes, stride, (gh, gw) in zip(sizes, strides, grids):
        cells = []
        for s in level_sizes:
            for r in ratios:
                w = math.sqrt(s * s / r)
                h = r * w
                cells.append([-w / 2, -h / 2, w / 2, h / 2])
        cells = torch.tensor(cells, dtype=torch.float32)
        xs = torch.arange(gw, dtype=torch.float32) * stride + offset * stride
        ys = torch.arange(gh, dtype=torch.float32) * stride + offset * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx.reshape(-1), yy.reshape(-1)] * 2, dim=1)
        out.append((shifts[:, None, :] + cells[None]).reshape(-1, 4))
    return torch.cat(out)


def _apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights) -> torch.Tensor:
    """detectron2's Box2BoxTransform.apply_deltas for (N, 4) deltas."""
    wx, wy, ww, wh = weights
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    clamp = math.log(1000.0 / 16)
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=clamp), (deltas[:, 3] / wh).clamp(max=clamp)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=1)


def _reference_inference(logits, deltas, anchors, image_size, *, thresh, topk, nms_thresh, max_det, weights):
    """One image: ``logits`` / ``deltas`` per level (N_l, K) / (N_l, 4), ``anchors`` (N, 4) all levels."""
    boxes_all, scores_all, classes_all = [], [], []
    start = 0
    for lg, dl in zip(logits, deltas):
        level_anchors = anchors[start:start + lg.shape[0]]
        start += lg.shape[0]
        scores = lg.sigmoid()
        keep = scores > thresh
        kept_scores = scores[keep]
        idxs = torch.nonzero(keep)
        kept_scores, order = kept_scores.topk(min(idxs.shape[0], topk))
        anchor_idx, class_idx = idxs[order].unbind(dim=1)
        boxes_all.append(_apply_deltas(dl[anchor_idx], level_anchors[anchor_idx], weights))
        scores_all.append(kept_scores)
        classes_all.append(class_idx)
    boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
    keep = batched_nms(boxes, scores, classes, nms_thresh)[:max_det]
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    h, w = image_size
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                         boxes[:, 3].clamp(0, h)], dim=1)
    return boxes, scores, classes


def _flatten(x: torch.Tensor, k: int) -> torch.Tensor:
    """detectron2's permute_to_N_HWA_K."""
    n, _, h, w = x.shape
    return x.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)


def test_builder_gives_detectron2_anchors():
    cfg = _cfg("model.retinanet.anchors.offset=0.5")
    model = build_model(cfg).eval()
    images = torch.zeros(1, 3, 200, 264)
    grids = [(math.ceil(200 / s), math.ceil(264 / s)) for s in (8, 16, 32, 64, 128)]
    feats = [torch.zeros(1, 1, gh, gw) for gh, gw in grids]
    got = model.anchor_generator(images, feats)
    ref = _reference_anchors(cfg.retinanet.anchors.sizes, cfg.retinanet.anchors.aspect_ratios,
                             (8, 16, 32, 64, 128), 0.5, grids)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def _random_head_outputs(model, g, num_images, grids):
    a, k = 9, NUM_CLASSES
    logits = [torch.randn(num_images, gh * gw * a, k, generator=g) * 1.5 - 1.0 for gh, gw in grids]
    deltas = [torch.randn(num_images, gh * gw * a, 4, generator=g) * 0.5 for gh, gw in grids]
    return logits, deltas


@pytest.mark.parametrize("num_images", [1, 2])
def test_inference_matches_detectron2_formula(num_images):
    cfg = _cfg("model.retinanet.topk_candidates=60", "model.retinanet.detections_per_image=40",
               "model.retinanet.score_thresh=0.3")
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    padded = (160, 224)
    grids = [(math.ceil(padded[0] / s), math.ceil(padded[1] / s)) for s in (8, 16, 32, 64, 128)]
    logits, deltas = _random_head_outputs(model, g, num_images, grids)
    anchors = model.anchor_generator(torch.zeros(1, 3, *padded), [torch.zeros(1, 1, *s) for s in grids])
    sizes = torch.tensor([[160, 224], [131, 190]][:num_images])
    raw = model.inference(logits, deltas, anchors, sizes)
    counts = raw["num_detections"].tolist()
    rc = cfg.retinanet
    for i, (boxes, scores, labels) in enumerate(zip(raw["boxes"].split(counts), raw["scores"].split(counts),
                                                     raw["labels"].split(counts))):
        ref_boxes, ref_scores, ref_labels = _reference_inference(
            [l[i] for l in logits], [d[i] for d in deltas], anchors, tuple(sizes[i].tolist()), thresh=rc.score_thresh,
            topk=rc.topk_candidates, nms_thresh=rc.nms_thresh, max_det=rc.detections_per_image,
            weights=rc.box_reg_weights)
        assert len(ref_scores) == rc.detections_per_image  # the cap bites
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(scores, ref_scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(boxes, ref_boxes, atol=1e-4, rtol=0)


def test_nms_sees_the_unclipped_boxes():
    """Two boxes that overlap little inside out of the image but are equal once clipped: detectron2
    keeps both (NMS before clipping), torchvision one. A box wholly outside survives the core
    (clipped to zero width; the shell drops it after the per-image cap, as detectron2 does)."""
    anchors = torch.tensor([[-60.0, 10.0, 40.0, 50.0], [0.0, 10.0, 40.0, 50.0], [-50.0, 60.0, -10.0, 90.0]])
    logits = [torch.tensor([[[4.0, -9.0], [3.0, -9.0], [2.0, -9.0]]])]
    deltas = [torch.zeros(1, 3, 4)]
    sizes = torch.tensor([[100, 100]])
    d2 = build_model(_cfg("model.num_classes=2")).eval()
    tv = build_model(_cfg("model.num_classes=2", "model.convention=torchvision", "model.retinanet.anchors.offset=0")).eval()
    out = d2.inference(logits, deltas, anchors, sizes)
    assert out["num_detections"].tolist() == [3]
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.0, 10.0, 40.0, 50.0], [0.0, 10.0, 40.0, 50.0],
                                                           [0.0, 60.0, 0.0, 90.0]]))
    assert tv.inference(logits, deltas, anchors, sizes)["num_detections"].tolist() == [2]


def _calibrate(model: nn.Module, images: list[torch.Tensor], g: torch.Generator) -> None:
    """Random weights with realistic activations: He-normal convs with random biases, BN statistics
    of a pass over the images, class biases shifted so that a few dozen anchors score above 0.3."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.weight[0].numel()))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
        model.head.bbox_pred.weight.mul_(0.2)
        batch = model.preprocess(images)
        model.train()
        model.backbone(batch.tensor)
        model.eval()
        pyramid = model.fpn(model.backbone(batch.tensor))
        logits, _ = model.head([pyramid[f] for f in model.in_features])
        flat = torch.cat(logits, dim=1).flatten()
        # Centre the logits so that 0.1% of (anchor, class) pairs lie above logit(0.9).
        shift = math.log(9.0) - flat.quantile(0.999).item()
        model.head.cls_score.bias.add_(shift)


def test_predict_matches_reference_on_images_of_two_sizes():
    cfg = _cfg("model.retinanet.topk_candidates=200")
    model = build_model(cfg, size_divisibility=32).eval()
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 200, 264, generator=g) * 255, torch.rand(3, 248, 184, generator=g) * 255]
    _calibrate(model, images, g)
    rc = cfg.retinanet
    for img in images:
        # detectron2 runs one image per call (in a batch, padding changes the smaller image's features).
        res = model.predict([img])[0]
        x = img.flip(0) - torch.tensor(cfg.pixel_mean).view(3, 1, 1)  # BGR, caffe statistics (std 1)
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, -w % 32, 0, -h % 32))[None]
        with torch.no_grad():
            pyramid = model.fpn(model.backbone(x))
            feats = [pyramid[f] for f in ("p3", "p4", "p5", "p6", "p7")]
            logits = [_flatten(model.head.cls_score(model.head.cls_tower(f)), NUM_CLASSES)[0] for f in feats]
            deltas = [_flatten(model.head.bbox_pred(model.head.box_tower(f)), 4)[0] for f in feats]
        anchors = _reference_anchors(rc.anchors.sizes, rc.anchors.aspect_ratios, (8, 16, 32, 64, 128), rc.anchors.offset,
                                     [tuple(f.shape[-2:]) for f in feats])
        boxes, scores, labels = _reference_inference(logits, deltas, anchors, (h, w), thresh=rc.score_thresh,
                                                     topk=rc.topk_candidates, nms_thresh=rc.nms_thresh,
                                                     max_det=rc.detections_per_image, weights=rc.box_reg_weights)
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        assert res.image_size == (h, w)
        assert len(res) == len(scores) > 10
        assert len(set(labels.tolist())) >= 2
        assert torch.equal(res.labels, labels)
        torch.testing.assert_close(res.scores, scores, atol=1e-4, rtol=0)
        torch.testing.assert_close(res.boxes.tensor, boxes, atol=1e-4, rtol=0)


class _Core(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sizes):
        raw = self.model.core(x, sizes)
        return raw["boxes"], raw["scores"], raw["labels"], raw["num_detections"]


def test_traced_core_replays_eager_results_on_other_images():
    cfg = _cfg("model.retinanet.topk_candidates=100")
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 192, 224, generator=g) * 255, torch.rand(3, 160, 224, generator=g) * 255]
    _calibrate(model, images, g)
    batch = model.preprocess(images)
    sizes = torch.tensor(batch.image_sizes)
    with torch.no_grad():
        traced = torch.jit.trace(_Core(model), (batch.tensor, sizes), check_trace=False)
        other = model.preprocess([torch.rand(3, 180, 200, generator=g) * 255, torch.rand(3, 192, 224, generator=g) * 255])
        other_sizes = torch.tensor(other.image_sizes)
        got = traced(other.tensor, other_sizes)
        ref = _Core(model)(other.tensor, other_sizes)
    assert ref[3].sum() > 0
    assert torch.equal(got[3], ref[3]) and torch.equal(got[2], ref[2])
    torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=0)


def test_training_step_in_detectron2_convention():
    model = build_model(_cfg()).train()
    g = torch.Generator().manual_seed(7)
    batch = model.preprocess([torch.rand(3, 128, 160, generator=g) * 255, torch.rand(3, 96, 128, generator=g) * 255])
    targets = [Instances((128, 160), boxes=Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0]])), labels=torch.tensor([1])),
               Instances((96, 128), boxes=Boxes(torch.tensor([[5.0, 5.0, 40.0, 30.0], [50.0, 20.0, 120.0, 90.0]])),
                         labels=torch.tensor([0, 3]))]
    losses = model(batch, targets)
    assert set(losses) == {"loss_cls", "loss_box"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0


def test_losses_are_normalised_by_detectron2s_moving_foreground_count():
    """detectron2's RetinaNet.losses: both sums over the batch divided by the normaliser after
    n <- 0.9 n + 0.1 max(1, #foreground), from n = 100; a run's checkpoints keep n, weight files not."""
    from torchvision.ops import sigmoid_focal_loss

    from swiftdet.engine.checkpoint import load_training_buffers, training_buffers
    from swiftdet.weights.checkpoint import make_checkpoint

    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(3)
    batch = model.preprocess([torch.rand(3, 128, 160, generator=g) * 255, torch.rand(3, 96, 128, generator=g) * 255])
    targets = [Instances((128, 160), boxes=Boxes(torch.tensor([[10.0, 12.0, 70.0, 90.0]])), labels=torch.tensor([1])),
               Instances((96, 128), boxes=Boxes(torch.tensor([[5.0, 5.0, 40.0, 30.0], [50.0, 20.0, 120.0, 90.0]])),
                         labels=torch.tensor([0, 3]))]
    logits, deltas, anchors = model._head_outputs(batch.tensor)
    logits, deltas = torch.cat(logits, 1), torch.cat(deltas, 1)
    labels, matched = model.match(anchors, targets)
    fg, valid = labels >= 0, labels != -2
    num_fg = int(fg.sum())
    assert num_fg > 0
    onehot = torch.zeros_like(logits)
    onehot[fg] = torch.nn.functional.one_hot(labels[fg], NUM_CLASSES).float()
    focal = sigmoid_focal_loss(logits[valid], onehot[valid], alpha=0.25, gamma=2.0, reduction="sum")
    box = (deltas[fg] - model.box_coder.encode(matched[fg], anchors.expand(2, -1, -1)[fg])).abs().sum()
    normaliser = 100.0
    for _ in range(2):  # the second step moves on from the first's normaliser
        normaliser = 0.9 * normaliser + 0.1 * max(1, num_fg)
        got = model.loss(logits, deltas, anchors, targets)
        torch.testing.assert_close(got["loss_cls"], focal / normaliser, rtol=1e-5, atol=0)
        torch.testing.assert_close(got["loss_box"], box / normaliser, rtol=1e-5, atol=0)
    model.eval()
    model.loss(logits, deltas, anchors, targets)  # evaluation leaves it alone
    assert float(model.loss_normalizer) == pytest.approx(normaliser)

    state = training_buffers(model)
    assert float(state["loss_normalizer"]) == pytest.approx(normaliser)
    assert "loss_normalizer" not in make_checkpoint(model, load_config("d2_retinanet_R_50_FPN_1x"), {})["model"]
    fresh = build_model(cfg)
    assert float(fresh.loss_normalizer) == 100.0
    load_training_buffers(fresh, state, "last.pth")
    assert float(fresh.loss_normalizer) == pytest.approx(normaliser)


@pytest.mark.parametrize("config_name,arch", [("fcos_R_50_FPN_1x", "fcos"), ("ssdlite320_MV3", "ssd")])
def test_fcos_and_ssd_refuse_the_detectron2_convention(config_name, arch):
    cfg = load_config(config_name, ["model.num_classes=3", "model.convention=detectron2"]).model
    with pytest.raises(ConfigError, match=f"not available for arch '{arch}'"):
        build_model(cfg)
