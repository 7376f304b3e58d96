"""detectron2's Faster R-CNN R50-FPN 1x (configs/COCO-*/faster_rcnn_R_50_FPN_1x.yaml), in detectron2's conventions: takes its
model-zoo checkpoint after `swiftdet convert detectron2`."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    return d2_rcnn_fpn()
