"""A config's dataset (``cfg.data.train`` / ``cfg.data.test``) as a DetectionDataset, whatever its format.

Every format is read into the same COCO-format dict first (:mod:`swiftdet.data.voc`,
:mod:`swiftdet.data.lvis`, :mod:`swiftdet.data.cityscapes`), then validated and packed by
:func:`swiftdet.data.coco.coco_dict_to_dataset`, so one set of rules checks every dataset and the
evaluators of every format take the same COCO-format ground truth
(:func:`evaluation_ground_truth`).
"""
from __future__ import annotations

import os
from typing import Any

from swiftdet.config.schema import DatasetSpec
from swiftdet.data.coco import coco_dict_to_dataset, load_coco
from swiftdet.data.storage import DetectionDataset
from swiftdet.errors import ConfigError, DatasetError

__all__ = ["evaluation_ground_truth", "load_dataset"]


def _check_spec(spec: DatasetSpec, field: str) -> None:
    if spec.format in ("voc", "cityscapes"):
        if not spec.roots:
            what = ("one or more VOC year folders (each with Annotations/, ImageSets/Main/ and JPEGImages/)"
                    if spec.format == "voc" else "the Cityscapes root (with leftImg8bit/ and gtFine/)")
            raise ConfigError(f"{field}.roots is empty. Set it to {what}, e.g. {field}.roots=[datasets/VOC2007] "
                              f"{field}.split=test." if spec.format == "voc" else
                              f"{field}.roots is empty. Set it to {what}, e.g. {field}.roots=[datasets/cityscapes] "
                              f"{field}.split=val.")
        missing = [r for r in spec.roots if not os.path.isdir(r)]
        if missing:
            raise DatasetError(f"{field}.roots: '{missing[0]}' is not an existing folder.")
        return
    if not spec.json:
        raise ConfigError(
            f"{field}.json is empty. Set it to a {'LVIS' if spec.format == 'lvis' else 'COCO-format'} annotation file: "
            f"add the overrides {field}.json=path/to/instances.json {field}.image_root=path/to/images after the config "
            "name on the command line (or pass a DetectionDataset object in Python)."
        )
    if not spec.image_root:
        raise ConfigError(f"{field}.image_root is empty. Set it to the folder the json's file names are relative to ('.' for the current folder).")
    if not os.path.isdir(spec.image_root):
        raise DatasetError(f"{field}.image_root '{spec.image_root}' is not an existing folder. It should be the folder the file names in {spec.json} are relative to.")


def _coco_dict(spec: DatasetSpec) -> tuple[dict, str]:
    """(COCO-format dict, image root) of a voc / lvis / cityscapes dataset."""
    # Imported here: a COCO user's run never loads the other readers.
    from swiftdet.data.cityscapes import cityscapes_to_coco
    from swiftdet.data.lvis import lvis_to_coco
    from swiftdet.data.voc import voc_to_coco

    if spec.format == "voc":
        return voc_to_coco(spec.roots, spec.split)
    if spec.format == "cityscapes":
        return cityscapes_to_coco(spec.roots[0], spec.split)
    return lvis_to_coco(spec.json), spec.image_root


def load_dataset(
    spec: DatasetSpec,
    *,
    training: bool,
    field: str = "data.train",
    check_images: bool = True,
    filter_empty: bool = True,
    min_keypoints_per_image: int = 1,
    verbose: bool = True,
) -> DetectionDataset:
    """Load ``cfg.data.train`` or ``cfg.data.test`` in its ``format``.

    Args:
        spec: the DatasetSpec.
        training: drop (and count) what training cannot use; evaluation keeps everything
            (see :func:`swiftdet.data.coco.load_coco`).
        field: the config key of ``spec``, named in errors ("data.train" or "data.test").
    """
    _check_spec(spec, field)
    options = dict(check_images=check_images, training=training, filter_empty=filter_empty,
                   min_keypoints_per_image=min_keypoints_per_image, verbose=verbose)
    if spec.format == "coco":
        dataset = load_coco(spec.json, spec.image_root, **options)
    else:
        data, image_root = _coco_dict(spec)
        dataset = coco_dict_to_dataset(data, spec.source, image_root, **options)
    if spec.proposals:  # coco / lvis only (DatasetSpec.validate): matched to the images by id now
        from swiftdet.data.proposals import read_proposal_file

        dataset.proposals = read_proposal_file(spec.proposals, [int(i) for i in dataset.images.ids],
                                               field=f"{field}.proposals", json_order=lambda: _json_image_ids(spec.json))
    return dataset


def _json_image_ids(path: str) -> list[int]:
    """Every image id of a coco / lvis json, in its order (mmdetection's proposal lists follow it)."""
    import json

    with open(path, encoding="utf-8") as f:
        return [image["id"] for image in json.load(f)["images"]]


def evaluation_ground_truth(spec: DatasetSpec, field: str = "data.test") -> str | dict[str, Any]:
    """What the evaluators take as ground truth: the json path of a coco / lvis dataset, the
    COCO-format dict (difficult flags kept) of a voc / cityscapes one."""
    _check_spec(spec, field)
    if spec.format in ("coco", "lvis"):
        return spec.json
    return _coco_dict(spec)[0]
