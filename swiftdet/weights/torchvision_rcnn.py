"""Convert torchvision's Faster/Mask R-CNN checkpoints (v1 and v2) and Keypoint R-CNN into swiftdet's R-CNN.

Key names map by a short rename table; the class-dependent rows of the box and mask predictors
are selected when a 91-way torchvision COCO head (index = COCO category id, 0 = background) meets
an 80-class config.
"""
from __future__ import annotations

import re

import torch

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import WeightsError
from swiftdet.model.backbone.mobilenet import mobilenet_v3_state_dict_from_torchvision
from swiftdet.model.backbone.resnet import resnet_state_dict_from_torchvision
from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS

__all__ = ["convert_rcnn_state_dict", "fpn_state_dict_from_torchvision", "resnet_state_dict_from_torchvision"]

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


# torchvision R-CNN key (regex on the full key) -> swiftdet key. First match wins.
_RCNN_RULES = [
    (re.compile(r"^backbone\.body\."), "backbone."),
    (re.compile(r"^rpn\.head\.conv\.(\d+)\.0\."), r"rpn.head.convs.\1.conv."),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.convs.0.conv.\1"),
    (re.compile(r"^rpn\.head\.cls_logits\."), "rpn.head.objectness_logits."),
    (re.compile(r"^rpn\.head\.bbox_pred\."), "rpn.head.anchor_deltas."),
    (re.compile(r"^roi_heads\.box_head\.fc6\."), "roi_heads.box_head.fcs.0."),
    (re.compile(r"^roi_heads\.box_head\.fc7\."), "roi_heads.box_head.fcs.1."),
    (re.compile(r"^roi_heads\.box_head\.([0-3])\.0\."), r"roi_heads.box_head.convs.\1.conv."),
    (re.compile(r"^roi_heads\.box_head\.([0-3])\.1\."), r"roi_heads.box_head.convs.\1.norm."),
    (re.compile(r"^roi_heads\.box_head\.5\."), "roi_heads.box_head.fcs.0."),
    (re.compile(r"^roi_heads\.box_predictor\."), "roi_heads.box_predictor."),
    (re.compile(r"^roi_heads\.mask_head\.(\d+)\.0\."), r"roi_heads.mask_head.convs.\1.conv."),
    (re.compile(r"^roi_heads\.mask_head\.(\d+)\.1\."), r"roi_heads.mask_head.convs.\1.norm."),
    (re.compile(r"^roi_heads\.mask_predictor\.conv5_mask\."), "roi_heads.mask_head.deconv."),
    (re.compile(r"^roi_heads\.mask_predictor\.mask_fcn_logits\."), "roi_heads.mask_head.predictor."),
    # keypointrcnn: KeypointRCNNHeads is a Sequential of (conv, ReLU) pairs, so conv i sits at index 2i.
    (re.compile(r"^roi_heads\.keypoint_head\.(\d+)\.(weight|bias)$"),
     lambda m: f"roi_heads.keypoint_head.convs.{int(m.group(1)) // 2}.conv.{m.group(2)}"),
    (re.compile(r"^roi_heads\.keypoint_predictor\.kps_score_lowres\."), "roi_heads.keypoint_head.score_lowres."),
]
# Releases before torchvision 0.13 named the v1 mask head convs mask_fcn1..4.
_OLD_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d)\.")

# Keys whose leading dimension is indexed by class slot (background first).
_CLASS_ROWS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_head.predictor.weight": 1,
    "roi_heads.mask_head.predictor.bias": 1,
}


def _rename_rcnn_key(key: str) -> str | None:
    if key.startswith("backbone.fpn."):
        new = _rename(key[len("backbone.fpn."):], _FPN_RULES)
        return None if new is None else "fpn." + new
    old = _OLD_MASK_FCN.match(key)
    if old:
        return f"roi_heads.mask_head.convs.{int(old.group(1)) - 1}.conv." + key[old.end():]
    return _rename(key, _RCNN_RULES)


def _class_slots(tv_slots: int, num_classes: int, source: str) -> torch.Tensor:
    """Indices of torchvision class slots to keep, background (slot 0) first."""
    if tv_slots == num_classes + 1:
        return torch.arange(num_classes + 1)
    if tv_slots == 91 and num_classes == 80:
        return torch.tensor([0] + list(COCO_CATEGORY_IDS))
    raise WeightsError(
        f"The torchvision checkpoint {source} has a {tv_slots}-way class head (background + {tv_slots - 1}), "
        f"which does not fit model.num_classes={num_classes}. Set model.num_classes={tv_slots - 1} (or 80 for a "
        "91-way COCO head), or load only the backbone."
    )


