"""Convolutions with their ReLU (and a ResNet block's residual sum) as one oneDNN call in the fused
inference model: equal to the separate ops (within float rounding: oneDNN may choose another kernel
for a map of a few pixels), taken only where it is safe, and the same state-dict keys."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from swiftdet.config import load_config
from swiftdet.model import layers
from swiftdet.model.build import build_model
from swiftdet.model.layers import ConvNormAct, ConvAct2d, conv_norm_act, fuse_for_inference

pytestmark = pytest.mark.skipif(layers._POINTWISE is None, reason="this PyTorch build has no oneDNN fused convolution")

# (in, out, kernel, stride, padding, dilation, groups): ResNet's 1x1/3x3/strided/dilated/grouped convs and the stem.
SHAPES = [(64, 64, 3, 1, 1, 1, 1), (256, 64, 1, 1, 0, 1, 1), (64, 256, 1, 1, 0, 1, 1), (128, 256, 1, 2, 0, 1, 1),
          (64, 64, 3, 2, 1, 1, 1), (64, 64, 3, 1, 2, 2, 1), (128, 128, 3, 1, 1, 1, 32), (3, 64, 7, 2, 3, 1, 1)]


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal up to float32 rounding of the accumulation (a ReLU or sum applied twice would differ by O(1))."""
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= rtol * expected.abs().max().clamp(min=1.0)


@pytest.mark.parametrize("shape", SHAPES)
@torch.no_grad()
def test_fused_relu_and_residual_equal_the_separate_ops(shape):
    cin, cout, k, s, p, d, g = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, p, d, g).eval().to(memory_format=torch.channels_last)
    x = _channels_last(torch.randn(2, cin, 29, 43))
    assert layers._runs_in_onednn(conv, None, x)
    plain = conv(x)
    residual = torch.randn_like(plain)
    assert_close(conv_norm_act(conv, None, x), torch.relu(plain))
    assert_close(conv_norm_act(conv, None, x, "relu6"), torch.nn.functional.relu6(plain))
    assert_close(conv_norm_act(conv, None, x, "hardswish"), torch.nn.functional.hardswish(plain))
    assert_close(conv_norm_act(conv, None, x, "", residual=residual), plain + residual)  # MobileNet's projection
    assert_close(conv_norm_act(conv, None, x, residual=residual), torch.relu(plain + residual))
    # An NCHW residual beside channels-last features (a downsample of another layout) is summed all the same.
    assert_close(conv_norm_act(conv, None, x, residual=residual.contiguous()), torch.relu(plain + residual))


def test_separate_ops_where_the_fused_call_does_not_apply():
    conv = nn.Conv2d(8, 8, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = _channels_last(torch.randn(1, 8, 12, 12))
    assert not layers._runs_in_onednn(conv, None, x.contiguous())  # NCHW may take other kernels
    assert not layers._runs_in_onednn(conv, nn.BatchNorm2d(8).eval(), x)  # a norm still between conv and ReLU
    assert not layers._runs_in_onednn(conv, None, x.double())
    assert not layers._runs_in_onednn(conv, None, x)  # grad enabled and the weight requires it: training
    with torch.no_grad():
        assert layers._runs_in_onednn(conv, None, x)
        with torch.autocast("cpu", dtype=torch.float16):
            assert not layers._runs_in_onednn(conv, None, x)  # only the bfloat16 autocast of --precision bf16
    # A trace (what ONNX export records) keeps standard operators.
    block = ConvNormAct(8, 8, 3).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(block, x)
    assert "mkldnn" not in str(traced.graph) and "relu" in str(traced.graph)
    assert torch.equal(traced(x), block(x))


@torch.no_grad()
def test_fuse_for_inference_makes_sequential_conv_relu_one_module_with_the_same_keys():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 16, 3, padding=1),
                          nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.Conv2d(16, 4, 1), nn.ReLU6()).eval()
    x = torch.randn(1, 3, 20, 24)
    fused = fuse_for_inference(model)
    assert [type(m) for m in fused] == [ConvAct2d, nn.Identity, ConvAct2d, layers.FoldedNorm, nn.Identity,
                                        ConvAct2d, nn.Identity]
    assert [fused[i].activation for i in (0, 2, 5)] == ["relu", "relu", "relu6"]
    assert set(fused.state_dict()) == {k for k in model.state_dict() if not k.startswith("3.")}
    assert fused[0].weight is not model[0].weight  # a copy: the model is untouched
    # The fused convs with the separate ReLUs (the pointwise call switched off) give the same outputs.
    unfused_ops = fuse_for_inference(model)
    layers_pointwise, layers._POINTWISE = layers._POINTWISE, None
    try:
        expected = unfused_ops(_channels_last(x))
    finally:
        layers._POINTWISE = layers_pointwise
    assert_close(fused(_channels_last(x)), expected)
    assert_close(model(x), expected)  # and the original model (no norm statistics to fold here: BN at init)


