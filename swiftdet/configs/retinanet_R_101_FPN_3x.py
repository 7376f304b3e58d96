"""RetinaNet, ResNet-101-FPN, 3x schedule with multi-scale training."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import schedule
from swiftdet.configs._dense import retinanet_fpn


def config() -> Config:
    return schedule(retinanet_fpn(depth=101), 3)
