"""Bases of the dense detectors (RetinaNet, FCOS), with torchvision's hyper-parameters."""
from __future__ import annotations

from swiftdet.config.schema import Config
from swiftdet.configs._base import coco_detection

# torchvision's RetinaNet anchors: sizes x * 2**(i/3) for i = 0, 1, 2, truncated to integers
# (32, 40, 50, ...); keeping the truncation makes converted torchvision weights see the same anchors.
TORCHVISION_RETINANET_ANCHOR_SIZES = tuple(
    (float(x), float(int(x * 2 ** (1.0 / 3))), float(int(x * 2 ** (2.0 / 3)))) for x in (32, 64, 128, 256, 512)
)


def _dense_fpn(cfg: Config, depth: int) -> Config:
    """ResNet res3-res5 into an FPN with P6/P7 from P5 (P2 would add too many positions)."""
    cfg.model.backbone.depth = depth
    cfg.model.backbone.out_features = ("res3", "res4", "res5")
    cfg.model.fpn.in_features = ("res3", "res4", "res5")
    cfg.model.fpn.top_block = "p6p7_p5"
    cfg.solver.base_lr = 0.01
    return cfg


def retinanet_fpn(*, depth: int = 50) -> Config:
    """torchvision's retinanet_resnet50_fpn: FrozenBN backbone, plain heads, L1 box loss."""
    cfg = _dense_fpn(coco_detection(Config()), depth)
    cfg.model.arch = "retinanet"
    cfg.model.retinanet.anchors.sizes = TORCHVISION_RETINANET_ANCHOR_SIZES
    cfg.model.retinanet.anchors.aspect_ratios = (0.5, 1.0, 2.0)
    return cfg


def retinanet_fpn_v2() -> Config:
    """torchvision's retinanet_resnet50_fpn_v2: BN-trained backbone, P6/P7 from C5, GN heads, GIoU loss."""
    cfg = retinanet_fpn()
    cfg.model.backbone.norm = "BN"
    cfg.model.fpn.top_block = "p6p7_c5"
    cfg.model.retinanet.norm = "GN"
    cfg.model.retinanet.box_loss = "giou"
    return cfg


def fcos_fpn(*, depth: int = 50) -> Config:
    """torchvision's fcos_resnet50_fpn: FrozenBN backbone, GN heads, P6/P7 from P5."""
    cfg = _dense_fpn(coco_detection(Config()), depth)
    cfg.model.arch = "fcos"
    return cfg
