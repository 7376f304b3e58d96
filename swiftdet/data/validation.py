"""Load-time validation of parsed dataset columns, and what training drops.

The same rules hold for COCO files (:mod:`swiftdet.data.coco`) and Python records
(:mod:`swiftdet.data.records`); everything is checked in one pass over the parsed lists plus
vectorised checks, before the columns are packed (:func:`swiftdet.data.storage.build_dataset`).

Rejected with a :class:`DatasetError` naming the file, the image id and the annotation id:
  - duplicate image or annotation ids; an annotation of an unknown image or category;
  - a non-positive image size;
  - a box with a non-finite coordinate or a negative width/height, or lying outside its image by
    more than max(2 pixels, 1% of the image side) on any edge;
  - ``iscrowd`` other than 0 or 1;
  - a polygon that is not a list of numbers, has an odd number of coordinates, fewer than 3 points,
    a non-finite coordinate, or a point outside its image by more than that margin; a malformed RLE
    (size different from the image, counts that do not sum to height * width or cannot be decoded);
  - keypoints on a dataset without keypoint names, of the wrong length, not numbers, or with a
    visibility outside {0, 1, 2};
  - with ``check_images``, any image file missing under ``image_root`` (a directory listing per
    folder, so this is cheap). Decoding happens when a sample is read: a file that cannot be
    decoded, or whose size differs from the annotations', raises DatasetError naming file and image id.

Dropped and counted in the printed summary (``dataset.load_summary``), only when ``training``:
  - non-crowd annotations whose box has zero width or height (detectron2 and torchvision drop them);
  - images with no usable annotation (``filter_empty``);
  - on keypoint datasets, images with fewer than ``min_keypoints_per_image`` visible keypoints
    (detectron2's rule for keypoint training).
Crowd annotations are always kept (evaluation needs them) and never become training targets.
Keypoint coordinates are kept as stored (torchvision's convention; detectron2 adds 0.5).
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from swiftdet.data.meta import DatasetMeta
from swiftdet.data.records import RawAnnotations
from swiftdet.data.rle import validate_rle
from swiftdet.errors import DatasetError

__all__ = [
    "BOX_TOLERANCE_FRACTION",
    "BOX_TOLERANCE_PIXELS",
    "CheckedAnnotations",
    "LoadSummary",
    "training_selection",
    "validate",
]

# A box may stick out of its image by this many pixels, or by this fraction of the image side,
# whichever is larger (annotation tools round; COCO has boxes ending at width + 0.5). Beyond that
# the annotation is rejected: it almost always means swapped width/height or the wrong image.
BOX_TOLERANCE_PIXELS = 2.0
BOX_TOLERANCE_FRACTION = 0.01


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


@dataclass
class CheckedAnnotations:
    """Annotation columns that passed every check, in parse order (A annotations, P polygons)."""

    image_index: np.ndarray  # (A,) int64 position of each annotation's image in the images list
    labels: np.ndarray  # (A,) int64 contiguous
    boxes: np.ndarray  # (A, 4) float64 xyxy
    iscrowd: np.ndarray  # (A,) bool
    poly_offsets: np.ndarray  # (A + 1,) int64
    poly_coord_offsets: np.ndarray  # (P + 1,) int64
    poly_coords: np.ndarray  # (C,) float64
    rle_index: np.ndarray  # (A,) int64, -1 for none
    rles: list[bytes]  # compressed counts, in rle_index order
    keypoints: np.ndarray  # (A, K, 3) float32


def validate(
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
) -> CheckedAnnotations:
    """Check parsed columns against the rules of the module docstring; the first violation raises
    a DatasetError naming ``source``, the image id and the annotation id."""
    check_image_ids(source, image_ids)
    check_image_sizes(source, image_ids, heights, widths)
    if check_images:
        check_image_files(source, image_root, file_names, image_ids)
    check_annotation_ids(source, raw)
    image_index = annotation_images(source, image_ids, raw)
    labels = annotation_labels(source, meta, raw)
    boxes = raw.boxes.reshape(-1, 4)
    h = heights[image_index].astype(np.float64)
    w = widths[image_index].astype(np.float64)
    check_boxes_finite(source, raw, boxes)
    check_box_sizes(source, raw, boxes)
    check_boxes_inside_images(source, raw, boxes, h, w)
    iscrowd = crowd_flags(source, raw)
    poly_offsets, coord_offsets, poly_coords = polygon_columns(source, raw)
    check_polygons_inside_images(source, raw, poly_offsets, coord_offsets, poly_coords, h, w)
    rle_index, rles = rle_columns(source, raw, image_index, heights, widths)
    keypoints = keypoint_array(source, raw, meta.num_keypoints)
    return CheckedAnnotations(
        image_index=image_index, labels=labels, boxes=boxes, iscrowd=iscrowd, poly_offsets=poly_offsets,
        poly_coord_offsets=coord_offsets, poly_coords=poly_coords, rle_index=rle_index, rles=rles, keypoints=keypoints,
    )


# ----------------------------------------------------------------------------------------------
# One check per kind
# ----------------------------------------------------------------------------------------------
def _reject(source: str, what: str, image_id: Any = None, ann_id: Any = None, fix: str = "") -> DatasetError:
    where = []
    if image_id is not None:
        where.append(f"image id {image_id}")
    if ann_id is not None:
        where.append(f"annotation id {ann_id}")
    location = f" ({', '.join(where)})" if where else ""
    return DatasetError(f"{source}{location}: {what}" + (f" {fix}" if fix else ""))


def _fail_at(source: str, raw: RawAnnotations, mask: np.ndarray, what: Callable[[int], str]) -> None:
    """Reject the first annotation where ``mask`` is True, saying how many more share the problem."""
    idx = np.nonzero(mask)[0]
    if len(idx):
        a = int(idx[0])
        more = f" ({len(idx) - 1} more annotations have the same problem)" if len(idx) > 1 else ""
        raise _reject(source, what(a) + more, image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))


def _first_duplicate(values: np.ndarray) -> int | None:
    if len(values) < 2:
        return None
    s = np.sort(values, kind="stable")
    dup = np.nonzero(s[1:] == s[:-1])[0]
    return int(s[dup[0]]) if len(dup) else None


def check_image_ids(source: str, image_ids: np.ndarray) -> None:
    """Image ids are unique."""
    dup = _first_duplicate(image_ids)
    if dup is not None:
        raise _reject(source, f"image id {dup} appears more than once in the images list.", fix="Image ids must be unique.")


def check_image_sizes(source: str, image_ids: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> None:
    """Every image has a positive height and width."""
    bad = np.nonzero((heights <= 0) | (widths <= 0))[0]
    if len(bad):
        i = bad[0]
        raise _reject(source, f"image size {int(heights[i])}x{int(widths[i])} (height x width) is not positive.",
                      image_id=int(image_ids[i]), fix="Set 'height' and 'width' to the image's size in pixels.")


def check_image_files(source: str, image_root: str, names: list[str], image_ids: np.ndarray) -> None:
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


def check_annotation_ids(source: str, raw: RawAnnotations) -> None:
    """Annotation ids are unique."""
    dup = _first_duplicate(raw.ids)
    if dup is not None:
        pos = int(np.nonzero(raw.ids == dup)[0][1])
        raise _reject(source, f"annotation id {dup} appears more than once.", image_id=int(raw.image_ids[pos]),
                      ann_id=dup, fix="Annotation ids must be unique.")


def annotation_images(source: str, image_ids: np.ndarray, raw: RawAnnotations) -> np.ndarray:
    """(A,) int64 position in the images list of each annotation's image; rejects unknown image ids."""
    num_images, num_anns = len(image_ids), len(raw.ids)
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
    return order[pos_c] if num_anns else np.zeros(0, dtype=np.int64)


