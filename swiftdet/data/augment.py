"""Training augmentations beyond resize and flip, and the geometry of instances they share.

Each augmentation comes as a frozen spec (what ``cfg.input`` asks for), a ``sample_*`` function
that draws one application from a generator (:func:`~swiftdet.data.transforms.augmentation_rng`
of the sample's stream position) and a function that applies the draw to a (3, H, W) image and
its :class:`~swiftdet.structures.Instances` (boxes, polygon or bitmap masks, keypoints moved
together):

- random crop (detectron2's ``RandomCrop`` types; optionally keeping at least one instance, the
  criterion of mmdet's ``allow_negative_crop=False``): :func:`sample_random_crop`, :func:`random_crop`;
- rotation by k * 90 degrees, counter-clockwise as ``np.rot90``: :func:`sample_rotate90`, :func:`rotate90`;
- large-scale jitter (detectron2's ``ResizeScale`` + ``FixedSizeCrop``, its new baselines' LSJ):
  :func:`sample_scale_jitter`, :func:`scale_jitter`;
- mosaic of 4 images on a 2x2 canvas (mmdet's / YOLOX's ``Mosaic``): :func:`sample_mosaic`, :func:`mosaic`;
- copy-paste of another image's instances (Ghiasi et al. 2021, as mmdet's ``CopyPaste``):
  :func:`sample_copy_paste`, :func:`copy_paste`.

The multi-image ones draw the other images' dataset indices from the same generator, so a sample
stays a function of (seed, position). :class:`~swiftdet.data.transforms.TrainTransform` composes
them in one documented order.

Geometry conventions (those of the resize and flip): continuous pixel coordinates, pixel (i, j)
covering [j, j + 1) x [i, i + 1); boxes are x0, y0, x1, y1 with exclusive ends, as a bitmap's tight
box (:meth:`BitMasks.bounding_boxes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from swiftdet.errors import ConfigError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks

__all__ = [
    "CopyPaste",
    "CopyPasteDraw",
    "Crop",
    "JitterDraw",
    "LargeScaleJitter",
    "Mosaic",
    "MosaicDraw",
    "OtherImages",
    "RandomCrop",
    "check_moves_proposals",
    "copy_paste",
    "crop_instances",
    "crop_polygons",
    "fit_window",
    "fixed_size_crop",
    "hflip_instances",
    "mosaic",
    "random_crop",
    "resize_to",
    "rotate90",
    "rotate90_instances",
    "sample_copy_paste",
    "sample_crop_window",
    "sample_mosaic",
    "sample_random_crop",
    "sample_rotate90",
    "sample_scale_jitter",
    "scale_jitter",
    "shift_instances",
    "to_bitmasks",
    "transform_instances",
    "translate_polygons",
]


# ----------------------------------------------------------------------------------------------
# Geometry of instances: resize + flip, shift, crop
# ----------------------------------------------------------------------------------------------
def _ratio(new: int, old: int) -> float:
    # float32 division, like torchvision's resize_boxes / resize_keypoints.
    return float(np.float32(new) / np.float32(old))


def transform_instances(
    instances: Instances, new_size: tuple[int, int], hflip: bool = False, flip_index: Sequence[int] | None = None
) -> Instances:
    """Move instances with an image resized to ``new_size`` = (h, w) and then, if ``hflip``, mirrored.

    Polygons are scaled/mirrored exactly; bitmaps are resized nearest-neighbour (as torchvision).
    ``flip_index`` (from :func:`swiftdet.structures.flip_indices`) swaps left/right keypoints.
    """
    old_h, old_w = instances.image_size
    new_h, new_w = new_size
    sx, sy = _ratio(new_w, old_w), _ratio(new_h, old_h)
    boxes = instances.boxes.scale(sx, sy)
    masks = instances.masks
    if isinstance(masks, PolygonMasks):
        masks = masks.scale(sx, sy)
    elif isinstance(masks, BitMasks):
        masks = masks.resize(new_h, new_w)
    keypoints = instances.keypoints.scale(sx, sy) if instances.keypoints is not None else None
    if hflip:
        boxes = boxes.hflip(new_w)
        if masks is not None:
            masks = masks.hflip(new_w)
        if keypoints is not None:
            if flip_index is None:
                raise ValueError("flipping keypoints needs flip_index (swiftdet.structures.flip_indices)")
            keypoints = keypoints.hflip(new_w, flip_index)
    return Instances((new_h, new_w), boxes=boxes, labels=instances.labels, scores=instances.scores, masks=masks, keypoints=keypoints)


def _map_polygons(masks: PolygonMasks, fn: Callable[[np.ndarray], np.ndarray]) -> PolygonMasks:
    """Each polygon's (P, 2) x, y vertices through ``fn`` (returning (P, 2))."""
    return PolygonMasks([[fn(p.reshape(-1, 2)).reshape(-1) for p in inst] for inst in masks.polygons])


