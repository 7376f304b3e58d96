"""Faster R-CNN, MobileNetV3-Large FPN (torchvision's fasterrcnn_mobilenet_v3_large_fpn): images at
800 pixels on the short side (at most 1333 on the long side).

Start from ImageNet with ``model.backbone.weights=mobilenet_v3_large-8738ca79.pth`` (torchvision's
classification file), or convert torchvision's COCO file with ``swiftdet convert``."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_mobilenet_v3_fpn


def config() -> Config:
    return rcnn_mobilenet_v3_fpn(min_size=800, max_size=1333)
