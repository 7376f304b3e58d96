"""detectron2's ResNet variants: widths, DC5, deformable conv v1/v2, GroupNorm, GN+WS and the 'single' layout.

Parameter names and shapes are checked against the detectron2 fixtures (../shared/fixtures/detectron2,
skipped when absent); the numerics of each variant against hand computations or plain convolutions.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d, deform_conv2d

from swiftdet.config.schema import ModelConfig, ResNetConfig
from swiftdet.errors import ConfigError
from swiftdet.model.backbone import build_resnet
from swiftdet.model.layers import (DeformConv2d, FoldedNorm, WSConv2d, fuse_conv_bn, fuse_for_inference, standardize_weight,
                                   use_weight_standardization)
from swiftdet.model.rcnn import build_rcnn

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SWIFTDET_SHARED_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")) / "detectron2"

ALL_FIXTURES = [
    "mask_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_C4_1x", "faster_rcnn_R_50_DC5_1x", "keypoint_rcnn_R_50_FPN_1x",
    "cascade_mask_rcnn_R_50_FPN_1x", "retinanet_R_50_FPN_1x", "rpn_R_50_FPN_1x", "mask_rcnn_X_101_32x8d_FPN_3x",
    "mask_rcnn_R_50_FPN_1x_dconv_c3-c5", "mask_rcnn_R_50_FPN_3x_gn",
]
# R-CNN fixtures whose whole model this file's parts build (no cascade / keypoints / RetinaNet).
RCNN_FIXTURES = ["mask_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_C4_1x", "faster_rcnn_R_50_DC5_1x",
                 "mask_rcnn_X_101_32x8d_FPN_3x", "mask_rcnn_R_50_FPN_1x_dconv_c3-c5", "mask_rcnn_R_50_FPN_3x_gn"]


def _fixture_dir(name: str) -> Path:
    d = FIXTURES / name
    if not (d / "config.yaml").is_file():
        pytest.skip(f"detectron2 fixtures not found at {d} (present only beside a developer's or CI's checkout)")
    return d


def _backbone_cfg(r: dict, freeze_at: int) -> ResNetConfig:
    """model.backbone from detectron2's MODEL.RESNETS (the fields this file's ResNet reads)."""
    return ResNetConfig(
        depth=r["DEPTH"], groups=r["NUM_GROUPS"], width_per_group=r["WIDTH_PER_GROUP"],
        style="caffe" if r["STRIDE_IN_1X1"] else "torchvision", stem_out_channels=r["STEM_OUT_CHANNELS"],
        res2_out_channels=r["RES2_OUT_CHANNELS"], res5_dilation=r["RES5_DILATION"],
        deform_on_per_stage=tuple(r["DEFORM_ON_PER_STAGE"]), deform_modulated=r["DEFORM_MODULATED"],
        deform_num_groups=r["DEFORM_NUM_GROUPS"], norm=r["NORM"], freeze_at=freeze_at, out_features=tuple(r["OUT_FEATURES"]),
    )


def _model_cfg(d: Path) -> ModelConfig:
    """The swiftdet R-CNN of a fixture's config.yaml (a test-local reading of the fields that set shapes)."""
    m = yaml.safe_load((d / "config.yaml").read_text())["MODEL"]
    cfg = ModelConfig(convention="detectron2", num_classes=m["ROI_HEADS"]["NUM_CLASSES"], mask_on=m["MASK_ON"])
    cfg.backbone = _backbone_cfg(m["RESNETS"], m["BACKBONE"]["FREEZE_AT"])
    if m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone":
        cfg.layout = "fpn"
        cfg.fpn.in_features, cfg.fpn.out_channels, cfg.fpn.norm = tuple(m["FPN"]["IN_FEATURES"]), m["FPN"]["OUT_CHANNELS"], m["FPN"]["NORM"]
    else:
        cfg.layout = "c4" if m["ROI_HEADS"]["NAME"] == "Res5ROIHeads" else "single"
    cfg.rpn.in_features = tuple(m["RPN"]["IN_FEATURES"])
    sizes = m["ANCHOR_GENERATOR"]["SIZES"]
    cfg.rpn.anchors.sizes = tuple(tuple(float(v) for v in s) for s in sizes)
    cfg.rpn.anchors.aspect_ratios = tuple(float(v) for v in m["ANCHOR_GENERATOR"]["ASPECT_RATIOS"][0])
    bh, mh = m["ROI_BOX_HEAD"], m["ROI_MASK_HEAD"]
    cfg.box_head.in_features = tuple(m["ROI_HEADS"]["IN_FEATURES"])
    cfg.box_head.pooler_resolution = bh["POOLER_RESOLUTION"]
    if cfg.layout != "c4":
        assert (bh["NUM_CONV"], bh["NUM_FC"]) in ((0, 2), (4, 1))
        cfg.box_head.head = "2fc" if bh["NUM_CONV"] == 0 else "4conv1fc"
        cfg.box_head.fc_dim, cfg.box_head.conv_dim, cfg.box_head.norm = bh["FC_DIM"], bh["CONV_DIM"], bh["NORM"]
    cfg.mask_head.conv_dim, cfg.mask_head.num_convs, cfg.mask_head.norm = mh["CONV_DIM"], mh["NUM_CONV"], mh["NORM"]
    return cfg


