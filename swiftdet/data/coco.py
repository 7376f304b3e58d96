"""COCO-format annotation files (and Python records) into a :class:`DetectionDataset`.

Validation rules (all checked at load time, in one pass over the json lists plus vectorised checks):

Rejected with a :class:`DatasetError` naming the file, the image id and the annotation id:
  - the json file missing, not JSON, or not COCO (no 'images' / 'annotations' / 'categories'
    list, or entries of the wrong type: the message says which);
  - duplicate image, annotation or category ids; an annotation of an unknown image or category;
  - a box with a non-finite coordinate or a negative width/height, or lying outside its image by
    more than max(2 pixels, 1% of the image side) on any edge;
  - a polygon with an odd number of coordinates or fewer than 3 points; a malformed RLE (size
    different from the image, counts that do not sum to height * width or cannot be decoded);
  - keypoints of the wrong length or with a visibility outside {0, 1, 2};
  - with ``check_images``, any image file missing under ``image_root`` (a directory listing per
    folder, so this is cheap). Decoding happens when a sample is read: a file that cannot be
    decoded, or whose size differs from the json's, raises DatasetError naming file and image id.

Dropped and counted in the printed summary (``dataset.load_summary``), only when ``training``:
  - non-crowd annotations whose box has zero width or height (detectron2 and torchvision drop them);
  - images with no usable annotation (``filter_empty``);
  - on keypoint datasets, images with fewer than ``min_keypoints_per_image`` visible keypoints
    (detectron2's rule for keypoint training).
Crowd annotations are always kept (evaluation needs them) and never become training targets.
Keypoint coordinates are kept as stored (torchvision's convention; detectron2 adds 0.5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from swiftdet.config.schema import DatasetSpec
from swiftdet.data.dataset import DatasetMeta, DetectionDataset, RawAnnotations, build_dataset
from swiftdet.errors import ConfigError, DatasetError

__all__ = ["load_coco", "load_dataset", "meta_from_coco_categories", "records_to_columns"]

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
    """Load and validate a COCO-format json (rules in the module docstring).

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
    path = Path(json_path)
    source = str(path)
    if not path.is_file():
        hint = " (it is a folder; give the .json file inside it)" if path.is_dir() else ""
        raise DatasetError(f"COCO annotation file '{source}' does not exist{hint}. Check the path (data.train.json / data.test.json).")
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}. {_COCO_SHAPE}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{source} is not a JSON text file ({e.reason}). {_COCO_SHAPE}") from None
    except OSError as e:
        raise DatasetError(f"Cannot read {source}: {e.strerror or e}.") from None
    return coco_dict_to_dataset(
        data, source, str(image_root), check_images=check_images, training=training,
        filter_empty=filter_empty, min_keypoints_per_image=min_keypoints_per_image, verbose=verbose,
    )


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
    raw = _parse_annotations(data["annotations"], source)
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


