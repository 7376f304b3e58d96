"""Datasets (packed arrays), COCO loading and validation, transforms, samplers and loaders.

How to use a COCO-format or a custom dataset: see the docstring of :mod:`swiftdet.data.dataset`.
"""
from swiftdet.data.coco import load_coco, load_dataset
from swiftdet.data.dataset import DatasetMeta, DetectionDataset, ImageRecord, LoadSummary
from swiftdet.data.loader import Sample, TestLoader, TrainLoader, build_test_loader, build_train_loader
from swiftdet.data.samplers import InferenceSampler, TrainingSampler
from swiftdet.data.transforms import read_image, resize_image, resized_size

__all__ = [
    "DatasetMeta",
    "DetectionDataset",
    "ImageRecord",
    "InferenceSampler",
    "LoadSummary",
    "Sample",
    "TestLoader",
    "TrainLoader",
    "TrainingSampler",
    "build_test_loader",
    "build_train_loader",
    "load_coco",
    "load_dataset",
    "read_image",
    "resize_image",
    "resized_size",
]
