"""What the single-stage torchvision converters share (RetinaNet / FCOS and SSD): the model's
expected state, the COCO class rows of a 91-slot class predictor, and the final checks that every
key and shape of the converted file fits the model."""
from __future__ import annotations

import torch
from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import WeightsError

__all__ = ["check_converted_keys", "check_converted_shapes", "expected_state", "select_class_rows"]


def expected_state(cfg: ModelConfig) -> dict[str, Tensor]:
    """The state dict the model of ``cfg`` has (shapes only: built on the meta device)."""
    from swiftdet.model.build import build_model

    with torch.device("meta"):
        return build_model(cfg).state_dict()


def select_class_rows(value: Tensor, per_location: int, num_classes: int, key: str, *, background: bool,
                      layout_hint: str) -> Tensor:
    """Rows of a (A * C_file, ...) class predictor (location-major, class-minor) for the config's
    classes: C_file equal to the config's outputs, or torchvision's 91 COCO slots (row = category id)
    for an 80-class config. ``background``: the predictor has a background output first (SSD).

    Raises:
        WeightsError: another box layout (``layout_hint`` names its setting) or class count.
    """
    rows = value.shape[0]
    if rows % per_location:
        raise WeightsError(
            f"Weights key '{key}' has {rows} output channels, not a multiple of the {per_location} boxes per "
            f"location of this config; the file is for another box layout ({layout_hint})."
        )
    extra = 1 if background else 0
    file_outputs = rows // per_location
    if file_outputs == num_classes + extra:
        return value
    from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS

    if file_outputs == 91 and num_classes == len(COCO_CATEGORY_IDS):
        per_box = value.reshape(per_location, file_outputs, *value.shape[1:])
        keep = torch.as_tensor([0] * extra + list(COCO_CATEGORY_IDS), dtype=torch.long)
        return per_box[:, keep].reshape(per_location * (num_classes + extra), *value.shape[1:])
    plus = " (plus background)" if background else ""
    raise WeightsError(
        f"Weights key '{key}' holds a {file_outputs - extra}-class head{plus} but the config has "
        f"model.num_classes={num_classes}; only equal counts or torchvision's 91-slot COCO head with 80 classes can be "
        "converted. Set model.num_classes to match the file, or train the head from scratch."
    )


def check_converted_keys(out: dict[str, Tensor], unexpected: list[str], expected: dict[str, Tensor],
                         what: str, settings: str, hint: str) -> None:
    """Drop BatchNorm counters the model does not have, then refuse keys left over or missing.

    ``what`` names the model the file should be, ``settings`` the config's choice of it, ``hint``
    the settings that pick its variant."""
    # BatchNorm counters exist in torchvision's BN layers but not in frozen ones: they carry no weights.
    for key in [k for k in out if k.endswith("num_batches_tracked") and k not in expected]:
        del out[key]
    unexpected += [k for k in out if k not in expected]
    missing = [k for k in expected if k not in out]
    if unexpected or missing:
        raise WeightsError(
            f"The weights do not fit a {what} model for this config ({settings}): {len(missing)} keys missing (e.g. "
            f"{missing[:3]}), "
            f"{len(unexpected)} not recognised (e.g. {unexpected[:3]}). The file is probably of another architecture "
            f"or variant ({hint}); pick the config that matches it."
        )


def check_converted_shapes(out: dict[str, Tensor], expected: dict[str, Tensor], what: str, hint: str) -> None:
    """Refuse converted tensors whose shapes differ from the model's (``hint``: the settings to check)."""
    wrong = [
        f"{k}: file {tuple(out[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if tuple(out[k].shape) != tuple(expected[k].shape)
    ]
    if wrong:
        raise WeightsError(
            f"The weights have the keys of a {what} model but {len(wrong)} tensors have other shapes "
            f"({'; '.join(wrong[:3])}); check {hint} against the file."
        )
