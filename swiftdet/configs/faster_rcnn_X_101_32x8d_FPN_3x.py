"""Faster R-CNN, ResNeXt-101 32x8d FPN, 3x schedule."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule


def config() -> Config:
    cfg = schedule(rcnn_fpn(depth=101), 3)
    cfg.model.backbone.groups = 32
    cfg.model.backbone.width_per_group = 8
    return cfg
