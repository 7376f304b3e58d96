"""Feature Pyramid Network on top of a bottom-up backbone's named features.

Semantics follow torchvision's ``FeaturePyramidNetwork``: a 1x1 lateral conv per input level and a
3x3 output conv per level, top-down merge by nearest upsampling to the exact lateral size, then an
optional top block adding coarser levels. Outputs are named "p<k>" for stride 2**k; a further input
level at a stride already taken is "p<k>_2", "p<k>_3".. (MobileNetV3's two last stages are both at
stride 32: outputs p5, p5_2 and the pooled p6, torchvision's "0", "1", "pool").
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from swiftdet.config.schema import ModelConfig
from swiftdet.model.layers import ConvNormAct
from swiftdet.model.tracing import is_tracing

__all__ = ["FPN", "LastLevelP6P7", "build_fpn"]


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/s2 of its input (C5 or P5), P7 = conv3x3/s2 of relu(P6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p6 = self.p6(x)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """Feature pyramid.

    Args:
        in_channels_list: channels of each input level, finest first.
        out_channels: channels of every output level.
        norm: "" (convs with bias) or "BN"/"GN" after each conv (torchvision's v2 uses BN).
        top_block: "none", "maxpool" (P6 = max_pool2d(P5, 1, stride 2)), "p6p7_c5" or "p6p7_p5"
            (P6, P7 by strided convs from the coarsest input feature or from P5).
        in_features: names of the input levels in the features dict, finest first.
        in_strides: their strides (powers of two); output "p<log2 stride>".
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels: int,
        norm: str = "",
        top_block: str = "maxpool",
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        in_strides: Sequence[int] = (4, 8, 16, 32),
    ):
        super().__init__()
        if not (len(in_channels_list) == len(in_features) == len(in_strides)):
            raise ValueError("FPN: in_channels_list, in_features and in_strides must have the same length")
        self.in_features = tuple(in_features)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, activation=False) for c in in_channels_list
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, activation=False) for _ in in_channels_list
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        levels = [int(math.log2(s)) for s in in_strides]
        self.top_block_name = top_block
        if top_block in ("p6p7_c5", "p6p7_p5"):
            src_channels = in_channels_list[-1] if top_block == "p6p7_c5" else out_channels
            self.top_block = LastLevelP6P7(src_channels, out_channels)
            levels += [levels[-1] + 1, levels[-1] + 2]
        elif top_block == "maxpool":
            self.top_block = None
            levels.append(levels[-1] + 1)
        elif top_block == "none":
            self.top_block = None
        else:
            raise ValueError(f"unknown FPN top_block {top_block!r}")
        names: list[str] = []
        for k in levels:
            repeat = sum(1 for j in levels[: len(names)] if j == k)
            names.append(f"p{k}" if repeat == 0 else f"p{k}_{repeat + 1}")
        self.out_features = tuple(names)
        self._strides = {name: 2**k for name, k in zip(names, levels)}
        self.out_channels = out_channels

    def output_shape(self) -> dict[str, tuple[int, int]]:
        """{output name: (channels, stride)}."""
        return {name: (self.out_channels, self._strides[name]) for name in self.out_features}

    def forward(self, features: dict[str, Tensor], consume: bool = False) -> dict[str, Tensor]:
        """{"p<k>": (B, out_channels, H_k, W_k)} from the bottom-up features, finest first.

        With ``consume`` (for a caller that hands over a dict it does not read again), the input
        levels are taken out of ``features`` and each is let go once its lateral conv has read it:
        in inference the finest one (62 MB at 800x1216) is then freed before P2's output conv runs,
        instead of living to the end of the pyramid."""
        xs: list[Tensor | None] = [features.pop(f) if consume else features[f] for f in self.in_features]
        c5 = xs[-1] if self.top_block_name == "p6p7_c5" else None
        last_inner = self.lateral_convs[-1](xs[-1])
        xs[-1] = None
        results = [self.output_convs[-1](last_inner)]
        for i in range(len(xs) - 2, -1, -1):
            last_inner = _add_upsampled(self.lateral_convs[i](xs[i]), last_inner)
            xs[i] = None
            results.insert(0, self.output_convs[i](last_inner))
        del last_inner
        if self.top_block_name == "maxpool":
            results.append(F.max_pool2d(results[-1], 1, 2, 0))
        elif self.top_block is not None:
            results.extend(self.top_block(c5 if c5 is not None else results[-1]))
        return dict(zip(self.out_features, results))


def _add_upsampled(lateral: Tensor, coarse: Tensor) -> Tensor:
    """``lateral + interpolate(coarse, size=lateral's, mode="nearest")``, summed into ``lateral``
    (a fresh conv output; no autograd function it went through needs it back). Where ``lateral`` is
    exactly twice ``coarse``'s size (inputs padded to a multiple of the coarsest stride), ``coarse``
    is added through a broadcast view of 2x2 blocks: nearest upsampling by 2 repeats each value on
    one block, so the upsampled map, a full-resolution temporary (62 MB at P2 of 800x1216), is never
    made. Same values, bit for bit."""
    (h, w), (hc, wc) = lateral.shape[-2:], coarse.shape[-2:]
    if is_tracing() or (h, w) != (2 * hc, 2 * wc):
        return lateral.add_(F.interpolate(coarse, size=(h, w), mode="nearest"))
    blocks = lateral.unflatten(3, (wc, 2)).unflatten(2, (hc, 2))  # (B, C, Hc, 2, Wc, 2), a view
    blocks.add_(coarse[:, :, :, None, :, None])
    return lateral


def build_fpn(cfg: ModelConfig, bottom_up_shapes: dict[str, tuple[int, int]]) -> FPN:
    """FPN over ``cfg.fpn.in_features`` of a backbone with ``bottom_up_shapes`` = {name: (channels, stride)}."""
    names = cfg.fpn.in_features
    return FPN(
        [bottom_up_shapes[n][0] for n in names],
        cfg.fpn.out_channels,
        norm=cfg.fpn.norm,
        top_block=cfg.fpn.top_block,
        in_features=names,
        in_strides=[bottom_up_shapes[n][1] for n in names],
    )