def _int_column(values: list, what: str, source: str, describe) -> np.ndarray:
    """int64 array of json integers; rejects strings, floats and booleans naming the first culprit."""
    for i, v in enumerate(values):
        if type(v) is not int:
            if not (isinstance(v, float) and v.is_integer()):
                raise DatasetError(f"{source}: {describe(i)}: {what} must be an integer, got {v!r}.")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _parse_images(images: list, source: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
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
    image_ids = _int_column(ids, "'id'", source, lambda k: f"images[{k}]")
    h = _int_column(heights, "'height'", source, lambda k: f"image id {ids[k]}")
    w = _int_column(widths, "'width'", source, lambda k: f"image id {ids[k]}")
    return image_ids, names, h, w


def _parse_annotations(anns: list, source: str) -> RawAnnotations:
    ids, image_ids, cat_ids, bboxes, crowd, num_polys = [], [], [], [], [], []
    polygons: list = []
    rles: dict[int, Any] = {}
    keypoints: dict[int, Any] = {}
    pos = 0
    try:
        for pos, a in enumerate(anns):
            ids.append(a["id"])
            image_ids.append(a["image_id"])
            cat_ids.append(a["category_id"])
            bboxes.append(a["bbox"])
            crowd.append(a.get("iscrowd", 0))
            seg = a.get("segmentation")
            if seg is None:
                num_polys.append(0)
            elif type(seg) is list:
                num_polys.append(len(seg))
                polygons.extend(seg)
            elif type(seg) is dict:
                num_polys.append(0)
                rles[pos] = seg
            else:
                raise _ann_error(source, a, pos, f"'segmentation' must be a list of polygons or an RLE dict, got {type(seg).__name__}.")
            kp = a.get("keypoints")
            if kp:
                keypoints[pos] = kp
    except (KeyError, TypeError, AttributeError) as e:
        a = anns[pos]
        if not isinstance(a, dict):
            raise DatasetError(f"{source}: annotations[{pos}] is a {type(a).__name__}, not an object.") from None
        raise _ann_error(source, a, pos, f"the annotation has no '{e.args[0]}'; COCO annotations need 'id', 'image_id', "
                                         "'category_id' and 'bbox'.") from None
    return _raw_columns(source, anns, ids, image_ids, cat_ids, bboxes, crowd, num_polys, polygons, rles, keypoints, "xywh")


def _raw_columns(source, anns, ids, image_ids, cat_ids, bboxes, crowd, num_polys, polygons, rles, keypoints, bbox_mode) -> RawAnnotations:
    def describe(k: int) -> str:
        a = anns[k]
        return f"annotation id {a.get('id', k + 1)} (image id {a.get('image_id')})" if isinstance(a, dict) else f"annotation {k}"

    ids_a = _int_column(ids, "'id'", source, describe)
    img_a = _int_column(image_ids, "'image_id'", source, describe)
    cat_a = _int_column(cat_ids, "'category_id'", source, describe)
    crowd_a = _int_column(crowd, "'iscrowd'", source, describe)
    try:
        boxes = np.asarray(bboxes, dtype=np.float64).reshape(len(bboxes), 4) if bboxes else np.zeros((0, 4))
    except (TypeError, ValueError):
        k = next(k for k, b in enumerate(bboxes)
                 if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(isinstance(v, (int, float)) for v in b))
        raise DatasetError(f"{source} ({describe(k)}): 'bbox' must be 4 numbers, got {str(bboxes[k])[:80]}.") from None
    if bbox_mode == "xywh":
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    return RawAnnotations(
        ids=ids_a, image_ids=img_a, category_ids=cat_a, boxes=boxes, iscrowd=crowd_a,
        num_polygons=np.asarray(num_polys, dtype=np.int64), polygons=polygons, rles=rles, keypoints=keypoints,
    )


def _ann_error(source: str, a: dict, pos: int, what: str) -> DatasetError:
    return DatasetError(f"{source} (image id {a.get('image_id')}, annotation id {a.get('id', f'#{pos}')}): {what}")


def records_to_columns(records: Sequence[dict], meta: DatasetMeta, source: str):
    """Parse :meth:`DetectionDataset.from_records` records into the columns ``build_dataset`` takes."""
    ids, names, heights, widths = [], [], [], []
    flat: list[dict] = []
    modes: list[str] = []
    for r_i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DatasetError(f"{source}: record {r_i} is a {type(rec).__name__}, not a dict.")
        try:
            ids.append(rec["image_id"])
            names.append(rec["file_name"])
            heights.append(rec["height"])
            widths.append(rec["width"])
        except KeyError as e:
            raise DatasetError(f"{source}: record {r_i} (image id {rec.get('image_id')}) has no '{e.args[0]}'; records need "
                               "'file_name', 'height', 'width', 'image_id' and 'annotations'.") from None
        anns = rec.get("annotations", [])
        if not isinstance(anns, list):
            raise DatasetError(f"{source} (image id {rec['image_id']}): 'annotations' must be a list of dicts.")
        for a in anns:
            if not isinstance(a, dict):
                raise DatasetError(f"{source} (image id {rec['image_id']}): annotation {a!r:.60} is not a dict.")
            mode = a.get("bbox_mode", "xyxy")
            if mode not in ("xyxy", "xywh"):
                raise DatasetError(f"{source} (image id {rec['image_id']}): bbox_mode must be 'xyxy' or 'xywh', got {mode!r}.")
            flat.append({**a, "image_id": rec["image_id"], "id": a.get("id", len(flat) + 1)})
            modes.append(mode)
    bad = next((k for k, n in enumerate(names) if not isinstance(n, str) or not n), None)
    if bad is not None:
        raise DatasetError(f"{source} (image id {ids[bad]}): 'file_name' must be a non-empty string, got {names[bad]!r}.")
    image_cols = (
        _int_column(ids, "'image_id'", source, lambda k: f"record {k}"),
        names,
        _int_column(heights, "'height'", source, lambda k: f"image id {ids[k]}"),
        _int_column(widths, "'width'", source, lambda k: f"image id {ids[k]}"),
    )
    raw = _parse_annotations(flat, source)
    # _parse_annotations read every box as COCO xywh; undo that for the records given as xyxy.
    xyxy = np.array([m == "xyxy" for m in modes], dtype=bool)
    raw.boxes[xyxy, 2:] = raw.boxes[xyxy, 2:] - raw.boxes[xyxy, :2]
    return image_cols, raw


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
    """Load ``cfg.data.train`` or ``cfg.data.test`` (COCO json + image root).

    Args:
        spec: the DatasetSpec.
        training: see :func:`load_coco`.
        field: the config key of ``spec``, named in errors ("data.train" or "data.test").
    """
    if not spec.json:
        raise ConfigError(
            f"{field}.json is empty. Set it to a COCO-format annotation file, e.g. "
            f"--set {field}.json=path/to/instances.json {field}.image_root=path/to/images "
            "(or pass a DetectionDataset object)."
        )
    if not spec.image_root:
        raise ConfigError(f"{field}.image_root is empty. Set it to the folder the json's file names are relative to ('.' for the current folder).")
    if not os.path.isdir(spec.image_root):
        raise DatasetError(f"{field}.image_root '{spec.image_root}' is not an existing folder. It should be the folder the file names in {spec.json} are relative to.")
    return load_coco(
        spec.json, spec.image_root, check_images=check_images, training=training,
        filter_empty=filter_empty, min_keypoints_per_image=min_keypoints_per_image, verbose=verbose,
    )
