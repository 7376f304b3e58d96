"""Convert torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` checkpoints into
swiftdet's SSD (``model.arch = "ssd"``, layout by ``model.backbone.name``).

Key mapping (torchvision -> swiftdet):

- SSD300: ``backbone.features.<i>`` (VGG up to conv4_3) and ``backbone.extra.0.<j>`` for j < 7
  (pool4 .. conv5_3) -> ``backbone.features.<i>`` / ``backbone.features.<23 + j>`` (torchvision
  ``vgg16`` indices); ``backbone.extra.0.7.*`` (pool5, fc6, fc7) -> ``extras.fc.*``;
  ``backbone.scale_weight`` -> ``extras.l2_scale``; ``backbone.extra.<k>`` -> ``extras.blocks.<k-1>``.
- SSDlite: ``backbone.features.0.<i>`` (blocks 0..12, then block 13's expansion) and
  ``backbone.features.1.*`` (the rest of block 13, blocks 14..16) are put back into
  ``mobilenet_v3_large().features`` keys and renamed by the MobileNetV3 backbone's own mapping;
  ``backbone.extra.<k>`` -> ``extras.blocks.<k>``.
- Both: ``head.classification_head.module_list.<l>`` -> ``head.cls_logits.<l>``,
  ``head.regression_head.module_list.<l>`` -> ``head.bbox_reg.<l>``.

The class predictors have K + 1 outputs per box, background first. A torchvision COCO file has 91
(background and the 90 category-id slots); an 80-class config keeps, per box, the background row
and the rows of COCO_CATEGORY_IDS. Every key of the file must find a place in the model and every
key of the model must be filled, otherwise the file is of another architecture.
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

__all__ = ["convert_ssd_state_dict"]

_WHAT = {"vgg16": "torchvision ssd300_vgg16", "mobilenet_v3_large": "torchvision ssdlite320_mobilenet_v3_large"}
_VGG_CONV5_START = 23  # torchvision vgg16().features index of pool4, the first layer of extra.0
_VGG_EXTRA0_FC = 7  # extra.0.<7> is the (pool5, fc6, relu, fc7, relu) Sequential
_C4_BLOCK = 13  # SSDlite splits MobileNetV3 inside this block (after its expansion conv)
_HEADS = {"head.classification_head.module_list.": "head.cls_logits.", "head.regression_head.module_list.": "head.bbox_reg."}


def _vgg_key(key: str) -> str | None:
    m = re.match(r"^backbone\.features\.(\d+)\.(.+)$", key)
    if m:
        return f"backbone.features.{m.group(1)}.{m.group(2)}"
    if key == "backbone.scale_weight":
        return "extras.l2_scale"
    m = re.match(r"^backbone\.extra\.0\.(\d+)\.(.+)$", key)
    if m:
        j = int(m.group(1))
        if j < _VGG_EXTRA0_FC:
            return f"backbone.features.{_VGG_CONV5_START + j}.{m.group(2)}"
        if j == _VGG_EXTRA0_FC:
            return f"extras.fc.{m.group(2)}"
        return None
    m = re.match(r"^backbone\.extra\.(\d+)\.(.+)$", key)
    if m:
        return f"extras.blocks.{int(m.group(1)) - 1}.{m.group(2)}"
    return None


def _mobilenet_classification_key(key: str) -> str | None:
    """An SSDlite trunk key -> the key of torchvision's ``mobilenet_v3_large().features``."""
    m = re.match(r"^backbone\.features\.0\.(\d+)\.(.+)$", key)
    if m:
        i = int(m.group(1))
        return f"features.{_C4_BLOCK}.block.0.{m.group(2)}" if i == _C4_BLOCK else f"features.{i}.{m.group(2)}"
    m = re.match(r"^backbone\.features\.1\.0\.(\d+)\.(.+)$", key)
    if m:  # block 13 after its expansion: block[1:] of torchvision's InvertedResidual (a slice keeps its names)
        return f"features.{_C4_BLOCK}.block.{m.group(1)}.{m.group(2)}"
    m = re.match(r"^backbone\.features\.1\.(\d+)\.(.+)$", key)
    if m:
        return f"features.{_C4_BLOCK + int(m.group(1))}.{m.group(2)}"
    return None


def convert_ssd_state_dict(tv_state_dict: dict, cfg: ModelConfig) -> dict:
    """swiftdet state dict of the SSD of ``cfg`` from a torchvision one.

    Args:
        tv_state_dict: state dict of torchvision's ``ssd300_vgg16`` (for ``model.backbone.name``
            "vgg16") or ``ssdlite320_mobilenet_v3_large`` ("mobilenet_v3_large"), any num_classes.
        cfg: the model config, ``arch`` "ssd".
    Raises:
        WeightsError: the file does not fit the model of ``cfg`` (keys missing or left over,
            shapes differing, class counts that cannot be mapped).
    """
    if cfg.arch != "ssd":
        raise WeightsError(f"convert_ssd_state_dict converts SSD / SSDlite weights, but model.arch is '{cfg.arch}'.")
    layout = cfg.backbone.name
    what = _WHAT.get(layout, f"torchvision SSD ({layout})")
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    trunk: dict[str, Tensor] = {}
    for key, value in tv_state_dict.items():
        new = None
        for src, dst in _HEADS.items():
            if key.startswith(src):
                new = dst + key[len(src):]
        if new is None and layout == "vgg16":
            new = _vgg_key(key)
        elif new is None and layout == "mobilenet_v3_large":
            m = re.match(r"^backbone\.extra\.(\d+)\.(.+)$", key)
            if m:
                new = f"extras.blocks.{m.group(1)}.{m.group(2)}"
            else:
                classification_key = _mobilenet_classification_key(key)
                if classification_key is not None:
                    trunk[classification_key] = value
                    continue
        if new is None:
            unexpected.append(key)
        else:
            out[new] = value
    if trunk:
        from swiftdet.model.backbone.mobilenet import mobilenet_v3_state_dict_from_torchvision

        try:
            out.update({"backbone." + k: v for k, v in mobilenet_v3_state_dict_from_torchvision(trunk).items()})
        except (KeyError, IndexError, ValueError) as err:
            unexpected.append(str(err))

    expected = expected_state(cfg)
    check_converted_keys(out, unexpected, expected, what, f"model.arch='ssd', model.backbone.name='{layout}'",
                         "SSD300 vs SSDlite: model.backbone.name; the MobileNetV3 tail: model.backbone.reduced_tail")
    num_anchors = [2 + 2 * len(r) for r in cfg.ssd.aspect_ratios]
    for level, anchors in enumerate(num_anchors):
        suffix = "" if layout == "vgg16" else "1."
        for param in ("weight", "bias"):
            key = f"head.cls_logits.{level}.{suffix}{param}"
            out[key] = select_class_rows(out[key], anchors, cfg.num_classes, key, background=True,
                                         layout_hint="model.ssd.aspect_ratios")
    check_converted_shapes(out, expected, what, "model.backbone (reduced_tail), model.ssd.aspect_ratios and "
                                                "model.num_classes")
    return out
