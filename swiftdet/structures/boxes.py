"""Axis-aligned boxes in absolute pixel coordinates, (x0, y0, x1, y1)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["Boxes", "pairwise_iou"]


class Boxes:
    """A set of N boxes.

    Attributes:
        tensor: (N, 4) float tensor of x0, y0, x1, y1 in pixels; x1 >= x0 is not enforced
            (degenerate boxes are found with :meth:`nonempty`).
    """

    def __init__(self, tensor: Tensor | Sequence[Sequence[float]]):
        if not isinstance(tensor, Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
        if tensor.numel() == 0:
            tensor = tensor.reshape(0, 4).to(dtype=torch.float32 if not tensor.is_floating_point() else tensor.dtype)
        if tensor.dim() != 2 or tensor.shape[-1] != 4:
            raise ValueError(f"Boxes expects an (N, 4) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    @classmethod
    def from_xywh(cls, xywh: Tensor) -> "Boxes":
        """From (N, 4) x, y, width, height (COCO's convention)."""
        xywh = torch.as_tensor(xywh, dtype=torch.float32).reshape(-1, 4)
        return cls(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))

    def to_xywh(self) -> Tensor:
        """(N, 4) x, y, width, height."""
        t = self.tensor
        return torch.cat([t[:, :2], t[:, 2:] - t[:, :2]], dim=1)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> "Boxes":
        if isinstance(index, int):
            return Boxes(self.tensor[index].view(1, -1))
        return Boxes(self.tensor[index])

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device: torch.device | str) -> "Boxes":
        return Boxes(self.tensor.to(device))

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def area(self) -> Tensor:
        """(N,) area; negative extents count as zero."""
        t = self.tensor
        return (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)

    def centers(self) -> Tensor:
        """(N, 2) box centres."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def clip(self, image_size: tuple[int, int]) -> "Boxes":
        """Boxes clipped to an image of (height, width)."""
        h, w = image_size
        t = self.tensor
        x = t[:, 0::2].clamp(min=0, max=w)
        y = t[:, 1::2].clamp(min=0, max=h)
        return Boxes(torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1))

    def nonempty(self, threshold: float = 0.0) -> Tensor:
        """(N,) bool: width and height both greater than ``threshold``."""
        t = self.tensor
        return ((t[:, 2] - t[:, 0]) > threshold) & ((t[:, 3] - t[:, 1]) > threshold)

    def inside(self, image_size: tuple[int, int], tolerance: float = 0.0) -> Tensor:
        """(N,) bool: the box lies within the image (with ``tolerance`` pixels of slack)."""
        h, w = image_size
        t = self.tensor
        return (t[:, 0] >= -tolerance) & (t[:, 1] >= -tolerance) & (t[:, 2] <= w + tolerance) & (t[:, 3] <= h + tolerance)

    def scale(self, scale_x: float, scale_y: float) -> "Boxes":
        """Boxes of an image resized by (scale_x, scale_y)."""
        factors = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=self.tensor.dtype, device=self.device)
        return Boxes(self.tensor * factors)

    def hflip(self, width: int) -> "Boxes":
        """Boxes of the image mirrored left-right, for an image ``width`` pixels wide."""
        t = self.tensor
        return Boxes(torch.stack([width - t[:, 2], t[:, 1], width - t[:, 0], t[:, 3]], dim=1))

    @staticmethod
    def cat(boxes_list: Sequence["Boxes"]) -> "Boxes":
        if len(boxes_list) == 0:
            return Boxes(torch.zeros(0, 4))
        return Boxes(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> Tensor:
    """(N, M) intersection over union between every pair of boxes."""
    return box_iou(boxes1.tensor, boxes2.tensor)

