"""Keypoint R-CNN, ResNet-50-FPN, 1x schedule (torchvision's keypointrcnn_resnet50_fpn; COCO persons)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import keypoint_rcnn_fpn


def config() -> Config:
    return keypoint_rcnn_fpn(1)
