"""Anchor boxes on a grid of feature-map locations, in torchvision's or detectron2's convention.

Per level the anchors are location-major (row by row), then the cell anchors of one location.

- 'torchvision' (its ``AnchorGenerator``): cell anchors aspect-ratio major (ratios outer, sizes
  inner), rounded to integers, shifted by (x * stride_w, y * stride_h) with the stride equal to the
  padded image size divided by the feature size (integer division).
- 'detectron2' (its ``DefaultAnchorGenerator``): cell anchors size major (sizes outer, ratios
  inner), not rounded, shifted by ((x + offset) * stride, (y + offset) * stride) with the stride the
  feature's nominal stride (4 for p2, ...), whatever the image size.

A checkpoint's RPN / RetinaNet head predicts its outputs in one of these orders, so the convention
must be the one it was trained with.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from swiftdet.model.tracing import is_tracing

__all__ = ["AnchorGenerator"]


class AnchorGenerator(nn.Module):
    """Anchors for several feature levels.

    Args:
        sizes: one tuple of sizes (in input pixels) per level.
        aspect_ratios: one tuple of height/width ratios per level, or one tuple shared by all.
        convention: "torchvision" or "detectron2" (module docstring).
        strides: the nominal stride of each level (needed for "detectron2").
        offset: detectron2's anchor offset, in units of the stride.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]],
        *,
        convention: str = "torchvision",
        strides: Sequence[int] | None = None,
        offset: float = 0.0,
    ):
        super().__init__()
        if convention not in ("torchvision", "detectron2"):
            raise ValueError(f"AnchorGenerator: unknown convention {convention!r}")
        if convention == "detectron2" and (strides is None or len(strides) != len(sizes)):
            raise ValueError("AnchorGenerator: the detectron2 convention needs one stride per level")
        if convention == "torchvision" and offset != 0.0:
            raise ValueError("AnchorGenerator: torchvision's anchors have no offset")
        self.convention = convention
        self.strides = [int(s) for s in strides] if strides is not None else None
        self.offset = float(offset)
        self.sizes = [tuple(float(s) for s in level) for level in sizes]
        if len(aspect_ratios) > 0 and not isinstance(aspect_ratios[0], (tuple, list)):
            aspect_ratios = [tuple(aspect_ratios)] * len(self.sizes)
        if len(aspect_ratios) != len(self.sizes):
            raise ValueError(f"AnchorGenerator: {len(self.sizes)} levels of sizes but {len(aspect_ratios)} of aspect ratios")
        self.aspect_ratios = [tuple(float(a) for a in level) for level in aspect_ratios]
        # Anchors depend only on the grid and stride, so they are computed once per padded size.
        # Bounded: multi-scale training sees a few dozen padded sizes at most.
        self._cache: dict[tuple, Tensor] = {}
        self._max_cache_entries = 256

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def cell_anchors(self, level: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """(A, 4) zero-centred anchors of ``level`` (rounded to integers in torchvision's convention)."""
        if self.convention == "detectron2":
            # Python floats, as detectron2 computes them, then one rounding to float32.
            cells = []
            for size in self.sizes[level]:
                for ratio in self.aspect_ratios[level]:
                    w = math.sqrt(size * size / ratio)
                    h = ratio * w
                    cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
            return torch.tensor(cells, dtype=torch.float32, device=device).to(dtype)
        scales = torch.as_tensor(self.sizes[level], dtype=dtype, device=device)
        ratios = torch.as_tensor(self.aspect_ratios[level], dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def level_anchors(
        self,
        level: int,
        grid_size: tuple[int, int],
        stride: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """(grid_h * grid_w * A, 4) anchors of one level; cached, so treat as read-only."""
        device = torch.device(device)
        key = (grid_size[0], grid_size[1], stride[0], stride[1], level, device, dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self._place(level, grid_size, stride, dtype, device)
            self._remember(key, anchors)
        return anchors

    def grid_anchors(self, image_shape: tuple[int, int], features: Sequence[Tensor]) -> list[Tensor]:
        """Per level (H_l * W_l * A_l, 4) anchors for a padded batch of size ``image_shape`` = (H, W)."""
        if len(features) != len(self.sizes):
            raise ValueError(f"AnchorGenerator has {len(self.sizes)} levels but got {len(features)} feature maps")
        out = []
        for level, feat in enumerate(features):
            gh, gw = int(feat.shape[-2]), int(feat.shape[-1])
            if self.strides is not None and self.convention == "detectron2":
                stride = (self.strides[level], self.strides[level])
            else:
                stride = (image_shape[0] // gh, image_shape[1] // gw)
            out.append(self.level_anchors(level, (gh, gw), stride, feat.dtype, feat.device))
        return out

    def forward(self, images: Tensor, features: Sequence[Tensor]) -> Tensor:
        """(A_total, 4) anchors over all levels of the (B, C, H, W) batch ``images``, the same for
        every image of the batch."""
        if is_tracing():
            return torch.cat([self._traced_level_anchors(level, images, f) for level, f in enumerate(features)])
        image_shape = tuple(images.shape[-2:])
        key = ("all", image_shape, tuple(tuple(f.shape[-2:]) for f in features), features[0].device, features[0].dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            levels = self.grid_anchors(image_shape, features)
            anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
            self._remember(key, anchors)
        return anchors

    def _traced_level_anchors(self, level: int, images: Tensor, feature: Tensor) -> Tensor:
        """:meth:`level_anchors` with the grid and stride read from the shapes at run time (a
        trace of the cached path would replay the traced input's anchors for every size)."""
        image_shape, grid = torch._shape_as_tensor(images)[-2:], torch._shape_as_tensor(feature)[-2:]
        if self.convention == "detectron2":
            return self._place(level, grid, (self.strides[level],) * 2, feature.dtype, feature.device)
        stride = (image_shape // grid).to(torch.int32)
        return _shifted(self.cell_anchors(level, feature.dtype, feature.device), grid, stride)

    def _place(self, level: int, grid_size, stride, dtype: torch.dtype, device) -> Tensor:
        """The cell anchors of ``level`` at every location of a ``grid_size`` grid."""
        base = self.cell_anchors(level, dtype, device)
        if self.convention == "torchvision":
            return _shifted(base, grid_size, stride)
        # detectron2: float32 shifts (i + offset) * stride, exact for any realistic grid.
        shifts_x = torch.arange(grid_size[1], dtype=torch.float32, device=device) * stride[1] + self.offset * stride[1]
        shifts_y = torch.arange(grid_size[0], dtype=torch.float32, device=device) * stride[0] + self.offset * stride[0]
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(dtype)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)

    def _remember(self, key: tuple, anchors: Tensor) -> None:
        if len(self._cache) >= self._max_cache_entries:
            self._cache.clear()
        self._cache[key] = anchors


def _shifted(base: Tensor, grid_size, stride) -> Tensor:
    """(grid_h * grid_w * A, 4): the (A, 4) ``base`` anchors at every grid location, row by row.
    ``grid_size`` and ``stride`` are (h, w) ints, or int tensors when traced."""
    shifts_x = torch.arange(grid_size[1], dtype=torch.int32, device=base.device) * stride[1]
    shifts_y = torch.arange(grid_size[0], dtype=torch.int32, device=base.device) * stride[0]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)