def annotation_labels(source: str, meta: DatasetMeta, raw: RawAnnotations) -> np.ndarray:
    """(A,) int64 contiguous label of each annotation; rejects category ids not in ``meta``."""
    num_anns = len(raw.ids)
    cat_ids = np.asarray(meta.category_ids, dtype=np.int64)
    cat_order = np.argsort(cat_ids, kind="stable")
    cpos = np.clip(np.searchsorted(cat_ids[cat_order], raw.category_ids), 0, max(len(cat_ids) - 1, 0))
    known = (cat_ids[cat_order][cpos] == raw.category_ids) if len(cat_ids) else np.zeros(num_anns, dtype=bool)
    if not np.all(known):
        a = int(np.nonzero(~known)[0][0])
        raise _reject(source, f"category id {int(raw.category_ids[a])} is not one of the categories {list(meta.category_ids)[:20]}"
                      f"{'...' if len(cat_ids) > 20 else ''}.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Add the category to the categories list or fix the annotation's category_id.")
    return cat_order[cpos].astype(np.int64) if num_anns else np.zeros(0, dtype=np.int64)


def check_boxes_finite(source: str, raw: RawAnnotations, boxes: np.ndarray) -> None:
    """Every box coordinate is finite."""
    _fail_at(source, raw, ~np.isfinite(boxes).all(axis=1), lambda a: f"box {boxes[a].tolist()} has a non-finite coordinate.")


def check_box_sizes(source: str, raw: RawAnnotations, boxes: np.ndarray) -> None:
    """No box has a negative width or height (zero is allowed here; training drops it)."""
    _fail_at(source, raw, (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]),
             lambda a: f"box has a negative width or height (x0, y0, x1, y1 = {boxes[a].tolist()}); "
                       "COCO boxes are [x, y, width, height] with width, height >= 0.")


