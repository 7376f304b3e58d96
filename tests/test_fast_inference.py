"""The fast inference path (fuse_for_inference, class-wise NMS, top-k shortcut) gives the plain
model's detections.

Folding a norm into the conv changes float rounding only: detections must agree in number, labels
and order, boxes within 1e-3 px and scores within 1e-5, masks on all but 0.1% of pixels. The models
are small (ResNet-18) with randomised norm statistics and affines, so folding is not the identity.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, batched_nms

from swiftdet.config import load_config
from swiftdet.errors import InputError
from swiftdet.model.build import build_model
from swiftdet.model.dense_head import topk_above_threshold
from swiftdet.model.layers import FoldedNorm, fuse_conv_bn, fuse_for_inference, is_fused
from swiftdet.model.nms import best_class_wise_nms, class_wise_nms, per_image_nms

CASES = {
    # config, head section of the score threshold / detections per image
    "mask_rcnn_v1": ("mask_rcnn_R_50_FPN_1x", "box_head"),  # FrozenBN backbone, plain FPN
    "faster_rcnn_v2": ("faster_rcnn_R_50_FPN_v2", "box_head"),  # BN FPN and 4conv1fc box head
    "retinanet_v2": ("retinanet_R_50_FPN_v2", "retinanet"),  # BN backbone stages, GN head (not folded)
}


@torch.no_grad()
def _randomise(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)


def _model(case: str) -> nn.Module:
    name, head = CASES[case]
    cfg = load_config(name, ["model.backbone.depth=18", "model.num_classes=4", f"model.{head}.score_thresh=0.0",
                             f"model.{head}.detections_per_image=50"]).model
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomise(model)
    return model.eval()


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 160, 224, generator=g) * 255, torch.rand(3, 192, 150, generator=g) * 255]


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_gives_the_plain_detections(case):
    model = _model(case)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = fuse_for_inference(model)
    images = _images()
    plain_out, fast_out = model.predict(images), fast.predict(images)

    # The original is untouched; the copy has no foldable norm left and runs channels-last.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not is_fused(model) and is_fused(fast)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in fast.modules()) == sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in fast.modules() if isinstance(m, nn.Conv2d))

    for p, f in zip(plain_out, fast_out):
        assert len(p) == len(f) > 0
        assert torch.equal(p.labels, f.labels)
        torch.testing.assert_close(f.boxes.tensor, p.boxes.tensor, rtol=0, atol=1e-3)
        torch.testing.assert_close(f.scores, p.scores, rtol=0, atol=1e-5)
        if p.masks is not None:
            assert (p.masks.tensor == f.masks.tensor).float().mean().item() > 0.999


def test_folding_is_exact_up_to_rounding_and_idempotent():
    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), FrozenBatchNorm2d(16)
    with torch.no_grad():
        bn.running_var.copy_(torch.rand(16, generator=g) * 4 + 0.01)
        bn.running_mean.copy_(torch.randn(16, generator=g))
        bn.weight.copy_(torch.randn(16, generator=g))
        bn.bias.copy_(torch.randn(16, generator=g))
    plain = nn.Sequential(conv, bn, nn.ReLU()).eval()
    fused = fuse_conv_bn(plain)
    assert isinstance(fused[1], FoldedNorm) and isinstance(plain[1], FrozenBatchNorm2d)
    x = torch.randn(2, 8, 12, 12, generator=g)
    with torch.no_grad():
        ref, out = plain(x), fused(x)
        twice = fuse_conv_bn(fused)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(twice, out)


def test_fusing_refuses_training():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), FrozenBatchNorm2d(4))
    with pytest.raises(InputError, match="training mode"):
        fuse_conv_bn(model.train())
    fused = fuse_conv_bn(model.eval())
    fused.train()
    with pytest.raises(InputError, match="fused for inference"):
        fused(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("n,classes", [(200, 5), (3000, 90), (20000, 80)])
def test_class_wise_nms_equals_torchvision(n, classes):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 80 + 1], dim=1)
    scores = (torch.rand(n, generator=g) * 50).round() / 50  # many exact ties
    idxs = torch.randint(0, classes, (n,), generator=g)
    assert torch.equal(class_wise_nms(boxes, scores, idxs, 0.5), batched_nms(boxes, scores, idxs, 0.5))


def _candidates(n: int, classes: int, images: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    boxes = torch.cat([xy, xy + 40 + torch.rand(n, 2, generator=g) * 10], dim=1)
    scores = (torch.rand(n, generator=g) * 200).round() / 200  # exact ties, also across the budget's edge
    return boxes, scores, torch.randint(0, classes, (n,), generator=g), torch.randint(0, images, (n,), generator=g)


# Spread 3000 with 20 classes: little suppression, the first budget settles. Spread 100 with 4 classes:
# ~200 of 30000 boxes survive, so for 400 kept per image the budget doubles until it takes them all.
@pytest.mark.parametrize("spread,classes", [(3000.0, 20), (100.0, 4)])
@pytest.mark.parametrize("images", [1, 3])
def test_best_class_wise_nms_gives_each_image_the_full_nms_first_kept_boxes(spread, classes, images):
    boxes, scores, labels, image_idx = _candidates(30000, classes, images, spread, seed=images)
    groups = image_idx * classes + labels
    full = class_wise_nms(boxes, scores, groups, 0.5)
    for max_kept in (10, 100, 400):
        best = best_class_wise_nms(boxes, scores, groups, 0.5, max_kept, image_idx, images)
        for i in range(images):
            want, got = full[image_idx[full] == i][:max_kept], best[image_idx[best] == i][:max_kept]
            # The same scores in the same order, and the same boxes but among the ties the cap cuts.
            assert torch.equal(scores[got], scores[want])
            last = scores[want[-1]]
            assert torch.equal(got[scores[got] > last].sort().values, want[scores[want] > last].sort().values)


def test_per_image_nms_keeps_what_a_full_nms_then_cap_keeps():
    boxes, scores, labels, image_idx = _candidates(20000, 30, 2, 300.0, seed=7)
    groups = image_idx * 30 + labels
    full = class_wise_nms(boxes, scores, groups, 0.5)
    full = full[image_idx[full].argsort(stable=True)]
    keep, counts = per_image_nms(boxes, scores, labels, image_idx, 2, 30, 0.5, 100)
    assert counts.tolist() == [100, 100]
    for i in range(2):
        want, got = full[image_idx[full] == i][:100], keep[image_idx[keep] == i]
        assert torch.equal(scores[got], scores[want])


def test_topk_shortcut_selects_what_the_threshold_filter_selects():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(1, 50000, generator=g)
    for threshold, k in [(float("-inf"), 1000), (-0.5, 1000), (3.0, 1000)]:
        rows, cols = topk_above_threshold(values, threshold, k)
        idx = (values[0] > threshold).nonzero()[:, 0]
        kept = values[0, idx]
        expected = idx[kept.topk(k).indices] if kept.numel() > k else idx
        assert torch.equal(cols, expected) and torch.equal(rows, torch.zeros_like(cols))
    # Ties at the k-th value: the shortcut steps aside, still k entries.
    rows, cols = topk_above_threshold(torch.zeros(1, 500), -1.0, 100)
    assert cols.numel() == 100


def test_topk_of_a_batch_gives_each_row_what_it_gets_alone():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 20000, generator=g)
    values[2, :19000] = -10.0  # a row with few entries above the threshold: the listing path
    for threshold, k in [(float("-inf"), 1000), (-0.5, 1000), (3.0, 100)]:
        rows, cols = topk_above_threshold(values, threshold, k)
        assert torch.equal(rows, rows.sort().values)  # grouped by row
        for r in range(3):
            alone_rows, alone_cols = topk_above_threshold(values[r : r + 1], threshold, k)
            got = cols[rows == r]
            assert torch.equal(got.sort().values, alone_cols.sort().values)  # the same entries
            if threshold == float("-inf"):  # every row takes the top-k shortcut: the same order too
                assert torch.equal(got, alone_cols)


@pytest.mark.parametrize("channels_last", [False, True])
def test_mask_head_computes_only_the_detected_slot(channels_last):
    """Inference asks the mask head for one class per detection: the same logits as slicing every
    class's, up to the summation order of the 1x1 predictor."""
    from swiftdet.model.roi_heads import MaskHead

    torch.manual_seed(0)
    head = MaskHead(16, 2, 16, num_classes=7).eval()
    x = torch.randn(5, 16, 7, 7)
    if channels_last:
        head, x = head.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    slots = torch.tensor([3, 1, 7, 3, 0])
    with torch.no_grad():
        every = head(x)
        ours = head(x, slots)
    assert every.shape == (5, 8, 14, 14) and ours.shape == (5, 14, 14)
    torch.testing.assert_close(ours, every[torch.arange(5), slots], rtol=1e-5, atol=1e-5)
    assert head(x[:0], slots[:0]).shape == (0, 14, 14)


@pytest.mark.parametrize("num_convs", [0, 2])
def test_box_head_reading_channels_last_rows_gives_the_same_features_on_any_layout(num_convs):
    from swiftdet.model.roi_heads import BoxHead

    torch.manual_seed(0)
    head = BoxHead(16, 7, num_convs, 16, 2, 32).eval()
    x = torch.randn(5, 16, 7, 7)
    with torch.no_grad():
        want = head(x)
        fused = fuse_for_inference(head)
        assert fused.hwc_rows and not head.hwc_rows  # the fused copy's first fc reads (S, S, C) rows
        for layout in (torch.contiguous_format, torch.channels_last):
            got = fused(x.contiguous(memory_format=layout))
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
