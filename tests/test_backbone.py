"""ResNet, FPN, anchors, box coding and matching agree with torchvision's implementations."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.ops import FrozenBatchNorm2d, feature_pyramid_network as tv_fpn
from torchvision.models._utils import IntermediateLayerGetter

from swiftdet.config.schema import ModelConfig, ResNetConfig
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.backbone import FPN, build_fpn, build_resnet, resnet_state_dict_from_torchvision
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.weights.torchvision_rcnn import fpn_state_dict_from_torchvision


def _randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize(
    "depth,groups,width,tv_fn",
    [(18, 1, 64, torchvision.models.resnet18), (50, 1, 64, torchvision.models.resnet50),
     (50, 4, 8, None)],
)
def test_resnet_matches_torchvision(depth, groups, width, tv_fn):
    torch.manual_seed(0)
    if tv_fn is None:
        tv = torchvision.models.resnet.ResNet(
            torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], groups=groups, width_per_group=width,
            norm_layer=FrozenBatchNorm2d,
        )
    else:
        tv = tv_fn(weights=None, norm_layer=FrozenBatchNorm2d)
    _randomise_norms(tv)
    tv.eval()
    cfg = ResNetConfig(depth=depth, groups=groups, width_per_group=width, out_features=("stem", "res2", "res3", "res4", "res5"))
    ours = build_resnet(cfg).eval()
    ours.load_state_dict(resnet_state_dict_from_torchvision(tv.state_dict()))
    body = IntermediateLayerGetter(tv, {"maxpool": "stem", "layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"})
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = body(x), ours(x)
    assert list(got) == ["stem", "res2", "res3", "res4", "res5"]
    shapes = ours.output_shape()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)
        assert got[name].shape[1] == shapes[name][0]
        assert x.shape[-1] // got[name].shape[-1] == shapes[name][1]


def test_resnet_stops_at_deepest_feature_and_caffe_stride():
    ours = build_resnet(ResNetConfig(depth=50, style="caffe", out_features=("res4",)))
    assert not hasattr(ours, "layer4")
    assert ours.layer2[0].conv1.stride == (2, 2) and ours.layer2[0].conv2.stride == (1, 1)
    tv_style = build_resnet(ResNetConfig(depth=50, out_features=("res4",)))
    assert tv_style.layer2[0].conv1.stride == (1, 1) and tv_style.layer2[0].conv2.stride == (2, 2)
    assert ours(torch.zeros(1, 3, 64, 64))["res4"].shape == (1, 1024, 4, 4)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN", "GN"])
@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freeze_at_and_norms(norm, freeze_at):
    net = build_resnet(ResNetConfig(depth=18, norm=norm, freeze_at=freeze_at))
    stages = [("stem", [net.conv1, net.bn1])] + [(f"res{i + 1}", [getattr(net, f"layer{i}")]) for i in range(1, 5)]
    for k, (name, modules) in enumerate(stages, start=1):
        params = [p for m in modules for p in m.parameters()]
        frozen = k <= freeze_at
        assert all(p.requires_grad != frozen for p in params), (name, norm, freeze_at)
        norms = [m for mod in modules for m in mod.modules() if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
        if norm == "GN":
            assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in norms)
        elif norm == "FrozenBN" or frozen:
            assert all(isinstance(m, FrozenBatchNorm2d) for m in norms)
        else:
            assert all(isinstance(m, torch.nn.BatchNorm2d) for m in norms)
    # A training step leaves frozen stages untouched.
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    out = net(torch.randn(2, 3, 64, 64))
    if trainable:
        opt = torch.optim.SGD(trainable, lr=0.1)
        sum(v.mean() for v in out.values()).backward()
        opt.step()
    after = net.state_dict()
    for k in before:
        stage = 1 if k.startswith(("conv1", "bn1")) else int(k[len("layer")]) + 1
        if stage <= freeze_at:
            assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize(
    "norm,top_block", [("", "maxpool"), ("BN", "maxpool"), ("", "p6p7_p5"), ("", "p6p7_c5")]
)
def test_fpn_matches_torchvision(norm, top_block):
    torch.manual_seed(0)
    in_channels = [16, 32, 64]
    names = ["res3", "res4", "res5"]
    if top_block == "maxpool":
        extra = tv_fpn.LastLevelMaxPool()
    else:
        extra = tv_fpn.LastLevelP6P7(64 if top_block == "p6p7_c5" else 32, 32)
    tv = tv_fpn.FeaturePyramidNetwork(
        in_channels, 32, extra_blocks=extra, norm_layer=torch.nn.BatchNorm2d if norm else None
    )
    for p in tv.parameters():
        p.data.normal_(0, 0.1)
    _randomise_norms(tv)
    tv.eval()
    ours = FPN(in_channels, 32, norm=norm, top_block=top_block, in_features=names, in_strides=[8, 16, 32]).eval()
    ours.load_state_dict(fpn_state_dict_from_torchvision(tv.state_dict(), prefix=""))
    feats = {n: torch.randn(2, c, 40 // 2**i + 1, 52 // 2**i) for i, (n, c) in enumerate(zip(names, in_channels))}
    with torch.no_grad():
        expected = list(tv(dict(feats)).values())
        got = ours(feats)
    want_names = ["p3", "p4", "p5", "p6"] + (["p7"] if top_block != "maxpool" else [])
    assert list(got) == want_names == list(ours.output_shape())
    assert len(expected) == len(got)
    for e, g in zip(expected, got.values()):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_build_fpn_from_config():
    cfg = ModelConfig()
    backbone = build_resnet(ResNetConfig(depth=18))
    fpn = build_fpn(cfg, backbone.output_shape())
    out = fpn(backbone(torch.zeros(1, 3, 64, 96)))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)
    }


def test_anchors_match_torchvision():
    sizes = ((32.0,), (64.0, 80.0), (128.0,))
    ratios = ((0.5, 1.0, 2.0),) * 3
    tv = TVAnchorGenerator(sizes, ratios)
    ours = AnchorGenerator(sizes, ratios[0])
    images = torch.zeros(2, 3, 96, 160)
    feats = [torch.zeros(2, 8, 24, 40), torch.zeros(2, 8, 12, 20), torch.zeros(2, 8, 6, 10)]
    expected = tv(TVImageList(images, [(90, 150), (96, 160)]), feats)
    got = ours(images, feats)
    assert len(expected) == 2
    for e in expected:
        assert torch.equal(e, got)
    assert ours(images, feats) is got  # cached
    assert ours.num_anchors_per_location() == [3, 6, 3]


def test_box_coder_matches_torchvision():
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 100
    boxes = torch.cat([xy, xy + torch.rand(50, 2) * 50 + 1], dim=1)
    xy2 = torch.rand(50, 2) * 100
    gt = torch.cat([xy2, xy2 + torch.rand(50, 2) * 50 + 1], dim=1)
    weights = (10.0, 10.0, 5.0, 5.0)
    tv = tv_utils.BoxCoder(weights)
    ours = BoxCoder(weights)
    assert torch.equal(ours.encode(gt, boxes), tv.encode_single(gt, boxes))
    codes = torch.randn(50, 12) * 3
    assert torch.equal(ours.decode(codes, boxes), tv.decode_single(codes, boxes))
    assert ours.bbox_xform_clip == pytest.approx(math.log(1000.0 / 16))


def test_matcher_and_sampler_match_torchvision():
    torch.manual_seed(0)
    iou = torch.rand(6, 200)
    iou[2, 17] = 0.95
    for low_quality in (False, True):
        tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
        ours = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
        assert torch.equal(ours(iou), tv(iou))
    assert torch.equal(Matcher(0.5, 0.5)(torch.zeros(0, 5)), torch.full((5,), -1))

    labels = [torch.tensor([1] * 30 + [0] * 100 + [-1] * 20), torch.tensor([0] * 10 + [2] * 3)]
    torch.manual_seed(1)
    tv_pos, tv_neg = tv_utils.BalancedPositiveNegativeSampler(64, 0.25)(labels)
    torch.manual_seed(1)
    pos, neg = BalancedPositiveNegativeSampler(64, 0.25)(labels)
    for a, b in zip(pos + neg, tv_pos + tv_neg):
        assert torch.equal(a, b.bool())
    assert int(pos[0].sum()) == 16 and int(neg[0].sum()) == 48
    assert int(pos[1].sum()) == 3 and int(neg[1].sum()) == 10


@pytest.mark.parametrize("top_block", ["maxpool", "p6p7_c5"])
def test_fpn_consume_releases_each_input_after_its_lateral(top_block):
    """A caller that hands over its dict (consume=True) gets the same pyramid, its dict emptied of the
    levels, and the finest level freed before P2's output conv runs (inference: nothing else holds it)."""
    import weakref

    torch.manual_seed(0)
    fpn = FPN([8, 16, 32], 8, top_block=top_block, in_features=("res3", "res4", "res5"), in_strides=(8, 16, 32)).eval()
    shapes = {"res3": (1, 8, 16, 16), "res4": (1, 16, 8, 8), "res5": (1, 32, 4, 4)}
    inputs = {k: torch.randn(s) for k, s in shapes.items()}
    with torch.no_grad():
        expected = fpn({k: v.clone() for k, v in inputs.items()})
        finest = weakref.ref(inputs["res3"])
        alive_at_p3 = []
        hook = fpn.output_convs[0].register_forward_pre_hook(lambda m, x: alive_at_p3.append(finest() is not None))
        handed_over = dict(inputs, other=torch.zeros(1))
        del inputs
        got = fpn(handed_over, consume=True)
        hook.remove()
    assert list(handed_over) == ["other"]
    assert alive_at_p3 == [False]
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