def check_boxes_inside_images(source: str, raw: RawAnnotations, boxes: np.ndarray, h: np.ndarray, w: np.ndarray) -> None:
    """Every box lies inside its (h, w) image, up to the BOX_TOLERANCE_* margin."""
    tol_x = np.maximum(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * w)
    tol_y = np.maximum(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * h)
    outside = (boxes[:, 0] < -tol_x) | (boxes[:, 1] < -tol_y) | (boxes[:, 2] > w + tol_x) | (boxes[:, 3] > h + tol_y)
    _fail_at(source, raw, outside,
             lambda a: f"box x0, y0, x1, y1 = {[round(v, 2) for v in boxes[a].tolist()]} lies outside the "
                       f"{int(w[a])}x{int(h[a])} (width x height) image by more than max({BOX_TOLERANCE_PIXELS:g} px, "
                       f"{BOX_TOLERANCE_FRACTION:.0%} of the side). Check the box format (xywh vs xyxy) and the image size.")


def crowd_flags(source: str, raw: RawAnnotations) -> np.ndarray:
    """(A,) bool crowd flags; rejects an iscrowd other than 0 or 1."""
    iscrowd = raw.iscrowd.astype(np.int64)
    _fail_at(source, raw, (iscrowd != 0) & (iscrowd != 1), lambda a: f"iscrowd must be 0 or 1, got {int(iscrowd[a])}.")
    return iscrowd.astype(bool)


