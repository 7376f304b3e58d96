"""The training step's faster pieces compute what they replace: RoIAlign's sparse-matrix forward and
backward vs torchvision's kernel, the chunked focal loss vs torchvision's, FrozenBN applied as the
conv's scale and bias vs conv + FrozenBN, and the channels-last training layout."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d, sigmoid_focal_loss
from torchvision.ops import roi_align as tv_roi_align

from swiftdet.model.dense_head import focal_loss_per_anchor
from swiftdet.model.layers import conv_norm, prepare_for_training
from swiftdet.model.roi_align import roi_align


def _rois(count: int, batch: int, height: float, width: float, seed: int) -> torch.Tensor:
    """Boxes in image pixels, some reaching outside the image and some thinner than a pixel."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=gen) * torch.tensor([width, height]) * 1.1 - 10
    wh = torch.rand(count, 2, generator=gen) * torch.tensor([width, height]) * 0.5
    wh[::7] = 0.3  # degenerate: below one feature pixel
    index = torch.randint(0, batch, (count, 1), generator=gen).float()
    return torch.cat([index, xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_align_matches_torchvision_forward_and_gradient(aligned, sampling_ratio, channels_last):
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 24, 30)
    if channels_last:
        feats = feats.to(memory_format=torch.channels_last)
    rois = _rois(60, 2, 24 * 8, 30 * 8, seed=1)
    grad_out = torch.randn(60, 16, 7, 7)

    ref_in = feats.clone().requires_grad_()
    ref = tv_roi_align(ref_in, rois, (7, 7), 1 / 8, sampling_ratio, aligned)
    (ref * grad_out).sum().backward()
    ours_in = feats.clone().requires_grad_()
    ours = roi_align(ours_in, rois, (7, 7), 1 / 8, sampling_ratio, aligned)
    (ours * grad_out).sum().backward()

    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-5)
    assert ref_in.grad.abs().sum() > 0  # the rois do sample the features


def test_roi_align_without_gradient_is_torchvisions_own_op():
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 20, 20)
    rois = _rois(30, 1, 160, 160, seed=2)
    assert torch.equal(roi_align(feats, rois, (7, 7), 1 / 8, 2, False), tv_roi_align(feats, rois, (7, 7), 1 / 8, 2, False))
    with torch.no_grad():
        grad_feats = feats.clone().requires_grad_()
        assert torch.equal(roi_align(grad_feats, rois, (7, 7), 1 / 8, 2, True),
                           tv_roi_align(feats, rois, (7, 7), 1 / 8, 2, True))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio,output_size", [(2, (7, 7)), (0, (7, 7)), (0, (14, 14)), (3, (3, 5))])
def test_roi_align_inference_gathers_channels_last_features(aligned, sampling_ratio, output_size):
    """Inference on channels-last features (the fast path) gathers each bin's taps: torchvision's values
    within float rounding, with channels-last strides; adaptive grids mix several grid sizes here."""
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 24, 30)
    rois = _rois(80, 2, 24 * 8, 30 * 8, seed=3)
    rois[:3, 3:] = rois[:3, 1:3]  # zero-size boxes: an empty grid when aligned
    expected = tv_roi_align(feats, rois, output_size, 1 / 8, sampling_ratio, aligned)
    with torch.no_grad():
        ours = roi_align(feats.to(memory_format=torch.channels_last), rois, output_size, 1 / 8, sampling_ratio, aligned)
    assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    assert expected.abs().sum() > 0
    empty = roi_align(feats.to(memory_format=torch.channels_last), rois[:0], output_size, 1 / 8, sampling_ratio, aligned)
    assert empty.shape == (0, 16) + output_size


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.25, 0.0), (0.5, 1.5)])
def test_focal_loss_per_anchor_matches_torchvision(alpha, gamma):
    torch.manual_seed(0)
    # More rows than one chunk, so the chunked sum and gradient cross chunk borders.
    logits = (torch.randn(2, 5000, 7) * 4).requires_grad_()
    labels = torch.full((2, 5000), -1)
    labels[0, :20] = torch.randint(0, 7, (20,))
    labels[1, 4090:4130] = torch.randint(0, 7, (40,))
    img, anchor = (labels >= 0).nonzero(as_tuple=True)
    targets = torch.zeros(2, 5000, 7)
    targets[img, anchor, labels[img, anchor]] = 1.0
    weights = torch.rand(2, 5000)

    ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none").sum(dim=2)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), logits)
    ours = focal_loss_per_anchor(logits, img, anchor, labels[img, anchor], alpha, gamma)
    (ours_grad,) = torch.autograd.grad((ours * weights).sum(), logits)

    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-6)


def _conv_and_frozen_norm(bias: bool) -> tuple[nn.Conv2d, FrozenBatchNorm2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=bias)
    norm = FrozenBatchNorm2d(16)
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.normal_()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    return conv, norm


@pytest.mark.parametrize("bias", [False, True])
def test_conv_norm_folds_frozen_norm_in_training_with_the_same_gradients(bias):
    conv, norm = _conv_and_frozen_norm(bias)
    x = torch.randn(2, 8, 20, 24, requires_grad=True)
    ref = norm(conv(x))
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    ours = conv_norm(conv, norm, x)
    ours_grads = torch.autograd.grad(ours.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_conv_norm_in_evaluation_runs_the_modules_as_they_are():
    conv, norm = _conv_and_frozen_norm(False)
    conv.eval()
    x = torch.randn(1, 8, 12, 12)
    assert torch.equal(conv_norm(conv, norm, x), norm(conv(x)))
    assert torch.equal(conv_norm(conv, None, x), conv(x))


def test_prepare_for_training_keeps_parameters_and_values():
    conv, norm = _conv_and_frozen_norm(True)
    model = nn.Sequential(conv, norm)
    params = list(model.parameters())
    values = [p.detach().clone() for p in params]
    assert prepare_for_training(model) is model
    assert list(model.parameters()) == params  # an optimizer built before still holds them
    assert all(torch.equal(p, v) for p, v in zip(model.parameters(), values))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
