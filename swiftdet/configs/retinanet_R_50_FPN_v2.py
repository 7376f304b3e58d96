"""torchvision's RetinaNet v2 (retinanet_resnet50_fpn_v2): BN backbone, P6/P7 from C5, GN heads, GIoU loss."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import schedule
from swiftdet.configs._dense import retinanet_fpn_v2


def config() -> Config:
    return schedule(retinanet_fpn_v2(), 3)