def polygon_columns(source: str, raw: RawAnnotations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-annotation polygon offsets, per-polygon coordinate offsets, float64 coordinates) of
    the polygons; rejects polygons that are not lists of numbers, odd or short ones, non-finite ones."""
    num_anns = len(raw.ids)
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
    check_polygon_lengths(source, raw, poly_offsets, poly_lengths)
    check_polygons_finite(source, raw, poly_offsets, coord_offsets, poly_coords)
    return poly_offsets, coord_offsets, poly_coords


def check_polygon_lengths(source: str, raw: RawAnnotations, poly_offsets: np.ndarray, poly_lengths: np.ndarray) -> None:
    """Every polygon has an even number of coordinates and at least 3 points."""
    bad = np.nonzero((poly_lengths % 2 == 1) | (poly_lengths < 6))[0]
    if len(bad):
        p = int(bad[0])
        a = int(np.searchsorted(poly_offsets, p, side="right") - 1)
        n = int(poly_lengths[p])
        reason = "an odd number of coordinates" if n % 2 else f"only {n // 2} points (at least 3 are needed)"
        raise _reject(source, f"segmentation polygon {p - int(poly_offsets[a])} has {n} coordinates: {reason}.",
                      image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Polygons are flat [x0, y0, x1, y1, ...] lists of at least 3 points.")


def check_polygons_finite(
    source: str, raw: RawAnnotations, poly_offsets: np.ndarray, coord_offsets: np.ndarray, poly_coords: np.ndarray
) -> None:
    """Every polygon coordinate is finite."""
    if not np.all(np.isfinite(poly_coords)):
        p = int(np.searchsorted(coord_offsets, np.nonzero(~np.isfinite(poly_coords))[0][0], side="right") - 1)
        a = int(np.searchsorted(poly_offsets, p, side="right") - 1)
        raise _reject(source, "a segmentation polygon has a non-finite coordinate.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))


def check_polygons_inside_images(
    source: str, raw: RawAnnotations, poly_offsets: np.ndarray, coord_offsets: np.ndarray, poly_coords: np.ndarray,
    h: np.ndarray, w: np.ndarray,
) -> None:
    """Every polygon point lies inside its annotation's (h, w) image, up to the box margin. A point
    far outside is a wrong format or image, and rasterising it would walk its whole edge (a
    coordinate of 1e12 exhausts the memory)."""
    if len(poly_coords) == 0:
        return
    polygon_ann = np.repeat(np.arange(len(poly_offsets) - 1), np.diff(poly_offsets))
    coord_ann = np.repeat(polygon_ann, np.diff(coord_offsets))
    # Polygons have even lengths and start at even offsets: even positions are x, odd ones y.
    is_x = (np.arange(len(poly_coords)) % 2) == 0
    side = np.where(is_x, w[coord_ann], h[coord_ann])
    tol = np.maximum(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * side)
    outside_coord = (poly_coords < -tol) | (poly_coords > side + tol)
    outside = np.zeros(len(raw.ids), dtype=bool)
    outside[coord_ann[outside_coord]] = True
    _fail_at(source, raw, outside,
             lambda a: f"a segmentation polygon has a point outside the {int(w[a])}x{int(h[a])} (width x height) image "
                       f"by more than max({BOX_TOLERANCE_PIXELS:g} px, {BOX_TOLERANCE_FRACTION:.0%} of the side). "
                       "Check the coordinate format (pixels, x before y) and the image size.")


def rle_columns(
    source: str, raw: RawAnnotations, image_index: np.ndarray, heights: np.ndarray, widths: np.ndarray
) -> tuple[np.ndarray, list[bytes]]:
    """((A,) int64 index into the returned compressed counts, -1 for none; the counts) of the RLE
    masks; rejects an RLE that does not fit its image (see :func:`swiftdet.data.rle.validate_rle`)."""
    rle_index = np.full(len(raw.ids), -1, dtype=np.int64)
    rle_strings: list[bytes] = []
    for a in sorted(raw.rles):
        i = int(image_index[a])
        counts, reason = validate_rle(raw.rles[a], int(heights[i]), int(widths[i]))
        if counts is None:
            raise _reject(source, f"malformed RLE segmentation: {reason}.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
        rle_index[a] = len(rle_strings)
        rle_strings.append(counts)
    return rle_index, rle_strings


def keypoint_array(source: str, raw: RawAnnotations, k: int) -> np.ndarray:
    """(A, K, 3) float32 keypoints (zeros where an annotation has none); rejects keypoints on a
    dataset without keypoint names, of the wrong length, not numbers, or with a bad visibility."""
    keypoints = np.zeros((len(raw.ids), k, 3), dtype=np.float32)
    if not raw.keypoints:
        return keypoints
    kp_pos = np.fromiter(raw.keypoints.keys(), dtype=np.int64, count=len(raw.keypoints))
    if k == 0:
        a = int(kp_pos[0])
        raise _reject(source, "the annotation has keypoints but no category lists keypoint names.",
                      image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]),
                      fix="Add 'keypoints' (names) to the category, or remove the annotation's keypoints.")
    lists = list(raw.keypoints.values())
    not_list = [i for i, v in enumerate(lists) if not isinstance(v, (list, tuple))]
    if not_list:
        a = int(kp_pos[not_list[0]])
        raise _reject(source, f"keypoints must be a flat [x, y, v] * {k} list, got {str(lists[not_list[0]])[:40]}.",
                      image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
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
    with np.errstate(over="ignore"):  # stored as float32: a coordinate beyond its range is not finite there
        stored = values.astype(np.float32)
    bad = np.nonzero(~np.isin(vis, (0, 1, 2)).all(axis=1) | ~np.isfinite(stored).all(axis=(1, 2)))[0]
    if len(bad):
        a = int(kp_pos[bad[0]])
        raise _reject(source, "keypoint visibilities must be 0 (not labelled), 1 (occluded) or 2 (visible) and "
                              "coordinates finite.", image_id=int(raw.image_ids[a]), ann_id=int(raw.ids[a]))
    keypoints[kp_pos] = stored
    return keypoints


# ----------------------------------------------------------------------------------------------
# What training drops
# ----------------------------------------------------------------------------------------------
def training_selection(
    boxes: np.ndarray,
    iscrowd: np.ndarray,
    keypoints: np.ndarray,
    ann_offsets: np.ndarray,
    summary: LoadSummary,
    filter_empty: bool,
    min_keypoints_per_image: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(images to keep (N,) bool, annotations to keep (A,) bool) for training, each drop counted
    in ``summary``: degenerate boxes and the images training cannot use (module docstring).

    Args:
        boxes, iscrowd, keypoints: the packed annotation columns, grouped by image.
        ann_offsets: (N + 1,) annotations of image i are rows ``ann_offsets[i]:ann_offsets[i+1]``.
    """
    num_images = len(ann_offsets) - 1
    degenerate = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])) & ~iscrowd
    summary.dropped_degenerate_boxes = int(degenerate.sum())
    ann_keep = ~degenerate
    image_of_ann = np.repeat(np.arange(num_images), np.diff(ann_offsets))
    usable = np.bincount(image_of_ann, weights=(ann_keep & ~iscrowd), minlength=num_images)
    keep_image = np.ones(num_images, dtype=bool)
    if filter_empty:
        empty = usable == 0
        summary.dropped_images_empty = int(empty.sum())
        keep_image &= ~empty
    if keypoints.shape[1] > 0 and min_keypoints_per_image > 0:
        visible = ((keypoints[:, :, 2] > 0).sum(axis=1) * (ann_keep & ~iscrowd)).astype(np.float64)
        per_image = np.bincount(image_of_ann, weights=visible, minlength=num_images)
        few = (per_image < min_keypoints_per_image) & keep_image
        summary.dropped_images_without_keypoints = int(few.sum())
        keep_image &= ~few
    summary.dropped_annotations_with_images = int(ann_keep[~keep_image[image_of_ann]].sum()) if len(ann_keep) else 0
    return keep_image, ann_keep