def convert_rcnn_state_dict(tv_state_dict: dict, cfg: ModelConfig, source: str = "") -> dict:
    """A torchvision Faster/Mask R-CNN (R50-FPN v1 or v2, MobileNetV3-Large FPN) state_dict as a swiftdet R-CNN state_dict.

    Args:
        tv_state_dict: e.g. ``torch.load("maskrcnn_resnet50_fpn_coco-*.pth")``.
        cfg: the ModelConfig of the swiftdet model that will load the result.
        source: file name used in error messages.
    Raises:
        WeightsError: the state_dict is not a torchvision R-CNN matching ``cfg`` (another
            architecture, v1 vs v2, mask head present/absent, unexpected class count).
    """
    from swiftdet.model.rcnn import build_rcnn

    source = repr(source) if source else "(state_dict)"
    if not any(k.startswith("rpn.head.") for k in tv_state_dict) or not any(k.startswith("roi_heads.box_predictor.") for k in tv_state_dict):
        sample = ", ".join(list(tv_state_dict)[:4])
        raise WeightsError(
            f"The checkpoint {source} is not a torchvision Faster/Mask R-CNN: it has no 'rpn.head.*' or "
            f"'roi_heads.box_predictor.*' keys (first keys: {sample}). Use the converter of its architecture, "
            "or a fasterrcnn_*/maskrcnn_* file from torchvision."
        )
    converted = {}
    if cfg.backbone.name == "mobilenet_v3_large":
        # fasterrcnn_mobilenet_v3_large(_320)_fpn: the trunk's units are renamed by the backbone's own map.
        body = mobilenet_v3_state_dict_from_torchvision(tv_state_dict, prefix="backbone.body.")
        converted.update({f"backbone.{k}": v for k, v in body.items()})
        tv_state_dict = {k: v for k, v in tv_state_dict.items() if not k.startswith("backbone.body.")}
    unknown = []
    for key, value in tv_state_dict.items():
        new = _rename_rcnn_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise WeightsError(
            f"The checkpoint {source} has keys a swiftdet R-CNN does not know, e.g. {unknown[:4]}; it is not a "
            "torchvision fasterrcnn/maskrcnn_resnet50_fpn(_v2) state_dict."
        )
    num_classes = cfg.num_classes
    tv_slots = tv_state_dict["roi_heads.box_predictor.cls_score.weight"].shape[0]
    slots = _class_slots(tv_slots, num_classes, source)
    for key, per_slot in _CLASS_ROWS.items():
        if key in converted:
            v = converted[key]
            rows = (slots[:, None] * per_slot + torch.arange(per_slot)).reshape(-1) if per_slot > 1 else slots
            converted[key] = v.index_select(0, rows)

    # Compare against the model the config builds (on the meta device: no memory, no init cost).
    with torch.device("meta"):
        expected = build_rcnn(cfg).state_dict()
    exp_keys = {k for k in expected}
    got_keys = set(converted)
    # FrozenBatchNorm2d has no num_batches_tracked: drop those the model does not have.
    for k in [k for k in got_keys if k.endswith("num_batches_tracked") and k not in exp_keys]:
        del converted[k]
        got_keys.discard(k)
    missing = sorted(exp_keys - got_keys)
    extra = sorted(got_keys - exp_keys)
    if missing or extra:
        hint = _mismatch_hint(missing, extra, cfg)
        raise WeightsError(
            f"The torchvision checkpoint {source} does not fit this R-CNN config: {len(missing)} expected keys are missing "
            f"(e.g. {missing[:3]}) and {len(extra)} are unexpected (e.g. {extra[:3]}). {hint}"
        )
    bad_shapes = [k for k in exp_keys if tuple(expected[k].shape) != tuple(converted[k].shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise WeightsError(
            f"The torchvision checkpoint {source} has {len(bad_shapes)} tensors whose shape does not fit this config, e.g. "
            f"{k}: {tuple(converted[k].shape)} vs {tuple(expected[k].shape)} expected. Check model.backbone.depth/groups and the heads."
        )
    return converted


def _mismatch_hint(missing: list[str], extra: list[str], cfg: ModelConfig) -> str:
    both = missing + extra
    if any(".norm." in k and ("fpn." in k or "box_head" in k) for k in both) or any("box_head.convs" in k for k in both):
        return ("This looks like a v1 checkpoint for a v2 config or the reverse: use faster_rcnn_R_50_FPN_v2/"
                "mask_rcnn_R_50_FPN_v2 for *_v2 files and the R_50_FPN configs for v1 files.")
    if any("keypoint_head" in k for k in both):
        return ("The keypoint head is present in one but not the other, or has another size: keypointrcnn_* files "
                "need model.keypoint_on=true (e.g. --config keypoint_rcnn_R_50_FPN_1x); others keypoint_on=false.")
    if any("mask_head" in k for k in both):
        return ("The mask head is present in one but not the other: set model.mask_on to match the file "
                "(maskrcnn_* files need mask_on=true).")
    # ours (backbone.features.*) or torchvision's MobileNet body unconverted (backbone.<index>.*)
    if any(k.startswith("backbone.features.") or re.match(r"backbone\.\d+\.", k) for k in both):
        return ("The backbone differs: fasterrcnn_mobilenet_v3_large(_320)_fpn files need model.backbone.name="
                "mobilenet_v3_large (faster_rcnn_MV3_FPN, faster_rcnn_MV3_FPN_320); ResNet files need 'resnet'.")
    if any(k.startswith("backbone.layer") for k in both):
        return "The backbone depth differs: check model.backbone.depth."
    return "Check that the file and the config describe the same architecture."
