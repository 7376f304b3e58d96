"""Detection datasets held in a few packed numpy arrays: :class:`DetectionDataset`.

Storage
-------
All images and annotations live in a handful of contiguous numpy arrays (ids, packed file-name
bytes with offsets, boxes, labels, a packed polygon coordinate buffer with per-polygon and
per-annotation offsets, packed RLE strings). DataLoader workers forked from the main process share
these pages; a list of per-record Python dicts would instead be copied page by page as reference
counts are touched, which is how detectron2/mmdetection jobs run out of host memory on COCO.
``dataset.get(i)`` builds a small per-image view on demand (:class:`ImageRecord`).

Datasets come from COCO files (:func:`swiftdet.data.load_coco`) or from Python records
(:meth:`DetectionDataset.from_records`, format in :mod:`swiftdet.data.records`); both go through
:func:`build_dataset`, which validates (:mod:`swiftdet.data.validation`) and packs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from swiftdet.data.meta import DatasetMeta
from swiftdet.data.records import RawAnnotations, records_to_columns
from swiftdet.data.validation import CheckedAnnotations, LoadSummary, training_selection, validate
from swiftdet.errors import DatasetError

__all__ = [
    "AnnotationTable",
    "DetectionDataset",
    "ImageRecord",
    "ImageTable",
    "PackedStrings",
    "build_dataset",
    "gather_ranges",
]


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
        # Precomputed proposals by image id (a swiftdet.data.proposals.ProposalFile) when the dataset
        # was loaded with a proposals file, for a Fast R-CNN; None otherwise.
        self.proposals = None

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
        """A dataset from a list of records (format in :mod:`swiftdet.data.records`), validated like COCO."""
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
        subset = DetectionDataset(self.meta, images, self.annotations.take(ann_index), self.image_root, self.load_summary)
        subset.proposals = self.proposals  # by image id: still valid for the kept images
        return subset


# ----------------------------------------------------------------------------------------------
# Validation, packing and training drops, shared by the COCO loader and from_records
# ----------------------------------------------------------------------------------------------
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
    """Validate parsed columns, pack a DetectionDataset and drop what training drops (counted).

    The rules, what is rejected (DatasetError naming ``source``, image id and annotation id) and
    what training drops, are in :mod:`swiftdet.data.validation`.
    """
    checked = validate(source, meta, image_ids, file_names, heights, widths, raw, image_root, check_images=check_images)
    dataset = _pack(meta, image_ids, file_names, heights, widths, raw.ids, checked, image_root)
    summary = LoadSummary(source=source, training=training)
    dataset = _drop_for_training(dataset, summary, filter_empty, min_keypoints_per_image) if training else dataset
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


def _pack(
    meta: DatasetMeta,
    image_ids: np.ndarray,
    file_names: list[str],
    heights: np.ndarray,
    widths: np.ndarray,
    ann_ids: np.ndarray,
    checked: CheckedAnnotations,
    image_root: str,
) -> DetectionDataset:
    """The dataset of validated columns, annotations grouped by image."""
    num_images = len(image_ids)
    ann_image = checked.image_index
    # Group by image (stable: json order within an image).
    by_image = np.argsort(ann_image, kind="stable")
    counts = np.bincount(ann_image, minlength=num_images) if len(ann_ids) else np.zeros(num_images, dtype=np.int64)
    ann_offsets = np.zeros(num_images + 1, dtype=np.int64)
    np.cumsum(counts, out=ann_offsets[1:])
    unsorted = AnnotationTable(
        ids=ann_ids.astype(np.int64),
        boxes=checked.boxes.astype(np.float32),
        labels=checked.labels,
        iscrowd=checked.iscrowd,
        keypoints=checked.keypoints,
        poly_offsets=checked.poly_offsets,
        poly_coord_offsets=checked.poly_coord_offsets,
        poly_coords=checked.poly_coords.astype(np.float32),
        rle_index=checked.rle_index,
        rles=PackedStrings.from_list(checked.rles),
    )
    images = ImageTable(
        ids=image_ids.astype(np.int64),
        file_names=PackedStrings.from_list(file_names),
        heights=heights.astype(np.int32),
        widths=widths.astype(np.int32),
        ann_offsets=ann_offsets,
    )
    return DetectionDataset(meta, images, unsorted.take(by_image), image_root)


def _drop_for_training(
    dataset: DetectionDataset, summary: LoadSummary, filter_empty: bool, min_keypoints_per_image: int
) -> DetectionDataset:
    """Drop degenerate boxes and images training cannot use, counting each in ``summary``."""
    ann = dataset.annotations
    keep_image, ann_keep = training_selection(
        ann.boxes, ann.iscrowd, ann.keypoints, dataset.images.ann_offsets, summary, filter_empty, min_keypoints_per_image
    )
    if keep_image.all() and ann_keep.all():
        return dataset
    return dataset.select(np.nonzero(keep_image)[0], ann_keep)
