"""Mask R-CNN, ResNet-50-C4 (res5 as the RoI head, caffe-style backbone), 1x schedule."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_c4, schedule


def config() -> Config:
    return schedule(rcnn_c4(mask=True), 1)
