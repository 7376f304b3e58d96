"""Typed containers for what flows through swiftdet: boxes, masks, keypoints, instances, batches."""
from swiftdet.structures.boxes import Boxes, pairwise_iou
from swiftdet.structures.image_list import ImageList
from swiftdet.structures.instances import Instances
from swiftdet.structures.keypoints import Keypoints, flip_indices
from swiftdet.structures.masks import BitMasks, CroppedMasks, PolygonMasks, polygons_to_bitmask, rle_to_bitmask

__all__ = [
    "BitMasks",
    "Boxes",
    "CroppedMasks",
    "ImageList",
    "Instances",
    "Keypoints",
    "PolygonMasks",
    "flip_indices",
    "pairwise_iou",
    "polygons_to_bitmask",
    "rle_to_bitmask",
]
