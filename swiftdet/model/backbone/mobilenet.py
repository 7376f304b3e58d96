"""MobileNetV3-Large trunk (torchvision's ``mobilenet_v3_large(...).features``) returning named features.

Layout. ``MobileNetV3.features`` is a ModuleList indexed exactly like torchvision's
``mobilenet_v3_large().features`` Sequential:

    index 0       stem: 3x3/s2 conv, norm, hardswish                    (16 ch, stride 2)
    index 1..15   inverted residual blocks (:class:`InvertedResidual`)  (strided: 2, 4, 7, 13)
    index 16      last 1x1 conv, norm, hardswish                        (960 ch, 480 with reduced_tail)

Each block has the children ``expand`` (1x1 conv, absent in block 1 whose expansion equals its
input), ``depthwise`` (kxk depthwise conv), ``se`` (squeeze-excitation, blocks 4-6 and 11-15) and
``project`` (1x1 conv, no activation); every conv unit is ``conv`` + ``norm``. Stages, as
torchvision's detection extractors count them, start at blocks (0, 2, 4, 7, 13, 16).

Taking features. Pass feature names in ``out_features``; ``forward(x)`` returns a dict with exactly
those keys, and ``output_shape()`` gives ``{name: (channels, stride)}``:

- ``"block<i>"``: the output of ``features[i]`` (i in 0..16). torchvision's FPN extractor takes
  ``"block13"`` (C4 stage output, 160 ch) and ``"block16"`` (last conv, 960 ch), both stride 32.
- ``"block<i>_expand"``: the output of block i's expansion conv (after its activation), inside the
  block (i in 2..15). SSDlite's "C4" is ``"block13_expand"`` (672 ch, stride 16), its second map
  ``"block16"``.

The trunk is built only up to the deepest block named. Another module that needs to run the rest
of the network itself (e.g. split at C4's expansion) can call ``features[i]`` directly, and
``InvertedResidual.forward_with_expansion`` returns a block's output and its expansion together.

Weights. :func:`mobilenet_v3_state_dict_from_torchvision` renames torchvision's keys
(``features.<i>.<j>.*`` for the stem/last conv, ``features.<i>.block.<j>.*`` for blocks) to ours
(``features.<i>.conv|norm.*``, ``features.<i>.expand|depthwise|se|project.*``) and drops the
classifier, so an ImageNet classification checkpoint and the backbone of torchvision's detection
models both load with it.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.config.schema import ResNetConfig
from swiftdet.model.layers import conv_norm_act

__all__ = [
    "InvertedResidual",
    "MobileNetV3",
    "SqueezeExcitation",
    "build_mobilenet_v3",
    "mobilenet_v3_feature_names",
    "mobilenet_v3_state_dict_from_torchvision",
]

# MobileNetV3-Large blocks 1..15 (paper table 1): kernel, expanded channels, output channels,
# squeeze-excitation, activation, stride. Blocks 13-15 are halved by reduced_tail and dilated by
# `dilated` (torchvision's C4 stage).
_LARGE_BLOCKS = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)
_TAIL = (13, 14, 15)  # the blocks reduced_tail and dilated change
STAGE_STARTS = (0, 2, 4, 7, 13, 16)  # first block of each stage; freeze_at=k freezes the first k stages
NUM_FEATURES = 17


def _make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to a multiple of ``divisor`` (at least ``divisor``), never below 90% of it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _norm(name: str, channels: int, eps: float, momentum: float) -> nn.Module:
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=eps)
    if name == "BN":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels, eps=eps, momentum=momentum)
    raise ValueError(f"MobileNetV3 norm must be 'FrozenBN', 'BN' or 'SyncBN', got {name!r}")


class ConvNormActivation(nn.Module):
    """Conv2d (no bias), norm, then ReLU, hardswish or nothing (``activation`` "relu", "hardswish", "")."""

    conv_norm_pairs = (("conv", "norm"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: tuple[str, float, float],
        activation: str,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
        )
        self.norm = _norm(norm[0], out_channels, norm[1], norm[2])
        self.activation = activation

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """``activation(norm(conv(x)) + residual)``."""
        return conv_norm_act(self.conv, self.norm, x, self.activation, residual)


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(mean over H, W of x)))); fc1/fc2 are 1x1 convs with bias."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale), inplace=True)), inplace=True)
        return x * scale


class InvertedResidual(nn.Module):
    """[1x1 expand], kxk depthwise, [squeeze-excitation], 1x1 project; plus the input when the block
    keeps stride 1 and its channel count.

    ``dilation`` > 1 replaces the stride by that dilation of the depthwise conv (as torchvision).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        norm: tuple[str, float, float],
    ):
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = None
        if expanded_channels != in_channels:
            self.expand = ConvNormActivation(in_channels, expanded_channels, 1, norm=norm, activation=activation)
        self.depthwise = ConvNormActivation(
            expanded_channels,
            expanded_channels,
            kernel_size,
            norm=norm,
            activation=activation,
            stride=1 if dilation > 1 else stride,
            groups=expanded_channels,
            dilation=dilation,
        )
        self.se = SqueezeExcitation(expanded_channels, _make_divisible(expanded_channels // 4)) if use_se else None
        self.project = ConvNormActivation(expanded_channels, out_channels, 1, norm=norm, activation="")
        self.out_channels = out_channels
        self.expanded_channels = expanded_channels

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_out, H', W') block output and (B, C_exp, H, W) output of the expansion conv
        (the input itself when the block has no expansion)."""
        expanded = x if self.expand is None else self.expand(x)
        out = self.depthwise(expanded)
        if self.se is not None:
            out = self.se(out)
        return self.project(out, residual=x if self.use_residual else None), expanded

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_expansion(x)[0]


def _parse_name(name: str) -> tuple[int, bool]:
    """("block13_expand") -> (13, True); ("block16") -> (16, False)."""
    base, _, suffix = name.partition("_")
    return int(base[len("block"):]), suffix == "expand"


def mobilenet_v3_feature_names() -> tuple[str, ...]:
    """Every feature name a MobileNetV3-Large can return: block0..block16, block2_expand..block15_expand."""
    names = [f"block{i}" for i in range(NUM_FEATURES)]
    names += [f"block{i}_expand" for i in range(2, 16)]
    return tuple(names)


class MobileNetV3(nn.Module):
    """MobileNetV3-Large up to the deepest block named in ``out_features`` (names: module docstring).

    Args:
        out_features: feature names ``forward`` returns.
        norm: "FrozenBN" (fixed statistics; torchvision's detection models with pretrained weights),
            "BN" or "SyncBN".
        norm_eps, norm_momentum: of every norm layer. torchvision's Faster R-CNN uses 1e-5 (and
            BN's momentum 0.1); its ImageNet classifier trains with BN eps 1e-3, momentum 0.01;
            SSDlite with eps 1e-3, momentum 0.03.
        reduced_tail: halve the channels of blocks 13-15 and the last conv (paper table 6).
        dilated: blocks 13-15 keep stride 16 with dilation 2 instead of striding to 32.
        freeze_at: freeze the parameters of the first k stages (0..6; stages start at blocks
            0, 2, 4, 7, 13, 16), i.e. torchvision's ``trainable_layers = 6 - k``. A frozen stage with
            "BN"/"SyncBN" gets FrozenBN so its statistics stay fixed too.

    ``forward(x)``: (B, 3, H, W) normalised images -> {name: (B, C, H / stride, W / stride)}.
    """

    def __init__(
        self,
        out_features: Sequence[str] = ("block16",),
        norm: str = "FrozenBN",
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
        reduced_tail: bool = False,
        dilated: bool = False,
        freeze_at: int = 0,
    ):
        super().__init__()
        valid = set(mobilenet_v3_feature_names())
        bad = [f for f in out_features if f not in valid]
        if bad or not out_features:
            raise ValueError(f"MobileNetV3: unknown out_features {bad or list(out_features)}; valid: block0..block16, "
                             "block2_expand..block15_expand")
        if not 0 <= freeze_at <= len(STAGE_STARTS):
            raise ValueError(f"MobileNetV3: freeze_at must be in 0..{len(STAGE_STARTS)}, got {freeze_at}")
        self.out_features = tuple(out_features)
        wanted = [_parse_name(f) for f in self.out_features]
        self._expand_wanted = {i for i, expand in wanted if expand}
        deepest = max(i for i, _ in wanted)
        freeze_before = NUM_FEATURES if freeze_at == len(STAGE_STARTS) else STAGE_STARTS[freeze_at]

        def norm_of(index: int) -> tuple[str, float, float]:
            frozen = index < freeze_before and norm in ("BN", "SyncBN")
            return ("FrozenBN" if frozen else norm, norm_eps, norm_momentum)

        divider = 2 if reduced_tail else 1
        features: list[nn.Module] = [
            ConvNormActivation(3, 16, 3, norm=norm_of(0), activation="hardswish", stride=2)
        ]
        self._shapes = {"block0": (16, 2)}
        stride, channels = 2, 16
        for index, (k, expanded, out, use_se, act, s) in enumerate(_LARGE_BLOCKS, start=1):
            if index > deepest:
                break
            dilation = 1
            if index in _TAIL:
                expanded = expanded if index == 13 else expanded // divider
                out //= divider
                dilation = 2 if dilated else 1
            block = InvertedResidual(channels, k, expanded, out, use_se, act, s, dilation, norm_of(index))
            # the expansion runs before the block's stride; a dilated block does not stride
            self._shapes[f"block{index}_expand"] = (expanded, stride)
            if dilation == 1:
                stride *= s
            self._shapes[f"block{index}"] = (out, stride)
            features.append(block)
            channels = out
        if deepest == NUM_FEATURES - 1:
            last = 6 * channels
            features.append(ConvNormActivation(channels, last, 1, norm=norm_of(16), activation="hardswish"))
            self._shapes["block16"] = (last, stride)
        self.features = nn.ModuleList(features)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for block in self.features[:freeze_before]:
            for p in block.parameters():
                p.requires_grad_(False)

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """{feature name: (channels, stride)} for every name in ``out_features``."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = {}
        for index, module in enumerate(self.features):
            if index in self._expand_wanted:
                x, expanded = module.forward_with_expansion(x)
                outputs[f"block{index}_expand"] = expanded
            else:
                x = module(x)
            outputs[f"block{index}"] = x
        return {name: outputs[name] for name in self.out_features}


def build_mobilenet_v3(cfg: ResNetConfig) -> MobileNetV3:
    """The MobileNetV3-Large of ``cfg`` (``model.backbone`` with name "mobilenet_v3_large"),
    randomly initialised; load ImageNet weights separately."""
    cfg.validate()
    return MobileNetV3(
        cfg.out_features,
        norm=cfg.norm,
        norm_eps=cfg.norm_eps,
        norm_momentum=cfg.norm_momentum,
        reduced_tail=cfg.reduced_tail,
        dilated=cfg.dilated,
        freeze_at=cfg.freeze_at,
    )


def _block_children(index: int) -> list[str]:
    """Our child names of block ``index`` in the order torchvision's ``block`` Sequential holds them."""
    k, expanded, out, use_se, _, _ = _LARGE_BLOCKS[index - 1]
    in_channels = 16 if index == 1 else _LARGE_BLOCKS[index - 2][2]
    names = ["expand"] if expanded != in_channels else []
    names.append("depthwise")
    if use_se:
        names.append("se")
    names.append("project")
    return names


def _rename_unit(rest: list[str]) -> list[str] | None:
    """Our key parts for torchvision's parts after ``features.`` (None when they are not MobileNetV3-Large's)."""
    unit = {"0": "conv", "1": "norm"}
    if len(rest) < 3 or not rest[0].isdigit() or not 0 <= int(rest[0]) < NUM_FEATURES:
        return None
    index = int(rest[0])
    if index in (0, NUM_FEATURES - 1):
        return [rest[0], unit[rest[1]], *rest[2:]] if rest[1] in unit else None
    children = _block_children(index)
    if rest[1] != "block" or not rest[2].isdigit() or int(rest[2]) >= len(children) or len(rest) < 4:
        return None
    child = children[int(rest[2])]
    if child == "se":
        return [rest[0], child, *rest[3:]]
    return [rest[0], child, unit[rest[3]], *rest[4:]] if rest[3] in unit else None


def mobilenet_v3_state_dict_from_torchvision(sd: dict[str, Tensor], prefix: str = "features.") -> dict[str, Tensor]:
    """torchvision MobileNetV3-Large keys under ``prefix`` renamed to :class:`MobileNetV3` keys
    (``features.<i>...``); keys outside ``prefix`` (the classifier) are dropped.

    ``prefix`` is "features." for an ImageNet ``mobilenet_v3_large`` checkpoint and "backbone.body."
    for torchvision's Faster R-CNN MobileNet models. Unit indices map as: stem / last conv
    ``<i>.0`` -> ``<i>.conv``, ``<i>.1`` -> ``<i>.norm``; blocks ``<i>.block.<j>.0|1`` ->
    ``<i>.<expand|depthwise|project>.conv|norm`` and ``<i>.block.<j>.fc1|fc2`` -> ``<i>.se.fc1|fc2``.
    A key under ``prefix`` that is not MobileNetV3-Large's keeps its name after the prefix (so a
    loader reports it as unexpected rather than this function guessing).
    """
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):].split(".")
        new = _rename_unit(rest)
        out["features." + ".".join(new) if new is not None else ".".join(rest)] = value
    return out