def translate_polygons(masks: PolygonMasks, dx: float, dy: float) -> PolygonMasks:
    """Polygons moved by (dx, dy)."""
    out = []
    for inst in masks.polygons:
        moved = []
        for p in inst:
            q = p.copy()
            q[0::2] += dx
            q[1::2] += dy
            moved.append(q)
        out.append(moved)
    return PolygonMasks(out)


def shift_instances(instances: Instances, dx: int, dy: int, size: tuple[int, int]) -> Instances:
    """Instances moved by (dx, dy) pixels into an image of ``size`` = (height, width).

    Boxes, polygons and keypoints are translated (not clipped); bitmaps are placed on a canvas of
    ``size`` (padded with background, cut where they leave it).
    """
    dtype = instances.boxes.tensor.dtype
    boxes = Boxes(instances.boxes.tensor + torch.tensor([dx, dy, dx, dy], dtype=dtype))
    masks = instances.masks
    if isinstance(masks, PolygonMasks):
        masks = translate_polygons(masks, dx, dy)
    elif isinstance(masks, BitMasks):
        h, w = masks.tensor.shape[-2:]
        # F.pad takes (left, right, top, bottom); a negative amount cuts.
        masks = BitMasks(F.pad(masks.tensor, (dx, size[1] - w - dx, dy, size[0] - h - dy)))
    keypoints = instances.keypoints
    if keypoints is not None:
        t = keypoints.tensor.clone()
        t[..., 0] += dx
        t[..., 1] += dy
        keypoints = Keypoints(t)
    return instances.with_fields(image_size=(int(size[0]), int(size[1])), boxes=boxes, masks=masks, keypoints=keypoints)


def hflip_instances(instances: Instances, flip_index: Sequence[int] | None = None) -> Instances:
    """Instances of the image mirrored left-right (``flip_index`` swaps left/right keypoints)."""
    w = instances.image_size[1]
    masks = instances.masks.hflip(w) if instances.masks is not None else None
    keypoints = instances.keypoints
    if keypoints is not None:
        if flip_index is None:
            raise ValueError("flipping keypoints needs flip_index (swiftdet.structures.flip_indices)")
        keypoints = keypoints.hflip(w, flip_index)
    return instances.with_fields(boxes=instances.boxes.hflip(w), masks=masks, keypoints=keypoints)


def to_bitmasks(instances: Instances) -> Instances:
    """The same instances with polygon masks rasterised to :class:`BitMasks` of the image size."""
    if isinstance(instances.masks, PolygonMasks):
        return instances.with_fields(masks=instances.masks.to_bitmasks(*instances.image_size))
    return instances


def _cat_instances(items: Sequence[Instances]) -> Instances:
    """:meth:`Instances.cat` of instances of one image whose masks may be of both types (then all bitmaps)."""
    kinds = {type(i.masks) for i in items}
    if len(kinds) > 1:
        items = [to_bitmasks(i) for i in items]
    return Instances.cat(list(items))


@dataclass(frozen=True)
class Crop:
    """The ``height`` x ``width`` window at (``left``, ``top``) of the image."""

    top: int
    left: int
    height: int
    width: int

    def centres_inside(self, boxes: Tensor) -> Tensor:
        """(N,) bool: the centre of each (N, 4) xyxy box lies strictly inside the window."""
        cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
        cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
        return (self.left < cx) & (cx < self.left + self.width) & (self.top < cy) & (cy < self.top + self.height)

    def overlaps(self, boxes: Tensor) -> Tensor:
        """(N,) bool: each (N, 4) xyxy box keeps a positive area when clipped to the window."""
        x0 = boxes[:, 0].clamp(min=self.left)
        y0 = boxes[:, 1].clamp(min=self.top)
        x1 = boxes[:, 2].clamp(max=self.left + self.width)
        y1 = boxes[:, 3].clamp(max=self.top + self.height)
        return (x1 > x0) & (y1 > y0)


