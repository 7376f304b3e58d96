"""detectron2's Faster R-CNN R50-C4 1x (configs/COCO-*/faster_rcnn_R_50_C4_1x.yaml), in detectron2's conventions: takes its
model-zoo checkpoint after `swiftdet convert detectron2`."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_single


def config() -> Config:
    return d2_rcnn_single(c4=True)
