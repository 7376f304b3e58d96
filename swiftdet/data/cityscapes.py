"""Cityscapes instance segmentation (``gtFine``) as a COCO-format dataset.

The dataset root holds ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and, beside it,
``gtFine/<split>/<city>/<name>_gtFine_instanceIds.png`` (and ``_gtFine_polygons.json``). In an
instanceIds image a pixel of an individual object holds ``label_id * 1000 + k``; a region the
annotators marked as a group (``cargroup``, ``persongroup``, ...) holds the plain label id (< 1000).

Two readers, as detectron2's ``cityscapes.py`` has:

- ``source="png"`` (the default) reads the instanceIds images: each instance becomes an RLE mask
  and groups become ``iscrowd`` masks. These are exactly the pixels cityscapesscripts evaluates
  against (its evaluation reads the same images), so training and evaluation see one ground truth,
  and it needs nothing beyond numpy, Pillow and pycocotools.
- ``source="json"`` reads the polygons files and rasterises them as cityscapesscripts' own
  ``json2instanceImg`` does (in file order, each polygon painted over the earlier ones, with
  Pillow), then reads that image as above. It gives the same dataset where the instanceIds images
  are missing and needs the ``cityscapes`` extra. detectron2's json reader instead keeps polygons
  dilated by half a pixel (with shapely); a mask here is never a polygon, so there is no such
  approximation.

Category ids are the Cityscapes label ids (person 24 ... bicycle 33), so results map back to
Cityscapes ids directly; boxes are COCO xywh of the pixels' extent (width = x_max - x_min + 1, as
pycocotools' ``toBbox`` of the mask; detectron2 keeps x_max - x_min).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from swiftdet.errors import DatasetError

__all__ = ["CITYSCAPES_INSTANCE_CLASSES", "cityscapes_to_coco", "instance_id_annotations"]

# The 8 classes of cityscapesscripts' labels.py with hasInstances and not ignoreInEval, by label id
# (caravan 29 and trailer 30 have instances but are ignored in evaluation).
CITYSCAPES_INSTANCE_CLASSES: tuple[tuple[int, str], ...] = (
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"),
    (31, "train"), (32, "motorcycle"), (33, "bicycle"),
)
_INSTANCE_LABEL_IDS = frozenset(i for i, _ in CITYSCAPES_INSTANCE_CLASSES)
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LAYOUT = ("a Cityscapes root holds leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
           "gtFine/<split>/<city>/*_gtFine_instanceIds.png (and *_gtFine_polygons.json)")


def _image_files(root: Path, split: str) -> list[tuple[str, str]]:
    """(city, file name) of every image of the split, sorted (cities, then names)."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DatasetError(f"Cityscapes root '{root}' has no folder leftImg8bit/{split} (split '{split}'): {_LAYOUT}.")
    files = [(city.name, f.name) for city in sorted(image_dir.iterdir()) if city.is_dir()
             for f in sorted(city.iterdir()) if f.name.endswith(_IMAGE_SUFFIX)]
    if not files:
        raise DatasetError(f"{image_dir} holds no <city>/*{_IMAGE_SUFFIX} images: {_LAYOUT}.")
    return files


