"""LVIS v1 annotation files as the COCO-format dict the dataset loader reads.

Using LVIS
----------
Set ``data.train.format = "lvis"`` (and ``data.test``), ``json`` to ``lvis_v1_train.json`` /
``lvis_v1_val.json`` and ``image_root`` to the folder holding COCO 2017's ``train2017/`` and
``val2017/`` (LVIS v1 reuses COCO's images; both splits draw from both folders). The recipe
``mask_rcnn_R_50_FPN_lvis_1x`` does this with detectron2's LVIS settings.

An LVIS file is a COCO file plus federated labels: each image lists the categories verified absent
from it (``neg_category_ids``) and those present but not exhaustively annotated
(``not_exhaustive_category_ids``), and each category says how many training images it has
(``frequency``: "r" rare, fewer than 10; "c" common, 10 to 99; "f" frequent). The evaluator
(:func:`swiftdet.evaluation.lvis.evaluate_lvis`) needs them all, so they are checked here, where a
mistake surfaces before training starts, and kept in the dict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from swiftdet.data.coco import read_annotation_json
from swiftdet.errors import DatasetError

__all__ = ["lvis_to_coco", "LVIS_FREQUENCIES"]

LVIS_FREQUENCIES = ("r", "c", "f")
_FEDERATED = ("neg_category_ids", "not_exhaustive_category_ids")
_LVIS_SHAPE = ("An LVIS file is a JSON object with lists 'images' (each with 'neg_category_ids' and "
               "'not_exhaustive_category_ids'), 'annotations' and 'categories' (each with a 'frequency').")


def lvis_to_coco(json_path: str) -> dict:
    """Read and check an LVIS v1 json; return it as a COCO-format dict.

    What changes: an image without ``file_name`` gets the last two parts of its ``coco_url``
    (``http://images.cocodataset.org/val2017/000000397133.jpg`` -> ``val2017/000000397133.jpg``,
    detectron2's rule), and annotations get ``iscrowd: 0`` (LVIS has no crowd regions). Everything
    else, the federated lists and each category's ``frequency`` included, is kept as it is.

    Raises:
        DatasetError: naming the file and the image / category: an image without the federated
            lists (or listing unknown categories), without ``file_name`` and ``coco_url``; a category
            whose ``frequency`` is not r, c or f.
    """
    source = str(json_path)
    data = _read(Path(json_path))
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            what = "has no" if key not in data else f"has a {type(data[key]).__name__} as"
            raise DatasetError(f"{source} is not an LVIS annotation file: it {what} '{key}' list. {_LVIS_SHAPE}")
    category_ids = _check_categories(data["categories"], source)
    images = [_image(im, i, source, category_ids) for i, im in enumerate(data["images"])]
    annotations = [a if not isinstance(a, dict) or "iscrowd" in a else {**a, "iscrowd": 0} for a in data["annotations"]]
    out = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    out["images"] = images
    out["annotations"] = annotations
    return out


def _read(path: Path) -> dict:
    data = read_annotation_json(path, "LVIS", _LVIS_SHAPE)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} is not an LVIS annotation file: the top level is a {type(data).__name__}. {_LVIS_SHAPE}")
    return data


def _check_categories(categories: list, source: str) -> set:
    ids = set()
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c:
            raise DatasetError(f"{source}: categories[{i}] = {str(c)[:80]} is not an object with an 'id'.")
        frequency = c.get("frequency")
        if frequency not in LVIS_FREQUENCIES:
            got = "has no 'frequency'" if "frequency" not in c else f"has frequency {frequency!r}"
            raise DatasetError(
                f"{source}: category id {c['id']!r} ({c.get('name', '?')}) {got}; every LVIS category states it as "
                "'r' (rare: in fewer than 10 training images), 'c' (common: 10 to 99) or 'f' (frequent: 100 or more). "
                "A COCO file without federated labels is read with format 'coco'."
            )
        ids.add(c["id"])
    return ids


def _image(im: Any, i: int, source: str, category_ids: set) -> dict:
    if not isinstance(im, dict) or "id" not in im:
        raise DatasetError(f"{source}: images[{i}] = {str(im)[:80]} is not an object with an 'id'.")
    where = f"{source} (image id {im['id']!r})"
    for key in _FEDERATED:
        if key not in im:
            raise DatasetError(
                f"{where} has no '{key}'. An LVIS image lists the categories verified absent from it "
                "('neg_category_ids') and those not exhaustively annotated ('not_exhaustive_category_ids'), [] when "
                "none; LVIS's evaluation needs both. A COCO file is read with format 'coco'."
            )
        value = im[key]
        if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            raise DatasetError(f"{where}: '{key}' must be a list of category ids, got {str(value)[:80]}.")
        unknown = [c for c in value if c not in category_ids]
        if unknown:
            raise DatasetError(f"{where}: '{key}' names category id {unknown[0]}, which is not in 'categories'.")
    if im.get("file_name"):
        return im
    url = im.get("coco_url")
    parts = url.rstrip("/").split("/") if isinstance(url, str) else []
    if len(parts) < 2 or not all(parts[-2:]):
        raise DatasetError(
            f"{where} has neither a 'file_name' nor a 'coco_url' to take it from (LVIS v1 gives "
            "'coco_url': 'http://images.cocodataset.org/<split>/<name>.jpg', read as '<split>/<name>.jpg' under "
            "image_root)."
        )
    return {**im, "file_name": "/".join(parts[-2:])}
