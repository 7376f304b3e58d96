"""Image decoding, resizing and flipping, with boxes, masks and keypoints moved along.

The resize reproduces torchvision's ``GeneralizedRCNNTransform`` exactly: the same scale
(``min(min_size / short side, max_size / long side)``), the same ``F.interpolate`` call, hence the
same output size and pixels, and boxes/keypoints scaled by the float32 ratios new size / old size
per axis. The data pipeline resizes 0-255 pixels and the model normalises afterwards, where
torchvision normalises first; bilinear weights sum to one, so the two agree to float rounding.

With ``input.resize = "fixed"`` every image is instead stretched to ``input.fixed_size`` (SSD), by
the same ``F.interpolate(size=...)`` call that ``GeneralizedRCNNTransform(fixed_size=...)`` makes.

SSD's training augmentations follow torchvision's detection references: photometric distortion,
zoom out onto a canvas of the pixel mean, and the random IoU crop. The others (random crop,
rotation by 90 degrees, large-scale jitter, mosaic, copy-paste) and the geometry of instances they
share live in :mod:`swiftdet.data.augment`; :class:`TrainTransform` composes all of them, in the
order its docstring gives, with boxes, masks and keypoints moved along.

Randomness (the training size picked from ``min_size_train``, the flip, every augmentation, the
other images of mosaic and copy-paste) comes from a generator seeded by (seed, the sample's
position in the sampler stream): :func:`augmentation_rng`. The same sample gets the same
augmentation whatever the number of loader workers, and after a resume.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from swiftdet.config.schema import Config
from swiftdet.data.augment import (
    CopyPaste,
    CopyPasteDraw,
    Crop,
    LargeScaleJitter,
    Mosaic,
    OtherImages,
    RandomCrop,
    check_moves_proposals,
    copy_paste,
    crop_instances,
    fit_window,
    fixed_size_crop,
    hflip_instances,
    mosaic,
    random_crop,
    rotate90,
    rotate90_instances,
    sample_copy_paste,
    sample_mosaic,
    sample_random_crop,
    sample_rotate90,
    sample_scale_jitter,
    scale_jitter,
    shift_instances,
    transform_instances,
)
from swiftdet.errors import InputError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from swiftdet.structures.masks import polygons_to_bitmask, rle_to_bitmask

__all__ = [
    "Augmentation",
    "Crop",
    "Photometric",
    "ZoomOut",
    "apply_augmentation",
    "augmentation_rng",
    "crop",
    "photometric_distort",
    "read_image",
    "record_to_instances",
    "resize_image",
    "resize_image_fixed",
    "resized_size",
    "sample_augmentation",
    "sample_iou_crop",
    "sample_photometric",
    "sample_zoom_out",
    "TestTransform",
    "TrainTransform",
    "transform_instances",
    "zoom_out",
]


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
# TIFF (little/big endian); BMP is recognised by its two-byte "BM" signature.
_PILLOW_SIGNATURES = (b"II*\x00", b"MM\x00*")


def _decode_with_pillow(path: str) -> Tensor:
    """(C, H, W) uint8/uint16 tensor of a BMP or TIFF file, EXIF orientation applied."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.array(im, dtype=np.int32).clip(0, 65535).astype(np.uint16)
        else:
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.array(im, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def read_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as (3, H, W) uint8 RGB.

    JPEG, PNG (8 or 16 bit), GIF (first frame) and WebP are decoded by torchvision with the EXIF
    orientation applied; BMP and TIFF, which torchvision does not decode, by Pillow. Grayscale is replicated to three channels, an alpha channel is dropped
    (not composited), 16-bit values are scaled to 8 bits (round(v / 257)).

    Raises:
        InputError: the file does not exist, cannot be read, or cannot be decoded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Image file '{path}' does not exist{' (it is a folder)' if os.path.isdir(path) else ''}.")
    try:
        data = read_file(path)
    except (RuntimeError, OSError) as e:
        raise InputError(f"Cannot read image file '{path}': {e}.") from None
    if data.numel() == 0:
        raise InputError(f"Image file '{path}' is empty (0 bytes); re-copy or re-download it.")
    try:
        if bytes(data[:4].tolist()) in _PILLOW_SIGNATURES or bytes(data[:2].tolist()) == b"BM":
            image = _decode_with_pillow(path)
        else:
            image = decode_image(data, mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except (RuntimeError, ValueError, OSError) as e:
        reason = re.sub(r"^.*\.cpp:\d+,\s*", "", " ".join(str(e).split()))[:200]
        raise InputError(
            f"Cannot decode image file '{path}' ({reason}). The file may be truncated or in a "
            "format that cannot be decoded; JPEG, PNG, GIF, WebP, BMP and TIFF are supported."
        ) from None
    if image.dim() == 4:  # animated GIF: frames first
        image = image[0]
    channels = image.shape[0]
    if image.dtype == torch.uint16:
        image = ((image.to(torch.int32) + 128) // 257).to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise InputError(f"Image file '{path}' decodes to {image.dtype} pixels; only 8- and 16-bit images are supported.")
    if channels in (1, 2):  # gray, gray + alpha
        image = image[:1].expand(3, -1, -1)
    elif channels == 4:  # RGBA
        image = image[:3]
    elif channels != 3:
        raise InputError(f"Image file '{path}' has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
    return image.contiguous()


# ----------------------------------------------------------------------------------------------
# Resize and flip
# ----------------------------------------------------------------------------------------------
def _resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    # Python float arithmetic, as GeneralizedRCNNTransform does outside tracing/scripting.
    return min(min_size / min(height, width), max_size / max(height, width))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after :func:`resize_image`: floor(side * scale), as F.interpolate computes it."""
    scale = _resize_scale(height, width, min_size, max_size)
    return int(height * scale), int(width * scale)


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resize so the short side is ``min_size`` unless the long side would exceed ``max_size``.

    Args:
        image: (C, H, W) float tensor.
    Returns:
        (C, H', W') float tensor, (H', W') = :func:`resized_size`; bit-identical to torchvision's
        ``GeneralizedRCNNTransform`` resize of the same tensor.
    """
    if not image.is_floating_point():
        raise TypeError(f"resize_image expects a float image, got {image.dtype}; convert with image.float()")
    h, w = image.shape[-2:]
    scale = _resize_scale(int(h), int(w), min_size, max_size)
    return F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]


@dataclass(frozen=True)
class Augmentation:
    """What happens to one sample: resize to ``min_size``/``max_size`` (or, when ``fixed_size`` =
    (height, width) is given, to exactly that size), then mirror if ``hflip``."""

    min_size: int
    max_size: int
    hflip: bool = False
    fixed_size: tuple[int, int] | None = None


def resize_image_fixed(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Stretch a (C, H, W) float image to ``size`` = (height, width), aspect ratio not kept.

    The same ``F.interpolate`` call as torchvision's ``GeneralizedRCNNTransform(fixed_size=(width,
    height))`` (which passes ``size=[fixed_size[1], fixed_size[0]]``): bilinear, align_corners=False,
    no scale factor; so the pixels are bit-identical to torchvision's for the same input tensor.
    """
    if not image.is_floating_point():
        raise TypeError(f"resize_image_fixed expects a float image, got {image.dtype}; convert with image.float()")
    height, width = int(size[0]), int(size[1])
    return F.interpolate(
        image[None], size=[height, width], scale_factor=None, mode="bilinear", recompute_scale_factor=None,
        align_corners=False,
    )[0]


@dataclass(frozen=True)
class TestTransform:
    """The test-time transform: one object, used by evaluation (the test loader), ``predict``, the
    demo and export, so that they can never resize differently.

    The resize to ``min_size``/``max_size`` (:func:`resize_image`), or with ``fixed_size`` =
    (height, width) the stretch to that size (:func:`resize_image_fixed`); the model normalises and
    pads. Build it from a config with :meth:`from_config`.
    """

    min_size: int
    max_size: int
    fixed_size: tuple[int, int] | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "TestTransform":
        """The transform of ``cfg.input`` (``resize``, ``fixed_size``, ``min_size_test``, ``max_size_test``)."""
        fixed = (int(cfg.input.fixed_size[0]), int(cfg.input.fixed_size[1]))
        return cls(int(cfg.input.min_size_test), int(cfg.input.max_size_test),
                   fixed if cfg.input.resize == "fixed" else None)

    @property
    def augmentation(self) -> Augmentation:
        """The same resize as an :class:`Augmentation` (no flip), for images with annotations."""
        return Augmentation(self.min_size, self.max_size, False, self.fixed_size)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of this size after the transform."""
        if self.fixed_size is not None:
            return self.fixed_size
        return resized_size(height, width, self.min_size, self.max_size)

    def __call__(self, image: Tensor) -> Tensor:
        """(3, H, W) float 0-255 image -> (3, H', W') resized, (H', W') = :meth:`output_size`."""
        if self.fixed_size is not None:
            return resize_image_fixed(image, self.fixed_size)
        return resize_image(image, self.min_size, self.max_size)


def augmentation_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the sample at ``position`` of the sampler stream (a stream apart from the
    samplers' permutations, which use the key (seed, 0, epoch))."""
    return np.random.Generator(np.random.PCG64([int(seed) % 2**64, 1, int(position)]))


def sample_augmentation(
    rng: np.random.Generator,
    min_sizes: Sequence[int],
    max_size: int,
    hflip_prob: float,
    fixed_size: tuple[int, int] | None = None,
) -> Augmentation:
    """Draw a training augmentation: one size of ``min_sizes``, a flip with ``hflip_prob``.

    Always draws the same two numbers, so the stream does not depend on the settings' values.
    """
    size = int(min_sizes[int(rng.integers(len(min_sizes)))])
    flip = bool(rng.random() < hflip_prob)
    return Augmentation(size, int(max_size), flip, fixed_size)


def apply_augmentation(
    image: Tensor, instances: Instances | None, aug: Augmentation, flip_index: Sequence[int] | None = None
) -> tuple[Tensor, Instances | None]:
    """Resize (and flip) a (3, H, W) float image and its instances; returns the new pair."""
    if aug.fixed_size is not None:
        image = resize_image_fixed(image, aug.fixed_size)
    else:
        image = resize_image(image, aug.min_size, aug.max_size)
    if aug.hflip:
        image = image.flip(-1)
    if instances is not None:
        instances = transform_instances(instances, (int(image.shape[-2]), int(image.shape[-1])), aug.hflip, flip_index)
    return image, instances


# ----------------------------------------------------------------------------------------------
# SSD augmentations: photometric distortion, zoom out, IoU crop
# ----------------------------------------------------------------------------------------------
# torchvision's RandomPhotometricDistort ranges.
PHOTOMETRIC_BRIGHTNESS = (0.875, 1.125)
PHOTOMETRIC_CONTRAST = (0.5, 1.5)
PHOTOMETRIC_SATURATION = (0.5, 1.5)
PHOTOMETRIC_HUE = (-0.05, 0.05)
# torchvision's RandomIoUCrop: minimum IoU choices (1.0: leave the image as it is), crop side as a
# fraction of the image side, crop aspect ratio (width / height), tries per choice.
IOU_CROP_MIN_IOUS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
IOU_CROP_SCALE = (0.3, 1.0)
IOU_CROP_ASPECT = (0.5, 2.0)
IOU_CROP_TRIALS = 40


@dataclass(frozen=True)
class Photometric:
    """One draw of the photometric distortion: each factor is None when that step is skipped."""

    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    contrast_before: bool = True  # contrast before saturation and hue, else after them
    permutation: tuple[int, ...] | None = None  # channel order, as torchvision's permute_channels

    @property
    def identity(self) -> bool:
        return all(v is None for v in (self.brightness, self.contrast, self.saturation, self.hue, self.permutation))


def sample_photometric(rng: np.random.Generator, prob: float) -> Photometric:
    """Draw torchvision's RandomPhotometricDistort(p=prob): brightness, contrast, saturation, hue and
    a channel permutation, each applied with ``prob``; contrast goes first or after hue, evenly.

    Always draws the same 12 numbers, so the stream after it does not depend on ``prob``.
    """
    factors = []
    for low, high in (PHOTOMETRIC_BRIGHTNESS, PHOTOMETRIC_CONTRAST, PHOTOMETRIC_SATURATION, PHOTOMETRIC_HUE):
        apply, value = rng.random() < prob, float(rng.uniform(low, high))
        factors.append(value if apply else None)
    contrast_before = bool(rng.random() < 0.5)
    permute, order = rng.random() < prob, tuple(int(i) for i in rng.permutation(3))
    return Photometric(*factors, contrast_before=contrast_before, permutation=order if permute else None)


def photometric_distort(image: Tensor, params: Photometric) -> Tensor:
    """Apply a :class:`Photometric` draw to a (3, H, W) RGB image with torchvision's v2 kernels.

    A uint8 image is processed as uint8, as torchvision's references do (values rounded down and
    clamped to 0-255 after each step); a float image is taken as 0-255 (scaled to 0-1 for the
    kernels and back). The result has the input's dtype and stays in 0-255.
    """
    if params.identity:
        return image
    fp = image.is_floating_point()
    out = (image / 255.0).clamp(0.0, 1.0) if fp else image
    if params.brightness is not None:
        out = TF.adjust_brightness(out, brightness_factor=params.brightness)
    if params.contrast is not None and params.contrast_before:
        out = TF.adjust_contrast(out, contrast_factor=params.contrast)
    if params.saturation is not None:
        out = TF.adjust_saturation(out, saturation_factor=params.saturation)
    if params.hue is not None:
        out = TF.adjust_hue(out, hue_factor=params.hue)
    if params.contrast is not None and not params.contrast_before:
        out = TF.adjust_contrast(out, contrast_factor=params.contrast)
    if params.permutation is not None:
        out = TF.permute_channels(out, permutation=list(params.permutation))
    return out * 255.0 if fp else out


@dataclass(frozen=True)
class ZoomOut:
    """The image goes at (``left``, ``top``) of a ``height`` x ``width`` canvas."""

    height: int
    width: int
    top: int
    left: int


def sample_zoom_out(rng: np.random.Generator, height: int, width: int, prob: float, max_scale: float) -> ZoomOut | None:
    """Draw torchvision's RandomZoomOut(side_range=(1, max_scale), p=prob) for a height x width
    image: a canvas side r times the image's (r uniform in [1, max_scale)), a uniform position.

    Always draws the same 4 numbers; None when the zoom is skipped.
    """
    apply, r, fx, fy = rng.random() < prob, 1.0 + rng.random() * (max_scale - 1.0), rng.random(), rng.random()
    if not apply:
        return None
    canvas_h, canvas_w = int(height * r), int(width * r)
    return ZoomOut(canvas_h, canvas_w, int((canvas_h - height) * fy), int((canvas_w - width) * fx))


def zoom_out(
    image: Tensor, instances: Instances | None, params: ZoomOut, fill: Sequence[float]
) -> tuple[Tensor, Instances | None]:
    """Place a (3, H, W) float image on a canvas of ``fill`` (one 0-255 value per RGB channel) and
    move its instances by (left, top); bitmaps are padded with background."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    canvas = torch.empty((image.shape[0], params.height, params.width), dtype=image.dtype, device=image.device)
    canvas[:] = torch.tensor(list(fill), dtype=image.dtype, device=image.device)[:, None, None]
    canvas[:, params.top : params.top + h, params.left : params.left + w] = image
    if instances is None:
        return canvas, None
    return canvas, shift_instances(instances, params.left, params.top, (params.height, params.width))


def sample_iou_crop(rng: np.random.Generator, height: int, width: int, boxes: Tensor) -> Crop | None:
    """Draw torchvision's RandomIoUCrop for a height x width image with (N, 4) xyxy ``boxes``.

    Pick a minimum IoU from :data:`IOU_CROP_MIN_IOUS` (1.0: no crop); try up to
    :data:`IOU_CROP_TRIALS` windows whose sides are uniform fractions in :data:`IOU_CROP_SCALE`
    of the image's, with width / height in :data:`IOU_CROP_ASPECT`, at a uniform position; accept
    the first that contains some box centre and has IoU >= the minimum with one of those boxes;
    after failed trials, pick again. None: no crop (also for an image without boxes, where
    torchvision would pick until it drew 1.0).
    """
    if len(boxes) == 0:
        return None
    # numpy float32 for the trials (dozens per image): the arithmetic of torchvision's float32
    # box_iou without a tensor's overhead.
    b = boxes.detach().to("cpu", torch.float32).numpy()
    cx, cy = np.float32(0.5) * (b[:, 0] + b[:, 2]), np.float32(0.5) * (b[:, 1] + b[:, 3])
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    low, high = IOU_CROP_SCALE
    while True:
        min_iou = IOU_CROP_MIN_IOUS[int(rng.integers(len(IOU_CROP_MIN_IOUS)))]
        if min_iou >= 1.0:
            return None
        for _ in range(IOU_CROP_TRIALS):
            sx, sy = low + (high - low) * rng.random(2)
            new_w, new_h = int(width * sx), int(height * sy)
            if new_w == 0 or new_h == 0 or not IOU_CROP_ASPECT[0] <= new_w / new_h <= IOU_CROP_ASPECT[1]:
                continue
            fx, fy = rng.random(2)
            top, left = int((height - new_h) * fy), int((width - new_w) * fx)
            right, bottom = left + new_w, top + new_h
            inside = (left < cx) & (cx < right) & (top < cy) & (cy < bottom)
            if not inside.any():
                continue
            rect = np.array([left, top, right, bottom], dtype=np.float32)
            inter_w = (np.minimum(b[inside, 2], rect[2]) - np.maximum(b[inside, 0], rect[0])).clip(min=0)
            inter_h = (np.minimum(b[inside, 3], rect[3]) - np.maximum(b[inside, 1], rect[1])).clip(min=0)
            inter = inter_w * inter_h
            iou = inter / (areas[inside] + np.float32(new_w * new_h) - inter)
            if float(iou.max()) < min_iou:
                continue
            return Crop(top, left, new_h, new_w)


def crop(image: Tensor, instances: Instances | None, window: Crop) -> tuple[Tensor, Instances | None]:
    """Cut ``window`` out of a (3, H, W) image and its instances, as torchvision's RandomIoUCrop:
    instances whose box centre is not strictly inside the window are dropped, the others' boxes
    clipped to it; polygons are clipped to the window, bitmaps cut; keypoints that leave the
    window get visibility 0 (:func:`~swiftdet.data.augment.crop_instances`, rule ``"centre"``)."""
    top, left, h, w = window.top, window.left, window.height, window.width
    image = image[:, top : top + h, left : left + w]
    if instances is None:
        return image, None
    return image, crop_instances(instances, window, "centre")


@dataclass(frozen=True)
class TrainTransform:
    """The training transform of ``cfg.input``: every augmentation that is enabled, in this order.

    1. mosaic (``input.mosaic``): this image and 3 drawn ones on a 2x2 canvas;
    2. photometric distortion (``input.photometric_distort_prob``, any architecture);
    3. zoom out, then the IoU crop (SSD's, ``input.zoom_out_prob``, ``input.iou_crop``);
    4. random crop (``input.crop``);
    5. rotation by k * 90 degrees (``input.rotate90_prob``);
    6. the resize: large-scale jitter (``input.resize = "lsj"``: resize by a random scale of
       ``input.lsj.size``, then crop / pad to it), else the size drawn from ``min_sizes`` or
       ``fixed_size``; then the horizontal flip;
    7. copy-paste (``input.copy_paste``): instances of a drawn image, itself augmented by steps 2-6
       with a generator of its own, pasted on top.

    Geometric steps come before the resize so that they act on the original pixels (detectron2
    puts its RandomCrop first); copy-paste comes last so that both images are at the training size
    (Ghiasi et al. paste between two scale-jittered images; mmdet runs CopyPaste after LSJ).

    Every random number comes from the generator passed in (:func:`augmentation_rng` of the
    sample's stream position), the other images' dataset indices included. The size and the flip
    are drawn first, then the photometric distortion, zoom out and IoU crop, as before the later
    augmentations existed; an augmentation that is off draws nothing, so configs that leave
    them off get exactly the samples they got then.

    Attributes:
        zoom_out_fill: canvas value per RGB channel (the model's pixel mean, in RGB order), also
            the padding of LSJ, mosaic and copy-paste (the model normalises it to 0, the value of
            its own batch padding).
    """

    min_sizes: tuple[int, ...]
    max_size: int
    hflip_prob: float
    fixed_size: tuple[int, int] | None = None
    photometric_distort_prob: float = 0.0
    zoom_out_prob: float = 0.0
    zoom_out_max_scale: float = 4.0
    zoom_out_fill: tuple[float, float, float] = (0.0, 0.0, 0.0)
    iou_crop: bool = False
    random_crop: RandomCrop | None = None
    rotate90_prob: float = 0.0
    lsj: LargeScaleJitter | None = None
    mosaic: Mosaic | None = None
    copy_paste: CopyPaste | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> "TrainTransform":
        """The transform of ``cfg.input`` (and ``model.pixel_mean`` / ``input_format`` for the fill)."""
        inp = cfg.input
        fixed = (int(inp.fixed_size[0]), int(inp.fixed_size[1]))
        mean = tuple(float(v) for v in cfg.model.pixel_mean)
        # pixel_mean is in input_format order; the data pipeline's images are RGB.
        fill = mean[::-1] if cfg.model.input_format == "BGR" else mean
        crop_spec = RandomCrop(str(inp.crop.type), (float(inp.crop.size[0]), float(inp.crop.size[1])),
                               bool(inp.crop.keep_instances))
        lsj = LargeScaleJitter((int(inp.lsj.size[0]), int(inp.lsj.size[1])),
                               (float(inp.lsj.scale_range[0]), float(inp.lsj.scale_range[1])))
        mosaic_spec = Mosaic(float(inp.mosaic.prob), (int(inp.mosaic.size[0]), int(inp.mosaic.size[1])),
                             (float(inp.mosaic.center_range[0]), float(inp.mosaic.center_range[1])))
        paste = CopyPaste(float(inp.copy_paste.prob), int(inp.copy_paste.max_pasted))
        return cls(
            min_sizes=tuple(int(s) for s in inp.min_size_train),
            max_size=int(inp.max_size_train),
            hflip_prob=float(inp.hflip_prob),
            fixed_size=fixed if inp.resize == "fixed" else None,
            photometric_distort_prob=float(inp.photometric_distort_prob),
            zoom_out_prob=float(inp.zoom_out_prob),
            zoom_out_max_scale=float(inp.zoom_out_max_scale),
            zoom_out_fill=fill,  # type: ignore[arg-type]
            iou_crop=bool(inp.iou_crop),
            random_crop=crop_spec if crop_spec.type != "none" else None,
            rotate90_prob=float(inp.rotate90_prob),
            lsj=lsj if inp.resize == "lsj" else None,
            mosaic=mosaic_spec if mosaic_spec.prob > 0 else None,
            copy_paste=paste if paste.prob > 0 else None,
        )

    @property
    def needs_other_images(self) -> bool:
        """Mosaic or copy-paste is on: the caller must pass ``others``."""
        return self.mosaic is not None or self.copy_paste is not None

    def __call__(
        self,
        image: Tensor,
        instances: Instances | None,
        rng: np.random.Generator,
        flip_index: Sequence[int] | None = None,
        others: OtherImages | None = None,
    ) -> tuple[Tensor, Instances | None]:
        """Augment a (3, H, W) image (uint8, or float 0-255) and its instances.

        Args:
            others: the dataset's images, for mosaic and copy-paste (their indices are drawn
                from ``rng``).
        Returns:
            (3, H', W') float32 0-255 image and the instances in its coordinates.
        """
        if self.needs_other_images and others is None:
            raise ValueError("mosaic and copy-paste need the other training images: pass others=OtherImages(...)")
        return self._augment(image, instances, rng, flip_index, others)[:2]

    def with_proposals(
        self, image: Tensor, instances: Instances | None, proposals: Instances, rng: np.random.Generator,
        flip_index: Sequence[int] | None = None,
    ) -> tuple[Tensor, Instances | None, Instances]:
        """As :meth:`__call__`, with a Fast R-CNN's proposals (Instances: boxes, scores) moved like the
        boxes of the targets (not clipped: :func:`swiftdet.data.proposals.finish_proposals` does it
        after). Mosaic, copy-paste and the crop keeping instances are refused for them
        (:func:`~swiftdet.data.augment.check_moves_proposals`)."""
        check_moves_proposals(self.mosaic, self.copy_paste, self.random_crop)
        return self._augment(image, instances, rng, flip_index, None, proposals)

    def _augment(self, image, instances, rng, flip_index, others, proposals=None):
        aug = sample_augmentation(rng, self.min_sizes, self.max_size, self.hflip_prob, self.fixed_size)
        photometric = sample_photometric(rng, self.photometric_distort_prob)
        if self.mosaic is not None and others is not None:
            draw = sample_mosaic(rng, self.mosaic, others.count)
            if draw is not None:
                tiles = [(image, instances)] + [others.load(i) for i in draw.indices]
                image, instances = mosaic(tiles, draw, self.mosaic.size, self.zoom_out_fill)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        zoom = sample_zoom_out(rng, h, w, self.zoom_out_prob, self.zoom_out_max_scale)
        image = photometric_distort(image, photometric).float()
        # Proposals (Fast R-CNN) follow each geometric step as boxes: shifted, cut ("area" rule), turned, resized.
        if zoom is not None:
            image, instances = zoom_out(image, instances, zoom, self.zoom_out_fill)
            if proposals is not None:
                proposals = shift_instances(proposals, zoom.left, zoom.top, (zoom.height, zoom.width))
        if self.iou_crop and instances is not None:
            window = sample_iou_crop(rng, int(image.shape[-2]), int(image.shape[-1]), instances.boxes.tensor)
            if window is not None:
                image, instances = crop(image, instances, window)
                proposals = crop_instances(proposals, window, "area") if proposals is not None else None
        if self.random_crop is not None:
            windows = sample_random_crop(rng, int(image.shape[-2]), int(image.shape[-1]), self.random_crop)
            image, instances = random_crop(image, instances, windows)
            # One window (keep_instances is refused with proposals): the one random_crop cut.
            proposals = crop_instances(proposals, windows[0], "area") if proposals is not None else None
        if self.rotate90_prob > 0:
            turns = sample_rotate90(rng, self.rotate90_prob)
            image, instances = rotate90(image, instances, turns)
            proposals = rotate90_instances(proposals, turns) if proposals is not None else None
        if self.lsj is not None:
            jitter = sample_scale_jitter(rng, int(image.shape[-2]), int(image.shape[-1]), self.lsj)
            image, instances = scale_jitter(image, instances, jitter, self.zoom_out_fill)
            if proposals is not None:
                proposals = transform_instances(proposals, jitter.resized)
                proposals = shift_instances(crop_instances(proposals, jitter.window, "area"), 0, 0, jitter.size)
            if aug.hflip:
                image = image.flip(-1)
                instances = hflip_instances(instances, flip_index) if instances is not None else None
                proposals = hflip_instances(proposals) if proposals is not None else None
        else:
            image, instances = apply_augmentation(image, instances, aug, flip_index)
            if proposals is not None:
                proposals = transform_instances(proposals, (int(image.shape[-2]), int(image.shape[-1])), aug.hflip)
        if self.copy_paste is not None and others is not None:
            draw = sample_copy_paste(rng, self.copy_paste, others.count)
            if draw is not None and instances is not None:
                image, instances = self._paste(image, instances, draw, flip_index, others)
        return image, instances, proposals

    def _paste(self, image: Tensor, instances: Instances, draw: CopyPasteDraw, flip_index, others: OtherImages):
        """Copy-paste from the drawn image, augmented (no mosaic, no paste) by a generator of its own."""
        src_rng = np.random.Generator(np.random.PCG64(draw.seed))
        src_image, src = others.load(draw.index)
        if src is None or len(src) == 0:
            return image, instances
        src_image, src, _ = self._augment(src_image, src, src_rng, flip_index, None)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        window = fit_window(int(src_image.shape[-2]), int(src_image.shape[-1]), size, float(src_rng.random()))
        src_image, src = fixed_size_crop(src_image, src, window, size, self.zoom_out_fill)
        return copy_paste(image, instances, src_image, src, src_rng, self.copy_paste.max_pasted)


# ----------------------------------------------------------------------------------------------
# Dataset record -> target Instances
# ----------------------------------------------------------------------------------------------
def record_to_instances(record, *, with_masks: bool, with_keypoints: bool) -> Instances:
    """Training targets of an :class:`~swiftdet.data.storage.ImageRecord`, in original image coordinates.

    Crowd annotations are left out; boxes are clipped to the image and those left with no area
    dropped. Masks are PolygonMasks, or BitMasks when any kept annotation stores RLE (the
    polygons of that image are then rasterised too, so one image has one mask type); an
    annotation without a segmentation gets an empty mask.
    """
    h, w = record.height, record.width
    keep = ~record.iscrowd
    boxes = Boxes(torch.from_numpy(record.boxes[keep])).clip((h, w))
    nonempty = boxes.nonempty()
    kept = np.nonzero(keep)[0][nonempty.numpy()]
    boxes = boxes[nonempty]
    labels = torch.from_numpy(record.labels[kept]).to(torch.int64)
    masks = None
    if with_masks:
        segs = [record.segmentations[a] for a in kept]
        if any(isinstance(s, dict) for s in segs):
            bitmaps = [
                rle_to_bitmask(s, h, w) if isinstance(s, dict)
                else polygons_to_bitmask(s or [], h, w)
                for s in segs
            ]
            masks = BitMasks(torch.from_numpy(np.stack(bitmaps)) if bitmaps else torch.zeros(0, h, w, dtype=torch.bool))
        else:
            masks = PolygonMasks([s or [] for s in segs])
    keypoints = None
    if with_keypoints and record.keypoints is not None:
        keypoints = Keypoints(torch.from_numpy(record.keypoints[kept]))
    return Instances((h, w), boxes=boxes, labels=labels, masks=masks, keypoints=keypoints)
