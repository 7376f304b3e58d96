"""Faster R-CNN, MobileNetV3-Large FPN at 320 pixels (torchvision's fasterrcnn_mobilenet_v3_large_320_fpn):
images at 320 on the short side (at most 640), and 150 RPN proposals kept before and after NMS at
test time (per level before, per image after) for speed.

Start from ImageNet with ``model.backbone.weights=mobilenet_v3_large-8738ca79.pth`` (torchvision's
classification file), or convert torchvision's COCO file with ``swiftdet convert``."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_mobilenet_v3_fpn


def config() -> Config:
    cfg = rcnn_mobilenet_v3_fpn(min_size=320, max_size=640)
    cfg.model.rpn.pre_nms_topk_test = 150
    cfg.model.rpn.post_nms_topk_test = 150
    return cfg
