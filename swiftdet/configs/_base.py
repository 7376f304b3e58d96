"""Bases the named configs start from. Each returns a fresh Config; named configs change fields."""
from __future__ import annotations

from swiftdet.config.schema import Config

# ImageNet statistics in 0-255, for torchvision-style (RGB) and caffe-style (BGR, std 1) weights.
TORCHVISION_PIXEL_MEAN = (123.675, 116.28, 103.53)
TORCHVISION_PIXEL_STD = (58.395, 57.12, 57.375)
CAFFE_PIXEL_MEAN = (103.53, 116.28, 123.675)
CAFFE_PIXEL_STD = (1.0, 1.0, 1.0)


def coco_detection(cfg: Config) -> Config:
    """COCO 2017 train/val in the usual layout under ./datasets/coco (override data.* for yours)."""
    cfg.data.train.json = "datasets/coco/annotations/instances_train2017.json"
    cfg.data.train.image_root = "datasets/coco/train2017"
    cfg.data.test.json = "datasets/coco/annotations/instances_val2017.json"
    cfg.data.test.image_root = "datasets/coco/val2017"
    cfg.model.num_classes = 80
    return cfg


def schedule(cfg: Config, epochs_x: int) -> Config:
    """The field's '1x' (90k iterations at batch 16, ~12 COCO epochs) and '3x' schedules."""
    if epochs_x == 1:
        cfg.solver.max_iter, cfg.solver.steps = 90000, (60000, 80000)
    elif epochs_x == 3:
        cfg.solver.max_iter, cfg.solver.steps = 270000, (210000, 250000)
        cfg.input.min_size_train = (640, 672, 704, 736, 768, 800)
    else:
        raise ValueError(f"unknown schedule {epochs_x}x")
    return cfg


def rcnn_fpn(*, mask: bool = False, depth: int = 50) -> Config:
    """Faster/Mask R-CNN with ResNet-FPN, torchvision-style backbone."""
    cfg = coco_detection(Config())
    cfg.model.arch = "rcnn"
    cfg.model.mask_on = mask
    cfg.model.backbone.depth = depth
    return cfg


def rcnn_fpn_v2(*, mask: bool = False) -> Config:
    """torchvision's v2 recipe: BN-trained backbone, FPN with BN, 2-conv RPN, 4conv-1fc box head."""
    cfg = rcnn_fpn(mask=mask)
    cfg.model.backbone.norm = "BN"
    cfg.model.fpn.norm = "BN"
    cfg.model.rpn.num_convs = 2
    cfg.model.box_head.head = "4conv1fc"
    cfg.model.box_head.norm = "BN"
    cfg.model.mask_head.norm = "BN"
    return cfg


def rcnn_c4(*, mask: bool = False) -> Config:
    """Detectron's C4 layout: RPN on res4, res5 as the RoI head, caffe-style backbone."""
    cfg = coco_detection(Config())
    cfg.model.arch = "rcnn"
    cfg.model.mask_on = mask
    cfg.model.layout = "c4"
    cfg.model.backbone.style = "caffe"
    cfg.model.backbone.out_features = ("res4",)
    cfg.model.input_format = "BGR"
    cfg.model.pixel_mean = CAFFE_PIXEL_MEAN
    cfg.model.pixel_std = CAFFE_PIXEL_STD
    cfg.model.rpn.in_features = ("res4",)
    cfg.model.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),)
    cfg.model.rpn.pre_nms_topk_test = 6000
    cfg.model.rpn.post_nms_topk_test = 1000
    cfg.model.rpn.pre_nms_topk_train = 12000
    cfg.model.rpn.post_nms_topk_train = 2000
    cfg.model.box_head.in_features = ("res4",)
    cfg.model.box_head.pooler_resolution = 14
    cfg.model.box_head.pooler_aligned = True
    cfg.model.mask_head.num_convs = 0
    return cfg


def keypoint_rcnn_fpn(epochs_x: int) -> Config:
    """torchvision's keypointrcnn_resnet50_fpn on COCO person keypoints: one class (person), the 17
    keypoints, multi-scale training on shortest edges 640-800 (its default), a 1x or 3x schedule."""
    cfg = schedule(rcnn_fpn(), epochs_x)
    cfg.data.train.json = "datasets/coco/annotations/person_keypoints_train2017.json"
    cfg.data.test.json = "datasets/coco/annotations/person_keypoints_val2017.json"
    cfg.model.num_classes = 1
    cfg.model.keypoint_on = True
    cfg.input.min_size_train = (640, 672, 704, 736, 768, 800)
    cfg.test.best_metric = "keypoints/AP"
    return cfg


def rcnn_mobilenet_v3_fpn(*, min_size: int = 800, max_size: int = 1333) -> Config:
    """torchvision's fasterrcnn_mobilenet_v3_large_fpn: MobileNetV3-Large with FrozenBN (eps 1e-5) and its
    first 3 of 6 stages frozen (trainable_backbone_layers=3), an FPN on blocks 13 and 16 (both stride 32)
    plus a max-pooled level, 15 anchors (sizes 32..512 x 3 ratios) on each of the three levels, RPN
    proposals scoring below 0.05 dropped, and its reference schedule (26 epochs, steps at 16 and 22).
    Images are resized to ``min_size``/``max_size`` in training and at test time, as the model does."""
    cfg = coco_detection(Config())
    cfg.model.arch = "rcnn"
    backbone = cfg.model.backbone
    backbone.name = "mobilenet_v3_large"
    backbone.norm = "FrozenBN"
    backbone.freeze_at = 3
    backbone.out_features = ("block13", "block16")
    cfg.model.fpn.in_features = ("block13", "block16")
    cfg.model.rpn.in_features = ("p5", "p5_2", "p6")
    cfg.model.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),) * 3
    cfg.model.rpn.score_thresh = 0.05
    # torchvision pools from FPN outputs "0" and "1", both at stride 32: its level mapper sends every
    # box to "0" (our p5), so pooling from p5 alone gives the same features.
    cfg.model.box_head.in_features = ("p5",)
    cfg.input.min_size_train = (min_size,)
    cfg.input.max_size_train = max_size
    cfg.input.min_size_test = min_size
    cfg.input.max_size_test = max_size
    # 26 epochs of COCO train2017 (~7330 iterations of 16 images each), lr x0.1 after epochs 16 and 22.
    epoch = 7330
    cfg.solver.max_iter, cfg.solver.steps = 26 * epoch, (16 * epoch, 22 * epoch)
    return cfg
