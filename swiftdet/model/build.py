"""Build a detector from its config: plain functions, one branch per architecture."""
from __future__ import annotations

from torch import nn

from swiftdet.config.schema import ModelConfig


def build_model(cfg: ModelConfig, *, size_divisibility: int = 32) -> nn.Module:
    """The detector described by ``cfg`` (weights not loaded; see swiftdet.weights), padding its
    batches to multiples of ``size_divisibility`` (a run's ``input.size_divisibility``)."""
    if cfg.arch == "rcnn":
        from swiftdet.model.rcnn import build_rcnn

        return build_rcnn(cfg, size_divisibility)
    if cfg.arch == "retinanet":
        from swiftdet.model.retinanet import build_retinanet

        return build_retinanet(cfg, size_divisibility)
    if cfg.arch == "fcos":
        from swiftdet.model.fcos import build_fcos

        return build_fcos(cfg, size_divisibility)
    raise ValueError(f"unknown model.arch {cfg.arch!r}")
