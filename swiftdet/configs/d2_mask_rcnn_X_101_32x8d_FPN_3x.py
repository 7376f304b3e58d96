"""detectron2's Mask R-CNN X101-32x8d-FPN 3x (configs/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml):
ResNeXt with the stride in the 3x3 conv and torchvision's pixel std (in BGR order)."""
from swiftdet.config.schema import Config
from swiftdet.configs._detectron2 import X101_PIXEL_STD, d2_rcnn_fpn


def config() -> Config:
    cfg = d2_rcnn_fpn(mask=True, epochs_x=3)
    b = cfg.model.backbone
    b.depth, b.groups, b.width_per_group, b.style = 101, 32, 8, "torchvision"
    cfg.model.pixel_std = X101_PIXEL_STD
    return cfg
