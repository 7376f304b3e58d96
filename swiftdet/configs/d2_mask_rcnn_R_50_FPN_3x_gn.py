"""detectron2's Mask R-CNN R50-FPN 3x with GroupNorm (configs/Misc/mask_rcnn_R_50_FPN_3x_gn.yaml): GN in the
backbone (stride in the 3x3 conv), the FPN, a 4conv-1fc box head and the mask head."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn(mask=True, epochs_x=3)
    m = cfg.model
    m.backbone.norm, m.backbone.style = "GN", "torchvision"
    m.fpn.norm = "GN"
    m.box_head.head, m.box_head.norm = "4conv1fc", "GN"
    m.mask_head.norm = "GN"
    return cfg
