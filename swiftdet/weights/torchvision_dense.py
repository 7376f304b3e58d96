"""Convert torchvision's RetinaNet (v1, v2) and FCOS checkpoints into swiftdet's dense detectors.

Backbone and FPN keys map as for the R-CNN converter; head keys map by a short rename table. The
class rows of the classification conv are selected when a 91-way torchvision COCO head (row k is
COCO category id k) meets an 80-class config. Every key of the file must find a place in the model
and every key of the model must be filled, otherwise the file is of another architecture.
"""
from __future__ import annotations

import re

from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import WeightsError
from swiftdet.weights.torchvision_heads import (
    check_converted_keys,
    check_converted_shapes,
    expected_state,
    select_class_rows,
)
from swiftdet.weights.torchvision_rcnn import fpn_state_dict_from_torchvision

__all__ = ["convert_dense_state_dict"]

_TV_HEADS = {"retinanet": "torchvision retinanet_resnet50_fpn(_v2)", "fcos": "torchvision fcos_resnet50_fpn"}

# (torchvision head sub-key pattern, swiftdet name) for both architectures. Tower convs come as
# "conv.<i>.0|1.*" (Conv2dNormActivation, RetinaNet since torchvision 0.13) or "conv.<j>.*" (a flat
# Sequential: FCOS, and RetinaNet checkpoints saved before 0.13); see _tower_index.
_HEAD_RENAMES = {
    "classification_head.cls_logits.": "cls_score.",
    "regression_head.bbox_reg.": "bbox_pred.",
    "regression_head.bbox_ctrness.": "ctrness.",
}
_TOWERS = {"classification_head.conv.": "cls_tower.", "regression_head.conv.": "box_tower."}
_NESTED = re.compile(r"^(\d+)\.([01])\.(.+)$")
_FLAT = re.compile(r"^(\d+)\.(.+)$")


def _tower_key(rest: str, step: int) -> str | None:
    """Map a torchvision tower sub-key to the flat tower index of :func:`conv_tower`."""
    m = _NESTED.match(rest)
    if m:
        return f"{int(m.group(1)) * step + int(m.group(2))}.{m.group(3)}"
    m = _FLAT.match(rest)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return None


def _head_key(rest: str, step: int) -> str | None:
    for src, dst in _HEAD_RENAMES.items():
        if rest.startswith(src):
            return dst + rest[len(src):]
    for src, dst in _TOWERS.items():
        if rest.startswith(src):
            sub = _tower_key(rest[len(src):], step)
            return None if sub is None else dst + sub
    return None


def convert_dense_state_dict(tv_state_dict: dict, cfg: ModelConfig) -> dict:
    """swiftdet state dict of the RetinaNet/FCOS of ``cfg`` from a torchvision one.

    Args:
        tv_state_dict: state dict of torchvision's ``retinanet_resnet50_fpn``,
            ``retinanet_resnet50_fpn_v2`` or ``fcos_resnet50_fpn`` (any num_classes).
        cfg: the model config, ``arch`` "retinanet" or "fcos", matching the file's variant.
    Raises:
        WeightsError: the file does not fit the model of ``cfg`` (keys missing or left over,
            shapes differing, class counts that cannot be mapped).
    """
    if cfg.arch not in _TV_HEADS:
        raise WeightsError(f"convert_dense_state_dict converts RetinaNet/FCOS weights, but model.arch is '{cfg.arch}'.")
    what = _TV_HEADS[cfg.arch]
    head_cfg = cfg.retinanet if cfg.arch == "retinanet" else cfg.fcos
    step = 3 if head_cfg.norm == "GN" else 2
    if cfg.arch == "retinanet":
        num_anchors = len(head_cfg.anchors.sizes[0]) * len(head_cfg.anchors.aspect_ratios)
    else:
        num_anchors = 1

    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in tv_state_dict.items():
        if key.startswith("backbone.body."):
            out["backbone." + key[len("backbone.body."):]] = value
        elif key.startswith("head."):
            new = _head_key(key[len("head."):], step)
            if new is None:
                unexpected.append(key)
            else:
                out["head." + new] = value
        elif not key.startswith("backbone.fpn."):
            unexpected.append(key)
    try:
        out.update({"fpn." + k: v for k, v in fpn_state_dict_from_torchvision(tv_state_dict).items()})
    except KeyError as err:
        unexpected.append(str(err))

    expected = expected_state(cfg)
    check_converted_keys(out, unexpected, expected, what, f"model.arch='{cfg.arch}'",
                         "v1 vs v2: model.retinanet.norm, model.fpn.top_block")
    for key in ("head.cls_score.weight", "head.cls_score.bias"):
        out[key] = select_class_rows(out[key], num_anchors, cfg.num_classes, key, background=False,
                                     layout_hint="model.retinanet.anchors")
    check_converted_shapes(out, expected, what, "model.backbone.depth, model.fpn.top_block and model.num_classes")
    return out
