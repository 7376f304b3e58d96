"""ResNet and ResNeXt backbones returning named multi-scale features.

Parameter names follow torchvision's ``resnet*`` models (``conv1``, ``bn1``, ``layer1``..``layer4``,
``downsample.0/1``) so an ImageNet checkpoint loads after dropping ``fc.*``. Feature names are
detectron2's: "stem" (stride 4, after the max-pool), "res2".."res5" (strides 4..32).
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from swiftdet.config.schema import ResNetConfig
from swiftdet.model.layers import get_norm

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "build_resnet", "make_resnet_stage", "resnet_state_dict_from_torchvision"]

_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _downsample(in_channels: int, out_channels: int, stride: int, norm: str, eps: float) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), get_norm(norm, out_channels, eps)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, planes: int, stride: int, norm: str, norm_eps: float = 1e-5, **_unused):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = get_norm(norm, planes, norm_eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = get_norm(norm, planes, norm_eps)
        self.downsample = _downsample(in_channels, planes, stride, norm, norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu_(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu_(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand.

    ``stride_in_1x1`` puts the stride on the first 1x1 conv (caffe / MSRA style) instead of the
    3x3 conv (torchvision style).
    """

    expansion = 4
    conv_norm_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int,
        norm: str,
        norm_eps: float = 1e-5,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_channels = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=s1, bias=False)
        self.bn1 = get_norm(norm, width, norm_eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = get_norm(norm, width, norm_eps)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = get_norm(norm, out_channels, norm_eps)
        self.downsample = _downsample(in_channels, out_channels, stride, norm, norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu_(out + identity)


def _stage_norm(cfg: ResNetConfig, stage: int) -> str:
    """Norm of stage ``stage`` (1 = stem, 2..5 = res2..res5): frozen stages get FrozenBN.

    A frozen BatchNorm must not update its running statistics in training mode, so frozen
    stages use FrozenBatchNorm2d (same checkpoint keys, minus num_batches_tracked).
    """
    if stage <= cfg.freeze_at and cfg.norm in ("BN", "SyncBN"):
        return "FrozenBN"
    return cfg.norm


def make_resnet_stage(cfg: ResNetConfig, stage: int) -> tuple[nn.Sequential, int]:
    """Stage ``stage`` (2..5) of the ResNet described by ``cfg``, and its output channels.

    Used by :class:`ResNet` and by the C4 RoI head, which runs res5 on pooled regions.
    """
    block = BasicBlock if cfg.depth in (18, 34) else Bottleneck
    planes = 64 * 2 ** (stage - 2)
    in_channels = 64 if stage == 2 else planes // 2 * block.expansion
    stride = 1 if stage == 2 else 2
    norm = _stage_norm(cfg, stage)
    blocks = []
    for i in range(_BLOCKS_PER_STAGE[cfg.depth][stage - 2]):
        blocks.append(
            block(
                in_channels,
                planes,
                stride if i == 0 else 1,
                norm,
                norm_eps=cfg.norm_eps,
                groups=cfg.groups,
                width_per_group=cfg.width_per_group,
                stride_in_1x1=cfg.style == "caffe",
            )
        )
        in_channels = planes * block.expansion
    stage_module = nn.Sequential(*blocks)
    _init_and_freeze(stage_module, frozen=stage <= cfg.freeze_at)
    return stage_module, in_channels


def _init_and_freeze(module: nn.Module, frozen: bool) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
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
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = get_norm(_stage_norm(cfg, 1), 64, cfg.norm_eps)
        _init_and_freeze(self, frozen=cfg.freeze_at >= 1)
        deepest = max((_STAGE_NAMES.index(f) + 2 for f in self.out_features if f != "stem"), default=1)
        self._channels = {"stem": 64}
        self.num_stages = deepest - 1
        for stage in range(2, deepest + 1):
            layer, channels = make_resnet_stage(cfg, stage)
            self.add_module(f"layer{stage - 1}", layer)
            self._channels[f"res{stage}"] = channels

    conv_norm_pairs = (("conv1", "bn1"),)

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """{feature name: (channels, stride)} for every name in ``out_features``."""
        return {name: (self._channels[name], _STRIDES[name]) for name in self.out_features}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = {}
        x = F.relu_(self.bn1(self.conv1(x)))
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
