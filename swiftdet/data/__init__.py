"""Datasets (packed arrays), COCO loading and validation, transforms, samplers and loaders."""
from swiftdet.data.coco import load_coco, load_dataset
from swiftdet.data.dataset import DatasetMeta, DetectionDataset, ImageRecord, LoadSummary

__all__ = [
    "DatasetMeta",
    "DetectionDataset",
    "ImageRecord",
    "LoadSummary",
    "load_coco",
    "load_dataset",
]