def _d2_state_dict(d: Path) -> dict[str, torch.Tensor]:
    from swiftdet.weights.detectron2 import read_detectron2_file

    files = [d / "model_final.pth", d / "model_final.pkl"]
    return read_detectron2_file(next(f for f in files if f.is_file()))[1]


def _assert_same_names_and_shapes(expected: dict, model: nn.Module) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    bad = [(k, tuple(got[k].shape), tuple(v.shape)) for k, v in expected.items() if got[k].shape != v.shape]
    assert not bad, bad[:5]
    model.load_state_dict(expected, strict=True)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_backbone_matches_fixture_names_and_shapes(name):
    from swiftdet.weights.detectron2 import convert_detectron2_state_dict

    d = _fixture_dir(name)
    m = yaml.safe_load((d / "config.yaml").read_text())["MODEL"]
    cfg = ModelConfig(convention="detectron2", backbone=_backbone_cfg(m["RESNETS"], m["BACKBONE"]["FREEZE_AT"]))
    if m["META_ARCHITECTURE"] == "RetinaNet" or m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone":
        cfg.backbone.out_features = ("res2", "res3", "res4", "res5")  # the FPN's bottom-up features
        if m["META_ARCHITECTURE"] == "RetinaNet":
            cfg.backbone.out_features = tuple(m["RESNETS"]["OUT_FEATURES"])
    sd = {k: v for k, v in _d2_state_dict(d).items() if k.startswith("backbone.bottom_up.") or
          (k.startswith("backbone.") and not k.startswith("backbone.fpn") and not k.startswith("backbone.top_block"))}
    converted = {k[len("backbone."):]: v for k, v in convert_detectron2_state_dict(sd, cfg).items()}
    _assert_same_names_and_shapes(converted, build_resnet(cfg.backbone))


@pytest.mark.parametrize("name", RCNN_FIXTURES)
def test_rcnn_matches_fixture_names_and_shapes(name):
    from swiftdet.weights.detectron2 import convert_detectron2_file

    d = _fixture_dir(name)
    cfg = _model_cfg(d)
    files = [d / "model_final.pth", d / "model_final.pkl"]
    converted = convert_detectron2_file(next(f for f in files if f.is_file()), cfg)
    model = build_rcnn(cfg, size_divisibility=1 if cfg.layout != "fpn" else 32)
    _assert_same_names_and_shapes(converted, model)
    if name == "faster_rcnn_R_50_DC5_1x":
        assert model.fpn is None and model.backbone.output_shape() == {"res5": (64, 16)}


def test_widths_follow_stem_and_res2():
    cfg = ResNetConfig(stem_out_channels=4, res2_out_channels=8, width_per_group=2, out_features=("stem", "res2", "res3", "res4", "res5"))
    net = build_resnet(cfg)
    assert net.output_shape() == {"stem": (4, 4), "res2": (8, 4), "res3": (16, 8), "res4": (32, 16), "res5": (64, 32)}
    assert net.conv1.weight.shape == (4, 3, 7, 7)
    for stage in range(2, 6):
        block = getattr(net, f"layer{stage - 1}")[0]
        assert block.conv2.weight.shape[0] == 2 * 2 ** (stage - 2)
    x = torch.randn(1, 3, 64, 96)
    out = net.eval()(x)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "stem": (4, 16, 24), "res2": (8, 16, 24), "res3": (16, 8, 12), "res4": (32, 4, 6), "res5": (64, 2, 3)}
    # ResNeXt: bottleneck width groups * width_per_group * 2**(k-2); the C4 head's res5 follows the widths.
    x101 = ResNetConfig(depth=101, groups=2, width_per_group=1, stem_out_channels=4, res2_out_channels=8, out_features=("res4",))
    net = build_resnet(x101)
    assert net.layer3[0].conv2.weight.shape == (8, 4, 3, 3) and len(net.layer3) == 23
    c4 = ModelConfig(num_classes=2, layout="c4", backbone=x101)
    c4.rpn.in_features, c4.box_head.in_features = ("res4",), ("res4",)
    c4.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),)
    res5 = build_rcnn(c4).roi_heads.box_head.res5
    assert res5[0].conv1.weight.shape == (16, 32, 1, 1) and res5[0].conv3.weight.shape == (64, 16, 1, 1)


