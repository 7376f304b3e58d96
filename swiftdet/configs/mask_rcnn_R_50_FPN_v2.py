"""torchvision's Mask R-CNN v2 (maskrcnn_resnet50_fpn_v2)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn_v2, schedule


def config() -> Config:
    return schedule(rcnn_fpn_v2(mask=True), 3)