def _read_instance_ids(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            ids = np.asarray(im)
    except OSError as e:
        raise DatasetError(f"Cannot read the instance ids image {path}: {e}.") from None
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise DatasetError(f"{path} is not an instance ids image (one integer channel, label_id * 1000 + k); "
                           f"it reads as an array of shape {ids.shape} and type {ids.dtype}.")
    return ids.astype(np.int32)  # label_id * 1000 + k < 34000


def _rasterise_polygons(path: Path) -> np.ndarray:
    """The instance ids image of a ``_gtFine_polygons.json``, drawn by cityscapesscripts."""
    try:
        from cityscapesscripts.helpers.annotation import Annotation
        from cityscapesscripts.helpers.labels import name2label
        from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    except ImportError:
        raise DatasetError("Reading Cityscapes polygons (source='json') needs cityscapesscripts: "
                           'pip install -e ".[cityscapes]" (or pip install cityscapesscripts); '
                           "the default source='png' needs nothing more.") from None
    annotation = Annotation()
    try:
        annotation.fromJsonFile(str(path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"Cannot read the polygons file {path}: {e!r}.") from None
    for i, obj in enumerate(annotation.objects):
        # Said here: the drawing function prints its usage text and exits the process on an unknown label.
        name = obj.label if obj.label in name2label or not obj.label.endswith("group") else obj.label[: -len("group")]
        if not obj.deleted and name not in name2label:
            raise DatasetError(f"{path}: objects[{i}] has the label '{obj.label}', which cityscapesscripts' labels.py "
                               "does not know (nor without a 'group' suffix).")
    return np.asarray(createInstanceImage(annotation, "ids")).astype(np.int32)


def instance_id_annotations(ids: np.ndarray) -> list[dict]:
    """COCO annotations (no ids yet) of the 8 instance classes in an instance ids image.

    Args:
        ids: (H, W) integers: ``label_id * 1000 + k`` for instance ``k`` of a class, the plain
            label id for the other pixels (a group of an instance class: a crowd region).

    Returns:
        one dict per instance or crowd region, in increasing id order: ``category_id`` (the label
        id), ``iscrowd`` 0 | 1, ``segmentation`` (compressed RLE, counts a str), ``area`` (pixels)
        and ``bbox`` [x, y, w, h] of the pixels' extent.
    """
    import pycocotools.mask as mask_utils

    # One pass over the image finds every instance's pixels (grouped by id): boxes and areas come
    # from those, and each mask is compared within its box only, not over the whole image.
    ys, xs = np.nonzero(ids >= min(_INSTANCE_LABEL_IDS))  # ids below 24 are stuff classes
    if len(ys) == 0:
        return []
    values = ids[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    groups = zip(values[starts].tolist(), np.minimum.reduceat(xs, starts).tolist(), np.maximum.reduceat(xs, starts).tolist(),
                 np.minimum.reduceat(ys, starts).tolist(), np.maximum.reduceat(ys, starts).tolist(),
                 np.diff(np.r_[starts, len(values)]).tolist())
    anns = []
    for value, x0, x1, y0, y1, area in groups:
        label = value // 1000 if value >= 1000 else value
        if label not in _INSTANCE_LABEL_IDS:
            continue
        mask = np.zeros(ids.shape, np.uint8, order="F")
        mask[y0:y1 + 1, x0:x1 + 1] = ids[y0:y1 + 1, x0:x1 + 1] == value
        rle = mask_utils.encode(mask)
        anns.append({
            "category_id": label,
            "iscrowd": int(value < 1000),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(area),
            "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        })
    return anns


def cityscapes_to_coco(root: str | os.PathLike, split: str, *,
                       source: Literal["png", "json"] = "png") -> tuple[dict, str]:
    """The gtFine instances of a Cityscapes split as a COCO-format dict.

    Args:
        root: the dataset root (with ``leftImg8bit/`` and ``gtFine/``).
        split: "train", "val" (or any folder name under ``leftImg8bit/``).
        source: "png" reads ``*_gtFine_instanceIds.png``; "json" rasterises
            ``*_gtFine_polygons.json`` as cityscapesscripts does (see the module's docstring).

    Returns:
        (COCO dict, image root): images numbered 1.. in city then name order, ``file_name``
        "<city>/<name>_leftImg8bit.png" relative to the image root ``root/leftImg8bit/<split>``;
        categories the 8 instance classes with their Cityscapes label ids.
    """
    from PIL import Image

    if source not in ("png", "json"):
        raise DatasetError(f"cityscapes_to_coco: source must be 'png' or 'json', got {source!r}.")
    root = Path(root)
    image_root = root / "leftImg8bit" / split
    images, annotations = [], []
    for image_id, (city, name) in enumerate(_image_files(root, split), start=1):
        stem = name[: -len(_IMAGE_SUFFIX)]
        gt = root / "gtFine" / split / city / (stem + ("_gtFine_instanceIds.png" if source == "png" else "_gtFine_polygons.json"))
        if not gt.is_file():
            raise DatasetError(f"Image {image_root / city / name} has no ground truth {gt}: {_LAYOUT}.")
        ids = _read_instance_ids(gt) if source == "png" else _rasterise_polygons(gt)
        height, width = ids.shape
        try:
            with Image.open(image_root / city / name) as im:
                size = im.size
        except OSError as e:
            raise DatasetError(f"Cannot read the image {image_root / city / name}: {e}.") from None
        if size != (width, height):
            raise DatasetError(f"{image_root / city / name} is {size[0]}x{size[1]} (width x height) but its "
                               f"ground truth {gt} is {width}x{height}; they must be the same size.")
        images.append({"id": image_id, "file_name": f"{city}/{name}", "height": int(height), "width": int(width)})
        for ann in instance_id_annotations(ids):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": i, "name": n, "supercategory": "human" if i in (24, 25) else "vehicle"}
                  for i, n in CITYSCAPES_INSTANCE_CLASSES]
    return {"images": images, "annotations": annotations, "categories": categories}, str(image_root)

