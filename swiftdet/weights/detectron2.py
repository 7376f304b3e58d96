"""Convert detectron2 checkpoints (model-zoo ``.pkl``, training ``.pth``) into swiftdet state dicts.

detectron2 names its modules differently (``backbone.bottom_up.res2.0.conv1.norm``), keeps the
background class LAST in the box classifier and has no background slot in its class-specific box
regression and mask predictor. swiftdet keeps torchvision's layout (background first, K + 1 slots),
so the converter moves the background row to the front and gives the regression and mask predictor
a zero background slot, which inference never reads. Values are copied unchanged (float32 equal).

The model must be built with ``model.convention = "detectron2"`` (and the config detectron2 used)
to give detectron2's outputs: see ``config_from_detectron2_yaml`` and the ``d2_*`` named configs.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import WeightsError

__all__ = ["convert_detectron2_file", "convert_detectron2_state_dict", "read_detectron2_file"]

# detectron2 key (after the backbone prefix is handled) -> swiftdet key; first match wins.
_BACKBONE_RULES = [
    (r"^stem\.conv1\.norm\.", "bn1."),
    (r"^stem\.conv1\.", "conv1."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}."),
    (r"^res(\d)\.(\d+)\.conv2_offset\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv2_offset."),
    (r"^res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}."),
    (r"^res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.1."),
    (r"^res(\d)\.(\d+)\.shortcut\.", lambda m: f"layer{int(m[1]) - 1}.{m[2]}.downsample.0."),
]
_HEAD_RULES = [
    (r"^(\d+)\.conv(\d)\.norm\.", lambda m: f"{m[1]}.bn{m[2]}."),
    (r"^(\d+)\.conv2_offset\.", lambda m: f"{m[1]}.conv2_offset."),
    (r"^(\d+)\.conv(\d)\.", lambda m: f"{m[1]}.conv{m[2]}."),
    (r"^(\d+)\.shortcut\.norm\.", lambda m: f"{m[1]}.downsample.1."),
    (r"^(\d+)\.shortcut\.", lambda m: f"{m[1]}.downsample.0."),
]
_HEAD_RULES = [
    (r"^proposal_generator\.rpn_head\.conv\.(weight|bias)$", r"rpn.head.convs.0.conv.\1"),
    (r"^proposal_generator\.rpn_head\.conv\.conv(\d+)\.(weight|bias)$", r"rpn.head.convs.\1.conv.\2"),
    (r"^proposal_generator\.rpn_head\.(objectness_logits|anchor_deltas)\.", r"rpn.head.\1."),
    # box head: conv<i> (+ .norm) and fc<i>, 1-based; Cascade: one per stage under box_head.<k>.
    (r"^roi_heads\.box_head\.(\d+)\.conv(\d+)\.norm\.", lambda m: f"roi_heads.box_heads.{m[1]}.convs.{int(m[2]) - 1}.norm."),
    (r"^roi_heads\.box_head\.(\d+)\.conv(\d+)\.", lambda m: f"roi_heads.box_heads.{m[1]}.convs.{int(m[2]) - 1}.conv."),
    (r"^roi_heads\.box_head\.(\d+)\.fc(\d+)\.", lambda m: f"roi_heads.box_heads.{m[1]}.fcs.{int(m[2]) - 1}."),
    (r"^roi_heads\.box_head\.conv(\d+)\.norm\.", lambda m: f"roi_heads.box_head.convs.{int(m[1]) - 1}.norm."),
    (r"^roi_heads\.box_head\.conv(\d+)\.", lambda m: f"roi_heads.box_head.convs.{int(m[1]) - 1}.conv."),
    (r"^roi_heads\.box_head\.fc(\d+)\.", lambda m: f"roi_heads.box_head.fcs.{int(m[1]) - 1}."),
    (r"^roi_heads\.box_predictor\.(\d+)\.", r"roi_heads.box_predictors.\1."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box_predictor."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.norm\.", lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.norm."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.conv."),
    (r"^roi_heads\.mask_head\.(deconv|predictor)\.", r"roi_heads.mask_head.\1."),
    (r"^roi_heads\.keypoint_head\.conv_fcn(\d+)\.", lambda m: f"roi_heads.keypoint_head.convs.{int(m[1]) - 1}.conv."),
    (r"^roi_heads\.keypoint_head\.score_lowres\.", "roi_heads.keypoint_head.score_lowres."),
    (r"^head\.cls_subnet\.", "head.cls_tower."),
    (r"^head\.bbox_subnet\.", "head.box_tower."),
    (r"^head\.(cls_score|bbox_pred)\.", r"head.\1."),
]
# Buffers detectron2 may store that swiftdet computes (normalisation, cell anchors).
_DROPPED = re.compile(r"^(pixel_mean|pixel_std)$|anchor_generator\.cell_anchors\.")


def _apply(rules: list, key: str) -> str | None:
    for pattern, repl in rules:
        m = re.match(pattern, key)
        if m:
            new = repl(m) if callable(repl) else m.expand(repl)
            return new + key[m.end():]
    return None


def _rename(key: str, fpn_levels: dict[str, int]) -> str | None:
    """swiftdet name of detectron2 key ``key``, or None when it has none."""
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        m = re.match(r"^fpn_(lateral|output)(\d)\.(norm\.)?(.*)$", rest)
        if m:
            level = fpn_levels.get(f"res{m[2]}")
            if level is None:
                return None
            kind = "lateral_convs" if m[1] == "lateral" else "output_convs"
            return f"fpn.{kind}.{level}.{'norm' if m[3] else 'conv'}.{m[4]}"
        if rest.startswith("top_block."):
            return "fpn." + rest
        if rest.startswith("bottom_up."):
            rest = rest[len("bottom_up."):]
        new = _apply(_BACKBONE_RULES, rest)
        return None if new is None else "backbone." + new
    if key.startswith("roi_heads.res5."):  # the C4 RoI head: backbone block names inside one stage
        new = _apply(_BACKBONE_RULES, key[len("roi_heads."):])
        return None if new is None else "roi_heads.box_head.res5." + new[len("layer4."):]
    return _apply(_HEAD_RULES, key)


def _background_first(key: str, value: Tensor, cfg: ModelConfig, source: str) -> Tensor:
    """detectron2's class-dependent predictor tensors in swiftdet's layout (module docstring)."""
    k = cfg.num_classes
    if re.search(r"box_predictors?(\.\d+)?\.cls_score\.", key):
        if value.shape[0] != k + 1:
            raise WeightsError(f"'{source}': {key} has {value.shape[0] - 1} classes (plus background) but the config has "
                               f"model.num_classes={k}; set it to the file's count.")
        return torch.cat([value[k:], value[:k]])  # background: last in detectron2, first here
    if re.search(r"box_predictors?(\.\d+)?\.bbox_pred\.", key):
        if cfg.box_head.cls_agnostic_bbox_reg:
            if value.shape[0] != 4:
                raise WeightsError(f"'{source}': {key} has {value.shape[0]} outputs, a class-specific regression, but the "
                                   "config has model.box_head.cls_agnostic_bbox_reg=true (4 outputs).")
            return value
        if value.shape[0] != 4 * k:
            raise WeightsError(f"'{source}': {key} has {value.shape[0]} outputs, not 4 per class for model.num_classes={k}"
                               f"{' (a class-agnostic regression: set model.box_head.cls_agnostic_bbox_reg=true)' if value.shape[0] == 4 else ''}.")
        return torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
    if key.startswith("roi_heads.mask_head.predictor."):
        if value.shape[0] != k:
            raise WeightsError(f"'{source}': {key} predicts {value.shape[0]} class masks but model.num_classes={k} "
                               "(detectron2's class-agnostic masks, CLS_AGNOSTIC_MASK, are not supported).")
        return torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
    return value


def convert_detectron2_state_dict(state_dict: dict[str, Tensor], cfg: ModelConfig, source: str = "") -> dict[str, Tensor]:
    """swiftdet state dict for the model of ``cfg`` from a detectron2 one (every value copied,
    class-dependent predictors re-laid out; see the module docstring).

    Raises:
        WeightsError: a key with no swiftdet counterpart (another architecture or a module swiftdet lacks).
    """
    fpn_levels = {name: i for i, name in enumerate(cfg.fpn.in_features)}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        new = _rename(key, fpn_levels)
        if new is None:
            unknown.append(key)
            continue
        out[new] = _background_first(new, value, cfg, source)
    if unknown:
        raise WeightsError(
            f"'{source}' has {len(unknown)} detectron2 keys with no counterpart in swiftdet's model (e.g. {unknown[:3]}): "
            "the file is of an architecture or module swiftdet does not build, or not a detectron2 checkpoint."
        )
    return out


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only (a model-zoo .pkl holds nothing else), so
    that a file cannot run code while it is read."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how Python 3 pickles an array's bytes at protocol 2 (latin-1 text)
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not a numpy array or a plain container")


def _to_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def read_detectron2_file(path: str | os.PathLike) -> tuple[str, dict[str, Tensor]]:
    """The weights of a detectron2 or Detectron file: ("detectron2", state dict) for a model-zoo
    ``.pkl`` (numpy arrays under "model") or a training ``.pth`` ({"model": state dict}), and
    ("detectron", blobs) for a Detectron (Caffe2) ``.pkl`` ({"blobs": ...}, Python 2 pickle).

    Raises:
        WeightsError: unreadable, or not one of these formats (the error names the file).
    """
    from swiftdet.weights.download import cached_path

    local = cached_path(path)
    obj: Any
    try:
        with open(local, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as first_error:
        try:  # a .pth written by torch.save (zip container)
            obj = torch.load(local, map_location="cpu", weights_only=True)
        except Exception:
            raise WeightsError(f"'{path}' is not a detectron2 / Detectron checkpoint: it cannot be read as a pickle of "
                               f"numpy arrays ({first_error}) nor as a PyTorch file.") from None
    except Exception as e:
        raise WeightsError(f"'{path}' cannot be read as a checkpoint ({' '.join(str(e).split())[:160]}).") from None
    if isinstance(obj, dict) and isinstance(obj.get("blobs"), dict):
        blobs = {(k.decode("latin1") if isinstance(k, bytes) else k): _to_tensor(v) for k, v in obj["blobs"].items()}
        return "detectron", {k: v for k, v in blobs.items() if v is not None}
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if isinstance(obj, dict) and obj:
        tensors = {k: _to_tensor(v) for k, v in obj.items()}
        if all(isinstance(k, str) for k in tensors) and all(v is not None for v in tensors.values()):
            return "detectron2", tensors
    keys = f" with keys {list(obj)[:5]}" if isinstance(obj, dict) else ""
    raise WeightsError(f"'{path}' is a {type(obj).__name__}{keys}, not a detectron2 checkpoint ({{'model': "
                       "state dict}}) nor a Detectron one ({'blobs': ...}).")


def convert_detectron2_file(path: str | os.PathLike, cfg: ModelConfig, expected_format: str | None = None) -> dict[str, Tensor]:
    """swiftdet state dict for the model of ``cfg`` from a detectron2 (``.pkl`` / ``.pth``) or
    Detectron (``.pkl``) file; ``expected_format`` ("detectron2" / "detectron"), when given, must be
    the file's. A Detectron file's AffineChannel norms come out as FrozenBN with running_var 1,
    exact for ``cfg.backbone.norm_eps == 0`` (see swiftdet.weights.detectron).

    Raises:
        WeightsError: unreadable file, the other format, or an architecture other than ``cfg``'s.
    """
    fmt, tensors = read_detectron2_file(path)
    if expected_format is not None and fmt != expected_format:
        other = {"detectron": "a Detectron (Caffe2) file ({'blobs': ...})",
                 "detectron2": "a detectron2 checkpoint ({'model': state dict})"}
        raise WeightsError(f"'{path}' is {other[fmt]}, not {other[expected_format]}: "
                           f"convert it with `swiftdet convert {fmt}`.")
    if fmt == "detectron":
        from swiftdet.weights.detectron import convert_detectron_blobs

        tensors = convert_detectron_blobs(tensors, cfg, source=str(path))
    return convert_detectron2_state_dict(tensors, cfg, source=str(path))
