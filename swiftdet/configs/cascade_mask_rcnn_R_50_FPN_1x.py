"""Cascade Mask R-CNN, ResNet-50-FPN, 1x schedule: three class-agnostic box stages trained at IoU
0.5, 0.6, 0.7 (detectron2's Misc/cascade_mask_rcnn_R_50_FPN_1x), the mask head on the final boxes."""
from swiftdet.config.schema import Config
from swiftdet.configs._base import rcnn_fpn, schedule


def cascade(cfg: Config) -> Config:
    """Turn an R-CNN FPN config into Cascade R-CNN with the paper's three stages."""
    cfg.model.cascade.num_stages = 3
    cfg.model.cascade.ious = (0.5, 0.6, 0.7)
    cfg.model.cascade.box_reg_weights = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
    cfg.model.box_head.cls_agnostic_bbox_reg = True
    return cfg


def config() -> Config:
    return cascade(schedule(rcnn_fpn(mask=True), 1))
