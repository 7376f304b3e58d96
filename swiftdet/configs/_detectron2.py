"""Bases of the ``d2_*`` configs: detectron2's model-zoo recipes, in detectron2's conventions.

Models built from them take converted detectron2 checkpoints (``swiftdet convert detectron2``) and
give detectron2's outputs: ``model.convention = "detectron2"``, BGR input with caffe statistics, MSRA
ResNets (stride in the first 1x1 conv), ROIAlignV2 with adaptive sampling, smooth-L1 with beta 0 and
detectron2's solver defaults (no weight decay on norms). Values are those of detectron2's
``configs/Base-RCNN-*.yaml`` / ``Base-RetinaNet.yaml`` and the files they name.
"""
from __future__ import annotations

from swiftdet.config.schema import Config
from swiftdet.configs._base import CAFFE_PIXEL_MEAN, CAFFE_PIXEL_STD, coco_detection

# X-101-32x8d was trained from torchvision-style ImageNet weights, but in BGR order.
X101_PIXEL_STD = (57.375, 57.12, 58.395)


def _common(cfg: Config, epochs_x: int) -> Config:
    m = cfg.model
    m.convention = "detectron2"
    m.input_format = "BGR"
    m.pixel_mean, m.pixel_std = CAFFE_PIXEL_MEAN, CAFFE_PIXEL_STD
    m.backbone.style = "caffe"
    cfg.solver.weight_decay_norm = 0.0
    cfg.input.min_size_train = (640, 672, 704, 736, 768, 800)  # every Base-*.yaml, 1x and 3x alike
    if epochs_x == 1:
        cfg.solver.max_iter, cfg.solver.steps = 90000, (60000, 80000)
    else:
        cfg.solver.max_iter, cfg.solver.steps = 270000, (210000, 250000)
    return cfg


def _rcnn_heads(cfg: Config) -> Config:
    m = cfg.model
    m.rpn.post_nms_topk_train = 1000
    m.rpn.min_box_size = 0.0
    m.rpn.smooth_l1_beta = 0.0
    m.box_head.pooler_sampling_ratio = 0
    m.box_head.pooler_aligned = True
    m.box_head.smooth_l1_beta = 0.0
    m.mask_head.pooler_sampling_ratio = 0
    m.keypoint_head.pooler_sampling_ratio = 0
    return cfg


def d2_rcnn_fpn(*, mask: bool = False, epochs_x: int = 1) -> Config:
    """detectron2's Base-RCNN-FPN: R50-FPN Faster / Mask R-CNN."""
    cfg = _rcnn_heads(_common(coco_detection(Config()), epochs_x))
    cfg.model.arch = "rcnn"
    cfg.model.mask_on = mask
    return cfg


def d2_rcnn_single(*, c4: bool, mask: bool = False) -> Config:
    """detectron2's Base-RCNN-C4 (res5 as the RoI head) or Base-RCNN-DilatedC5 (DC5: RPN and 2fc head
    on a dilated res5 at stride 16); neither pads its batches."""
    cfg = _rcnn_heads(_common(coco_detection(Config()), 1))
    m = cfg.model
    m.arch, m.mask_on = "rcnn", mask
    feature = "res4" if c4 else "res5"
    m.layout = "c4" if c4 else "single"
    m.backbone.out_features = (feature,)
    if not c4:
        m.backbone.res5_dilation = 2
    m.rpn.in_features = (feature,)
    m.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),)
    m.rpn.pre_nms_topk_train, m.rpn.pre_nms_topk_test = 12000, 6000
    m.rpn.post_nms_topk_train, m.rpn.post_nms_topk_test = 2000, 1000
    m.box_head.in_features = (feature,)
    if c4:
        m.box_head.pooler_resolution = 14
        m.mask_head.num_convs = 0
    cfg.input.size_divisibility = 1
    return cfg


def d2_retinanet() -> Config:
    """detectron2's Base-RetinaNet: R50-FPN on res3-res5, P6/P7 from C5, 9 unrounded anchors."""
    cfg = _common(coco_detection(Config()), 1)
    m = cfg.model
    m.arch = "retinanet"
    m.backbone.out_features = ("res3", "res4", "res5")
    m.fpn.in_features = ("res3", "res4", "res5")
    m.fpn.top_block = "p6p7_c5"
    m.retinanet.anchors.sizes = tuple((float(x), x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)) for x in (32, 64, 128, 256, 512))
    m.retinanet.box_loss = "l1"  # detectron2's smooth-L1 with beta 0
    m.retinanet.detections_per_image = 100
    cfg.solver.base_lr = 0.01
    return cfg