def test_dc5_strides_and_dilation():
    cfg = ResNetConfig(res5_dilation=2, stem_out_channels=4, res2_out_channels=8, width_per_group=2, out_features=("res4", "res5"))
    net = build_resnet(cfg).eval()
    assert net.output_shape() == {"res4": (32, 16), "res5": (64, 16)}
    for i, block in enumerate(net.layer4):
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
    assert net.layer4[0].downsample[0].stride == (1, 1)
    assert all(b.conv2.dilation == (1, 1) for b in net.layer3)
    out = net(torch.randn(1, 3, 96, 160))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:] == (6, 10)
    # the 3x3 convs are plain dilated convs: block 1 of res5 by hand
    b = net.layer4[1]
    x = torch.randn(1, 64, 6, 10)
    with torch.no_grad():
        y = F.relu(b.bn1(b.conv1(x)))
        y = F.relu(b.bn2(F.conv2d(y, b.conv2.weight, padding=2, dilation=2)))
        expected = F.relu(b.bn3(b.conv3(y)) + x)
        torch.testing.assert_close(b(x.clone()), expected)


@pytest.mark.parametrize("stride,dilation,groups,offset_groups", [(1, 1, 1, 1), (2, 1, 2, 1), (1, 2, 1, 2)])
@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv_with_zero_offsets_is_the_plain_conv(stride, dilation, groups, offset_groups, modulated):
    torch.manual_seed(0)
    conv = DeformConv2d(8, 6, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                        offset_groups=offset_groups, modulated=modulated)
    x = torch.randn(2, 8, 11, 13)
    expected = F.conv2d(x, conv.weight, stride=stride, padding=dilation, dilation=dilation, groups=groups)
    h, w = expected.shape[-2:]
    taps = 9 * offset_groups
    offset = torch.zeros(2, 2 * taps, h, w)
    if modulated:
        # mask logits of 40: sigmoid is exactly 1.0 in float32
        torch.testing.assert_close(conv(x, torch.cat([offset, torch.full((2, taps, h, w), 40.0)], 1)), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv.deform(x, offset, torch.ones(2, taps, h, w)), expected, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(conv(x, offset), expected, rtol=1e-5, atol=1e-5)


def test_deform_conv_v1_offsets():
    torch.manual_seed(0)
    conv = DeformConv2d(4, 5, 3, padding=1)
    x = torch.randn(1, 4, 9, 10)
    # every tap moved one pixel down (dy = 1: the first of each (dy, dx) pair) is the conv of the
    # input shifted up by one row, zeros below: out[y] = sum_i w[i] x[y + i]
    offset = torch.zeros(1, 18, 9, 10)
    offset[:, 0::2] = 1.0
    shifted = F.conv2d(F.pad(x, (1, 1, 0, 2)), conv.weight)
    torch.testing.assert_close(conv(x, offset), shifted, rtol=1e-5, atol=1e-5)
    # half a pixel to the right: bilinear, the mean of no shift and one pixel (interior columns)
    half = torch.zeros(1, 18, 9, 10)
    half[:, 1::2] = 0.5
    right = F.conv2d(F.pad(x, (0, 2, 1, 1)), conv.weight)
    plain = F.conv2d(x, conv.weight, padding=1)
    torch.testing.assert_close(conv(x, half)[..., :-1], ((plain + right) / 2)[..., :-1], rtol=1e-5, atol=1e-5)
    # random offsets: the module is torchvision's deform_conv2d with its weight, stride and padding
    rand = torch.randn(1, 18, 9, 10)
    torch.testing.assert_close(conv(x, rand), deform_conv2d(x, rand, conv.weight, padding=1))


def test_deform_conv_v2_splits_offsets_and_mask_as_detectron2():
    torch.manual_seed(0)
    conv = DeformConv2d(4, 4, 3, padding=1, offset_groups=2, modulated=True)
    x = torch.randn(1, 4, 7, 8)
    raw = torch.randn(1, 54, 7, 8)
    # detectron2: offset_x, offset_y, mask = chunk(raw, 3); offset = cat(offset_x, offset_y); mask.sigmoid()
    ox, oy, mask = torch.chunk(raw, 3, dim=1)
    expected = deform_conv2d(x, torch.cat([ox, oy], 1), conv.weight, padding=1, mask=mask.sigmoid())
    torch.testing.assert_close(conv(x, raw), expected)


def test_deformable_stages_are_built_as_detectron2():
    cfg = ResNetConfig(stem_out_channels=4, res2_out_channels=8, width_per_group=2, deform_on_per_stage=(False, True, True, True),
                       deform_modulated=True, deform_num_groups=2, freeze_at=0)
    net = build_resnet(cfg)
    assert all(b.conv2_offset is None for b in net.layer1)
    for layer in (net.layer2, net.layer3, net.layer4):
        for i, b in enumerate(layer):
            assert isinstance(b.conv2, DeformConv2d) and b.conv2.bias is None and b.conv2.modulated
            assert b.conv2_offset.out_channels == 54 and b.conv2_offset.kernel_size == (3, 3)
            assert b.conv2_offset.stride == (2 if i == 0 else 1,) * 2 == (b.conv2.stride,) * 2
            assert not b.conv2_offset.weight.any() and not b.conv2_offset.bias.any()
    assert "layer2.0.conv2.weight" in net.state_dict() and "layer2.0.conv2_offset.bias" in net.state_dict()


def _randomise(model: nn.Module, seed: int) -> None:
    """Norm statistics and affine parameters of order one, random deformable offsets."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2 + 0.05)
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if name.endswith("conv2_offset"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)


def _calibrate_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Set every FrozenBN's statistics to those of its input (so activations stay of order one)."""
    hooks = []
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            def hook(mod, inp, _out):
                y = inp[0]
                mod.running_mean.copy_(y.mean(dim=(0, 2, 3)))
                mod.running_var.copy_(y.var(dim=(0, 2, 3)) + 1e-3)
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("kind", ["deform_v1", "deform_v2", "gn", "gn_ws"])
def test_fused_equals_unfused(kind):
    torch.manual_seed(0)
    if kind.startswith("deform"):
        cfg = ResNetConfig(stem_out_channels=8, res2_out_channels=16, width_per_group=4, deform_on_per_stage=(False, True, True, True),
                           deform_modulated=kind == "deform_v2", style="caffe")
    else:
        cfg = ResNetConfig(norm="GN", stem_out_channels=32, res2_out_channels=32, width_per_group=32, depth=50)
    net = build_resnet(cfg)
    if kind == "gn_ws":
        use_weight_standardization(net)
        assert isinstance(net.conv1, WSConv2d) and isinstance(net.layer2[0].downsample[0], WSConv2d)
    _randomise(net, 1)
    # float64: a deep random network with data-dependent sampling positions amplifies float32
    # rounding (a few v2 outputs differ by 1e-3 in float32); in float64 fusing must be exact to 1e-9
    net = net.double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    if kind.startswith("deform"):
        _calibrate_bn(net, x)
    with torch.no_grad():
        expected = net(x)
        for fused in (fuse_conv_bn(net), fuse_for_inference(net)):
            got = fused(x)
            for k in expected:
                assert expected[k].abs().mean() > 0.05
                torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-9)
    fused = fuse_conv_bn(net)
    if kind.startswith("deform"):
        b = fused.layer3[0]
        assert isinstance(b.bn2, FoldedNorm) and b.conv2.bias is not None  # the norm after the deformable conv was folded
    else:
        assert not any(isinstance(m, FoldedNorm) for m in fused.modules())
        assert isinstance(fused.layer2[0].bn2, nn.GroupNorm)


