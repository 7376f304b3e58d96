"""Custom datasets from Python records, and the annotation-dict parser they share with COCO files.

Registering a custom dataset in Python
--------------------------------------
There is no global catalog: build a :class:`~swiftdet.data.storage.DetectionDataset` and pass the
object where a dataset is expected (``build_train_loader(cfg, dataset, ...)``, the trainer, the
evaluator). From records::

    from swiftdet.data import DatasetMeta, DetectionDataset

    meta = DatasetMeta(class_names=("cat", "dog"))  # category ids default to 0, 1
    records = [
        {
            "file_name": "images/0001.jpg",  # relative to image_root (or absolute)
            "height": 480, "width": 640, "image_id": 1,
            "annotations": [
                {"bbox": [10, 20, 110, 220], "category_id": 0},  # x0, y0, x1, y1
                {"bbox": [300, 40, 50, 60], "bbox_mode": "xywh", "category_id": 1,
                 "segmentation": [[300, 40, 350, 40, 350, 100]],  # polygons, or an RLE dict
                 "iscrowd": 0},
            ],
        },
    ]
    dataset = DetectionDataset.from_records(records, meta, image_root="/data/pets", training=True)

A record's annotation may also carry ``"id"`` (else annotations are numbered 1, 2, ... in record
order), ``"keypoints"`` (a flat [x, y, v] * K list; then ``meta.keypoint_names`` lists the K
names) and ``"segmentation"`` as a list of flat polygons ``[[x0, y0, x1, y1, ...], ...]`` or an
RLE dict ``{"size": [height, width], "counts": str | list[int]}``. ``category_id`` is one of
``meta.category_ids``. Records are validated exactly like COCO files (rules in
:mod:`swiftdet.data.validation`).

Both records and COCO files are first parsed into columns (:class:`RawAnnotations`), unchecked;
:func:`swiftdet.data.storage.build_dataset` then validates and packs them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from swiftdet.data.meta import DatasetMeta
from swiftdet.errors import DatasetError

__all__ = ["RawAnnotations", "int_column", "parse_annotations", "records_to_columns"]


@dataclass
class RawAnnotations:
    """Annotation columns as parsed, before validation (A annotations, P polygons).

    ``polygons`` holds every annotation's polygons back to back (annotation a owns
    ``num_polygons[a]`` of them); ``rles`` and ``keypoints`` are sparse, keyed by annotation position.
    """

    ids: np.ndarray  # (A,) int64
    image_ids: np.ndarray  # (A,) int64
    category_ids: np.ndarray  # (A,) int64
    boxes: np.ndarray  # (A, 4) float64 xyxy
    iscrowd: np.ndarray  # (A,) int64
    num_polygons: np.ndarray  # (A,) int64
    polygons: list = field(default_factory=list)  # P flat coordinate lists
    rles: dict = field(default_factory=dict)  # position -> RLE dict
    keypoints: dict = field(default_factory=dict)  # position -> flat [x, y, v] * K list


def int_column(values: list, what: str, source: str, describe: Callable[[int], str]) -> np.ndarray:
    """int64 array of json integers; rejects strings, floats and booleans naming the first culprit."""
    for i, v in enumerate(values):
        if type(v) is not int:
            if not (isinstance(v, float) and v.is_integer()):
                raise DatasetError(f"{source}: {describe(i)}: {what} must be an integer, got {v!r}.")
        if not -2**63 <= v < 2**63:  # what the packed int64 columns hold
            raise DatasetError(f"{source}: {describe(i)}: {what} {v!r} is out of the 64-bit integer range.")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def parse_annotations(anns: list, source: str) -> RawAnnotations:
    """Columns of a list of COCO annotation dicts (boxes read as xywh); only types are checked here."""
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


def _raw_columns(
    source: str, anns: list, ids: list, image_ids: list, cat_ids: list, bboxes: list, crowd: list, num_polys: list,
    polygons: list, rles: dict[int, Any], keypoints: dict[int, Any], bbox_mode: str,
) -> RawAnnotations:
    def describe(k: int) -> str:
        a = anns[k]
        return f"annotation id {a.get('id', k + 1)} (image id {a.get('image_id')})" if isinstance(a, dict) else f"annotation {k}"

    ids_a = int_column(ids, "'id'", source, describe)
    img_a = int_column(image_ids, "'image_id'", source, describe)
    cat_a = int_column(cat_ids, "'category_id'", source, describe)
    crowd_a = int_column(crowd, "'iscrowd'", source, describe)
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


def records_to_columns(
    records: Sequence[dict], meta: DatasetMeta, source: str
) -> tuple[tuple[np.ndarray, list[str], np.ndarray, np.ndarray], RawAnnotations]:
    """Parse :meth:`~swiftdet.data.storage.DetectionDataset.from_records` records into the columns
    :func:`~swiftdet.data.storage.build_dataset` takes: (image ids, file names, heights, widths), annotations."""
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
        int_column(ids, "'image_id'", source, lambda k: f"record {k}"),
        names,
        int_column(heights, "'height'", source, lambda k: f"image id {ids[k]}"),
        int_column(widths, "'width'", source, lambda k: f"image id {ids[k]}"),
    )
    raw = parse_annotations(flat, source)
    # parse_annotations read every box as COCO xywh; undo that for the records given as xyxy.
    xyxy = np.array([m == "xyxy" for m in modes], dtype=bool)
    raw.boxes[xyxy, 2:] = raw.boxes[xyxy, 2:] - raw.boxes[xyxy, :2]
    return image_cols, raw
