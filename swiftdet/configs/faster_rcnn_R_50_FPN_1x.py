"""Faster R-CNN, ResNet-50-FPN, 1x schedule."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule


def config() -> Config:
    return schedule(rcnn_fpn(), 1)
