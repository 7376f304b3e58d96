"""detectron2's RetinaNet R50-FPN 1x (configs/COCO-*/retinanet_R_50_FPN_1x.yaml), in detectron2's conventions: takes its
model-zoo checkpoint after `swiftdet convert detectron2`."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_retinanet


def config() -> Config:
    return d2_retinanet()
