"""Image decoding, resizing and flipping, with boxes, masks and keypoints moved along.

The resize reproduces torchvision's ``GeneralizedRCNNTransform`` exactly: the same scale
(``min(min_size / short side, max_size / long side)``), the same ``F.interpolate`` call, hence the
same output size and pixels, and boxes/keypoints scaled by the float32 ratios new size / old size
per axis. The data pipeline resizes 0-255 pixels and the model normalises afterwards, where
torchvision normalises first; bilinear weights sum to one, so the two agree to float rounding.

Randomness (the training size picked from ``min_size_train``, the flip) comes from a generator
seeded by (seed, the sample's position in the sampler stream): :func:`augmentation_rng`. The same
sample gets the same augmentation whatever the number of loader workers, and after a resume.
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

from swiftdet.config.schema import Config
from swiftdet.errors import InputError
from swiftdet.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from swiftdet.structures.masks import polygons_to_bitmask, rle_to_bitmask

__all__ = [
    "Augmentation",
    "apply_augmentation",
    "augmentation_rng",
    "read_image",
    "record_to_instances",
    "resize_image",
    "resized_size",
    "sample_augmentation",
    "TestTransform",
    "transform_instances",
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


@dataclass(frozen=True)
class Augmentation:
    """What happens to one sample: resize to ``min_size``/``max_size``, then mirror if ``hflip``."""

    min_size: int
    max_size: int
    hflip: bool = False


@dataclass(frozen=True)
class TestTransform:
    """The test-time transform: one object, used by evaluation (the test loader), ``predict``, the
    demo and export, so that they can never resize differently.

    Today it is the resize to ``min_size``/``max_size`` (:func:`resize_image`); the model
    normalises and pads. Build it from a config with :meth:`from_config`.
    """

    min_size: int
    max_size: int

    @classmethod
    def from_config(cls, cfg: Config) -> "TestTransform":
        """The transform of ``cfg.input`` (``min_size_test``, ``max_size_test``)."""
        return cls(int(cfg.input.min_size_test), int(cfg.input.max_size_test))

    @property
    def augmentation(self) -> Augmentation:
        """The same resize as an :class:`Augmentation` (no flip), for images with annotations."""
        return Augmentation(self.min_size, self.max_size, False)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of this size after the transform."""
        return resized_size(height, width, self.min_size, self.max_size)

    def __call__(self, image: Tensor) -> Tensor:
        """(3, H, W) float 0-255 image -> (3, H', W') resized, (H', W') = :meth:`output_size`."""
        return resize_image(image, self.min_size, self.max_size)


def augmentation_rng(seed: int, position: int) -> np.random.Generator:
    """The generator of the sample at ``position`` of the sampler stream (a stream apart from the
    samplers' permutations, which use the key (seed, 0, epoch))."""
    return np.random.Generator(np.random.PCG64([int(seed) % 2**64, 1, int(position)]))


def sample_augmentation(
    rng: np.random.Generator, min_sizes: Sequence[int], max_size: int, hflip_prob: float
) -> Augmentation:
    """Draw a training augmentation: one size of ``min_sizes``, a flip with ``hflip_prob``.

    Always draws the same two numbers, so the stream does not depend on the settings' values.
    """
    size = int(min_sizes[int(rng.integers(len(min_sizes)))])
    flip = bool(rng.random() < hflip_prob)
    return Augmentation(size, int(max_size), flip)


def apply_augmentation(
    image: Tensor, instances: Instances | None, aug: Augmentation, flip_index: Sequence[int] | None = None
) -> tuple[Tensor, Instances | None]:
    """Resize (and flip) a (3, H, W) float image and its instances; returns the new pair."""
    image = resize_image(image, aug.min_size, aug.max_size)
    if aug.hflip:
        image = image.flip(-1)
    if instances is not None:
        instances = transform_instances(instances, (int(image.shape[-2]), int(image.shape[-1])), aug.hflip, flip_index)
    return image, instances


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
