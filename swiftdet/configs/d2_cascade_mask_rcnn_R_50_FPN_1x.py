"""detectron2's Cascade Mask R-CNN R50-FPN 1x (configs/Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml): three
class-agnostic box stages at IoU 0.5 / 0.6 / 0.7, in detectron2's conventions."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn(mask=True)
    cfg.model.cascade.num_stages = 3
    cfg.model.box_head.cls_agnostic_bbox_reg = True
    cfg.model.rpn.post_nms_topk_train = 2000
    return cfg
