"""Detectron (Caffe2) ``.pkl`` blobs -> a detectron2 state dict (then swiftdet's via
:func:`swiftdet.weights.detectron2.convert_detectron2_state_dict`).

Detectron names blobs ``res2_0_branch2a_w``; its BatchNorm is an AffineChannel (``_bn_s`` scale,
``_bn_b`` shift), which becomes a FrozenBN with weight = scale, bias = shift, running_mean 0 and
running_var 1: exact when the model runs its FrozenBN with eps 0 (the converter's config sets
``model.backbone.norm_eps = 0``). Its class-dependent predictors put the background first; they are
put in detectron2's layout (background last in ``cls_score``, no background rows in ``bbox_pred`` /
``mask_fcn_logits``). ``*_momentum`` blobs and ``kps_score_*`` (Detectron's fixed 2x upsampling of
the heatmaps, which detectron2 does with interpolation) are dropped. A C4 RPN's anchor-dependent
outputs are taken in the order they are stored, as detectron2's own loader does.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import WeightsError

__all__ = ["convert_detectron_blobs"]

_PARAM = {"w": "weight", "b": "bias", "s": "weight"}
_BRANCH = {"branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3", "branch1": "shortcut"}


def _rename(blob: str, cfg: ModelConfig) -> str | None:
    """detectron2 name of Detectron blob ``blob`` (norm scales/shifts end in .norm.weight/bias),
    or None for one with no counterpart."""
    stem = "backbone.bottom_up." if cfg.layout == "fpn" else "backbone."
    if blob == "conv1_w":
        return stem + "stem.conv1.weight"
    m = re.fullmatch(r"res_conv1_(bn|gn)_([sb])", blob)
    if m:
        return f"{stem}stem.conv1.norm.{_PARAM[m[2]]}"
    m = re.fullmatch(r"res(\d)_(\d+)_(branch2a|branch2b|branch2c|branch1)(?:_(bn|gn))?_([wbs])", blob)
    if m:
        norm = ".norm" if m[4] else ""
        block = f"{m[2]}.{_BRANCH[m[3]]}{norm}.{_PARAM[m[5]]}"
        if cfg.layout == "c4" and m[1] == "5":
            return "roi_heads.res5." + block  # the C4 RoI head
        return f"{stem}res{m[1]}.{block}"
    m = re.fullmatch(r"fpn_inner_res(\d)_\d+_sum(?:_lateral)?_([wb])", blob)
    if m:
        return f"backbone.fpn_lateral{m[1]}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"fpn_res(\d)_\d+_sum_([wb])", blob)
    if m:
        return f"backbone.fpn_output{m[1]}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"(conv_rpn|rpn_cls_logits|rpn_bbox_pred)(_fpn2)?_([wb])", blob)
    if m:
        part = {"conv_rpn": "conv", "rpn_cls_logits": "objectness_logits", "rpn_bbox_pred": "anchor_deltas"}[m[1]]
        return f"proposal_generator.rpn_head.{part}.{_PARAM[m[3]]}"
    m = re.fullmatch(r"fc([67])_([wb])", blob)
    if m:
        return f"roi_heads.box_head.fc{int(m[1]) - 5}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"(cls_score|bbox_pred)_([wb])", blob)
    if m:
        return f"roi_heads.box_predictor.{m[1]}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"_\[mask\]_fcn(\d+)_([wb])", blob)
    if m:
        return f"roi_heads.mask_head.mask_fcn{m[1]}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"(conv5_mask|mask_fcn_logits)_([wb])", blob)
    if m:
        return f"roi_heads.mask_head.{'deconv' if m[1] == 'conv5_mask' else 'predictor'}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"conv_fcn(\d+)_([wb])", blob)
    if m:
        return f"roi_heads.keypoint_head.conv_fcn{m[1]}.{_PARAM[m[2]]}"
    m = re.fullmatch(r"kps_score_lowres_([wb])", blob)
    if m:
        return f"roi_heads.keypoint_head.score_lowres.{_PARAM[m[1]]}"
    return None


def convert_detectron_blobs(blobs: dict[str, Tensor], cfg: ModelConfig, source: str = "") -> dict[str, Tensor]:
    """detectron2 state dict (module docstring) for the model of ``cfg`` from Detectron ``blobs``.

    Raises:
        WeightsError: a blob with no counterpart (another architecture, or not a Detectron file).
    """
    out: dict[str, Tensor] = {}
    unknown = []
    for blob, value in blobs.items():
        if blob.endswith("_momentum") or re.fullmatch(r"kps_score_[wb]", blob):
            continue
        name = _rename(blob, cfg)
        if name is None:
            unknown.append(blob)
            continue
        if name in out:
            raise WeightsError(f"'{source}': blobs give {name} twice (e.g. {blob}).")
        if re.search(r"box_predictor\.cls_score\.", name):
            value = torch.cat([value[1:], value[:1]])  # background: first in Detectron, last in detectron2
        elif re.search(r"box_predictor\.bbox_pred\.", name) or ".mask_head.predictor." in name:
            # Detectron's background rows (unused: 4 box deltas, 1 mask) go, as detectron2's loader drops them;
            # a class-agnostic regression is [background, foreground] there and keeps its last 4.
            value = value[4:] if "bbox_pred" in name else value[1:]
        out[name] = value
        if re.fullmatch(r"res_conv1_bn_s|res\d_\d+_branch\w+_bn_s", blob):
            # AffineChannel: a FrozenBN that computes x * s + b exactly with eps 0.
            base = name[: -len("weight")]
            out[base + "running_mean"] = torch.zeros_like(value)
            out[base + "running_var"] = torch.ones_like(value)
    if unknown:
        raise WeightsError(f"'{source}' has {len(unknown)} Detectron blobs with no counterpart in swiftdet's model "
                           f"(e.g. {unknown[:3]}): an architecture swiftdet does not build, or not a Detectron file.")
    return out