def _clip_polygon(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """(P, 2) polygon clipped to the rectangle [0, width] x [0, height] (Sutherland-Hodgman);
    (Q, 2), Q = 0 when nothing is left."""
    for axis, limit, sign in ((0, 0.0, 1.0), (0, width, -1.0), (1, 0.0, 1.0), (1, height, -1.0)):
        if len(xy) == 0:
            break
        inside = sign * (xy[:, axis] - limit) >= 0
        out = []
        prev, prev_in = xy[-1], inside[-1]
        for cur, cur_in in zip(xy, inside):
            if cur_in != prev_in:  # the edge crosses the line: keep the crossing point
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                point = prev + t * (cur - prev)
                point[axis] = limit
                out.append(point)
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        xy = np.array(out, dtype=np.float64).reshape(-1, 2)
    return xy


def crop_polygons(masks: PolygonMasks, window: Crop) -> PolygonMasks:
    """Polygons in the window's coordinates, clipped to it; a polygon left with < 3 vertices goes."""
    out = []
    for inst in masks.polygons:
        kept = []
        for p in inst:
            xy = p.reshape(-1, 2) - np.array([window.left, window.top], dtype=np.float64)
            xy = _clip_polygon(xy, window.width, window.height)
            if len(xy) >= 3:
                kept.append(xy.reshape(-1))
        out.append(kept)
    return PolygonMasks(out)


# Bitmap reductions go through numpy: on CPU bool tensors its any / count_nonzero are 10-100x
# faster than torch's, which matters at training sizes (N x 800 x 1333 masks).
def _mask_nonempty(masks: PolygonMasks | BitMasks) -> Tensor:
    """(N,) bool: the mask covers some area."""
    if len(masks) == 0:
        return torch.zeros(0, dtype=torch.bool)
    if isinstance(masks, BitMasks):
        return torch.from_numpy(masks.tensor.numpy().any(axis=(1, 2)))
    return masks.area() > 0


def _tight_boxes(masks: PolygonMasks | BitMasks) -> Tensor:
    """(N, 4) float32 tight boxes: a polygon's vertex box; a bitmap's pixels with exclusive ends
    (as :meth:`BitMasks.bounding_boxes`), 0 for an empty one."""
    if isinstance(masks, PolygonMasks):
        return masks.bounding_boxes()
    m = masks.tensor.numpy()
    rows, cols = m.any(axis=2), m.any(axis=1)
    boxes = np.zeros((len(m), 4), dtype=np.float32)
    for i in range(len(m)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return torch.from_numpy(boxes)


def crop_instances(instances: Instances, window: Crop, rule: str = "area") -> Instances:
    """Instances of the image cut to ``window``, in the window's coordinates.

    ``rule`` picks which instances stay: ``"centre"`` those whose box centre lies strictly inside
    the window (torchvision's RandomIoUCrop, SSD), ``"area"`` those whose box keeps a positive area
    once clipped (detectron2's crop + ``filter_empty_instances``, mmdet's RandomCrop). Boxes are
    clipped to the window; polygons are clipped, bitmaps cut; keypoints that leave the window get
    visibility 0. With ``"area"`` and masks, the box follows the mask, as detectron2's
    ``recompute_boxes`` after a crop: it shrinks to the part of the cropped mask's tight box inside
    the clipped box, and an instance whose mask is empty in the window is dropped (so is one
    annotated without a segmentation, as in detectron2).
    """
    top, left, h, w = window.top, window.left, window.height, window.width
    if rule == "centre":
        keep = window.centres_inside(instances.boxes.tensor)
    elif rule == "area":
        keep = window.overlaps(instances.boxes.tensor)
    else:
        raise ValueError(f"crop_instances: rule must be 'centre' or 'area', got {rule!r}")
    kept = instances[keep]
    shift = torch.tensor([left, top, left, top], dtype=kept.boxes.tensor.dtype)
    boxes = Boxes(kept.boxes.tensor - shift).clip((h, w))
    masks = kept.masks
    if isinstance(masks, PolygonMasks):
        masks = crop_polygons(masks, window)
    elif isinstance(masks, BitMasks):
        masks = BitMasks(masks.tensor[:, top : top + h, left : left + w])
    keypoints = kept.keypoints
    if keypoints is not None:
        t = keypoints.tensor.clone()
        t[..., 0] -= left
        t[..., 1] -= top
        outside = (t[..., 0] < 0) | (t[..., 0] > w) | (t[..., 1] < 0) | (t[..., 1] > h)
        t[..., 2] = torch.where(outside, torch.zeros_like(t[..., 2]), t[..., 2])
        keypoints = Keypoints(t)
    out = kept.with_fields(image_size=(h, w), boxes=boxes, masks=masks, keypoints=keypoints)
    if rule == "area" and masks is not None and len(out):
        out = _fit_boxes_to_masks(out)
    return out


def _fit_boxes_to_masks(instances: Instances) -> Instances:
    """Boxes shrunk to their mask's tight box; instances whose mask (or shrunk box) is empty dropped."""
    tight = _tight_boxes(instances.masks).to(instances.boxes.tensor.dtype)
    t = torch.cat([torch.maximum(instances.boxes.tensor[:, :2], tight[:, :2]),
                   torch.minimum(instances.boxes.tensor[:, 2:], tight[:, 2:])], dim=1)
    out = instances.with_fields(boxes=Boxes(t))
    keep = _mask_nonempty(instances.masks) & out.boxes.nonempty()
    return out if bool(keep.all()) else out[keep]


def resize_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) float image resized to ``size`` = (height, width): bilinear, antialiased when it
    shrinks (as detectron2's PIL resize, so LSJ's 0.1 scale does not alias)."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    if (h, w) == tuple(size):
        return image
    shrink = size[0] < h or size[1] < w
    return F.interpolate(image[None], size=[int(size[0]), int(size[1])], mode="bilinear", align_corners=False,
                         antialias=shrink)[0]


def _cut_and_pad(image: Tensor, window: Crop, size: tuple[int, int], fill: Sequence[float]) -> Tensor:
    """The window of a (C, H, W) image at the top left of a ``size`` canvas of ``fill``."""
    part = image[:, window.top : window.top + window.height, window.left : window.left + window.width]
    if tuple(part.shape[-2:]) == tuple(size):
        return part
    canvas = torch.empty((image.shape[0], int(size[0]), int(size[1])), dtype=image.dtype)
    canvas[:] = torch.tensor(list(fill), dtype=image.dtype)[:, None, None]
    canvas[:, : part.shape[-2], : part.shape[-1]] = part
    return canvas


def fixed_size_crop(
    image: Tensor, instances: Instances | None, window: Crop, size: tuple[int, int], fill: Sequence[float]
) -> tuple[Tensor, Instances | None]:
    """detectron2's FixedSizeCrop: cut ``window`` (at most ``size``) and pad the right and bottom
    to ``size`` = (height, width) with ``fill`` (one 0-255 value per channel); instances cut by the
    ``"area"`` rule of :func:`crop_instances`."""
    out = _cut_and_pad(image, window, size, fill)
    if instances is None:
        return out, None
    cropped = crop_instances(instances, window, "area")
    if (window.height, window.width) != tuple(size):
        cropped = shift_instances(cropped, 0, 0, size)
    return out, cropped


# ----------------------------------------------------------------------------------------------
# Random crop (detectron2's RandomCrop types)
# ----------------------------------------------------------------------------------------------
# Windows tried by "crop keeping instances" (detectron2's RandomCrop_CategoryAreaConstraint tries 10).
KEEP_INSTANCES_TRIES = 10


@dataclass(frozen=True)
class RandomCrop:
    """``input.crop``: the window type and size (detectron2's ``RandomCrop``), and whether a window
    must keep at least one instance."""

    type: str
    size: tuple[float, float]
    keep_instances: bool = False


def sample_crop_window(rng: np.random.Generator, height: int, width: int, type: str, size: Sequence[float]) -> Crop:
    """One window of detectron2's ``RandomCrop(type, size)`` for a height x width image.

    ``relative``: (h * size[0], w * size[1]) rounded; ``relative_range``: each side's fraction uniform
    in [size[i], 1]; ``absolute``: size[0] x size[1] pixels (the image's side where it is smaller);
    ``absolute_range``: height and width uniform integers in [size[0], size[1]] (each capped by the
    image's side). The position is uniform. Always draws 4 numbers.
    """
    u = rng.random(4)
    if type == "relative":
        ch, cw = int(height * size[0] + 0.5), int(width * size[1] + 0.5)
    elif type == "relative_range":
        fh, fw = size[0] + u[0] * (1 - size[0]), size[1] + u[1] * (1 - size[1])
        ch, cw = int(height * fh + 0.5), int(width * fw + 0.5)
    elif type == "absolute":
        ch, cw = min(int(size[0]), height), min(int(size[1]), width)
    elif type == "absolute_range":
        lo_h, hi_h = min(height, int(size[0])), min(height, int(size[1]))
        lo_w, hi_w = min(width, int(size[0])), min(width, int(size[1]))
        ch = lo_h + min(int(u[0] * (hi_h - lo_h + 1)), hi_h - lo_h)
        cw = lo_w + min(int(u[1] * (hi_w - lo_w + 1)), hi_w - lo_w)
    else:
        raise ValueError(f"unknown crop type {type!r}")
    ch, cw = max(min(ch, height), 1), max(min(cw, width), 1)
    top = min(int(u[2] * (height - ch + 1)), height - ch)
    left = min(int(u[3] * (width - cw + 1)), width - cw)
    return Crop(top, left, ch, cw)


def sample_random_crop(rng: np.random.Generator, height: int, width: int, spec: RandomCrop) -> tuple[Crop, ...]:
    """The candidate windows of one crop: one, or :data:`KEEP_INSTANCES_TRIES` with ``keep_instances``
    (always that many draws, so the stream after it does not depend on the image)."""
    count = KEEP_INSTANCES_TRIES if spec.keep_instances else 1
    return tuple(sample_crop_window(rng, height, width, spec.type, spec.size) for _ in range(count))


def random_crop(
    image: Tensor, instances: Instances | None, windows: Sequence[Crop]
) -> tuple[Tensor, Instances | None]:
    """Cut the first of ``windows`` that keeps an instance (``"area"`` rule of :func:`crop_instances`).

    With one window it is used whatever it keeps (detectron2's RandomCrop). With several ("crop
    keeping instances"), a window that would leave no instance is refused, the criterion of mmdet's
    ``allow_negative_crop=False``; where mmdet would then drop the image and load another, the
    image is left uncropped when no window keeps one, so the sample stays a function of (seed,
    position). An image without instances takes the first window.
    """
    if len(windows) > 1 and instances is not None and len(instances) > 0:
        for window in windows:
            if bool(window.overlaps(instances.boxes.tensor).any()):
                cropped = crop_instances(instances, window, "area")
                if len(cropped):
                    return _cut(image, window), cropped
        return image, instances
    window = windows[0]
    return _cut(image, window), (crop_instances(instances, window, "area") if instances is not None else None)


def _cut(image: Tensor, window: Crop) -> Tensor:
    return image[:, window.top : window.top + window.height, window.left : window.left + window.width]


# ----------------------------------------------------------------------------------------------
# Rotation by k * 90 degrees
# ----------------------------------------------------------------------------------------------
def sample_rotate90(rng: np.random.Generator, prob: float) -> int:
    """k in 0..3 quarter turns: with ``prob`` one of 1, 2, 3 evenly, else 0. Always draws 2 numbers."""
    apply, k = rng.random() < prob, 1 + int(rng.integers(3))
    return k if apply else 0


def _rotate_once(instances: Instances) -> Instances:
    """One counter-clockwise quarter turn of an h x w image's instances (np.rot90's direction):
    (x, y) -> (y, w - x), the image becomes w x h."""
    h, w = instances.image_size
    t = instances.boxes.tensor
    boxes = Boxes(torch.stack([t[:, 1], w - t[:, 2], t[:, 3], w - t[:, 0]], dim=1))
    masks = instances.masks
    if isinstance(masks, PolygonMasks):
        masks = _map_polygons(masks, lambda xy: np.stack([xy[:, 1], w - xy[:, 0]], axis=1))
    elif isinstance(masks, BitMasks):
        masks = BitMasks(torch.rot90(masks.tensor, 1, dims=(-2, -1)))
    keypoints = instances.keypoints
    if keypoints is not None:
        k = keypoints.tensor.clone()
        k[..., 0], k[..., 1] = keypoints.tensor[..., 1], w - keypoints.tensor[..., 0]
        keypoints = Keypoints(k)
    return instances.with_fields(image_size=(w, h), boxes=boxes, masks=masks, keypoints=keypoints)


def rotate90_instances(instances: Instances, k: int) -> Instances:
    """Instances of the image turned k quarter turns counter-clockwise (no left/right keypoint swap:
    a rotation does not mirror)."""
    for _ in range(int(k) % 4):
        instances = _rotate_once(instances)
    return instances


def rotate90(image: Tensor, instances: Instances | None, k: int) -> tuple[Tensor, Instances | None]:
    """Turn a (C, H, W) image and its instances k quarter turns counter-clockwise (``torch.rot90``)."""
    if k % 4 == 0:
        return image, instances
    image = torch.rot90(image, k, dims=(-2, -1))
    return image, (rotate90_instances(instances, k) if instances is not None else None)


# ----------------------------------------------------------------------------------------------
# Large-scale jitter (detectron2's ResizeScale + FixedSizeCrop)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LargeScaleJitter:
    """``input.lsj``: output ``size`` = (height, width); the resize target is size * s, s uniform in
    ``scale_range`` (detectron2's new baselines: 1024 x 1024, [0.1, 2.0])."""

    size: tuple[int, int]
    scale_range: tuple[float, float] = (0.1, 2.0)


@dataclass(frozen=True)
class JitterDraw:
    """One LSJ draw: resize to ``resized`` = (height, width), cut ``window`` of it, pad to ``size``."""

    resized: tuple[int, int]
    window: Crop
    size: tuple[int, int]


def sample_scale_jitter(rng: np.random.Generator, height: int, width: int, spec: LargeScaleJitter) -> JitterDraw:
    """detectron2's ResizeScale then FixedSizeCrop for a height x width image.

    The image is scaled (aspect ratio kept) to fit inside size * s, s uniform in ``scale_range``,
    with np.round'ed sides; where it is larger than ``size``, a window at the offset (resized - size)
    * u, u uniform (one fraction for both axes, as detectron2), is cut. Always draws 2 numbers.
    """
    s, u = float(rng.uniform(*spec.scale_range)), float(rng.random())
    th, tw = spec.size
    scale = min(th * s / height, tw * s / width)
    rh, rw = (int(v) for v in np.round(np.multiply((height, width), scale)))
    rh, rw = max(rh, 1), max(rw, 1)
    return JitterDraw((rh, rw), fit_window(rh, rw, (th, tw), u), (int(th), int(tw)))


def fit_window(height: int, width: int, size: tuple[int, int], offset: float) -> Crop:
    """The window of a height x width image that FixedSizeCrop keeps for ``size`` = (height, width):
    at most ``size``, at (height - size[0], width - size[1]) * ``offset`` (a fraction in [0, 1],
    one for both axes, rounded) where the image is larger."""
    top, left = (int(v) for v in np.round(np.maximum(np.subtract((height, width), size), 0) * offset))
    return Crop(top, left, min(int(size[0]), height), min(int(size[1]), width))


def scale_jitter(
    image: Tensor, instances: Instances | None, draw: JitterDraw, fill: Sequence[float]
) -> tuple[Tensor, Instances | None]:
    """Apply a :class:`JitterDraw` to a (3, H, W) float image: resize (:func:`resize_to`), then
    :func:`fixed_size_crop` to ``draw.size`` (padding with ``fill``, the pixel mean, which the model
    normalises to the 0 of its own batch padding)."""
    image = resize_to(image, draw.resized)
    if instances is not None:
        instances = transform_instances(instances, draw.resized)
    return fixed_size_crop(image, instances, draw.window, draw.size, fill)


def check_moves_proposals(mosaic: "Mosaic | None", copy_paste: "CopyPaste | None", crop: RandomCrop | None) -> None:
    """ConfigError for the augmentations that cannot move a Fast R-CNN's precomputed proposals
    (``model.proposal_generator=precomputed``): mosaic and copy-paste bring in other images, which
    have no proposals in this sample, and the crop keeping instances picks its window by the targets
    alone. The other steps move proposals like boxes."""
    refused = [key for key, on in (("input.mosaic.prob", mosaic is not None), ("input.copy_paste.prob", copy_paste is not None),
                                   ("input.crop.keep_instances", crop is not None and crop.keep_instances)) if on]
    if refused:
        raise ConfigError(f"{', '.join(refused)}: this augmentation cannot move the precomputed proposals of a Fast "
                          "R-CNN (model.proposal_generator=precomputed): mosaic and copy-paste mix in other images, and "
                          "the crop keeping instances picks its window by the targets. Turn it off (prob=0 / "
                          "keep_instances=false).")


# ----------------------------------------------------------------------------------------------
# Multi-image augmentations: mosaic, copy-paste
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OtherImages:
    """The training images a multi-image augmentation may draw: ``count`` of them, ``load(index)``
    giving the (3, H, W) uint8 image and targets (in its own pixels) of dataset index ``index``."""

    count: int
    load: Callable[[int], tuple[Tensor, Instances | None]]


@dataclass(frozen=True)
class Mosaic:
    """``input.mosaic``: with ``prob``, 4 images (this one top left, 3 drawn) each fitted in a cell of
    ``size`` = (height, width) meet at a centre drawn in ``center_range`` times the cell size on a
    (2 * height, 2 * width) canvas (mmdet's Mosaic: img_scale, center_ratio_range)."""

    prob: float
    size: tuple[int, int] = (640, 640)
    center_range: tuple[float, float] = (0.5, 1.5)


@dataclass(frozen=True)
class MosaicDraw:
    """The 3 other images' dataset indices and the canvas point (x, y) where the 4 cells meet."""

    indices: tuple[int, int, int]
    center: tuple[int, int]


def sample_mosaic(rng: np.random.Generator, spec: Mosaic, count: int) -> MosaicDraw | None:
    """Draw a mosaic of ``count`` dataset images: None when skipped (with 1 - prob). Always draws 6 numbers."""
    apply = rng.random() < spec.prob
    indices = tuple(int(i) for i in rng.integers(count, size=3))
    fx, fy = rng.uniform(*spec.center_range, size=2)
    if not apply:
        return None
    return MosaicDraw(indices, (int(fx * spec.size[1]), int(fy * spec.size[0])))  # type: ignore[arg-type]


def mosaic(
    tiles: Sequence[tuple[Tensor, Instances | None]], draw: MosaicDraw, size: tuple[int, int], fill: Sequence[float]
) -> tuple[Tensor, Instances | None]:
    """Put 4 (image, instances) pairs top left, top right, bottom left, bottom right of the centre
    on a (2 * size[0], 2 * size[1]) canvas of ``fill``.

    Each image is resized (aspect ratio kept, sides rounded) to fit in a ``size`` cell, then the
    part that fits its quadrant is kept (mmdet's ``_mosaic_combine``); instances are cut by the
    ``"area"`` rule of :func:`crop_instances` and moved onto the canvas. Returns a float image.
    """
    ch, cw = int(size[0]), int(size[1])
    canvas_h, canvas_w = 2 * ch, 2 * cw
    cx, cy = draw.center
    canvas = torch.empty((3, canvas_h, canvas_w), dtype=torch.float32)
    canvas[:] = torch.tensor(list(fill), dtype=torch.float32)[:, None, None]
    placed = []
    for corner, (image, instances) in enumerate(tiles):
        h0, w0 = int(image.shape[-2]), int(image.shape[-1])
        scale = min(ch / h0, cw / w0)
        h, w = max(int(h0 * scale + 0.5), 1), max(int(w0 * scale + 0.5), 1)
        image = resize_to(image.float(), (h, w))
        # The quadrant on the canvas (x0, y0, x1, y1) and the part of the image that fills it.
        if corner == 0:  # top left: the image's bottom right corner at the centre
            x0, y0, x1, y1 = max(cx - w, 0), max(cy - h, 0), cx, cy
            part = Crop(h - (y1 - y0), w - (x1 - x0), y1 - y0, x1 - x0)
        elif corner == 1:  # top right
            x0, y0, x1, y1 = cx, max(cy - h, 0), min(cx + w, canvas_w), cy
            part = Crop(h - (y1 - y0), 0, y1 - y0, min(w, x1 - x0))
        elif corner == 2:  # bottom left
            x0, y0, x1, y1 = max(cx - w, 0), cy, cx, min(canvas_h, cy + h)
            part = Crop(0, w - (x1 - x0), min(y1 - y0, h), x1 - x0)
        else:  # bottom right
            x0, y0, x1, y1 = cx, cy, min(cx + w, canvas_w), min(canvas_h, cy + h)
            part = Crop(0, 0, min(y1 - y0, h), min(w, x1 - x0))
        if part.height <= 0 or part.width <= 0:
            continue
        canvas[:, y0 : y0 + part.height, x0 : x0 + part.width] = image[
            :, part.top : part.top + part.height, part.left : part.left + part.width
        ]
        if instances is not None:
            moved = crop_instances(transform_instances(instances, (h, w)), part, "area")
            placed.append(shift_instances(moved, x0, y0, (canvas_h, canvas_w)))
    if all(inst is None for _, inst in tiles):
        return canvas, None
    if not placed:
        first = next(inst for _, inst in tiles if inst is not None)
        return canvas, shift_instances(first[torch.zeros(len(first), dtype=torch.bool)], 0, 0, (canvas_h, canvas_w))
    return canvas, _cat_instances(placed)


# mmdet CopyPaste's rule for keeping a partly covered instance: its box moved by at most this many
# pixels on every side, or at least this many of its mask pixels still visible.
COPY_PASTE_BOX_OCCLUDED_THR = 10.0
COPY_PASTE_MASK_OCCLUDED_THR = 300


@dataclass(frozen=True)
class CopyPaste:
    """``input.copy_paste``: with ``prob``, paste 1 to ``max_pasted`` instances (with masks) of another
    training image, augmented on its own to this image's size."""

    prob: float
    max_pasted: int = 100


@dataclass(frozen=True)
class CopyPasteDraw:
    """The source image's dataset index and the seed of its own augmentation and selection."""

    index: int
    seed: int


def sample_copy_paste(rng: np.random.Generator, spec: CopyPaste, count: int) -> CopyPasteDraw | None:
    """Draw a copy-paste from ``count`` dataset images: None when skipped. Always draws 3 numbers."""
    apply, index, seed = rng.random() < spec.prob, int(rng.integers(count)), int(rng.integers(2**63))
    return CopyPasteDraw(index, seed) if apply else None


def copy_paste(
    image: Tensor, instances: Instances, src_image: Tensor, src: Instances, rng: np.random.Generator, max_pasted: int
) -> tuple[Tensor, Instances]:
    """Paste a random subset of ``src``'s instances (with their pixels) onto ``image``.

    ``src_image`` / ``src`` must already be at ``image``'s size. 1 to min(N, max_pasted) source
    instances with a non-empty mask are picked (uniform count, then a uniform subset, from
    ``rng``); their union covers this image's pixels and masks. A covered instance's mask loses the
    covered pixels and its box shrinks to what is left; it is dropped when fully covered, or when
    its box moved by more than :data:`COPY_PASTE_BOX_OCCLUDED_THR` pixels and fewer than
    :data:`COPY_PASTE_MASK_OCCLUDED_THR` mask pixels are left (mmdet's CopyPaste). Keypoints
    travel with their instances; a covered keypoint keeps its visibility. Masks come out as
    :class:`BitMasks`; the image as float.
    """
    size = instances.image_size
    if tuple(src.image_size) != tuple(size) or tuple(src_image.shape[-2:]) != tuple(size):
        raise ValueError(f"copy_paste: the source is {tuple(src_image.shape[-2:])}, the image {tuple(size)}")
    if src.masks is None or instances.masks is None:
        raise ValueError("copy_paste needs instance masks on both images")
    candidates = np.nonzero(_mask_nonempty(src.masks).numpy())[0]
    n = len(candidates)
    if n == 0:
        return image.float(), instances
    num = int(rng.integers(1, min(n, int(max_pasted)) + 1))
    chosen = np.sort(rng.choice(candidates, size=num, replace=False))
    pasted = to_bitmasks(src[torch.from_numpy(chosen)])  # only the chosen ones are rasterised
    cover = torch.from_numpy(pasted.masks.tensor.numpy().any(axis=0))
    out = image.to(torch.float32, copy=True)
    np.copyto(out.numpy(), src_image.float().numpy(), where=cover.numpy()[None])
    # Masks change only inside the cover's tight box: work on that part of them.
    x0, y0, x1, y1 = (int(v) for v in _tight_boxes(BitMasks(cover[None]))[0].tolist())
    region = cover[y0:y1, x0:x1].numpy()
    dst = to_bitmasks(instances)
    masks = dst.masks.tensor
    if isinstance(instances.masks, BitMasks):  # the caller's bitmaps: do not change them in place
        masks = masks.clone()
    m = masks.numpy()  # shares memory with masks
    touched = np.flatnonzero((m[:, y0:y1, x0:x1] & region).any(axis=(1, 2)))
    boxes = dst.boxes.tensor.clone()
    keep = torch.ones(len(dst), dtype=torch.bool)
    if len(touched):
        m[touched, y0:y1, x0:x1] &= ~region
        left = BitMasks(torch.from_numpy(m[touched]))
        tight = _tight_boxes(left).to(boxes.dtype)
        touched = torch.from_numpy(touched)
        before = boxes[touched]
        fitted = torch.cat([torch.maximum(before[:, :2], tight[:, :2]), torch.minimum(before[:, 2:], tight[:, 2:])], 1)
        visible = torch.from_numpy(np.count_nonzero(left.tensor.numpy().reshape(len(left), -1), axis=1))
        stays = (visible > 0) & (
            ((fitted - before).abs() <= COPY_PASTE_BOX_OCCLUDED_THR).all(1) | (visible >= COPY_PASTE_MASK_OCCLUDED_THR)
        )
        boxes[touched] = fitted
        keep[touched] = stays
    keep &= Boxes(boxes).nonempty()
    index = torch.nonzero(keep).flatten()
    # Concatenated here rather than by Instances.cat: numpy copies bool bitmaps much faster.
    masks_out = np.concatenate([m[index.numpy()], pasted.masks.tensor.numpy()])
    keypoints = None
    if dst.keypoints is not None and pasted.keypoints is not None:
        keypoints = Keypoints(torch.cat([dst.keypoints.tensor[index], pasted.keypoints.tensor]))
    return out, Instances(size, boxes=Boxes(torch.cat([boxes[index], pasted.boxes.tensor])),
                          labels=torch.cat([dst.labels[index], pasted.labels]), masks=BitMasks(torch.from_numpy(masks_out)),
                          keypoints=keypoints)
