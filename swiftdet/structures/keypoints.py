"""Keypoints of N instances, and the left/right swap a horizontal flip needs."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Keypoints", "flip_indices"]


def flip_indices(names: Sequence[str], flip_map: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Index permutation that swaps left/right keypoints after a horizontal flip.

    With no explicit ``flip_map``, names are paired by the conventions 'left_x'/'right_x' (COCO),
    'x_left'/'x_right' and 'left'/'right'.
    """
    names = list(names)
    pairs = dict(flip_map)
    pairs.update({b: a for a, b in flip_map})
    if not flip_map:
        for n in names:
            for a, b in (("left", "right"), ("right", "left")):
                if n == a:
                    pairs[n] = b
                elif n.startswith(a + "_"):
                    pairs[n] = b + n[len(a):]
                elif n.endswith("_" + a):
                    pairs[n] = n[: -len(a)] + b
    for a, b in flip_map:
        if a not in names or b not in names:
            raise ValueError(f"keypoint flip map pair ({a!r}, {b!r}) names a keypoint not in {names}")
    return [names.index(pairs[n]) if pairs.get(n) in names else i for i, n in enumerate(names)]


class Keypoints:
    """Keypoints of N instances.

    Attributes:
        tensor: (N, K, 3) float tensor of x, y, visibility (COCO: 0 absent, 1 occluded,
            2 visible) in absolute pixels; for predictions the third value is a score.
    """

    def __init__(self, tensor: Tensor):
        tensor = torch.as_tensor(tensor, dtype=torch.float32)
        if tensor.dim() != 3 or tensor.shape[-1] != 3:
            raise ValueError(f"Keypoints expects (N, K, 3), got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> "Keypoints":
        if isinstance(index, int):
            return Keypoints(self.tensor[index][None])
        return Keypoints(self.tensor[index])

    def __repr__(self) -> str:
        return f"Keypoints(num_instances={len(self)}, num_keypoints={self.tensor.shape[1]})"

    def to(self, device: torch.device | str) -> "Keypoints":
        return Keypoints(self.tensor.to(device))

    def scale(self, scale_x: float, scale_y: float) -> "Keypoints":
        t = self.tensor.clone()
        t[..., 0] *= scale_x
        t[..., 1] *= scale_y
        return Keypoints(t)

    def hflip(self, width: int, flip_index: Sequence[int]) -> "Keypoints":
        """Mirror x and swap left/right keypoints (``flip_index`` from :func:`flip_indices`)."""
        t = self.tensor[:, list(flip_index)].clone()
        t[..., 0] = width - t[..., 0]
        return Keypoints(t)

    @staticmethod
    def cat(kps: Sequence["Keypoints"]) -> "Keypoints":
        return Keypoints(torch.cat([k.tensor for k in kps], dim=0))
