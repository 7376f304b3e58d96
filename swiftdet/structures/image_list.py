"""A batch of images of different sizes, padded into one tensor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["ImageList"]


@dataclass
class ImageList:
    """Images padded to a common size.

    Attributes:
        tensor: (B, C, H, W), H and W multiples of the size divisibility; padding at the bottom/right.
        image_sizes: B (height, width) of each image inside ``tensor`` (after resizing, before padding).
        original_sizes: B (height, width) of each image as it was given (before resizing); results
            are mapped back to these sizes.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> "ImageList":
        return ImageList(self.tensor.to(device), self.image_sizes, self.original_sizes)

    @staticmethod
    def from_tensors(
        tensors: Sequence[Tensor],
        size_divisibility: int = 32,
        pad_value: float = 0.0,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> "ImageList":
        """Pad (C, H_i, W_i) tensors into one (B, C, H, W) batch.

        H and W are the largest height/width rounded up to ``size_divisibility`` (so every FPN
        level has an integer size).
        """
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in sizes)
        max_w = max(s[1] for s in sizes)
        d = max(int(size_divisibility), 1)
        max_h = (max_h + d - 1) // d * d
        max_w = (max_w + d - 1) // d * d
        first = tensors[0]
        batch = first.new_full((len(tensors), first.shape[0], max_h, max_w), pad_value)
        for img, pad in zip(tensors, batch):
            pad[:, : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batch, sizes, list(original_sizes) if original_sizes is not None else list(sizes))
