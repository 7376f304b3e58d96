"""COCO-format annotation files into a :class:`~swiftdet.data.storage.DetectionDataset`.

Using a COCO-format dataset
---------------------------
Point the config at the annotation file and the folder its ``file_name`` entries are relative to::

    cfg.data.train.json = "data/annotations/instances_train.json"
    cfg.data.train.image_root = "data"

or load it yourself with ``swiftdet.data.load_coco(json_path, image_root, training=True)``. Boxes,
polygons, RLE masks (compressed or not), crowd regions and keypoints are read; category ids are
mapped to contiguous labels 0..C-1 in increasing category id order (``ds.meta.category_ids[label]``
maps back).

Every annotation is checked at load time, by the rules of :mod:`swiftdet.data.validation` (shared
with Python records, :mod:`swiftdet.data.records`). Particular to files, rejected with a
:class:`DatasetError` naming the file: the json file missing, not JSON, or not COCO (no 'images' /
'annotations' / 'categories' list, or entries of the wrong type: the message says which);
malformed, duplicate or no categories; categories listing different keypoints.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from swiftdet.data.meta import DatasetMeta
from swiftdet.data.records import int_column, parse_annotations
from swiftdet.data.storage import DetectionDataset, build_dataset
from swiftdet.errors import DatasetError

__all__ = ["coco_dict_to_dataset", "load_coco", "meta_from_coco_categories", "read_annotation_json"]

_COCO_SHAPE = "A COCO file is a JSON object with lists 'images', 'annotations' and 'categories'."


def load_coco(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    check_images: bool = True,
    training: bool = False,
    filter_empty: bool = True,
    min_keypoints_per_image: int = 1,
    verbose: bool = True,
) -> DetectionDataset:
    """Load and validate a COCO-format json (rules in :mod:`swiftdet.data.validation`).

    Args:
        json_path: the annotation file.
        image_root: folder the images' ``file_name`` entries are relative to.
        check_images: check that every image file exists.
        training: drop (and count) what training cannot use; evaluation keeps everything.
        filter_empty: with ``training``, drop images without a usable annotation.
        min_keypoints_per_image: with ``training`` on a keypoint dataset, drop images with fewer
            visible keypoints (0 keeps all).
        verbose: print the load summary.
    """
    data = read_annotation_json(json_path, "COCO", _COCO_SHAPE)
    return coco_dict_to_dataset(
        data, str(json_path), str(image_root), check_images=check_images, training=training,
        filter_empty=filter_empty, min_keypoints_per_image=min_keypoints_per_image, verbose=verbose,
    )


def read_annotation_json(json_path: str | os.PathLike, kind: str, shape: str) -> Any:
    """The parsed json of an annotation file; a DatasetError naming the file when it is missing or
    not JSON. ``kind`` ("COCO", "LVIS") and ``shape`` (what such a file holds) go into the messages."""
    path = Path(json_path)
    source = str(path)
    if not path.is_file():
        hint = " (it is a folder; give the .json file inside it)" if path.is_dir() else ""
        raise DatasetError(f"{kind} annotation file '{source}' does not exist{hint}. Check the path (data.train.json / data.test.json).")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. {shape}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{source} is not a JSON text file ({e.reason}). {shape}") from None
    except OSError as e:
        raise DatasetError(f"Cannot read {source}: {e.strerror or e}.") from None


def coco_dict_to_dataset(
    data: Any,
    source: str,
    image_root: str,
    *,
    check_images: bool = True,
    training: bool = False,
    filter_empty: bool = True,
    min_keypoints_per_image: int = 1,
    verbose: bool = True,
) -> DetectionDataset:
    """Like :func:`load_coco` for an already parsed json object; ``source`` names it in messages."""
    if not isinstance(data, dict):
        raise DatasetError(f"{source} is not a COCO annotation file: the top level is a {type(data).__name__}. {_COCO_SHAPE}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{source} is not a COCO annotation file: it has no '{key}' list. {_COCO_SHAPE}")
        if not isinstance(data[key], list):
            raise DatasetError(f"{source} is not a COCO annotation file: '{key}' is a {type(data[key]).__name__}, not a list. {_COCO_SHAPE}")
    meta = meta_from_coco_categories(data["categories"], source)
    image_ids, names, heights, widths = _parse_images(data["images"], source)
    raw = parse_annotations(data["annotations"], source)
    return build_dataset(
        source, meta, image_ids, names, heights, widths, raw, image_root,
        check_images=check_images, training=training, filter_empty=filter_empty,
        min_keypoints_per_image=min_keypoints_per_image, verbose=verbose,
    )


def meta_from_coco_categories(categories: list, source: str) -> DatasetMeta:
    """Metadata from COCO categories: labels in increasing category id order (as detectron2)."""
    entries = []
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise DatasetError(f"{source}: categories[{i}] = {str(c)[:80]} needs an integer 'id' and a string 'name'.")
        entries.append(c)
    ids = [c["id"] for c in entries]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise DatasetError(f"{source}: category id {dup[0]} appears more than once in 'categories'; category ids must be unique.")
    if not entries:
        raise DatasetError(f"{source}: the 'categories' list is empty; a detection dataset needs at least one category.")
    entries.sort(key=lambda c: c["id"])
    with_kp = [c for c in entries if c.get("keypoints")]
    names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    if with_kp:
        names = tuple(with_kp[0]["keypoints"])
        other = [c for c in with_kp if tuple(c["keypoints"]) != names]
        if other:
            raise DatasetError(
                f"{source}: categories {with_kp[0]['id']} and {other[0]['id']} list different keypoints; swiftdet "
                "supports one keypoint layout per dataset."
            )
        raw_skeleton = with_kp[0].get("skeleton") or []
        try:
            skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in raw_skeleton)  # COCO skeletons are 1-based
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: category {with_kp[0]['id']} has a 'skeleton' that is not a list of [i, j] pairs.") from None
    return DatasetMeta(
        class_names=tuple(c["name"] for c in entries),
        category_ids=tuple(c["id"] for c in entries),
        keypoint_names=names,
        skeleton=skeleton,
        name=source,
    )


def _parse_images(images: list, source: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(ids, file names, heights, widths) of the COCO 'images' list; only types are checked here."""
    ids, names, heights, widths = [], [], [], []
    i = 0
    try:
        for i, im in enumerate(images):
            ids.append(im["id"])
            names.append(im["file_name"])
            heights.append(im["height"])
            widths.append(im["width"])
    except (KeyError, TypeError) as e:
        im = images[i]
        ident = f"image id {im.get('id')}" if isinstance(im, dict) and "id" in im else f"images[{i}]"
        missing = f"has no '{e.args[0]}'" if isinstance(e, KeyError) else "is not an object"
        raise DatasetError(f"{source}: {ident} {missing}; each image needs 'id', 'file_name', 'height' and 'width'.") from None
    bad = next((k for k, n in enumerate(names) if not isinstance(n, str) or not n), None)
    if bad is not None:
        raise DatasetError(f"{source} (image id {ids[bad]}): 'file_name' must be a non-empty string, got {names[bad]!r}.")
    image_ids = int_column(ids, "'id'", source, lambda k: f"images[{k}]")
    h = int_column(heights, "'height'", source, lambda k: f"image id {ids[k]}")
    w = int_column(widths, "'width'", source, lambda k: f"image id {ids[k]}")
    return image_ids, names, h, w
