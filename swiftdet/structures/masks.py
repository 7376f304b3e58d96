"""Instance masks as polygons (what COCO stores), as bitmaps (what RLE decodes to), or as bitmaps
kept inside each instance's box (what models predict, :class:`CroppedMasks`).

Polygons stay polygons through resizing and flipping, which is cheap and exact; they are rasterised
only where a fixed-size target is needed (the mask head's MxM crops, via :meth:`crop_and_resize`),
so training never builds a full-image bitmap per instance unless the dataset stores RLE.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor
from torchvision.ops import roi_align

__all__ = ["PolygonMasks", "BitMasks", "CroppedMasks", "polygons_to_bitmask", "rle_to_bitmask"]


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise one instance's polygons (each a flat x0,y0,x1,y1,... array) to an (H, W) bool array."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rle_to_bitmask(rle: dict, height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed or uncompressed counts) to an (H, W) bool array."""
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, height, width)
    return mask_utils.decode(rle).astype(bool)


class PolygonMasks:
    """N instance masks, each a list of polygons.

    Attributes:
        polygons: list of N lists; each inner list holds float64 arrays of shape (2*P,) with
            x0, y0, x1, y1, ... in absolute pixels.
    """

    def __init__(self, polygons: Sequence[Sequence[np.ndarray | Sequence[float]]]):
        self.polygons: list[list[np.ndarray]] = [
            [np.asarray(p, dtype=np.float64).reshape(-1) for p in inst] for inst in polygons
        ]

    def __len__(self) -> int:
        return len(self.polygons)

    def __getitem__(self, index: int | slice | Tensor | np.ndarray | Sequence[int]) -> "PolygonMasks":
        if isinstance(index, int):
            return PolygonMasks([self.polygons[index]])
        if isinstance(index, slice):
            return PolygonMasks(self.polygons[index])
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return PolygonMasks([self.polygons[i] for i in index.tolist()])

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)})"

    def to(self, device: torch.device | str) -> "PolygonMasks":
        return self  # polygons live on the host; rasterised crops are moved by the caller

    def scale(self, scale_x: float, scale_y: float) -> "PolygonMasks":
        out = []
        for inst in self.polygons:
            scaled = []
            for p in inst:
                q = p.copy()
                q[0::2] *= scale_x
                q[1::2] *= scale_y
                scaled.append(q)
            out.append(scaled)
        return PolygonMasks(out)

    def hflip(self, width: int) -> "PolygonMasks":
        out = []
        for inst in self.polygons:
            flipped = []
            for p in inst:
                q = p.copy()
                q[0::2] = width - q[0::2]
                flipped.append(q)
            out.append(flipped)
        return PolygonMasks(out)

    def bounding_boxes(self) -> Tensor:
        """(N, 4) xyxy tight boxes of the polygon vertices."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, inst in enumerate(self.polygons):
            if not inst:
                continue
            xy = np.concatenate(inst).reshape(-1, 2)
            boxes[i] = torch.tensor([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
        return boxes

    def area(self) -> Tensor:
        """(N,) polygon area by the shoelace formula (overlapping parts of one instance counted twice)."""
        areas = []
        for inst in self.polygons:
            total = 0.0
            for p in inst:
                x, y = p[0::2], p[1::2]
                total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
            areas.append(total)
        return torch.tensor(areas, dtype=torch.float32)

    def to_bitmasks(self, height: int, width: int) -> "BitMasks":
        if len(self) == 0:
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool))
        arr = np.stack([polygons_to_bitmask(inst, height, width) for inst in self.polygons])
        return BitMasks(torch.from_numpy(arr))

    def crop_and_resize(self, boxes: Tensor, mask_size: int, indices: Tensor | None = None) -> Tensor:
        """Rasterise each polygon inside its box at (mask_size, mask_size).

        Args:
            boxes: (N, 4) xyxy, one per instance (e.g. the proposal matched to it).
            indices: optional (N,) int64: crop instance ``indices[i]`` in ``boxes[i]`` (one instance
                may be cropped in several boxes) instead of instance i.
        Returns:
            (N, mask_size, mask_size) float tensor of 0/1 on ``boxes``' device.
        """
        if indices is not None:
            return self[indices.cpu()].crop_and_resize(boxes, mask_size)
        assert len(boxes) == len(self), (len(boxes), len(self))
        device = boxes.device
        boxes_np = boxes.detach().to("cpu", torch.float64).numpy()
        out = np.zeros((len(self), mask_size, mask_size), dtype=np.float32)
        for i, (inst, box) in enumerate(zip(self.polygons, boxes_np)):
            w = max(box[2] - box[0], 0.1)
            h = max(box[3] - box[1], 0.1)
            local = []
            for p in inst:
                q = p.copy()
                q[0::2] = (q[0::2] - box[0]) * (mask_size / w)
                q[1::2] = (q[1::2] - box[1]) * (mask_size / h)
                local.append(q)
            out[i] = polygons_to_bitmask(local, mask_size, mask_size)
        return torch.from_numpy(out).to(device)

    @staticmethod
    def cat(masks_list: Sequence["PolygonMasks"]) -> "PolygonMasks":
        return PolygonMasks([inst for m in masks_list for inst in m.polygons])


class BitMasks:
    """N instance masks as bitmaps.

    Attributes:
        tensor: (N, H, W) bool tensor.
    """

    def __init__(self, tensor: Tensor | np.ndarray):
        tensor = torch.as_tensor(tensor)
        if tensor.dim() != 3:
            raise ValueError(f"BitMasks expects (N, H, W), got shape {tuple(tensor.shape)}")
        self.tensor = tensor.to(torch.bool)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> "BitMasks":
        if isinstance(index, int):
            return BitMasks(self.tensor[index][None])
        return BitMasks(self.tensor[index])

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)}, size={tuple(self.tensor.shape[1:])})"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "BitMasks":
        return BitMasks(self.tensor.to(device))

    def resize(self, height: int, width: int) -> "BitMasks":
        """Nearest-neighbour resize to (height, width)."""
        if len(self) == 0:
            return BitMasks(torch.zeros(0, height, width, dtype=torch.bool, device=self.tensor.device))
        resized = torch.nn.functional.interpolate(self.tensor[:, None].float(), size=(height, width), mode="nearest")
        return BitMasks(resized[:, 0] > 0.5)

    def hflip(self, width: int | None = None) -> "BitMasks":
        return BitMasks(self.tensor.flip(-1))

    def area(self) -> Tensor:
        return self.tensor.flatten(1).sum(1).float()

    def bounding_boxes(self) -> Tensor:
        """(N, 4) xyxy tight boxes; (0,0,0,0) for an empty mask."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32, device=self.tensor.device)
        if len(self) == 0:
            return boxes
        rows = self.tensor.any(dim=2)
        cols = self.tensor.any(dim=1)
        h, w = self.image_size
        ys = torch.arange(h, device=self.tensor.device)
        xs = torch.arange(w, device=self.tensor.device)
        nonempty = rows.any(1)
        big = torch.iinfo(torch.int64).max
        boxes[:, 0] = torch.where(cols, xs, big).min(1).values.float()
        boxes[:, 1] = torch.where(rows, ys, big).min(1).values.float()
        boxes[:, 2] = torch.where(cols, xs, -1).max(1).values.float() + 1
        boxes[:, 3] = torch.where(rows, ys, -1).max(1).values.float() + 1
        boxes[~nonempty] = 0
        return boxes

    def crop_and_resize(self, boxes: Tensor, mask_size: int, indices: Tensor | None = None) -> Tensor:
        """(N, mask_size, mask_size) float crops of mask i (or ``indices[i]``, (N,) int64) inside
        ``boxes[i]`` (bilinear, RoIAlign).

        With ``indices`` each mask that is used is converted to float once, however many boxes crop
        it: the mask loss crops one ground-truth mask in each of its positive proposals, where a copy
        per proposal would cost 4 bytes per image pixel each."""
        if indices is None:
            assert len(boxes) == len(self), (len(boxes), len(self))
            indices = torch.arange(len(boxes), device=self.tensor.device)
        if len(boxes) == 0:
            return torch.zeros(0, mask_size, mask_size, device=boxes.device)
        used, slot = torch.unique(indices.to(self.tensor.device), return_inverse=True)
        rois = torch.cat([slot.to(device=boxes.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
        masks = self.tensor[used].to(device=boxes.device, dtype=torch.float32)[:, None]
        return roi_align(masks, rois, (mask_size, mask_size), 1.0, 0, True)[:, 0]

    @staticmethod
    def cat(masks_list: Sequence["BitMasks"]) -> "BitMasks":
        return BitMasks(torch.cat([m.tensor for m in masks_list], dim=0))


class CroppedMasks:
    """N instance bitmasks in an image of ``image_size``, each kept only inside its own crop.

    A predicted mask is empty outside its (grown) box, so storing the box-sized part is enough;
    on large images this is what keeps memory at the size of the boxes instead of N full
    images (one 8000x8000 image with 50 full-size bool masks is 3.2 GB before any copy).

    Attributes:
        crops: N (h_i, w_i) bool tensors.
        offsets: (N, 2) int64, the (x0, y0) image pixel of each crop's top-left corner.
        image_size: (height, width) of the image; every crop lies inside it.
    """

    def __init__(self, crops: Sequence[Tensor], offsets: Tensor, image_size: tuple[int, int]):
        height, width = int(image_size[0]), int(image_size[1])
        offsets = torch.as_tensor(offsets, dtype=torch.int64).reshape(-1, 2)
        if len(crops) != len(offsets):
            raise ValueError(f"CroppedMasks: {len(crops)} crops but {len(offsets)} offsets")
        self.crops = [torch.as_tensor(c).to(torch.bool) for c in crops]
        for crop, (x0, y0) in zip(self.crops, offsets.tolist()):
            if crop.dim() != 2 or x0 < 0 or y0 < 0 or x0 + crop.shape[1] > width or y0 + crop.shape[0] > height:
                raise ValueError(f"CroppedMasks: a crop of shape {tuple(crop.shape)} at (x0, y0) = ({x0}, {y0}) "
                                 f"does not lie inside the {height}x{width} image")
        self.offsets = offsets
        self.image_size = (height, width)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> "CroppedMasks":
        if isinstance(index, int):
            index = [index]
        elif isinstance(index, slice):
            index = list(range(len(self)))[index]
        else:
            index = torch.as_tensor(index)
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            index = index.tolist()
        return CroppedMasks([self.crops[i] for i in index], self.offsets[index], self.image_size)

    def __repr__(self) -> str:
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"

    def to(self, device: torch.device | str) -> "CroppedMasks":
        return CroppedMasks([c.to(device) for c in self.crops], self.offsets, self.image_size)

    def area(self) -> Tensor:
        """(N,) float foreground pixel counts."""
        return torch.tensor([float(c.sum()) for c in self.crops], dtype=torch.float32)

    def bounding_boxes(self) -> Tensor:
        """(N, 4) xyxy tight boxes, exclusive ends as :meth:`BitMasks.bounding_boxes`; 0 for an empty mask."""
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        for i, (crop, (x0, y0)) in enumerate(zip(self.crops, self.offsets.tolist())):
            rows = crop.any(dim=1).nonzero().flatten()
            if rows.numel() == 0:
                continue
            cols = crop.any(dim=0).nonzero().flatten()
            boxes[i] = torch.tensor([x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1], dtype=torch.float32)
        return boxes

    def to_bitmasks(self) -> BitMasks:
        """The same masks at the full image size: (N, H, W) bool, N * H * W bytes."""
        device = self.crops[0].device if self.crops else "cpu"
        out = torch.zeros((len(self),) + self.image_size, dtype=torch.bool, device=device)
        for i, (crop, (x0, y0)) in enumerate(zip(self.crops, self.offsets.tolist())):
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return BitMasks(out)

    @property
    def tensor(self) -> Tensor:
        """(N, H, W) bool at the full image size (:meth:`to_bitmasks`; costs N * H * W bytes)."""
        return self.to_bitmasks().tensor

    @staticmethod
    def cat(masks_list: Sequence["CroppedMasks"]) -> "CroppedMasks":
        sizes = {m.image_size for m in masks_list}
        if len(sizes) != 1:
            raise ValueError(f"CroppedMasks.cat: the masks belong to images of different sizes {sorted(sizes)}")
        return CroppedMasks([c for m in masks_list for c in m.crops],
                            torch.cat([m.offsets for m in masks_list]), sizes.pop())
