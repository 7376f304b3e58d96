"""A deterministic synthetic COCO dataset: coloured shapes on textured backgrounds.

It is the embedded default dataset of the demo and of the tests: a small Mask R-CNN learns it on a
CPU in minutes, yet it is not trivial (varied size, colour, rotation, partial occlusion, truncation
at the image border, textured and noisy backgrounds).

Design, so that every annotation agrees exactly with the pixels:

* Each object is a polygon (a circle is a 48..96-gon). Its *full mask* is the polygon rasterised by
  pycocotools, i.e. exactly what ``COCO.annToMask`` returns for that polygon, and the object's
  colour is painted through that mask. Objects are painted in order, later ones on top.
* The *visible mask* of an object is its full mask minus the full masks of the objects painted after
  it. An object whose visible mask equals its full mask (not occluded, not cut by the image border)
  is written as a COCO polygon; any other object is written as compressed RLE of its visible mask.
* Occlusion is kept moderate: a placement is rejected if it would leave an earlier object with less
  than :data:`MIN_VISIBLE_FRACTION` of its pixels visible, and at most a small part of an object may
  fall outside the image.
* ``area`` is the pixel count of the visible mask and ``bbox`` its tight box (COCO convention: the
  box of the pixels, so ``w = last column + 1 - first column``).
* Keypoints are the shape's extreme points ``top, left, bottom, right`` in image coordinates, so a
  horizontal flip maps left to right and back (:data:`SYNTH_KEYPOINT_FLIP_MAP`). Visibility is COCO's:
  2 visible, 1 hidden under a later object, 0 outside the image (then x = y = 0).

Each image draws from its own random stream derived from ``(seed, split, index)``, so the same
parameters give byte-identical images and json files.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image

from swiftdet.errors import ConfigError, DatasetError
from swiftdet.utils.io import atomic_write

# Bump when the drawing changes, so that a cached dataset made by an older generator is rebuilt.
GENERATOR_VERSION = 2

SYNTH_SHAPES: tuple[str, ...] = ("circle", "triangle", "rectangle", "star", "cross")
SYNTH_KEYPOINT_NAMES: tuple[str, ...] = ("top", "left", "bottom", "right")
SYNTH_KEYPOINT_FLIP_MAP: tuple[tuple[str, str], ...] = (("left", "right"),)
# COCO skeletons are 1-based pairs of keypoint indices: a diamond top-left-bottom-right.
SYNTH_SKELETON: tuple[tuple[int, int], ...] = ((1, 2), (2, 3), (3, 4), (4, 1))
SYNTH_CATEGORIES: tuple[dict, ...] = tuple(
    {
        "id": index + 1,
        "name": name,
        "supercategory": "shape",
        "keypoints": list(SYNTH_KEYPOINT_NAMES),
        "skeleton": [list(pair) for pair in SYNTH_SKELETON],
    }
    for index, name in enumerate(SYNTH_SHAPES)
)

MIN_OBJECT_SIZE = 12.0  # pixels, the shape's outer extent
MAX_OBJECT_FRACTION = 0.45  # of the shorter image side
MIN_VISIBLE_FRACTION = 0.55  # of an object's full mask that must stay visible
MIN_VISIBLE_PIXELS = 20
MAX_OUTSIDE_FRACTION = 0.3  # of an object's polygon area that may fall outside the image
TRUNCATION_PROBABILITY = 0.15  # chance that an object is placed across the image border
PLACEMENT_ATTEMPTS = 30
MIN_COLOR_DISTANCE = 90.0  # RGB distance between a shape's colour and the mean colour it covers
COLOR_ATTEMPTS = 12

_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")


@dataclass(frozen=True)
class SynthPaths:
    """Where a synthetic dataset lies. ``reused`` is True when an identical one was already there."""

    train_json: Path
    val_json: Path
    image_root: Path
    reused: bool = False


@dataclass
class _Shape:
    category_id: int
    polygon: np.ndarray  # (P, 2) float64 x, y in image coordinates, rounded as written to json
    keypoints: np.ndarray  # (4, 2) float64 extreme points top, left, bottom, right
    center: np.ndarray  # (2,) float64
    full_mask: np.ndarray  # (H, W) bool, pycocotools rasterisation of ``polygon``


def generate_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 400,
    num_val: int = 100,
    image_size: tuple[int, int] = (256, 256),
    seed: int = 0,
    objects_per_image: tuple[int, int] = (1, 6),
) -> SynthPaths:
    """Write a synthetic COCO dataset of shapes under ``out_dir`` and return its paths.

    Layout: ``out_dir/annotations/instances_{train,val}.json`` and images ``out_dir/{train,val}/NNNNNN.jpg``
    whose ``file_name`` is relative to ``out_dir`` (the image root). ``image_size`` is (height, width).
    If ``out_dir`` already holds a complete dataset made with the same parameters (stored in each
    json's ``info``), nothing is rewritten. Otherwise images are (over)written first, stale images of
    an earlier run are removed, and the jsons are replaced last, so an interrupted run never looks
    complete.
    """
    params = _check_params(num_train, num_val, image_size, seed, objects_per_image)
    out_dir = Path(out_dir)
    paths = SynthPaths(
        train_json=out_dir / "annotations" / "instances_train.json",
        val_json=out_dir / "annotations" / "instances_val.json",
        image_root=out_dir,
    )
    if _is_complete(paths, params):
        return SynthPaths(paths.train_json, paths.val_json, paths.image_root, reused=True)

    for split, count, json_path in (("train", num_train, paths.train_json), ("val", num_val, paths.val_json)):
        split_dir = out_dir / split
        _make_dir(split_dir)
        _make_dir(json_path.parent)
        dataset = _generate_split(split, count, split_dir, params)
        _remove_stale_images(split_dir, {Path(image["file_name"]).name for image in dataset["images"]})
        _write_json(dataset, json_path)
    return paths


def _check_params(
    num_train: int, num_val: int, image_size: tuple[int, int], seed: int, objects_per_image: tuple[int, int]
) -> dict:
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"Synthetic dataset: {name} must be a positive integer, got {value!r}.")
    if len(image_size) != 2 or not all(isinstance(side, int) and side >= 32 for side in image_size):
        raise ConfigError(
            f"Synthetic dataset: image_size must be (height, width) with integer sides of at least 32 pixels, "
            f"got {image_size!r}."
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"Synthetic dataset: seed must be a non-negative integer, got {seed!r}.")
    low, high = objects_per_image
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise ConfigError(
            f"Synthetic dataset: objects_per_image must be (min, max) with 1 <= min <= max, got {objects_per_image!r}."
        )
    return {
        # A stable name of the generator (its module was swiftdet.data.synth), not an import path:
        # changing it would make every cached demo dataset look stale and be drawn again.
        "generator": "swiftdet.data.synth",
        "version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": seed,
        "objects_per_image": [low, high],
    }


def _is_complete(paths: SynthPaths, params: dict) -> bool:
    """True if both jsons exist, were made with ``params`` and all their images exist."""
    for json_path in (paths.train_json, paths.val_json):
        try:
            with open(json_path, encoding="utf-8") as f:
                dataset = json.load(f)
        except (OSError, ValueError):
            return False
        info = dataset.get("info") if isinstance(dataset, dict) else None
        if not isinstance(info, dict) or info.get("swiftdet_synth") != params:
            return False
        if not all((paths.image_root / image["file_name"]).is_file() for image in dataset["images"]):
            return False
    return True


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetError(
            f"Cannot create the synthetic dataset folder {path}: {error.strerror or error}. "
            "Choose an output folder you can write to."
        ) from error
    if not os.access(path, os.W_OK):
        raise DatasetError(
            f"The synthetic dataset folder {path} is not writable. Choose an output folder you can write to."
        )


def _remove_stale_images(split_dir: Path, keep: set[str]) -> None:
    # Only files named like ours: a dataset shrunk by a rerun must not keep orphan images, but anything
    # else a user put in the folder is left alone.
    for entry in split_dir.iterdir():
        if entry.is_file() and _IMAGE_NAME.match(entry.name) and entry.name not in keep:
            entry.unlink()


def _write_json(dataset: dict, path: Path) -> None:
    try:
        atomic_write(path, lambda f: json.dump(dataset, f, separators=(",", ":")), mode="w")
    except OSError as error:
        raise DatasetError(
            f"Cannot write the synthetic annotations {path}: {error.strerror or error}. "
            "Choose an output folder you can write to, with free space."
        ) from error


def _generate_split(split: str, count: int, split_dir: Path, params: dict) -> dict:
    height, width = params["image_size"]
    split_key = 0 if split == "train" else 1
    images: list[dict] = []
    annotations: list[dict] = []
    for index in range(count):
        image_id = index + 1
        rng = np.random.default_rng([params["seed"], split_key, index])
        pixels, objects = _render_image(rng, height, width, params["objects_per_image"])
        file_name = f"{split}/{image_id:06d}.jpg"
        image_path = split_dir / f"{image_id:06d}.jpg"
        try:
            # High-quality JPEG without chroma subsampling: edges stay on the mask outlines, and it
            # encodes ~10x faster than PNG of these noisy images.
            Image.fromarray(pixels).save(image_path, format="JPEG", quality=95, subsampling=0)
        except OSError as error:
            raise DatasetError(
                f"Cannot write the synthetic image {image_path}: {error.strerror or error}. "
                "Choose an output folder you can write to, with free space."
            ) from error
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for annotation in _annotate(objects, height, width):
            annotation["id"] = len(annotations) + 1
            annotation["image_id"] = image_id
            annotations.append(annotation)
    return {
        "info": {
            "description": f"swiftdet synthetic shapes, {split} split",
            "swiftdet_synth": params,
        },
        "images": images,
        "annotations": annotations,
        "categories": [dict(category) for category in SYNTH_CATEGORIES],
    }


def _render_image(
    rng: np.random.Generator, height: int, width: int, objects_per_image: list[int]
) -> tuple[np.ndarray, list[_Shape]]:
    """Return (H, W, 3) uint8 pixels and the placed shapes, in painting order."""
    canvas = _background(rng, height, width)
    wanted = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))
    shapes: list[_Shape] = []
    visible: list[np.ndarray] = []  # visible mask of each placed shape, kept up to date
    for _ in range(PLACEMENT_ATTEMPTS):
        if len(shapes) == wanted:
            break
        shape = _random_shape(rng, height, width)
        if shape is None:
            continue
        remaining = [mask & ~shape.full_mask for mask in visible]
        if any(
            kept.sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * old.full_mask.sum())
            for kept, old in zip(remaining, shapes)
        ):
            continue
        shapes.append(shape)
        visible = remaining + [shape.full_mask]

    for shape in shapes:
        _paint(rng, canvas, shape)
    # Mild sensor noise over everything, so flat colours are not a shortcut.
    canvas += np.float32(rng.uniform(2.0, 8.0)) * rng.standard_normal(size=canvas.shape, dtype=np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), shapes


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 texture: gradient, stripes or blotchy noise between two muted colours."""
    color_a = rng.uniform(40, 215, size=3).astype(np.float32)
    color_b = np.clip(color_a + rng.normal(0, 45, size=3), 0, 255).astype(np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    kind = int(rng.integers(0, 3))
    if kind == 0:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        weight = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 40)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * (2 * math.pi / period)
        weight = 0.5 + 0.5 * np.sin(phase)
    else:
        cells = int(rng.integers(3, 12))
        coarse = (rng.uniform(0, 255, size=(cells, cells))).astype(np.uint8)
        weight = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255
    return color_a + weight[..., None] * (color_b - color_a)


def _random_shape(rng: np.random.Generator, height: int, width: int) -> _Shape | None:
    """A random shape, or None if too much of it fell outside the image."""
    category_index = int(rng.integers(0, len(SYNTH_SHAPES)))
    name = SYNTH_SHAPES[category_index]
    max_size = MAX_OBJECT_FRACTION * min(height, width)
    # Log-uniform size: small objects are as frequent as large ones at every scale.
    size = math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))
    radius = size / 2
    angle = rng.uniform(0, 2 * math.pi)
    if rng.uniform() < TRUNCATION_PROBABILITY:
        margin = -0.4 * radius  # the center may come close enough to the border to cut the shape
    else:
        margin = radius
    # radius <= 0.225 * the shorter side, so the range is never empty.
    center = np.array([rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)])

    local = _local_polygon(rng, name, radius)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    polygon = np.round(local @ rotation.T + center, 2)
    if name == "circle":
        # Exact extremes of the disc, not of its polygon, so the four points are never ambiguous.
        keypoints = center + radius * np.array([[0.0, -1.0], [-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    else:
        keypoints = _extreme_points(polygon)

    full_mask = _rasterize(polygon, height, width)
    pixels_inside = int(full_mask.sum())
    if pixels_inside < MIN_VISIBLE_PIXELS:
        return None
    if not _inside_image(polygon, height, width):
        # Rasterise the whole shape on a canvas padded by its radius to count the pixels cut off.
        pad = int(math.ceil(radius)) + 1
        pixels_total = int(_rasterize(polygon + pad, height + 2 * pad, width + 2 * pad).sum())
        if pixels_inside < (1 - MAX_OUTSIDE_FRACTION) * pixels_total:
            return None
    return _Shape(category_index + 1, polygon, keypoints, center, full_mask)


def _local_polygon(rng: np.random.Generator, name: str, radius: float) -> np.ndarray:
    """(P, 2) vertices around the origin, extent about ``radius``, counter-clockwise in image axes."""
    if name == "circle":
        count = int(np.clip(2 * math.pi * radius / 2, 48, 96))
        theta = np.linspace(0, 2 * math.pi, count, endpoint=False)
        return radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if name == "triangle":
        theta = np.deg2rad([90.0, 210.0, 330.0]) + rng.uniform(-0.15, 0.15, size=3)
        return radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if name == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        half_w, half_h = radius, radius * aspect
        return np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    if name == "star":
        theta = np.arange(10) * (math.pi / 5) - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.5))
        return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)
    if name == "cross":
        arm = radius * rng.uniform(0.25, 0.35)
        r = radius
        return np.array(
            [[-arm, -r], [arm, -r], [arm, -arm], [r, -arm], [r, arm], [arm, arm],
             [arm, r], [-arm, r], [-arm, arm], [-r, arm], [-r, -arm], [-arm, -arm]]
        )
    raise ValueError(f"unknown synthetic shape {name!r}")


