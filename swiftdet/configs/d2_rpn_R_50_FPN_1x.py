"""detectron2's RPN R50-FPN 1x (configs/COCO-Detection/rpn_R_50_FPN_1x.yaml): proposals only, 2000 per
image at test time, evaluated by proposal AR; detectron2's conventions."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn()
    cfg.model.arch = "rpn"
    cfg.model.rpn.post_nms_topk_test = 2000
    cfg.test.best_metric = "box_proposals/AR@1000"
    return cfg
