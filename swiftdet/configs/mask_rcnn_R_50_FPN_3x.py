"""Mask R-CNN, ResNet-50-FPN, 3x schedule."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule


def config() -> Config:
    return schedule(rcnn_fpn(mask=True), 3)
