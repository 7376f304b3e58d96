"""Datasets (packed arrays), COCO loading and validation, transforms, samplers and loaders.

How to use a COCO-format dataset: :mod:`swiftdet.data.coco`; other formats (VOC, LVIS, Cityscapes):
:mod:`swiftdet.data.sources`; a custom dataset built from Python
records: :mod:`swiftdet.data.records`; how a dataset is stored: :mod:`swiftdet.data.storage`; what is
checked at load time and what training drops: :mod:`swiftdet.data.validation`.
"""
from swiftdet.data.coco import load_coco
from swiftdet.data.loader import Sample, TestLoader, TrainLoader, build_test_loader, build_train_loader
from swiftdet.data.meta import DatasetMeta
from swiftdet.data.samplers import InferenceSampler, TrainingSampler
from swiftdet.data.sources import evaluation_ground_truth, load_dataset
from swiftdet.data.storage import DetectionDataset, ImageRecord
from swiftdet.data.transforms import read_image, resize_image, resized_size
from swiftdet.data.validation import LoadSummary

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
    "evaluation_ground_truth",
    "load_coco",
    "load_dataset",
    "read_image",
    "resize_image",
    "resized_size",
]
