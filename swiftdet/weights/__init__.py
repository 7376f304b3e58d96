"""Weights: checkpoints in and out, downloads with a cache and checksums, converters from torchvision."""
from swiftdet.weights.checkpoint import (
    CHECKPOINT_FORMAT,
    LoadReport,
    build_model_with_weights,
    extract_state_dict,
    is_checkpoint,
    load_backbone_imagenet,
    load_checkpoint,
    load_initial_weights,
    make_checkpoint,
    match_state_dict,
    read_checkpoint,
    read_weights_file,
)
from swiftdet.weights.download import cached_path, default_cache_dir

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadReport",
    "build_model_with_weights",
    "cached_path",
    "default_cache_dir",
    "extract_state_dict",
    "is_checkpoint",
    "load_backbone_imagenet",
    "load_checkpoint",
    "load_initial_weights",
    "make_checkpoint",
    "match_state_dict",
    "read_checkpoint",
    "read_weights_file",
]
