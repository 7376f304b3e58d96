"""ResNet and ResNeXt backbones returning named multi-scale features.

Parameter names follow torchvision's ``resnet*`` models (``conv1``, ``bn1``, ``layer1``..``layer4``,
``downsample.0/1``) so an ImageNet checkpoint loads after dropping ``fc.*``. Feature names are
detectron2's: "stem" (stride 4, after the max-pool), "res2".."res5" (strides 4..32; res5 at 16 with
``res5_dilation=2``). Widths (``stem_out_channels``, ``res2_out_channels``), dilation and deformable
stages follow detectron2's ``build_resnet_backbone``; a deformable block's offsets come from its
``conv2_offset`` conv and its ``conv2`` is a :class:`~swiftdet.model.layers.DeformConv2d`.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from swiftdet.config.schema import ResNetConfig
from swiftdet.model.layers import DeformConv2d, conv_norm, conv_norm_act, get_norm

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "build_resnet", "make_resnet_stage", "resnet_state_dict_from_torchvision",
           "stage_out_channels"]

_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _downsample(in_channels: int, out_channels: int, stride: int, norm: str, eps: float) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), get_norm(norm, out_channels, eps)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str, norm_eps: float = 1e-5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = get_norm(norm, out_channels, norm_eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = get_norm(norm, out_channels, norm_eps)
        self.downsample = _downsample(in_channels, out_channels, stride, norm, norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = conv_norm_act(self.conv1, self.bn1, x)
        return conv_norm_act(self.conv2, self.bn2, out, residual=identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt, dilated in DC5's res5, optionally deformable), 1x1 expand.

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (caffe / MSRA style) instead of the
    3x3 conv (torchvision style). With ``deform`` the 3x3 conv samples at offsets (and, when
    ``deform_modulated``, with a mask) predicted from its input by ``conv2_offset``, a 3x3 conv with
    the same stride and dilation: 18 (27 modulated) outputs per deformable group, zero-initialised
    so a new block starts as a plain conv (detectron2's DeformBottleneckBlock).
    """

    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int,
        norm: str,
        norm_eps: float = 1e-5,
        groups: int = 1,
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform: bool = False,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__()
        width = bottleneck_channels
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=s1, bias=False)
        self.bn1 = get_norm(norm, width, norm_eps)
        if deform:
            per_group = 27 if deform_modulated else 18
            self.conv2_offset = nn.Conv2d(width, per_group * deform_num_groups, 3, stride=s3, padding=dilation, dilation=dilation)
            self.conv2 = DeformConv2d(width, width, 3, stride=s3, padding=dilation, dilation=dilation, groups=groups,
                                      offset_groups=deform_num_groups, modulated=deform_modulated)
        else:
            self.conv2_offset = None
            self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=dilation, dilation=dilation, groups=groups, bias=False)
        self.bn2 = get_norm(norm, width, norm_eps)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = get_norm(norm, out_channels, norm_eps)
        self.downsample = _downsample(in_channels, out_channels, stride, norm, norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_norm(self.downsample[0], self.downsample[1], x)
        out = conv_norm_act(self.conv1, self.bn1, x)
        if self.conv2_offset is None:
            out = conv_norm_act(self.conv2, self.bn2, out)
        else:
            out = F.relu_(self.bn2(self.conv2(out, self.conv2_offset(out))))
        return conv_norm_act(self.conv3, self.bn3, out, residual=identity)


def _stage_norm(cfg: ResNetConfig, stage: int) -> str:
    """Norm of stage ``stage`` (1 = stem, 2..5 = res2..res5): frozen stages get FrozenBN.

    A frozen BatchNorm must not update its running statistics in training mode, so frozen
    stages use FrozenBatchNorm2d (same checkpoint keys, minus num_batches_tracked). A frozen
    GroupNorm stays a GroupNorm (it has no statistics) with its parameters frozen, as in detectron2.
    """
    if stage <= cfg.freeze_at and cfg.norm in ("BN", "SyncBN"):
        return "FrozenBN"
    return cfg.norm


def stage_out_channels(cfg: ResNetConfig, stage: int) -> int:
    """Output channels of stage ``stage`` (1 = stem, 2..5): res2_out_channels * 2**(k - 2) for
    bottlenecks, 64 * 2**(k - 2) for basic blocks (ResNet-18/34)."""
    if stage == 1:
        return cfg.stem_out_channels
    res2 = cfg.res2_out_channels
    if cfg.depth in (18, 34):
        res2 = 64  # validation keeps res2_out_channels at its default for basic blocks
    return res2 * 2 ** (stage - 2)


def make_resnet_stage(cfg: ResNetConfig, stage: int) -> tuple[nn.Sequential, int]:
    """Stage ``stage`` (2..5) of the ResNet described by ``cfg``, and its output channels.

    Used by :class:`ResNet` and by the C4 RoI head, which runs res5 on pooled regions.
    res5 with ``res5_dilation=2`` keeps the stride (1 in its first block) and dilates every 3x3 conv.
    """
    in_channels = stage_out_channels(cfg, stage - 1)
    out_channels = stage_out_channels(cfg, stage)
    dilation = cfg.res5_dilation if stage == 5 else 1
    stride = 1 if stage == 2 or dilation > 1 else 2
    norm = _stage_norm(cfg, stage)
    # bottleneck options (validation keeps them at their defaults for ResNet-18/34's basic blocks)
    bottleneck_channels = cfg.groups * cfg.width_per_group * 2 ** (stage - 2)
    options = dict(groups=cfg.groups, stride_in_1x1=cfg.style == "caffe", dilation=dilation,
                   deform=cfg.deform_on_per_stage[stage - 2], deform_modulated=cfg.deform_modulated,
                   deform_num_groups=cfg.deform_num_groups)
    blocks: list[nn.Module] = []
    for i in range(_BLOCKS_PER_STAGE[cfg.depth][stage - 2]):
        s = stride if i == 0 else 1
        if cfg.depth in (18, 34):
            blocks.append(BasicBlock(in_channels, out_channels, s, norm, norm_eps=cfg.norm_eps))
        else:
            blocks.append(Bottleneck(in_channels, out_channels, bottleneck_channels, s, norm, norm_eps=cfg.norm_eps, **options))
        in_channels = out_channels
    stage_module = nn.Sequential(*blocks)
    _init_and_freeze(stage_module, frozen=stage <= cfg.freeze_at)
    return stage_module, out_channels


def _init_and_freeze(module: nn.Module, frozen: bool) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, DeformConv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    for m in module.modules():
        if isinstance(m, Bottleneck) and m.conv2_offset is not None:
            # zero offsets (and mask logits): a new deformable block starts as the plain conv
            # (mask sigmoid(0) = 0.5 for v2, as in detectron2)
            nn.init.zeros_(m.conv2_offset.weight)
            nn.init.zeros_(m.conv2_offset.bias)
    if frozen:
        for p in module.parameters():
            p.requires_grad_(False)


class ResNet(nn.Module):
    """ResNet trunk up to the deepest stage named in ``out_features``.

    ``forward(x)`` takes (B, 3, H, W) normalised images and returns {name: (B, C, H/s, W/s)} for
    each name in ``out_features``.
    """

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.out_features = tuple(cfg.out_features)
        stem = cfg.stem_out_channels
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(_stage_norm(cfg, 1), stem, cfg.norm_eps)
        _init_and_freeze(self, frozen=cfg.freeze_at >= 1)
        deepest = max((_STAGE_NAMES.index(f) + 2 for f in self.out_features if f != "stem"), default=1)
        self._channels = {"stem": stem}
        self._strides = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32 // cfg.res5_dilation}
        self.num_stages = deepest - 1
        for stage in range(2, deepest + 1):
            layer, channels = make_resnet_stage(cfg, stage)
            self.add_module(f"layer{stage - 1}", layer)
            self._channels[f"res{stage}"] = channels

    conv_norm_pairs = (("conv1", "bn1"),)

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """{feature name: (channels, stride)} for every name in ``out_features``."""
        return {name: (self._channels[name], self._strides[name]) for name in self.out_features}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = {}
        x = conv_norm_act(self.conv1, self.bn1, x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            name = f"res{i + 1}"
            if name in self.out_features:
                outputs[name] = x
        return outputs


def build_resnet(cfg: ResNetConfig) -> ResNet:
    """The ResNet/ResNeXt of ``cfg`` (randomly initialised; load ImageNet weights separately)."""
    cfg.validate()
    return ResNet(cfg)


def resnet_state_dict_from_torchvision(sd: dict) -> dict:
    """Map a torchvision ImageNet ``resnet*``/``resnext*`` state_dict onto :class:`ResNet` keys.

    Names already agree; the classifier (``fc.*``) is dropped. Stages the ResNet does not build
    (e.g. ``layer4.*`` when out_features stops at res4) must be dropped or routed by the caller.
    """
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}
