"""Detection datasets held in a few packed numpy arrays, and how to bring your own.

Using a COCO-format dataset
---------------------------
Point the config at the annotation file and the folder its ``file_name`` entries are relative to::

    cfg.data.train.json = "data/annotations/instances_train.json"
    cfg.data.train.image_root = "data"

or load it yourself with ``swiftdet.data.load_coco(json_path, image_root, training=True)``. Boxes,
polygons, RLE masks (compressed or not), crowd regions and keypoints are read; category ids are
mapped to contiguous labels 0..C-1 in increasing category id order (``ds.meta.category_ids[label]``
maps back). Every annotation is checked at load time; see :mod:`swiftdet.data.coco` for the rules.

Registering a custom dataset in Python
--------------------------------------
There is no global catalog: build a :class:`DetectionDataset` and pass the object where a dataset
is expected (``build_train_loader(cfg, dataset, ...)``, the trainer, the evaluator). From records::

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
``meta.category_ids``. Records are validated exactly like COCO files.

Storage
-------
All images and annotations live in a handful of contiguous numpy arrays (ids, packed file-name
bytes with offsets, boxes, labels, a packed polygon coordinate buffer with per-polygon and
per-annotation offsets, packed RLE strings). DataLoader workers forked from the main process share
these pages; a list of per-record Python dicts would instead be copied page by page as reference
counts are touched, which is how detectron2/mmdetection jobs run out of host memory on COCO.
``dataset.get(i)`` builds a small per-image view on demand.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from swiftdet.errors import DatasetError

__all__ = [
    "AnnotationTable",
    "DatasetMeta",
    "DetectionDataset",
    "ImageRecord",
    "ImageTable",
    "LoadSummary",
    "PackedStrings",
    "RawAnnotations",
    "build_dataset",
]

# A box may stick out of its image by this many pixels, or by this fraction of the image side,
# whichever is larger (annotation tools round; COCO has boxes ending at width + 0.5). Beyond that
# the annotation is rejected: it almost always means swapped width/height or the wrong image.
BOX_TOLERANCE_PIXELS = 2.0
BOX_TOLERANCE_FRACTION = 0.01


# ----------------------------------------------------------------------------------------------
# Packed containers
# ----------------------------------------------------------------------------------------------
def gather_ranges(offsets: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ranges ``offsets[w]:offsets[w+1]`` for each ``w`` in ``which``.

    Returns:
        (indices into the packed buffer (sum of lengths,), new offsets (len(which) + 1,)).
    """
    which = np.asarray(which, dtype=np.int64)
    starts = offsets[which]
    lengths = offsets[which + 1] - starts
    new_offsets = np.zeros(len(which) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    index = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return index, new_offsets


@dataclass(frozen=True)
class PackedStrings:
    """N byte strings in one uint8 buffer; string i is ``data[offsets[i]:offsets[i+1]]``."""

    data: np.ndarray  # (total bytes,) uint8
    offsets: np.ndarray  # (N + 1,) int64

    @staticmethod
    def from_list(items: Sequence[str | bytes]) -> "PackedStrings":
        encoded = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return PackedStrings(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get_bytes(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> str:
        return self.get_bytes(i).decode("utf-8")

    def take(self, which: np.ndarray) -> "PackedStrings":
        index, offsets = gather_ranges(self.offsets, which)
        return PackedStrings(self.data[index], offsets)


@dataclass(frozen=True)
class ImageTable:
    """Per-image columns; annotations of image i are rows ``ann_offsets[i]:ann_offsets[i+1]``."""

    ids: np.ndarray  # (N,) int64 dataset image ids
    file_names: PackedStrings  # N names as written in the json / records
    heights: np.ndarray  # (N,) int32
    widths: np.ndarray  # (N,) int32
    ann_offsets: np.ndarray  # (N + 1,) int64


@dataclass(frozen=True)
class AnnotationTable:
    """Per-annotation columns, grouped by image.

    Masks: annotation a has polygons ``poly_offsets[a]:poly_offsets[a+1]`` of the polygon table,
    polygon p has coordinates ``poly_coords[poly_coord_offsets[p]:poly_coord_offsets[p+1]]``
    (x0, y0, x1, y1, ...); or, when ``rle_index[a] >= 0``, the compressed COCO RLE string
    ``rles[rle_index[a]]`` of the image's size. Annotations with neither have no mask.
    """

    ids: np.ndarray  # (A,) int64
    boxes: np.ndarray  # (A, 4) float32 xyxy
    labels: np.ndarray  # (A,) int64 contiguous
    iscrowd: np.ndarray  # (A,) bool
    keypoints: np.ndarray  # (A, K, 3) float32; K = 0 without keypoints
    poly_offsets: np.ndarray  # (A + 1,) int64
    poly_coord_offsets: np.ndarray  # (P + 1,) int64
    poly_coords: np.ndarray  # (C,) float32
    rle_index: np.ndarray  # (A,) int64, -1 for none
    rles: PackedStrings

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, which: np.ndarray) -> "AnnotationTable":
        """The annotations at positions ``which`` (int64 array), masks re-packed."""
        which = np.asarray(which, dtype=np.int64)
        poly_index, poly_offsets = gather_ranges(self.poly_offsets, which)
        coord_index, coord_offsets = gather_ranges(self.poly_coord_offsets, poly_index)
        rle_index = self.rle_index[which]
        has_rle = rle_index >= 0
        new_rle_index = np.full(len(which), -1, dtype=np.int64)
        new_rle_index[has_rle] = np.arange(int(has_rle.sum()), dtype=np.int64)
        return AnnotationTable(
            ids=self.ids[which],
            boxes=self.boxes[which],
            labels=self.labels[which],
            iscrowd=self.iscrowd[which],
            keypoints=self.keypoints[which],
            poly_offsets=poly_offsets,
            poly_coord_offsets=coord_offsets,
            poly_coords=self.poly_coords[coord_index],
            rle_index=new_rle_index,
            rles=self.rles.take(rle_index[has_rle]),
        )


# ----------------------------------------------------------------------------------------------
# Metadata, per-image view, load summary
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset's labels mean.

    Attributes:
        class_names: C names; index = contiguous label.
        category_ids: C dataset category ids, ``category_ids[label]``; defaults to 0..C-1.
        keypoint_names: K keypoint names (empty without keypoints).
        keypoint_flip_map: (left, right) name pairs swapped by a horizontal flip; empty: derived
            from 'left_*'/'right_*' names by :func:`swiftdet.structures.flip_indices`.
        skeleton: 0-based (i, j) keypoint index pairs drawn as limbs.
        name: where the dataset came from (json path or a user-chosen name), used in messages.
    """

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    keypoint_flip_map: tuple[tuple[str, str], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        ids = tuple(int(i) for i in self.category_ids) or tuple(range(len(self.class_names)))
        object.__setattr__(self, "category_ids", ids)
        object.__setattr__(self, "keypoint_names", tuple(self.keypoint_names))
        object.__setattr__(self, "keypoint_flip_map", tuple((str(a), str(b)) for a, b in self.keypoint_flip_map))
        object.__setattr__(self, "skeleton", tuple((int(a), int(b)) for a, b in self.skeleton))
        where = f" of dataset '{self.name}'" if self.name else ""
        if len(ids) != len(self.class_names):
            raise DatasetError(
                f"DatasetMeta{where}: {len(self.class_names)} class names but {len(ids)} category ids; "
                "give one category id per class name (or none for 0..C-1)."
            )
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DatasetError(f"DatasetMeta{where}: category ids {dup} appear more than once; category ids must be unique.")
        k = len(self.keypoint_names)
        bad = [(a, b) for a, b in self.skeleton if not (0 <= a < k and 0 <= b < k)]
        if bad:
            raise DatasetError(
                f"DatasetMeta{where}: skeleton pairs {bad} index keypoints outside 0..{k - 1} "
                f"({k} keypoint names); skeleton pairs are 0-based keypoint indices."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def label_of_category(self) -> dict[int, int]:
        """Dataset category id -> contiguous label."""
        return {cid: i for i, cid in enumerate(self.category_ids)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in checkpoints as ``meta``)."""
        return {
            "class_names": list(self.class_names),
            "category_ids": list(self.category_ids),
            "keypoint_names": list(self.keypoint_names),
            "keypoint_flip_map": [list(p) for p in self.keypoint_flip_map],
            "skeleton": [list(p) for p in self.skeleton],
            "name": self.name,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "DatasetMeta":
        return DatasetMeta(
            class_names=tuple(d["class_names"]),
            category_ids=tuple(d.get("category_ids", ())),
            keypoint_names=tuple(d.get("keypoint_names", ())),
            keypoint_flip_map=tuple(tuple(p) for p in d.get("keypoint_flip_map", ())),
            skeleton=tuple(tuple(p) for p in d.get("skeleton", ())),
            name=d.get("name", ""),
        )


Segmentation = list  # list[np.ndarray] polygons, or a dict RLE, or None per annotation


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations, as numpy arrays (a view built by :meth:`DetectionDataset.get`).

    Attributes:
        index: position in the dataset.
        image_id: dataset image id.
        file_name: path to open (image_root joined with the json's file_name).
        height, width: image size stated by the annotations.
        annotation_ids: (A,) int64.
        boxes: (A, 4) float32 xyxy in pixels.
        labels: (A,) int64 contiguous labels.
        iscrowd: (A,) bool.
        keypoints: (A, K, 3) float32 x, y, visibility, or None when the dataset has no keypoints.
        segmentations: A entries, each a list of float64 (2P,) polygons, an RLE dict
            ``{"size": [h, w], "counts": bytes}`` (compressed), or None (no mask).
    """

    index: int
    image_id: int
    file_name: str
    height: int
    width: int
    annotation_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    keypoints: np.ndarray | None
    segmentations: list


@dataclass
class LoadSummary:
    """What a load kept and dropped; printed at load time and kept as ``dataset.load_summary``."""

    source: str
    training: bool
    num_images: int = 0  # images in the returned dataset
    num_annotations: int = 0  # annotations in the returned dataset
    num_crowd: int = 0  # of which crowd regions (kept for evaluation, never training targets)
    dropped_degenerate_boxes: int = 0  # zero width or height (training only)
    kept_degenerate_boxes: int = 0  # zero width or height kept for evaluation
    dropped_images_empty: int = 0  # no usable (non-crowd, non-degenerate) annotation (training, filter_empty)
    dropped_images_without_keypoints: int = 0  # no visible keypoint (keypoint datasets, training)
    dropped_annotations_with_images: int = 0  # annotations that left with dropped images

    def lines(self) -> list[str]:
        mode = "training" if self.training else "evaluation"
        out = [
            f"Loaded {self.source} for {mode}: {self.num_images} images, {self.num_annotations} annotations "
            f"({self.num_crowd} crowd, kept for evaluation and excluded from training targets)."
        ]
        if self.dropped_degenerate_boxes:
            out.append(f"  dropped {self.dropped_degenerate_boxes} annotations with a zero-width or zero-height box")
        if self.kept_degenerate_boxes:
            out.append(f"  kept {self.kept_degenerate_boxes} annotations with a zero-width or zero-height box (evaluation)")
        if self.dropped_images_empty:
            out.append(f"  dropped {self.dropped_images_empty} images without a usable annotation (data.filter_empty)")
        if self.dropped_images_without_keypoints:
            out.append(f"  dropped {self.dropped_images_without_keypoints} images without any visible keypoint")
        if self.dropped_annotations_with_images:
            out.append(f"  ({self.dropped_annotations_with_images} annotations, crowd included, left with dropped images)")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# ----------------------------------------------------------------------------------------------
# The dataset
# ----------------------------------------------------------------------------------------------
class DetectionDataset:
    """Images with boxes, masks and keypoints, in packed arrays (see the module docstring).

    Attributes:
        meta: class names, category ids, keypoint names.
        images: per-image columns.
        annotations: per-annotation columns, ordered by image.
        image_root: folder the file names are relative to ("" for names relative to the cwd).
        load_summary: what loading kept and dropped.
    """

    def __init__(
        self,
        meta: DatasetMeta,
        images: ImageTable,
        annotations: AnnotationTable,
        image_root: str = "",
        load_summary: LoadSummary | None = None,
    ):
        self.meta = meta
        self.images = images
        self.annotations = annotations
        self.image_root = str(image_root)
        self.load_summary = load_summary or LoadSummary(source=meta.name, training=False)

    @staticmethod
    def from_records(
        records: Sequence[dict],
        meta: DatasetMeta,
        *,
        image_root: str = "",
        check_images: bool = True,
        training: bool = False,
        filter_empty: bool = True,
        min_keypoints_per_image: int = 1,
        verbose: bool = True,
    ) -> "DetectionDataset":
        """A dataset from a list of records (format in the module docstring), validated like COCO."""
        from swiftdet.data.coco import records_to_columns  # the shared parser lives with the COCO one

        source = f"records of dataset '{meta.name}'" if meta.name else "records"
        image_cols, raw = records_to_columns(records, meta, source)
        return build_dataset(
            source, meta, *image_cols, raw, image_root,
            check_images=check_images, training=training, filter_empty=filter_empty,
            min_keypoints_per_image=min_keypoints_per_image, verbose=verbose,
        )

    def __len__(self) -> int:
        return len(self.images.ids)

    def __repr__(self) -> str:
        return (
            f"DetectionDataset(name={self.meta.name!r}, images={len(self)}, annotations={len(self.annotations)}, "
            f"classes={self.meta.num_classes}, keypoints={self.meta.num_keypoints})"
        )

    @property
    def has_masks(self) -> bool:
        return len(self.annotations.poly_coords) > 0 or len(self.annotations.rles) > 0

    @property
    def has_keypoints(self) -> bool:
        return self.annotations.keypoints.shape[1] > 0

    def file_path(self, i: int) -> str:
        """Path of image i: image_root joined with its file name (absolute names stay as they are)."""
        name = self.images.file_names[i]
        return os.path.join(self.image_root, name) if self.image_root else name

    def image_size(self, i: int) -> tuple[int, int]:
        return int(self.images.heights[i]), int(self.images.widths[i])

    def index_of_image_id(self, image_ids: Sequence[int]) -> np.ndarray:
        """Positions of the given dataset image ids; raises DatasetError for an unknown id."""
        ids = np.asarray(image_ids, dtype=np.int64)
        order = np.argsort(self.images.ids, kind="stable")
        sorted_ids = self.images.ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
        found = (len(sorted_ids) > 0) & (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
        if not np.all(found):
            missing = ids[~found][:5].tolist()
            raise DatasetError(f"{self.load_summary.source}: image ids {missing} are not in the dataset.")
        return order[pos]

    def get(self, i: int) -> ImageRecord:
        """The per-image view of image ``i`` (0 <= i < len(self))."""
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for a dataset of {len(self)} images")
        a0, a1 = int(self.images.ann_offsets[i]), int(self.images.ann_offsets[i + 1])
        ann = self.annotations
        height, width = self.image_size(i)
        segmentations: list = []
        for a in range(a0, a1):
            r = int(ann.rle_index[a])
            if r >= 0:
                segmentations.append({"size": [height, width], "counts": ann.rles.get_bytes(r)})
                continue
            p0, p1 = int(ann.poly_offsets[a]), int(ann.poly_offsets[a + 1])
            if p0 == p1:
                segmentations.append(None)
                continue
            co = ann.poly_coord_offsets
            segmentations.append([ann.poly_coords[co[p] : co[p + 1]].astype(np.float64) for p in range(p0, p1)])
        return ImageRecord(
            index=i,
            image_id=int(self.images.ids[i]),
            file_name=self.file_path(i),
            height=height,
            width=width,
            annotation_ids=ann.ids[a0:a1].copy(),
            boxes=ann.boxes[a0:a1].copy(),
            labels=ann.labels[a0:a1].copy(),
            iscrowd=ann.iscrowd[a0:a1].copy(),
            keypoints=ann.keypoints[a0:a1].copy() if self.has_keypoints else None,
            segmentations=segmentations,
        )

    def __getitem__(self, i: int) -> ImageRecord:
        return self.get(i)

    def select(self, image_indices: Sequence[int] | np.ndarray, ann_keep: np.ndarray | None = None) -> "DetectionDataset":
        """A new dataset with the images at ``image_indices`` (in that order), and of their
        annotations only those where ``ann_keep`` (an (A,) bool over this dataset's annotations) is True."""
        which = np.asarray(image_indices, dtype=np.int64)
        ann_index, ann_offsets = gather_ranges(self.images.ann_offsets, which)
        if ann_keep is not None:
            keep = ann_keep[ann_index]
            owner = np.repeat(np.arange(len(which), dtype=np.int64), np.diff(ann_offsets))
            counts = np.bincount(owner[keep], minlength=len(which))
            ann_index = ann_index[keep]
            ann_offsets = np.zeros(len(which) + 1, dtype=np.int64)
            np.cumsum(counts, out=ann_offsets[1:])
        images = ImageTable(
            ids=self.images.ids[which],
            file_names=self.images.file_names.take(which),
            heights=self.images.heights[which],
            widths=self.images.widths[which],
            ann_offsets=ann_offsets,
        )
        return DetectionDataset(self.meta, images, self.annotations.take(ann_index), self.image_root, self.load_summary)


# ----------------------------------------------------------------------------------------------
# Validation and packing, shared by the COCO loader and from_records
# ----------------------------------------------------------------------------------------------
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


def _reject(source: str, what: str, image_id: Any = None, ann_id: Any = None, fix: str = "") -> DatasetError:
    where = []
    if image_id is not None:
        where.append(f"image id {image_id}")
    if ann_id is not None:
        where.append(f"annotation id {ann_id}")
    location = f" ({', '.join(where)})" if where else ""
    return DatasetError(f"{source}{location}: {what}" + (f" {fix}" if fix else ""))


def _first_duplicate(values: np.ndarray) -> int | None:
    if len(values) < 2:
        return None
    s = np.sort(values, kind="stable")
    dup = np.nonzero(s[1:] == s[:-1])[0]
    return int(s[dup[0]]) if len(dup) else None


def rle_counts_from_string(counts: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string.

    The format packs each count in 5-bit groups (low first, bit 0x20 = more groups follow, bit 0x10
    of the last group = negative) offset by 48 into printable ASCII; from the third count on, a
    count is stored as its difference to the count two places earlier.

    Raises:
        ValueError: a character outside the format's range, or a truncated last count.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        value, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated count at the end of the string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} at position {p} is not part of the COCO RLE alphabet")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and (c & 0x10):
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def _validate_rle(rle: Any, height: int, width: int) -> tuple[bytes | None, str]:
    """(compressed counts, "") for a valid RLE of an image of (height, width); (None, reason) if not."""
    import pycocotools.mask as mask_utils

    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return None, "an RLE segmentation must be a dict with 'size' [height, width] and 'counts'"
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or [int(size[0]), int(size[1])] != [height, width]:
        return None, f"RLE size {size} differs from the image size [{height}, {width}] (height, width)"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, (int, np.integer)) and c >= 0 for c in counts):
            return None, "uncompressed RLE counts must be non-negative integers"
        if sum(counts) != height * width:
            return None, f"uncompressed RLE counts sum to {sum(counts)}, not height * width = {height * width}"
        compressed = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
        return compressed["counts"], ""
    if isinstance(counts, (str, bytes)):
        try:
            runs = rle_counts_from_string(counts)
        except (ValueError, UnicodeDecodeError) as e:
            return None, f"compressed RLE counts cannot be decoded ({e})"
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            return None, f"compressed RLE counts decode to runs summing to {sum(runs)}, not height * width = {height * width}"
        return counts.encode("ascii") if isinstance(counts, str) else bytes(counts), ""
    return None, f"RLE counts must be a string (compressed) or a list of integers, got {type(counts).__name__}"


def _check_image_files(source: str, image_root: str, names: list[str], image_ids: np.ndarray) -> None:
    """Every image file exists: one directory listing per folder instead of a stat per file."""
    listings: dict[str, set[str] | None] = {}
    missing: list[int] = []
    for i, name in enumerate(names):
        path = os.path.join(image_root, name) if image_root else name
        folder, base = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = {e.name for e in os.scandir(folder or ".") if not e.is_dir()}
            except OSError:
                listings[folder] = None
        listing = listings[folder]
        if listing is None or base not in listing:
            missing.append(i)
    if missing:
        i = missing[0]
        path = os.path.join(image_root, names[i]) if image_root else names[i]
        raise _reject(
            source,
            f"{len(missing)} of {len(names)} image files are missing, e.g. '{path}' (image id {int(image_ids[i])}) "
            f"under image root '{image_root}'.",
            fix="Check that the image root is the folder the file names are relative to, or pass "
            "check_images=False to skip this check.",
        )


def build_dataset(
    source: str,
    meta: DatasetMeta,
    image_ids: np.ndarray,
    file_names: list[str],
    heights: np.ndarray,
    widths: np.ndarray,
    raw: RawAnnotations,
    image_root: str,
    *,
    check_images: bool,
    training: bool,
    filter_empty: bool = True,
    min_keypoints_per_image: int = 1,
    verbose: bool = True,
) -> DetectionDataset:
    """Validate parsed columns, drop what training drops (counted), and pack a DetectionDataset.

    Rejected (DatasetError naming ``source``, image id and annotation id): duplicate image or
    annotation ids, non-positive image sizes, unknown image or category ids, non-finite boxes,
    negative box width/height, boxes beyond the image by more than max(2 px, 1% of the side),
    polygons with an odd number of coordinates or fewer than 3 points, malformed RLE, keypoint
    lists of the wrong length or with visibility outside {0, 1, 2}, missing image files
    (``check_images``). Dropped and counted when ``training``: non-crowd annotations with a zero
    width or height box; images with no usable annotation (``filter_empty``); on keypoint datasets,
    images with fewer than ``min_keypoints_per_image`` visible keypoints.
    """
    num_images = len(image_ids)
    num_anns = len(raw.ids)
    # --- images
    dup = _first_duplicate(image_ids)
    if dup is not None:
        raise _reject(source, f"image id {dup} appears more than once in the images list.", fix="Image ids must be unique.")
    bad = np.nonzero((heights <= 0) | (widths <= 0))[0]
    if len(bad):
        i = bad[0]
        raise _reject(source, f"image size {int(heights[i])}x{int(widths[i])} (height x width) is not positive.",
                      image_id=int(image_ids[i]), fix="Set 'height' and 'width' to the image's size in pixels.")
    if check_images:
        _check_image_files(source, image_root, file_names, image_ids)

    # --- annotation ids, images and categories
    dup = _first_duplicate(raw.ids)
    if dup is not None:
        pos = int(np.nonzero(raw.ids == dup)[0][1])
        raise _reject(source, f"annotation id {dup} appears more than once.", image_id=int(raw.image_ids[pos]),
                      ann_id=dup, fix="Annotation ids must be unique.")
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    pos = np.searchsorted(sorted_ids, raw.image_ids)
    pos_c = np.clip(pos, 0, max(num_images - 1, 0))
    known = (sorted_ids[pos_c] == raw.image_ids) if num_images else np.zeros(num_anns, dtype=bool)
    if not np.all(known):
        a = int(np.nonzero(~known)[0][0])
        raise _reject(source, f"the annotation refers to image id {int(raw.image_ids[a])}, which is not in the images list.",
                      image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Add the image or remove the annotation.")
    ann_image = order[pos_c] if num_anns else np.zeros(0, dtype=np.int64)

    cat_ids = np.asarray(meta.category_ids, dtype=np.int64)
    cat_order = np.argsort(cat_ids, kind="stable")
    cpos = np.clip(np.searchsorted(cat_ids[cat_order], raw.category_ids), 0, max(len(cat_ids) - 1, 0))
    known = (cat_ids[cat_order][cpos] == raw.category_ids) if len(cat_ids) else np.zeros(num_anns, dtype=bool)
    if not np.all(known):
        a = int(np.nonzero(~known)[0][0])
        raise _reject(source, f"category id {int(raw.category_ids[a])} is not one of the categories {list(meta.category_ids)[:20]}"
                      f"{'...' if len(cat_ids) > 20 else ''}.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Add the category to the categories list or fix the annotation's category_id.")
    labels = cat_order[cpos].astype(np.int64) if num_anns else np.zeros(0, dtype=np.int64)

    # --- boxes
    boxes = raw.boxes.reshape(-1, 4)
    h = heights[ann_image].astype(np.float64)
    w = widths[ann_image].astype(np.float64)

    def fail_at(mask: np.ndarray, what) -> None:
        idx = np.nonzero(mask)[0]
        if len(idx):
            a = int(idx[0])
            more = f" ({len(idx) - 1} more annotations have the same problem)" if len(idx) > 1 else ""
            raise _reject(source, what(a) + more, image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))

    fail_at(~np.isfinite(boxes).all(axis=1), lambda a: f"box {boxes[a].tolist()} has a non-finite coordinate.")
    fail_at((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
            lambda a: f"box has a negative width or height (x0, y0, x1, y1 = {boxes[a].tolist()}); "
                      "COCO boxes are [x, y, width, height] with width, height >= 0.")
    tol_x = np.maximum(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * w)
    tol_y = np.maximum(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * h)
    outside = (boxes[:, 0] < -tol_x) | (boxes[:, 1] < -tol_y) | (boxes[:, 2] > w + tol_x) | (boxes[:, 3] > h + tol_y)
    fail_at(outside, lambda a: f"box x0, y0, x1, y1 = {[round(v, 2) for v in boxes[a].tolist()]} lies outside the "
                               f"{int(w[a])}x{int(h[a])} (width x height) image by more than max({BOX_TOLERANCE_PIXELS:g} px, "
                               f"{BOX_TOLERANCE_FRACTION:.0%} of the side). Check the box format (xywh vs xyxy) and the image size.")
    iscrowd = raw.iscrowd.astype(np.int64)
    fail_at((iscrowd != 0) & (iscrowd != 1), lambda a: f"iscrowd must be 0 or 1, got {int(iscrowd[a])}.")
    iscrowd = iscrowd.astype(bool)

    # --- polygons
    num_polys = raw.num_polygons.astype(np.int64)
    poly_offsets = np.zeros(num_anns + 1, dtype=np.int64)
    np.cumsum(num_polys, out=poly_offsets[1:])
    try:
        poly_lengths = np.fromiter(map(len, raw.polygons), dtype=np.int64, count=len(raw.polygons))
        total = int(poly_lengths.sum())
        poly_coords = np.fromiter(itertools.chain.from_iterable(raw.polygons), dtype=np.float64, count=total)
    except (TypeError, ValueError):
        p = next(i for i, poly in enumerate(raw.polygons)
                 if not isinstance(poly, (list, tuple, np.ndarray)) or not all(isinstance(c, (int, float, np.number)) for c in poly))
        a = int(np.searchsorted(poly_offsets, p, side="right") - 1)
        raise _reject(source, f"segmentation polygon {p - int(poly_offsets[a])} is not a list of numbers "
                              f"(got {str(raw.polygons[p])[:60]}).", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="A polygon segmentation is a list of flat [x0, y0, x1, y1, ...] lists, one per polygon.") from None
    coord_offsets = np.zeros(len(poly_lengths) + 1, dtype=np.int64)
    np.cumsum(poly_lengths, out=coord_offsets[1:])
    bad = np.nonzero((poly_lengths % 2 == 1) | (poly_lengths < 6))[0]
    if len(bad):
        p = int(bad[0])
        a = int(np.searchsorted(poly_offsets, p, side="right") - 1)
        n = int(poly_lengths[p])
        reason = "an odd number of coordinates" if n % 2 else f"only {n // 2} points (at least 3 are needed)"
        raise _reject(source, f"segmentation polygon {p - int(poly_offsets[a])} has {n} coordinates: {reason}.",
                      image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Polygons are flat [x0, y0, x1, y1, ...] lists of at least 3 points.")
    if not np.all(np.isfinite(poly_coords)):
        p = int(np.searchsorted(coord_offsets, np.nonzero(~np.isfinite(poly_coords))[0][0], side="right") - 1)
        a = int(np.searchsorted(poly_offsets, p, side="right") - 1)
        raise _reject(source, "a segmentation polygon has a non-finite coordinate.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))

    # --- RLE
    rle_positions = sorted(raw.rles)
    rle_index = np.full(num_anns, -1, dtype=np.int64)
    rle_strings: list[bytes] = []
    for a in rle_positions:
        i = int(ann_image[a])
        counts, reason = _validate_rle(raw.rles[a], int(heights[i]), int(widths[i]))
        if counts is None:
            raise _reject(source, f"malformed RLE segmentation: {reason}.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
        rle_index[a] = len(rle_strings)
        rle_strings.append(counts)

    # --- keypoints
    k = meta.num_keypoints
    keypoints = np.zeros((num_anns, k, 3), dtype=np.float32)
    if raw.keypoints:
        kp_pos = np.fromiter(raw.keypoints.keys(), dtype=np.int64, count=len(raw.keypoints))
        if k == 0:
            a = int(kp_pos[0])
            raise _reject(source, "the annotation has keypoints but no category lists keypoint names.",
                          image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                          fix="Add 'keypoints' (names) to the category, or remove the annotation's keypoints.")
        lists = list(raw.keypoints.values())
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        fail_idx = np.nonzero(lengths != 3 * k)[0]
        if len(fail_idx):
            a = int(kp_pos[fail_idx[0]])
            raise _reject(source, f"keypoints has {int(lengths[fail_idx[0]])} values; the dataset has {k} keypoints, so "
                                  f"{3 * k} values (x, y, visibility per keypoint) are expected.",
                          image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
        try:
            values = np.asarray(lists, dtype=np.float64).reshape(-1, k, 3)
        except (TypeError, ValueError):
            a = int(kp_pos[0])
            raise _reject(source, "keypoints must be numbers.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a])) from None
        vis = values[..., 2]
        bad = np.nonzero(~np.isin(vis, (0, 1, 2)).all(axis=1) | ~np.isfinite(values).all(axis=(1, 2)))[0]
        if len(bad):
            a = int(kp_pos[bad[0]])
            raise _reject(source, "keypoint visibilities must be 0 (not labelled), 1 (occluded) or 2 (visible) and "
                                  "coordinates finite.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
        keypoints[kp_pos] = values.astype(np.float32)

    # --- group by image (stable: json order within an image)
    by_image = np.argsort(ann_image, kind="stable")
    counts = np.bincount(ann_image, minlength=num_images) if num_anns else np.zeros(num_images, dtype=np.int64)
    ann_offsets = np.zeros(num_images + 1, dtype=np.int64)
    np.cumsum(counts, out=ann_offsets[1:])
    unsorted = AnnotationTable(
        ids=raw.ids.astype(np.int64),
        boxes=boxes.astype(np.float32),
        labels=labels,
        iscrowd=iscrowd,
        keypoints=keypoints,
        poly_offsets=poly_offsets,
        poly_coord_offsets=coord_offsets,
        poly_coords=poly_coords.astype(np.float32),
        rle_index=rle_index,
        rles=PackedStrings.from_list(rle_strings),
    )
    images = ImageTable(
        ids=image_ids.astype(np.int64),
        file_names=PackedStrings.from_list(file_names),
        heights=heights.astype(np.int32),
        widths=widths.astype(np.int32),
        ann_offsets=ann_offsets,
    )
    dataset = DetectionDataset(meta, images, unsorted.take(by_image), image_root)

    summary = LoadSummary(source=source, training=training)
    dataset = _filter_for_training(dataset, summary, filter_empty, min_keypoints_per_image) if training else dataset
    ann = dataset.annotations
    degenerate = (ann.boxes[:, 2] <= ann.boxes[:, 0]) | (ann.boxes[:, 3] <= ann.boxes[:, 1])
    summary.kept_degenerate_boxes = 0 if training else int(degenerate.sum())
    summary.num_images = len(dataset)
    summary.num_annotations = len(ann)
    summary.num_crowd = int(ann.iscrowd.sum())
    dataset.load_summary = summary
    if verbose:
        print(str(summary), flush=True)
    return dataset


def _filter_for_training(
    dataset: DetectionDataset, summary: LoadSummary, filter_empty: bool, min_keypoints_per_image: int
) -> DetectionDataset:
    """Drop degenerate boxes and images training cannot use, counting each in ``summary``."""
    ann = dataset.annotations
    degenerate = ((ann.boxes[:, 2] <= ann.boxes[:, 0]) | (ann.boxes[:, 3] <= ann.boxes[:, 1])) & ~ann.iscrowd
    summary.dropped_degenerate_boxes = int(degenerate.sum())
    ann_keep = ~degenerate
    offsets = dataset.images.ann_offsets
    image_of_ann = np.repeat(np.arange(len(dataset)), np.diff(offsets))
    usable = np.bincount(image_of_ann, weights=(ann_keep & ~ann.iscrowd), minlength=len(dataset))
    keep_image = np.ones(len(dataset), dtype=bool)
    if filter_empty:
        empty = usable == 0
        summary.dropped_images_empty = int(empty.sum())
        keep_image &= ~empty
    if dataset.has_keypoints and min_keypoints_per_image > 0:
        visible = ((ann.keypoints[:, :, 2] > 0).sum(axis=1) * (ann_keep & ~ann.iscrowd)).astype(np.float64)
        per_image = np.bincount(image_of_ann, weights=visible, minlength=len(dataset))
        few = (per_image < min_keypoints_per_image) & keep_image
        summary.dropped_images_without_keypoints = int(few.sum())
        keep_image &= ~few
    summary.dropped_annotations_with_images = int(ann_keep[~keep_image[image_of_ann]].sum()) if len(ann_keep) else 0
    if keep_image.all() and ann_keep.all():
        return dataset
    return dataset.select(np.nonzero(keep_image)[0], ann_keep)