@torch.no_grad()
def test_fused_call_under_bf16_autocast_runs_in_bfloat16_as_autocast_would():
    """``--precision bf16``: the conv, its residual sum and ReLU as one bfloat16 oneDNN call, equal to
    autocast's separate ops up to bfloat16 rounding (theirs rounds after the conv and after the sum)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = _channels_last(torch.randn(1, 16, 20, 24))
    residual = _channels_last(torch.randn(1, 16, 20, 24)).bfloat16()  # a block's input: an earlier conv's bf16 output
    linear = nn.Linear(16, 8).eval()
    rows = torch.randn(6, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layers._runs_in_onednn(conv, None, x)
        fused = conv_norm_act(conv, None, x, "relu", residual)
        separate = torch.relu(conv(x) + residual)
        fused_fc, separate_fc = layers.linear_relu(linear, rows, onednn=True), torch.relu(linear(rows))
    assert fused.dtype == separate.dtype == fused_fc.dtype == separate_fc.dtype == torch.bfloat16
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused.float(), separate.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused_fc.float(), separate_fc.float(), rtol=2e-2, atol=2e-2)


def test_linear_relu_runs_one_onednn_matmul_only_on_the_fused_path(monkeypatch):
    torch.manual_seed(0)
    fc = nn.Linear(96, 40).eval()
    x = torch.randn(30, 96)
    with torch.no_grad():
        expected = torch.relu(fc(x))
        assert torch.equal(layers.linear_relu(fc, x), expected)  # the plain model: torchvision's F.linear
        fused = layers.linear_relu(fc, x, onednn=True)
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        assert (fused == 0).any()  # the ReLU is applied
        calls = []
        monkeypatch.setattr(layers, "_LINEAR_POINTWISE", lambda *a: calls.append(a) or expected)
        layers.linear_relu(fc, x, onednn=True)
        with torch.autocast("cpu", dtype=torch.float16):
            layers.linear_relu(fc, x, onednn=True)
    layers.linear_relu(fc, x, onednn=True)  # grad enabled and the weight requires it
    assert len(calls) == 1


@pytest.mark.parametrize("config", ["faster_rcnn_R_50_FPN_1x", "faster_rcnn_MV3_FPN_320"])
@torch.no_grad()
def test_fused_detector_features_equal_the_separate_ops(monkeypatch, config):
    """A whole Faster R-CNN fast path (R50: bottlenecks with residual epilogues; MobileNetV3:
    hardswish/ReLU convs and residual projections; the RPN conv) on a 256x320 image: every feature
    map and the RPN's objectness equal with the pointwise call and without it, and the call is made
    where expected."""
    cfg = load_config(config, ["model.num_classes=3"]).model
    torch.manual_seed(0)
    model = fuse_for_inference(build_model(cfg).eval(), inplace=True)
    image = torch.rand(3, 256, 320, generator=torch.Generator().manual_seed(1)) * 255
    batch = model.preprocess([image]).tensor
    calls = []
    real = layers._POINTWISE

    class Counting:
        def __call__(self, *args):
            calls.append(args[7])  # the activation's oneDNN name
            return real(*args)

        def binary(self, *args):
            calls.append("residual")
            return real.binary(*args)

    def run():
        features = model.extract_features(batch)
        objectness = model.rpn.head([features[k] for k in model.rpn.in_features])[0]
        return list(features.values()) + list(objectness)

    monkeypatch.setattr(layers, "_POINTWISE", Counting())
    monkeypatch.setattr(layers, "_nnpack_ready", lambda: False)  # large 3x3 convs would take NNPACK (its own test)
    fused = run()
    levels = len(model.rpn.in_features)
    if config.startswith("faster_rcnn_R_50"):
        # 16 blocks end in conv + residual + ReLU; their 32 inner convs, and the RPN conv on each level, in conv + ReLU.
        assert calls.count("residual") == 16 and calls.count("relu") == 32 + levels
    else:
        assert calls.count("hardswish") > 0 and calls.count("residual") > 0 and calls.count("relu") > levels
    monkeypatch.setattr(layers, "_POINTWISE", None)
    for got, expected in zip(fused, run(), strict=True):
        # A whole network: a kernel choice at a few-pixel map (res5, P6) rounds on through the
        # following layers (seen: 1.0e-5 of the largest value on a CI run).
        assert_close(got, expected, rtol=1e-4)
