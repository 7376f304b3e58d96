"""FCOS, ResNet-50-FPN, 1x schedule (torchvision's fcos_resnet50_fpn)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import schedule
from swiftdet.configs._dense import fcos_fpn


def config() -> Config:
    return schedule(fcos_fpn(), 1)
