"""Convert torchvision's Faster/Mask R-CNN checkpoints (v1 and v2) into swiftdet's R-CNN.

Key names map by a short rename table; the class-dependent rows of the box and mask predictors
are selected when a 91-way torchvision COCO head (index = COCO category id, 0 = background) meets
an 80-class config.
"""
from __future__ import annotations

import re

from swiftdet.model.backbone.resnet import resnet_state_dict_from_torchvision

__all__ = ["fpn_state_dict_from_torchvision", "resnet_state_dict_from_torchvision"]

# torchvision >= 0.13 wraps convs in Conv2dNormActivation (index 0 conv, 1 norm); older releases
# used bare Conv2d (no index). Both are accepted.
_FPN_RULES = [
    (re.compile(r"^inner_blocks\.(\d+)\.0\."), r"lateral_convs.\1.conv."),
    (re.compile(r"^inner_blocks\.(\d+)\.1\."), r"lateral_convs.\1.norm."),
    (re.compile(r"^inner_blocks\.(\d+)\.(weight|bias)$"), r"lateral_convs.\1.conv.\2"),
    (re.compile(r"^layer_blocks\.(\d+)\.0\."), r"output_convs.\1.conv."),
    (re.compile(r"^layer_blocks\.(\d+)\.1\."), r"output_convs.\1.norm."),
    (re.compile(r"^layer_blocks\.(\d+)\.(weight|bias)$"), r"output_convs.\1.conv.\2"),
    (re.compile(r"^extra_blocks\.(p6|p7)\."), r"top_block.\1."),
]


def _rename(key: str, rules: list) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return None


def fpn_state_dict_from_torchvision(sd: dict, prefix: str = "backbone.fpn.") -> dict:
    """The entries of torchvision ``FeaturePyramidNetwork`` (under ``prefix``) renamed to :class:`FPN` keys.

    Keys outside ``prefix`` are ignored; a key inside it that has no counterpart raises KeyError.
    """
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        new = _rename(key[len(prefix):], _FPN_RULES)
        if new is None:
            raise KeyError(f"no swiftdet FPN counterpart for torchvision key {key!r}")
        out[new] = value
    return out
