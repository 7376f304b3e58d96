"""Draw detections, masks and keypoints on an RGB image.

Plain numpy arrays in and out, so that ground truth browsing and prediction share one drawing code
and this module needs nothing else from the toolbox. Masks are alpha-blended with numpy inside each
mask's bounding box only, so large images stay fast; boxes, text, dots and lines use PIL.
"""
from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw, ImageFont

from swiftdet.errors import InputError
from swiftdet.structures import CroppedMasks

# COCO's person skeleton (the 1-based pairs of its person_keypoints json, here 0-based), for 17-keypoint
# models whose weights carry no skeleton of their own (converted torchvision keypointrcnn files).
COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9), (8, 10),
    (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

# Golden-ratio hue steps give neighbouring indices clearly different colours, forever.
_GOLDEN_RATIO = 0.618033988749895


def instance_color(index: int) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for an instance or class index (the same index, the same colour)."""
    hue = (0.13 + index * _GOLDEN_RATIO) % 1.0
    # Alternate two brightness levels so that hues that end up close still differ.
    value = 0.95 if index % 2 == 0 else 0.75
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(round(red * 255)), int(round(green * 255)), int(round(blue * 255))


def draw_instances(
    image: np.ndarray,
    *,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    masks: CroppedMasks | np.ndarray | Sequence | None = None,
    keypoints: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    skeleton: Sequence[tuple[int, int]] | None = None,
    keypoint_threshold: float = 0.5,
    alpha: float = 0.5,
    color_by: str = "instance",
) -> np.ndarray:
    """Return a copy of ``image`` with N instances drawn on it.

    Args:
        image: (H, W, 3) uint8 RGB. A grayscale (H, W) or (H, W, 1) uint8 image is drawn on as RGB
            (its channel repeated); anything else raises :class:`InputError`.
        boxes: (N, 4) x1, y1, x2, y2 in pixels.
        labels: (N,) integer class indices; names come from ``class_names[label]`` when given.
        scores: (N,) confidences, written after the name as "name 0.93".
        masks: :class:`CroppedMasks` (a model's predictions), an (N, H, W) bool (or 0/1) array, or a
            length-N list whose items are COCO polygons (a list of flat [x1, y1, x2, y2, ...] lists)
            or RLE dicts ({"size": [H, W], "counts": ...}).
        keypoints: (N, K, 3) x, y and a visibility or score; a point is drawn when its third value is
            above ``keypoint_threshold`` (the default 0.5 draws COCO visibilities 1 and 2).
        class_names: names indexed by label.
        skeleton: 0-based (i, j) keypoint index pairs to join with lines.
        alpha: mask opacity in [0, 1].
        color_by: "instance" (a colour per instance, the default) or "class" (a colour per label).

    Returns:
        (H, W, 3) uint8, a new array. With no instances it equals the (RGB) input.
    """
    canvas = _as_rgb(image).copy()
    height, width = canvas.shape[:2]
    count = _instance_count(boxes, labels, scores, masks, keypoints)
    if count == 0:
        return canvas
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"draw_instances: alpha must lie in [0, 1], got {alpha}.")
    if color_by not in ("instance", "class"):
        raise InputError(f'draw_instances: color_by must be "instance" or "class", got {color_by!r}.')
    if color_by == "class" and labels is None:
        raise InputError('draw_instances: color_by="class" needs labels; pass labels or use color_by="instance".')

    boxes_array = None if boxes is None else _check_boxes(boxes)
    labels_array = None if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    scores_array = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    keypoints_array = None if keypoints is None else _check_keypoints(keypoints)
    if labels_array is not None and class_names is not None:
        bad = labels_array[(labels_array < 0) | (labels_array >= len(class_names))]
        if bad.size:
            raise InputError(
                f"draw_instances: label {int(bad[0])} has no name: class_names holds {len(class_names)} names "
                f"(indices 0..{len(class_names) - 1}). Pass the class names of the model or dataset that made the labels."
            )
    colors = [
        instance_color(int(labels_array[i]) if color_by == "class" else i) for i in range(count)
    ]

    line_width = max(1, round(min(height, width) / 300))
    mask_boxes: list[tuple[int, int, int, int] | None] = [None] * count
    if masks is not None:
        for index, (mask, x_offset, y_offset) in enumerate(_iter_masks(masks, count, height, width)):
            mask_boxes[index] = _blend_mask(canvas, mask, colors[index], alpha, x_offset, y_offset)

    picture = Image.fromarray(canvas)
    del canvas  # PIL holds its own copy: on a large image, one image less at the peak
    pen = ImageDraw.Draw(picture)
    if boxes_array is not None:
        for index, (x1, y1, x2, y2) in enumerate(boxes_array):
            pen.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=colors[index], width=line_width)
    if keypoints_array is not None:
        _draw_keypoints(pen, keypoints_array, colors, skeleton, keypoint_threshold, line_width)
    if labels_array is not None or scores_array is not None:
        font = _default_font(max(10, min(40, min(height, width) // 40)))
        for index in range(count):
            text = _label_text(index, labels_array, scores_array, class_names)
            anchor = _label_anchor(index, boxes_array, mask_boxes[index], keypoints_array, keypoint_threshold)
            if anchor is not None:
                _draw_label(pen, text, anchor, colors[index], font, width, height)
    return _picture_to_array(picture)


def _picture_to_array(picture: Image.Image, band_rows: int = 512) -> np.ndarray:
    """(H, W, 3) uint8 writable copy of an RGB PIL image, converted in bands of rows so that a large
    image does not also need a whole-image bytes buffer beside the result (np.asarray(picture) makes one)."""
    width, height = picture.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, band_rows):
        bottom = min(top + band_rows, height)
        out[top:bottom] = np.asarray(picture.crop((0, top, width, bottom)))
    return out


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB (or grayscale) array to ``path`` (format from its suffix), making folders."""
    picture = Image.fromarray(_as_rgb(image))
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
    except ValueError as error:  # PIL: unknown file extension
        raise InputError(
            f"Cannot save an image to {path}: {error}. Use a file name ending in .png or .jpg."
        ) from error
    except OSError as error:
        raise InputError(
            f"Cannot save an image to {path}: {error.strerror or error}. Choose a folder you can write to."
        ) from error
    return path


def _as_rgb(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise InputError(
            f"Images to draw on must be uint8 (0..255), got dtype {array.dtype}. "
            "Convert a float image in 0..1 with (image * 255).round().astype(np.uint8)."
        )
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 3:
        return array
    raise InputError(
        f"Images to draw on must be (H, W, 3) RGB or (H, W) grayscale, got shape {tuple(array.shape)}. "
        "Drop an alpha channel with image[..., :3]; move a channels-first array with image.transpose(1, 2, 0)."
    )


def _instance_count(boxes, labels, scores, masks, keypoints) -> int:
    """The common N of all given inputs; InputError if they disagree."""
    counts = {}
    for name, value in (("boxes", boxes), ("labels", labels), ("scores", scores), ("keypoints", keypoints)):
        if value is not None:
            array = np.asarray(value)
            counts[name] = int(array.shape[0]) if array.ndim > 0 else 1
    if masks is not None:
        counts["masks"] = len(masks)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise InputError(f"draw_instances: the inputs describe different numbers of instances ({listed}).")
    return next(iter(counts.values()), 0)


def _check_boxes(boxes) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(
            f"draw_instances: boxes must be (N, 4) x1, y1, x2, y2, got shape {tuple(array.shape)}. "
            "Convert COCO x, y, w, h boxes by adding w and h to x and y."
        )
    return array


def _check_keypoints(keypoints) -> np.ndarray:
    array = np.asarray(keypoints, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(
            f"draw_instances: keypoints must be (N, K, 3) x, y, visibility-or-score, got shape {tuple(array.shape)}. "
            "Reshape COCO's flat [x, y, v, ...] lists with np.reshape(k, (-1, 3))."
        )
    return array


def _iter_masks(masks, count: int, height: int, width: int):
    """Yield N (mask, x0, y0): a bool mask that starts at image pixel (x0, y0), from CroppedMasks
    (each its crop), an (N, H, W) array or a list of COCO polygons / RLE dicts (full size, at 0, 0)."""
    if isinstance(masks, CroppedMasks):
        if masks.image_size != (height, width):
            raise InputError(
                f"draw_instances: masks belong to a {masks.image_size[0]}x{masks.image_size[1]} image, "
                f"the image is {height}x{width}."
            )
        for crop, (x0, y0) in zip(masks.crops, masks.offsets.tolist()):
            yield crop.detach().cpu().numpy(), x0, y0
        return
    for mask in _iter_full_masks(masks, height, width):
        yield mask, 0, 0


def _iter_full_masks(masks, height: int, width: int):
    """Yield N (H, W) bool masks from an array or a list of COCO polygons / RLE dicts."""
    if isinstance(masks, np.ndarray) or (hasattr(masks, "shape") and hasattr(masks, "__array__")):
        array = np.asarray(masks)
        if array.ndim != 3 or array.shape[1:] != (height, width):
            raise InputError(
                f"draw_instances: masks must be (N, {height}, {width}) to match the image, got shape "
                f"{tuple(array.shape)}."
            )
        for mask in array:
            yield mask.astype(bool, copy=False)
        return
    for index, mask in enumerate(masks):
        yield _decode_coco_mask(mask, index, height, width)


def _decode_coco_mask(mask, index: int, height: int, width: int) -> np.ndarray:
    if isinstance(mask, dict):
        if "size" not in mask or "counts" not in mask:
            raise InputError(f"draw_instances: mask {index} is a dict without 'size' and 'counts' (not COCO RLE).")
        if list(mask["size"]) != [height, width]:
            raise InputError(
                f"draw_instances: RLE mask {index} has size {list(mask['size'])}, the image is [{height}, {width}]."
            )
        rle = mask
        if isinstance(mask["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(mask, height, width)
        elif isinstance(mask["counts"], str):
            rle = {"size": mask["size"], "counts": mask["counts"].encode("ascii")}
        return mask_utils.decode(rle).astype(bool)
    if isinstance(mask, (list, tuple)):
        polygons = [list(map(float, polygon)) for polygon in mask if len(polygon) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
    array = np.asarray(mask)
    if array.shape != (height, width):
        raise InputError(
            f"draw_instances: mask {index} has shape {tuple(array.shape)}, the image is ({height}, {width})."
        )
    return array.astype(bool, copy=False)


def _blend_mask(
    canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], alpha: float,
    x_offset: int = 0, y_offset: int = 0,
) -> tuple[int, int, int, int] | None:
    """Blend ``color`` into ``canvas`` (in place) where ``mask`` is set and outline it; the mask's
    pixel (0, 0) is the canvas pixel (``x_offset``, ``y_offset``).

    Returns the mask's box (x1, y1, x2, y2) in the canvas, exclusive ends, or None for an empty mask.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    region = mask[y0:y1, x0:x1]
    y0, y1, x0, x1 = y0 + y_offset, y1 + y_offset, x0 + x_offset, x1 + x_offset
    patch = canvas[y0:y1, x0:x1]
    color_array = np.asarray(color, dtype=np.float32)
    # Only the mask's own pixels are converted to float (a large box's whole patch would cost 24 bytes a pixel).
    blended = patch[region].astype(np.float32) * (1.0 - alpha) + color_array * alpha
    patch[region] = np.rint(blended).astype(np.uint8)

    # Outline: mask pixels with a 4-neighbour outside the mask (the crop's edge counts as outside).
    padded = np.pad(region, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = region & ~interior
    patch[edge] = np.asarray([int(c * 0.6) for c in color], dtype=np.uint8)
    return x0, y0, x1, y1


def _draw_keypoints(
    pen: ImageDraw.ImageDraw,
    keypoints: np.ndarray,
    colors: list[tuple[int, int, int]],
    skeleton: Sequence[tuple[int, int]] | None,
    threshold: float,
    line_width: int,
) -> None:
    num_keypoints = keypoints.shape[1]
    if skeleton is not None:
        for i, j in skeleton:
            if not (0 <= i < num_keypoints and 0 <= j < num_keypoints):
                raise InputError(
                    f"draw_instances: skeleton pair ({i}, {j}) refers past the {num_keypoints} keypoints; "
                    "skeleton pairs are 0-based (COCO json skeletons are 1-based: subtract 1)."
                )
    radius = max(2, line_width + 1)
    for points, color in zip(keypoints, colors):
        shown = points[:, 2] > threshold
        for i, j in skeleton or ():
            if shown[i] and shown[j]:
                pen.line([tuple(points[i, :2]), tuple(points[j, :2])], fill=color, width=line_width)
        for x, y, _ in points[shown]:
            # A white rim keeps the dot visible on a mask of the same colour.
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(255, 255, 255))


def _label_text(index: int, labels, scores, class_names) -> str:
    parts = []
    if labels is not None:
        label = int(labels[index])
        parts.append(class_names[label] if class_names is not None else str(label))
    if scores is not None:
        parts.append(f"{scores[index]:.2f}")
    return " ".join(parts)


def _label_anchor(index: int, boxes, mask_box, keypoints, threshold: float) -> tuple[float, float] | None:
    """Top-left corner to write the label at: the box's, else the mask's, else the shown keypoints'."""
    if boxes is not None:
        return float(boxes[index, 0]), float(boxes[index, 1])
    if mask_box is not None:
        return float(mask_box[0]), float(mask_box[1])
    if keypoints is not None:
        shown = keypoints[index][keypoints[index, :, 2] > threshold]
        if len(shown):
            return float(shown[:, 0].min()), float(shown[:, 1].min())
    return None


def _draw_label(
    pen: ImageDraw.ImageDraw,
    text: str,
    anchor: tuple[float, float],
    color: tuple[int, int, int],
    font,
    width: int,
    height: int,
) -> None:
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left, bottom - top
    pad = 2
    x, y = anchor
    # Above the box when there is room, else just inside its top edge; always inside the image.
    y = y - text_h - 2 * pad if y - text_h - 2 * pad >= 0 else y
    x = min(max(0.0, x), max(0.0, width - text_w - 2 * pad))
    y = min(max(0.0, y), max(0.0, height - text_h - 2 * pad))
    pen.rectangle([x, y, x + text_w + 2 * pad, y + text_h + 2 * pad], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    pen.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def _default_font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a single fixed-size bitmap font, no size argument
        return ImageFont.load_default()
