"""RetinaNet, ResNet-50-FPN, 1x schedule (torchvision's retinanet_resnet50_fpn)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import schedule
from swiftdet.configs._dense import retinanet_fpn


def config() -> Config:
    return schedule(retinanet_fpn(), 1)