def _extreme_points(polygon: np.ndarray) -> np.ndarray:
    """(4, 2) top, left, bottom, right points of a polygon; vertices tied within 0.5 px are averaged."""
    points = []
    for axis, sign in ((1, -1.0), (0, -1.0), (1, 1.0), (0, 1.0)):
        values = sign * polygon[:, axis]
        tied = polygon[values >= values.max() - 0.5]
        points.append(tied.mean(axis=0))
    return np.array(points)


def _rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the polygon exactly as pycocotools (and so COCO.annToMask) rasterises it."""
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    sector = hue * 6.0
    f = sector - math.floor(sector)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][int(sector) % 6]
    return np.array(rgb) * 255.0


def _paint(rng: np.random.Generator, canvas: np.ndarray, shape: _Shape) -> None:
    """Fill the shape's full mask with a contrasting colour and a mild linear shading, inside its box only."""
    rows = np.flatnonzero(shape.full_mask.any(axis=1))
    cols = np.flatnonzero(shape.full_mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    xs = np.arange(x0, x1, dtype=np.float64)[None, :]
    angle = rng.uniform(0, 2 * math.pi)
    extent = max(y1 - y0, x1 - x0, 1)
    shading = 1.0 + rng.uniform(0.0, 0.25) * (
        ((xs - shape.center[0]) * math.cos(angle) + (ys - shape.center[1]) * math.sin(angle)) / extent
    )
    region = shape.full_mask[y0:y1, x0:x1]
    color = _contrasting_color(rng, canvas[y0:y1, x0:x1][region].mean(axis=0))
    canvas[y0:y1, x0:x1][region] = (color[None, None, :] * shading[..., None])[region]


def _contrasting_color(rng: np.random.Generator, underneath: np.ndarray) -> np.ndarray:
    """A random saturated colour at least MIN_COLOR_DISTANCE (RGB) from the mean colour it covers.

    Without this a dark shape on a dark texture is invisible even to a person, and the demo's small
    model would be asked to detect what is not there.
    """
    best, best_distance = None, -1.0
    for _ in range(COLOR_ATTEMPTS):
        color = _hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.35, 1.0))
        distance = float(np.linalg.norm(color - underneath))
        if distance >= MIN_COLOR_DISTANCE:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def _annotate(shapes: list[_Shape], height: int, width: int) -> list[dict]:
    """COCO annotation dicts (without ids) for shapes in painting order."""
    annotations = []
    covered_later = np.zeros((height, width), dtype=bool)  # union of full masks painted after a shape
    for shape in reversed(shapes):
        visible = shape.full_mask & ~covered_later
        rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
        if np.array_equal(visible, shape.full_mask) and _inside_image(shape.polygon, height, width):
            segmentation: list | dict = [[float(v) for v in shape.polygon.reshape(-1)]]
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        keypoints: list[float] = []
        for point in shape.keypoints:
            x, y = float(point[0]), float(point[1])
            if not (0 <= x < width and 0 <= y < height):
                keypoints += [0.0, 0.0, 0]
                continue
            # Keypoints lie on the outline: test a pixel a little inside the shape for occlusion.
            to_center = shape.center - point
            step = min(1.0, 1.5 / max(float(np.hypot(*to_center)), 1e-6))
            probe = point + step * to_center
            px = int(np.clip(probe[0], 0, width - 1))
            py = int(np.clip(probe[1], 0, height - 1))
            keypoints += [round(x, 2), round(y, 2), 1 if covered_later[py, px] else 2]
        annotations.append(
            {
                "category_id": shape.category_id,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": float(visible.sum()),
                "iscrowd": 0,
                "segmentation": segmentation,
                "keypoints": keypoints,
                "num_keypoints": sum(1 for v in keypoints[2::3] if v > 0),
            }
        )
        covered_later |= shape.full_mask
    annotations.reverse()
    return annotations


def _inside_image(polygon: np.ndarray, height: int, width: int) -> bool:
    return bool(
        polygon[:, 0].min() >= 0 and polygon[:, 1].min() >= 0
        and polygon[:, 0].max() <= width and polygon[:, 1].max() <= height
    )
