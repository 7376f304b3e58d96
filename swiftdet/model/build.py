"""Build a detector from its config: plain functions, one branch per architecture."""
from __future__ import annotations

from torch import nn

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError


def build_model(cfg: ModelConfig, *, size_divisibility: int = 32) -> nn.Module:
    """The detector described by ``cfg`` (weights not loaded; see swiftdet.weights), padding its
    batches to multiples of ``size_divisibility`` (a run's ``input.size_divisibility``)."""
    if cfg.arch == "rpn":  # proposals have no classes: num_classes only checks training labels (0: any)
        from swiftdet.model.proposal_network import build_proposal_network

        return build_proposal_network(cfg, size_divisibility)
    if cfg.num_classes == 0:
        # 0 means "from the training data": training fills it in before building; anything else
        # (eval, predict, convert with a bare state_dict) has no data to take it from.
        raise ConfigError(
            "model.num_classes is 0 (take it from the training data), but this model is built without training "
            "data: give model.num_classes=N, or a swiftdet checkpoint (which stores it)."
        )
    if cfg.arch == "rcnn":
        from swiftdet.model.rcnn import build_rcnn

        return build_rcnn(cfg, size_divisibility)
    if cfg.arch == "retinanet":
        from swiftdet.model.retinanet import build_retinanet

        return build_retinanet(cfg, size_divisibility)
    if cfg.arch == "fcos":
        from swiftdet.model.fcos import build_fcos

        return build_fcos(cfg, size_divisibility)
    if cfg.arch == "ssd":
        from swiftdet.model.ssd import build_ssd

        return build_ssd(cfg, size_divisibility)
    raise ValueError(f"unknown model.arch {cfg.arch!r}")
