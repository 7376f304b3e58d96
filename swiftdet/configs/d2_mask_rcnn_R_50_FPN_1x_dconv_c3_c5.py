"""detectron2's Mask R-CNN R50-FPN 1x with deformable convs in res3-res5 (configs/Misc/
mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml; deformable conv v1 through torchvision's deform_conv2d)."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn(mask=True)
    cfg.model.backbone.deform_on_per_stage = (False, True, True, True)
    return cfg
