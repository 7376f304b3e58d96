"""detectron2's Mask R-CNN R50-C4 1x (configs/COCO-*/mask_rcnn_R_50_C4_1x.yaml), in detectron2's conventions: takes its
model-zoo checkpoint after `swiftdet convert detectron2`."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_single


def config() -> Config:
    return d2_rcnn_single(c4=True, mask=True)
