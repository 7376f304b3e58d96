"""torchvision's Faster R-CNN v2 (fasterrcnn_resnet50_fpn_v2): BN backbone and FPN, 4conv-1fc box head."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn_v2, schedule


def config() -> Config:
    return schedule(rcnn_fpn_v2(), 3)
