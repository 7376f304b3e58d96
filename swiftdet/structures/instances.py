"""Per-image instances: ground-truth targets or predictions."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence, Union

import torch
from torch import Tensor

from swiftdet.structures.boxes import Boxes
from swiftdet.structures.keypoints import Keypoints
from swiftdet.structures.masks import BitMasks, CroppedMasks, PolygonMasks

__all__ = ["Instances", "Masks"]

Masks = Union[PolygonMasks, BitMasks, CroppedMasks]


@dataclass
class Instances:
    """N instances in one image of size ``image_size`` = (height, width).

    Every field that is set has N entries; the unset ones are None.

    Attributes:
        image_size: (height, width) of the image the coordinates refer to.
        boxes: (N, 4) xyxy boxes.
        labels: (N,) int64 contiguous class indices in [0, num_classes).
        scores: (N,) float confidence (predictions only).
        masks: instance masks in the image: :class:`PolygonMasks` (targets from polygons),
            :class:`BitMasks` (targets from RLE) or :class:`CroppedMasks` (predictions after
            ``postprocess``, pasted at the image size but stored inside each box).
        keypoints: (N, K, 3) keypoints.
        mask_probs: (N, M, M) float mask probabilities in the detection's box, before pasting
            (a mask head's raw output; ``postprocess`` turns them into ``masks``).
    """

    image_size: tuple[int, int]
    boxes: Boxes
    labels: Tensor | None = None
    scores: Tensor | None = None
    masks: Masks | None = None
    keypoints: Keypoints | None = None
    mask_probs: Tensor | None = None

    def __post_init__(self) -> None:
        if self.masks is not None and not isinstance(self.masks, (PolygonMasks, BitMasks, CroppedMasks)):
            # One type per meaning: a mask head's probabilities go in mask_probs, pasted masks in BitMasks.
            raise TypeError(
                f"Instances.masks must be PolygonMasks, BitMasks or CroppedMasks, got {type(self.masks).__name__}; put (N, M, M) "
                "mask probabilities in mask_probs and wrap (N, H, W) bool masks in BitMasks."
            )
        n = len(self.boxes)
        for f in fields(self):
            if f.name in ("image_size", "boxes"):
                continue
            v = getattr(self, f.name)
            if v is not None and len(v) != n:
                raise ValueError(f"Instances.{f.name} has {len(v)} entries but there are {n} boxes")

    def __len__(self) -> int:
        return len(self.boxes)

    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "image_size"}

    def __getitem__(self, index: int | slice | Tensor) -> "Instances":
        """Select instances; ``index`` is an int, a slice, a bool mask or an index tensor."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(index, None)
        out = {}
        for name, v in self._fields().items():
            if v is None:
                out[name] = None
            elif isinstance(v, PolygonMasks) and isinstance(index, Tensor):
                out[name] = v[index.cpu()]
            else:
                out[name] = v[index]
        return Instances(self.image_size, **out)

    def to(self, device: torch.device | str) -> "Instances":
        return Instances(self.image_size, **{k: (v.to(device) if v is not None else None) for k, v in self._fields().items()})

    def with_fields(self, **changes) -> "Instances":
        """A copy with some fields replaced."""
        return replace(self, **changes)

    @staticmethod
    def empty(image_size: tuple[int, int], device: torch.device | str = "cpu") -> "Instances":
        return Instances(
            image_size,
            boxes=Boxes(torch.zeros(0, 4, device=device)),
            labels=torch.zeros(0, dtype=torch.int64, device=device),
        )

    @staticmethod
    def cat(items: Sequence["Instances"]) -> "Instances":
        """Concatenate instances of the same image."""
        assert len(items) > 0 and all(i.image_size == items[0].image_size for i in items)
        out = {}
        for name in items[0]._fields():
            vals = [getattr(i, name) for i in items]
            if all(v is None for v in vals):
                out[name] = None
            elif isinstance(vals[0], Tensor):
                out[name] = torch.cat(vals)
            else:
                out[name] = type(vals[0]).cat(vals)
        return Instances(items[0].image_size, **out)
