"""Cascade R-CNN, ResNet-50-FPN, 1x schedule (boxes only; detectron2's Misc/cascade_mask_rcnn_R_50_FPN_1x
without the mask head)."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule
from swiftdet.configs.cascade_mask_rcnn_R_50_FPN_1x import cascade


def config() -> Config:
    return cascade(schedule(rcnn_fpn(), 1))
