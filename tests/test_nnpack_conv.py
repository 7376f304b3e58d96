"""Large 3x3 convolutions of the fused inference model through NNPACK's Winograd kernels: taken only
where the rule says (float32 eager CPU inference, 3x3 stride 1, 128+ channels, a large map), equal to
oneDNN's direct convolution within Winograd's rounding, in the input's memory format, and a whole
R50-FPN fast path gives the same features and RPN outputs with it and without it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from swiftdet.config import load_config
from swiftdet.model import layers
from swiftdet.model.build import build_model
from swiftdet.model.layers import ConvAct2d, ConvNormAct, FoldedNorm, conv_norm_act, fuse_for_inference

pytestmark = pytest.mark.skipif(not layers._nnpack_ready(), reason="NNPACK is not built into this PyTorch or this CPU lacks AVX2")

# Winograd F(6x6, 3x3) transforms round at ~1e-5 of the output's scale in float32 (seen: 1e-5 on
# 256-channel maps); a wrong tap, bias or epilogue would be off by O(1).
WINOGRAD_RTOL = 1e-4


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _close(got: torch.Tensor, expected: torch.Tensor, rtol: float = WINOGRAD_RTOL) -> None:
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= rtol * expected.abs().max().clamp(min=1.0)


def _marked(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` as fuse_for_inference leaves it: marked for NNPACK (the plain model's convs are not)."""
    conv.nnpack = True
    return conv