def test_group_norm_backbone_freezes_and_trains_a_step():
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=3, mask_on=True)
    cfg.backbone = ResNetConfig(norm="GN", stem_out_channels=32, res2_out_channels=32, width_per_group=32, freeze_at=2)
    cfg.fpn.out_channels, cfg.fpn.norm = 32, "GN"
    cfg.box_head.head, cfg.box_head.conv_dim, cfg.box_head.fc_dim, cfg.box_head.norm = "4conv1fc", 32, 16, "GN"
    cfg.mask_head.conv_dim, cfg.mask_head.norm = 32, "GN"
    cfg.weight_standardization = True
    model = build_rcnn(cfg)
    bb = model.backbone
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    assert isinstance(bb.bn1, nn.GroupNorm) and bb.bn1.num_groups == 32
    assert isinstance(bb.layer2[0].downsample[1], nn.GroupNorm) and isinstance(bb.layer1[0].bn3, nn.GroupNorm)
    frozen = [n for n, p in bb.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("conv1", "bn1", "layer1.")) for n in frozen)
    assert all(not p.requires_grad for n, p in bb.named_parameters() if n.startswith(("conv1", "bn1", "layer1.")))
    # WS on every conv followed by GN (backbone, FPN, box and mask head convs), not on the RPN's conv
    assert isinstance(bb.layer2[0].conv2, WSConv2d) and isinstance(model.fpn.output_convs[0].conv, WSConv2d)
    assert isinstance(model.roi_heads.box_head.convs[0].conv, WSConv2d)
    assert isinstance(model.roi_heads.mask_head.convs[0].conv, WSConv2d)
    assert type(model.rpn.head.convs[0].conv) is nn.Conv2d
    from swiftdet.structures import BitMasks, Boxes, Instances

    masks = torch.zeros(2, 128, 160, dtype=torch.bool)
    masks[0, 20:80, 30:100] = True
    masks[1, 60:120, 90:150] = True
    target = Instances((128, 160), boxes=Boxes(torch.tensor([[30.0, 20.0, 100.0, 80.0], [90.0, 60.0, 150.0, 120.0]])),
                       labels=torch.tensor([0, 2]), masks=BitMasks(masks))
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = model(model.preprocess([torch.rand(3, 128, 160) * 255]), [target])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    opt.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["backbone.layer1.0.conv2.weight"], before["backbone.layer1.0.conv2.weight"])
    assert torch.equal(after["backbone.bn1.weight"], before["backbone.bn1.weight"])
    for n in ("backbone.layer2.0.conv2.weight", "backbone.layer2.0.bn2.weight", "fpn.output_convs.0.conv.weight",
              "roi_heads.box_head.convs.0.conv.weight"):
        assert not torch.equal(after[n], before[n]), n