def _counting(monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of the inputs of every NNPACK convolution from here on."""
    calls, real = [], torch._nnpack_spatial_convolution

    def counted(x, *args):
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted)
    return calls


@pytest.mark.parametrize("batch,size,layout", [(1, (61, 64), "cl"), (1, (61, 64), "nchw"), (60, (14, 14), "cl")])
@pytest.mark.parametrize("activation", ["relu", ""])
@pytest.mark.parametrize("pieces", ["whole", "cut", "chunks"])
@torch.no_grad()
def test_nnpack_conv_equals_the_direct_convolution(monkeypatch, batch, size, layout, activation, pieces):
    """Whole, or cut into bands of 6 rows (the last one shorter, the first and last against the zero
    border; each RoI of a batch alone when one RoI's output passes the size) or into chunks of RoIs,
    as a large map or batch is."""
    torch.manual_seed(0)
    monkeypatch.setattr(layers, "_NNPACK_OUTPUT_BYTES", {"whole": 2**30, "cut": 100_000, "chunks": 400_000}[pieces])
    conv = _marked(nn.Conv2d(128, 160, 3, 1, 1).eval().to(memory_format=torch.channels_last))
    x = torch.randn(batch, 128, *size)
    x = _cl(x) if layout == "cl" else x
    residual = torch.randn(batch, 160, *size)
    assert layers._runs_in_nnpack(conv, None, x) and layers._runs_in_nnpack(conv, FoldedNorm(), x)
    calls = _counting(monkeypatch)
    for res in (None, residual):
        got = conv_norm_act(conv, None, x, activation, res)
        expected = conv(x) + (0 if res is None else res)
        expected = torch.relu(expected) if activation == "relu" else expected
        _close(got, expected)
        # The next oneDNN layer reads channels-last input as the fast path hands it over (the weight is channels-last).
        assert got.is_contiguous(memory_format=torch.channels_last)
    if pieces == "whole":
        assert len(calls) == 2
    elif batch == 1:
        assert len(calls) == 2 * 11 and all(shape[2] == 8 for shape in calls[:10]) and calls[10][2] == 3  # 10 x 6 rows + 1
    elif pieces == "cut":  # a 14x14x160 RoI's output (125 kB) passes 100 kB: 6 + 6 + 2 rows each
        assert len(calls) == 2 * 60 * 3 and [shape[2] for shape in calls[:3]] == [8, 8, 4]
    else:  # 400 kB: 4 RoIs per call
        assert len(calls) == 2 * 15 and all(shape == (4, 128, 14, 14) for shape in calls)
    if activation == "relu":
        assert (got == 0).any()


@torch.no_grad()
def test_nnpack_is_taken_only_where_the_rule_says():
    torch.manual_seed(0)
    conv = nn.Conv2d(128, 128, 3, 1, 1).eval()
    big, rois = torch.randn(1, 128, 60, 64), torch.randn(60, 128, 14, 14)
    assert not layers._runs_in_nnpack(conv, None, big)  # not marked: a plain model's conv runs as trained
    _marked(conv)
    assert layers._runs_in_nnpack(conv, None, big) and layers._runs_in_nnpack(conv, None, rois)
    assert not layers._runs_in_nnpack(conv, None, torch.randn(1, 128, 40, 40))  # 1600 pixels: oneDNN is faster
    assert not layers._runs_in_nnpack(conv, None, torch.randn(30, 128, 14, 14))  # 30 RoIs
    assert not layers._runs_in_nnpack(conv, nn.BatchNorm2d(128).eval(), big)  # an unfolded norm follows
    assert not layers._runs_in_nnpack(conv, None, big.double())
    for other in (nn.Conv2d(64, 64, 3, 1, 1), nn.Conv2d(128, 64, 3, 1, 1), nn.Conv2d(128, 128, 3, 2, 1),
                  nn.Conv2d(128, 128, 3, 1, 2, 2), nn.Conv2d(128, 128, 3, 1, 1, groups=2), nn.Conv2d(128, 128, 1),
                  nn.Conv2d(128, 128, 3, 1, 1, padding_mode="reflect")):
        assert not layers._runs_in_nnpack(_marked(other.eval()), None, big[:, : other.in_channels])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers._runs_in_nnpack(conv, None, big)  # bfloat16 stays in oneDNN
    assert not layers._runs_in_nnpack(conv.train(), None, big)
    conv.eval()
    with torch.enable_grad():
        assert not layers._runs_in_nnpack(conv, None, big)  # the weight requires a gradient
    traced = torch.jit.trace(_marked(ConvAct2d.from_conv(conv, "relu")), big, check_trace=False)  # traces and exports record aten::conv2d
    assert "nnpack" not in str(traced.graph) and "_convolution" in str(traced.graph)


@torch.no_grad()
def test_fused_r50_fpn_features_equal_with_and_without_nnpack(monkeypatch):
    """Faster R-CNN R50-FPN fast path on a 512x640 image: the bottlenecks' 3x3 convs at res3 (the
    stride-1 ones), the FPN output convs and the RPN conv on P2 (in bands) and P3 take NNPACK; every
    feature map and the RPN's outputs agree with oneDNN's."""
    cfg = load_config("faster_rcnn_R_50_FPN_1x", ["model.num_classes=3"]).model
    torch.manual_seed(0)
    model = fuse_for_inference(build_model(cfg).eval(), inplace=True)
    # The FPN's output convs, called as conv(x), become ConvAct2d without activation; keys unchanged.
    assert all(type(c.conv) is ConvAct2d and c.conv.activation == "" for c in model.fpn.output_convs)
    image = torch.rand(3, 512, 640, generator=torch.Generator().manual_seed(1)) * 255
    batch = model.preprocess([image]).tensor

    def run():
        features = model.extract_features(batch)
        objectness, deltas = model.rpn.head([features[k] for k in model.rpn.in_features])
        return list(features.values()) + list(objectness) + list(deltas)

    monkeypatch.setattr(layers, "_NNPACK_OUTPUT_BYTES", 8 * 2**20)  # P2's 20 MB output in bands, P3's 5 MB whole
    calls = _counting(monkeypatch)
    with_nnpack = run()
    assert calls.count((1, 128, 64, 80)) == 3  # res3's three stride-1 blocks (the first one strides)
    assert calls.count((1, 256, 64, 80)) == 2  # P3: FPN output and RPN conv, whole
    # P2 in bands of rows, each read with its 1-row halo: the map covered twice (FPN output, RPN conv).
    bands = [shape for shape in calls if shape[3] == 160]
    assert len(bands) > 2 and all(shape[:2] == (1, 256) for shape in bands)
    assert sum(shape[2] - 2 for shape in bands) == 2 * 128
    assert len(calls) == 5 + len(bands)
    monkeypatch.setattr(layers, "_nnpack_ready", lambda: False)
    for got, expected in zip(with_nnpack, run(), strict=True):
        assert got.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(memory_format=torch.channels_last)
        _close(got, expected)


@torch.no_grad()
def test_a_tower_hands_nchw_maps_from_conv_to_conv(monkeypatch):
    """A head's tower (conv, ReLU, conv, GroupNorm, ReLU, conv): the fused convs pass NCHW maps on
    where the next one takes NNPACK too, the last hands back channels-last; the output equals the
    plain tower's and the tower without the hand-over."""
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1), nn.GroupNorm(32, 128),
                          nn.ReLU(), nn.Conv2d(128, 160, 3, 1, 1)).eval()
    x = torch.randn(1, 128, 60, 64)
    expected = tower(x)
    fused = fuse_for_inference(tower)
    assert [getattr(m, "hands_nchw", False) for m in fused if isinstance(m, nn.Conv2d)] == [True, True, False]
    layouts = []
    for m in fused:
        m.register_forward_hook(lambda m, a, out: layouts.append(layers._is_channels_last(out)))
    calls = _counting(monkeypatch)
    got = fused(_cl(x))
    assert len(calls) == 3 and layers._is_channels_last(got)
    assert layouts == [False, False, False, False, False, True]  # conv, identity (its ReLU), conv, GN, ReLU, conv
    _close(got, expected)
    for m in fused:
        m.hands_nchw = False
    _close(fused(_cl(x)), got)  # GroupNorm sums NCHW and channels-last maps in other orders
    # A mask head's convs are ConvNormAct blocks: their convs hand over the same way (not past a GroupNorm
    # inside a block, which keeps the block's conv out of NNPACK).
    plain = nn.Sequential(*(ConvNormAct(128, 128, 3) for _ in range(3))).eval()
    blocks = fuse_for_inference(plain)
    assert [getattr(b.conv, "hands_nchw", False) for b in blocks] == [True, True, False]
    got = blocks(_cl(x))
    assert len(calls) == 9 and layers._is_channels_last(got)
    _close(got, plain(x))
    normed = fuse_for_inference(nn.Sequential(*(ConvNormAct(128, 128, 3, norm="GN") for _ in range(2))).eval())
    assert not any(getattr(b.conv, "hands_nchw", False) for b in normed)
    # On a small map nothing takes NNPACK and every layer stays channels-last.
    small, layouts[:] = _cl(torch.randn(1, 128, 20, 20)), []
    fused(small)
    assert len(calls) == 9 and layouts[0] and layouts[-1]