def test_weight_standardization_formula():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64) * 2 + 0.5
    expected = torch.empty_like(w)
    for o in range(4):
        vals = w[o].flatten().tolist()
        n = len(vals)
        mean = sum(vals) / n
        std = (sum((v - mean) ** 2 for v in vals) / (n - 1)) ** 0.5  # mmcv: Tensor.std, Bessel-corrected
        expected[o] = (w[o] - mean) / (std + 1e-5)
    torch.testing.assert_close(standardize_weight(w), expected, rtol=1e-12, atol=1e-12)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    holder = nn.Sequential(conv, nn.GroupNorm(2, 4))
    use_weight_standardization(holder)
    ws = holder[0]
    assert isinstance(ws, WSConv2d) and ws.weight is conv.weight and ws.bias is conv.bias
    assert sorted(holder.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(ws(x), F.conv2d(x, standardize_weight(conv.weight), conv.bias, padding=1))
    # a deformable conv followed by GroupNorm standardises its weight too
    net = use_weight_standardization(build_resnet(ResNetConfig(
        norm="GN", stem_out_channels=32, res2_out_channels=32, width_per_group=32, deform_on_per_stage=(False, True, False, False),
        out_features=("res3",))))
    deform = net.layer2[1].conv2
    assert isinstance(deform, DeformConv2d) and deform.weight_standardization
    y, offset = torch.randn(1, 64, 8, 8), torch.randn(1, 18, 8, 8)
    torch.testing.assert_close(deform(y, offset), deform_conv2d(y, offset, standardize_weight(deform.weight), padding=1))
    # a conv followed by something else than GroupNorm is left alone
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert type(use_weight_standardization(plain)[0]) is nn.Conv2d


def _single_cfg() -> ModelConfig:
    cfg = ModelConfig(num_classes=3, layout="single", mask_on=True)
    cfg.backbone = ResNetConfig(res5_dilation=2, stem_out_channels=4, res2_out_channels=8, width_per_group=2, out_features=("res5",))
    cfg.rpn.in_features, cfg.box_head.in_features = ("res5",), ("res5",)
    cfg.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),)
    cfg.box_head.fc_dim, cfg.mask_head.conv_dim = 16, 16
    return cfg


def test_single_layout_builds_and_runs():
    torch.manual_seed(0)
    model = build_rcnn(_single_cfg(), size_divisibility=1).eval()
    assert model.fpn is None and model.roi_heads.box_pooler.scales == [1 / 16]
    assert model.roi_heads.mask_pooler is not None and model.roi_heads.box_head.fcs[0].in_features == 64 * 7 * 7
    with torch.no_grad():
        out = model.core(torch.randn(1, 3, 100, 140), torch.tensor([[100, 140]]))
    assert out["mask_probs"].shape[1:] == (28, 28) and out["boxes"].shape[1] == 4


def test_single_layout_keypoint_model_runs_and_trains():
    """Keypoint R-CNN on one dilated res5 map (detectron2's keypoint head reads whichever features
    its pooler is given): keypoints come out per detection and the heatmap loss trains the head."""
    from swiftdet.structures import Boxes, Instances, Keypoints

    torch.manual_seed(0)
    cfg = _single_cfg()
    cfg.mask_on, cfg.keypoint_on = False, True
    cfg.keypoint_head.num_keypoints, cfg.keypoint_head.conv_dim, cfg.keypoint_head.num_convs = 3, 16, 2
    cfg.validate()
    model = build_rcnn(cfg, size_divisibility=1).eval()
    assert model.roi_heads.keypoint_pooler.scales == [1 / 16]
    with torch.no_grad():
        out = model.core(torch.randn(1, 3, 100, 140), torch.tensor([[100, 140]]))
    assert out["keypoints"].shape[1:] == (3, 3)
    model.train()
    kps = torch.tensor([[[30.0, 30.0, 2.0], [60.0, 50.0, 2.0], [45.0, 70.0, 1.0]]])
    target = Instances((100, 140), boxes=Boxes(torch.tensor([[20.0, 20.0, 80.0, 90.0]])), labels=torch.tensor([1]),
                       keypoints=Keypoints(kps))
    losses = model(model.preprocess([torch.rand(3, 100, 140) * 255]), [target])
    assert "loss_keypoint" in losses and torch.isfinite(losses["loss_keypoint"])
    losses["loss_keypoint"].backward()
    assert model.roi_heads.keypoint_head.score_lowres.weight.grad.abs().sum() > 0


def test_validation_messages():
    cfg = _single_cfg()
    cfg.box_head.in_features = ("res4",)
    with pytest.raises(ConfigError, match="must both name the same one"):
        build_rcnn(cfg)
    cfg = _single_cfg()
    cfg.rpn.in_features = ("res5", "res4")
    with pytest.raises(ConfigError, match="layout 'single'"):
        build_rcnn(cfg)
    cfg = _single_cfg()
    cfg.weight_standardization = True
    with pytest.raises(ConfigError, match="weight_standardization"):
        cfg.validate()
    cfg = ModelConfig(layout="c4", backbone=ResNetConfig(res5_dilation=2, out_features=("res4",)))
    with pytest.raises(ConfigError, match="res5_dilation must be 1"):
        cfg.validate()
    with pytest.raises(ConfigError, match="multiples of 32"):
        ResNetConfig(norm="GN", stem_out_channels=4).validate()
    with pytest.raises(ConfigError, match="res2_out_channels"):
        ResNetConfig(depth=18, res2_out_channels=64).validate()
    with pytest.raises(ConfigError, match="bottleneck ResNet"):
        ResNetConfig(depth=34, deform_on_per_stage=(False, False, True, False)).validate()
    with pytest.raises(ConfigError, match="apply to deformable stages"):
        ResNetConfig(deform_modulated=True).validate()
    with pytest.raises(ConfigError, match="must divide the bottleneck width"):
        ResNetConfig(deform_on_per_stage=(False, True, False, False), width_per_group=2, deform_num_groups=4).validate()
    ResNetConfig(norm="GN", stem_out_channels=32, res2_out_channels=64, width_per_group=32).validate()
    ModelConfig(mask_on=True, weight_standardization=True,
                backbone=ResNetConfig(norm="GN", stem_out_channels=32, res2_out_channels=64, width_per_group=32)).validate()
