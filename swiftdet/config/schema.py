"""Every setting of swiftdet, as typed dataclasses with defaults.

The defaults describe a Faster R-CNN R50-FPN trained torchvision-style on COCO; named configs under
``swiftdet/configs/`` change what differs. ``model.num_classes`` is the only place the number of
classes is stated (0: taken from the training data when a run starts); every head reads it from there.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

from swiftdet.config.types import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
    Section,
)
from swiftdet.errors import ConfigError

NormName = Literal["", "FrozenBN", "BN", "SyncBN", "GN"]
Pixel = Annotated[float, Range(0, 255)]  # a 0-255 pixel value (mean of a channel)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------
# Which fields of model.backbone belong to one network only: set (changed from the default) with
# another model.backbone.name they would be silently unused, so validation refuses them.
_RESNET_ONLY = ("depth", "groups", "width_per_group", "style", "stem_out_channels", "res2_out_channels", "res5_dilation",
                "deform_on_per_stage", "deform_modulated", "deform_num_groups")
_MOBILENET_ONLY = ("reduced_tail", "dilated", "norm_momentum")


@dataclass
class ResNetConfig(Section):
    """``model.backbone``: the bottom-up network (named ResNetConfig from when ResNet was the only one)."""

    # 'resnet': ResNet/ResNeXt (depth, groups, width_per_group, style); 'mobilenet_v3_large':
    # torchvision's MobileNetV3-Large (reduced_tail, dilated, norm_momentum); 'vgg16': VGG-16
    # (arch 'ssd' only).
    name: Literal["resnet", "mobilenet_v3_large", "vgg16"] = "resnet"
    depth: Literal[18, 34, 50, 101, 152] = 50
    groups: PositiveInt = 1  # ResNeXt cardinality (32 for X-101 32x8d)
    width_per_group: PositiveInt = 64  # 8 for X-101 32x8d
    # torchvision: stride on the 3x3 conv; caffe (MSRA/Detectron): stride on the first 1x1 conv.
    style: Literal["torchvision", "caffe"] = "torchvision"
    # Widths (detectron2's RESNETS.STEM_OUT_CHANNELS / RES2_OUT_CHANNELS): each later stage doubles
    # res2's output; the bottleneck width of stage k is groups * width_per_group * 2**(k - 2)
    # (bottleneck ResNets: ResNet-18/34's basic blocks keep 64 * 2**(k - 2)). With norm GN all are multiples of 32.
    stem_out_channels: PositiveInt = 64
    res2_out_channels: PositiveInt = 256
    # 2: res5 keeps stride 16 and dilates its 3x3 convs by 2 (detectron2's DC5 models).
    res5_dilation: Literal[1, 2] = 1
    # Deformable 3x3 convs (torchvision's deform_conv2d) in the bottlenecks of res2..res5; v2
    # (modulated) when deform_modulated; offsets predicted by each block's conv2_offset.
    deform_on_per_stage: tuple[bool, bool, bool, bool] = (False, False, False, False)
    deform_modulated: bool = False
    deform_num_groups: PositiveInt = 1
    norm: NormName = "FrozenBN"
    # Freeze the first k stages. ResNet (0..5): 0 trains everything, 1 freezes the stem, k>=2 also
    # res2..res{k}. MobileNetV3 (0..6): stages start at blocks 0, 2, 4, 7, 13, 16 (torchvision's
    # trainable_backbone_layers = 6 - k; its default 3 is freeze_at=3). VGG-16 (0..5): conv1..conv<k>
    # (torchvision's SSD300 trainable_backbone_layers = 5 - k).
    freeze_at: Annotated[int, Range(0, 6)] = 2
    # ResNet: stem, res2..res5. MobileNetV3: block0..block16 (outputs of torchvision's features[i]) and
    # block2_expand..block15_expand (a block's expansion conv); see swiftdet/model/backbone/mobilenet.py.
    # VGG-16 (SSD300): conv4, conv5.
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    # Optional ImageNet initialisation (path or URL of torchvision's resnet / mobilenet_v3_large / vgg16 checkpoint).
    weights: str = ""
    # MobileNetV3 only: halve blocks 13-15 and the last conv (paper table 6); blocks 13-15 at stride 16
    # with dilation 2 instead of stride 32.
    reduced_tail: bool = False
    dilated: bool = False
    # eps of the backbone's BatchNorm / FrozenBN layers (default 1e-5). torchvision runs its legacy
    # COCO files of fasterrcnn / maskrcnn / keypointrcnn / retinanet_resnet50_fpn (v1) with FrozenBN
    # eps 0 (`swiftdet convert torchvision` sets 0 for those configs); MobileNetV3's ImageNet
    # training and SSDlite use 1e-3.
    norm_eps: Annotated[float, Range(0, 1)] = 1e-5
    # MobileNetV3 only: momentum of its BatchNorm layers.
    norm_momentum: Annotated[float, Range(0, 1, low_open=True)] = 0.1

    def validate(self) -> None:
        _check(self.norm != "", "model.backbone.norm must name a norm layer (FrozenBN, BN, SyncBN or GN).")
        defaults = ResNetConfig()
        foreign = [k for k in _RESNET_ONLY if self.name != "resnet"]
        foreign += [k for k in _MOBILENET_ONLY if self.name != "mobilenet_v3_large"]
        unused = [f"model.backbone.{k}" for k in foreign if getattr(self, k) != getattr(defaults, k)]
        _check(not unused, f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to model.backbone.name "
                           f"'{self.name}'; leave {'it' if len(unused) == 1 else 'them'} at the default or change the name.")
        if self.name == "mobilenet_v3_large":
            _check(self.norm in ("FrozenBN", "BN", "SyncBN"),
                   f"model.backbone.norm '{self.norm}': MobileNetV3 takes FrozenBN, BN or SyncBN.")
            valid = {f"block{i}" for i in range(17)} | {f"block{i}_expand" for i in range(2, 16)}
            bad = [f for f in self.out_features if f not in valid]
            _check(bool(self.out_features) and not bad,
                   f"model.backbone.out_features has unknown names {bad} for MobileNetV3; valid: block0..block16 "
                   "and block2_expand..block15_expand.")
        if self.name == "resnet":
            self._validate_resnet()
        _check(self.norm_eps > 0 or self.norm == "FrozenBN",
               f"model.backbone.norm_eps=0 needs norm FrozenBN (a trained {self.norm} divides by its batch variance).")
        if self.name == "vgg16":  # SSD300's VGG-16: stages conv1..conv5, freeze_at 0..5
            _check(self.norm_eps == ResNetConfig().norm_eps, "model.backbone.norm_eps: VGG-16 has no norm layers; "
                                                             "leave it at the default.")
            _check(self.freeze_at <= 5, f"model.backbone.freeze_at={self.freeze_at}: VGG-16 has 5 stages (0..5).")
            _check(self.norm == ResNetConfig().norm, f"model.backbone.norm '{self.norm}': VGG-16 has no norm layers; "
                                                     "leave it at the default.")
            _check(tuple(self.out_features) == ("conv4", "conv5"),
                   f"model.backbone.out_features {list(self.out_features)}: SSD300 takes VGG-16's ['conv4', 'conv5'].")

    def _validate_resnet(self) -> None:
        _check(self.freeze_at <= 5, f"model.backbone.freeze_at={self.freeze_at}: a ResNet has 5 stages (0..5).")
        _check(
            not (self.depth in (18, 34) and (self.groups != 1 or self.width_per_group != 64)),
            "ResNet-18/34 use basic blocks: model.backbone.groups must be 1 and width_per_group 64.",
        )
        valid = {"stem", "res2", "res3", "res4", "res5"}
        bad = [f for f in self.out_features if f not in valid]
        _check(not bad, f"model.backbone.out_features has unknown names {bad}; valid: {sorted(valid)}.")
        _check(not (self.depth in (18, 34) and (self.res5_dilation != 1 or any(self.deform_on_per_stage))),
               "model.backbone.res5_dilation and deform_on_per_stage need a bottleneck ResNet (depth 50, 101 or 152).")
        _check(not (self.depth in (18, 34) and self.res2_out_channels != ResNetConfig().res2_out_channels),
               "ResNet-18/34 use basic blocks whose res2 outputs 64 channels: leave model.backbone.res2_out_channels "
               "at its default (it sets the bottleneck ResNets' widths).")
        _check(any(self.deform_on_per_stage) or (not self.deform_modulated and self.deform_num_groups == 1),
               "model.backbone.deform_modulated and deform_num_groups apply to deformable stages: set "
               "model.backbone.deform_on_per_stage (res2..res5), or leave them at their defaults.")
        _check(not any(self.deform_on_per_stage) or (self.groups * self.width_per_group) % self.deform_num_groups == 0,
               f"model.backbone.deform_num_groups={self.deform_num_groups} must divide the bottleneck width groups * "
               f"width_per_group = {self.groups * self.width_per_group}.")
        if self.norm == "GN":  # GroupNorm(32, C) needs C divisible by 32 in every normalised layer
            widths = {"stem_out_channels": self.stem_out_channels}
            if self.depth not in (18, 34):
                widths.update(res2_out_channels=self.res2_out_channels,
                              bottleneck_width=self.groups * self.width_per_group)
            bad = [f"{k}={v}" for k, v in widths.items() if v % 32]
            _check(not bad, f"model.backbone.norm 'GN' has 32 groups: {', '.join(bad)} must be multiples of 32 "
                            "(bottleneck_width = groups * width_per_group).")


@dataclass
class FPNConfig(Section):
    in_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    out_channels: PositiveInt = 256
    norm: Literal["", "BN", "GN"] = ""
    # Extra coarse levels: 'maxpool' adds P6 by max-pooling P5 (R-CNN); 'p6p7_c5'/'p6p7_p5' add P6 and
    # P7 by strided convs from C5 or P5 (RetinaNet v2 / RetinaNet v1 and FCOS in torchvision).
    top_block: Literal["none", "maxpool", "p6p7_c5", "p6p7_p5"] = "maxpool"


@dataclass
class AnchorConfig(Section):
    # One tuple of sizes per feature level, in input pixels.
    sizes: tuple[tuple[PositiveFloat, ...], ...] = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    aspect_ratios: tuple[PositiveFloat, ...] = (0.5, 1.0, 2.0)
    # Anchor centres at (i + offset) * stride: detectron2's ANCHOR_GENERATOR.OFFSET (model.convention
    # 'detectron2' only; torchvision's anchors have none).
    offset: Annotated[float, Range(0, 1, high_open=True)] = 0.0


@dataclass
class RPNConfig(Section):
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    num_convs: PositiveInt = 1  # torchvision v2 uses 2
    fg_iou_thresh: Probability = 0.7
    bg_iou_thresh: Probability = 0.3
    batch_size_per_image: PositiveInt = 256
    positive_fraction: Fraction = 0.5
    pre_nms_topk_train: PositiveInt = 2000  # per level
    pre_nms_topk_test: PositiveInt = 1000
    post_nms_topk_train: PositiveInt = 2000  # per image
    post_nms_topk_test: PositiveInt = 1000
    nms_thresh: Probability = 0.7
    min_box_size: NonNegativeFloat = 1e-3
    score_thresh: Probability = 0.0
    box_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: NonNegativeFloat = 1.0 / 9
    loss_weight: NonNegativeFloat = 1.0

    def validate(self) -> None:
        _check(0 < self.bg_iou_thresh <= self.fg_iou_thresh <= 1, "model.rpn: need 0 < bg_iou_thresh <= fg_iou_thresh <= 1.")


@dataclass
class BoxHeadConfig(Section):
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    pooler_resolution: PositiveInt = 7
    pooler_sampling_ratio: NonNegativeInt = 2
    pooler_aligned: bool = False  # torchvision's MultiScaleRoIAlign uses aligned=False
    head: Literal["2fc", "4conv1fc"] = "2fc"  # torchvision v1 / v2
    fc_dim: PositiveInt = 1024
    conv_dim: PositiveInt = 256
    norm: Literal["", "BN", "GN"] = ""
    # One box regression for all classes (4 outputs) instead of one per class (Cascade R-CNN's stages).
    cls_agnostic_bbox_reg: bool = False
    fg_iou_thresh: Probability = 0.5
    bg_iou_thresh: Probability = 0.5
    batch_size_per_image: PositiveInt = 512
    positive_fraction: Fraction = 0.25
    box_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: NonNegativeFloat = 1.0 / 9
    score_thresh: Probability = 0.05
    nms_thresh: Probability = 0.5
    detections_per_image: PositiveInt = 100
    # The classifier's loss and scores. 'softmax': cross entropy over K + 1 classes. 'sigmoid': one
    # binary cross entropy per foreground class, scores are sigmoids (detectron2's USE_SIGMOID_CE).
    # 'federated': the sigmoid loss over each iteration's ground-truth classes plus classes drawn by
    # (training images holding the class) ** fed_loss_freq_weight_power, fed_loss_num_classes in all
    # (detectron2's USE_FED_LOSS, for LVIS).
    cls_loss: Literal["softmax", "sigmoid", "federated"] = "softmax"
    fed_loss_num_classes: PositiveInt = 50
    fed_loss_freq_weight_power: NonNegativeFloat = 0.5

    def validate(self) -> None:
        defaults = (("fed_loss_num_classes", 50), ("fed_loss_freq_weight_power", 0.5))
        changed = [f"model.box_head.{name}" for name, default in defaults if getattr(self, name) != default]
        _check(self.cls_loss == "federated" or not changed,
               f"{', '.join(changed)} set with model.box_head.cls_loss='{self.cls_loss}': they apply to the federated loss only "
               "(model.box_head.cls_loss=federated), otherwise leave them unset.")


@dataclass
class CascadeConfig(Section):
    """``model.cascade``: Cascade R-CNN's box stages (0 stages: a plain R-CNN box head). Stage k
    trains on the boxes of stage k - 1 with foreground IoU ious[k] and regresses with
    box_reg_weights[k]; at test time the class scores of all stages are averaged."""

    num_stages: NonNegativeInt = 0
    ious: tuple[Probability, ...] = (0.5, 0.6, 0.7)
    box_reg_weights: tuple[tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))

    def validate(self) -> None:
        _check(self.num_stages != 1, "model.cascade.num_stages=1 is a plain R-CNN: use 0 (no cascade) or 2 and more.")
        _check(self.num_stages == 0 or len(self.ious) == len(self.box_reg_weights) == self.num_stages,
               f"model.cascade: {self.num_stages} stages need as many ious (got {len(self.ious)}) and box_reg_weights "
               f"(got {len(self.box_reg_weights)}).")


@dataclass
class MaskHeadConfig(Section):
    pooler_resolution: PositiveInt = 14
    pooler_sampling_ratio: NonNegativeInt = 2
    num_convs: NonNegativeInt = 4  # 0 in the C4 layout (the mask head reads res5 directly)
    conv_dim: PositiveInt = 256
    norm: Literal["", "BN", "GN"] = ""
    # Probability above which a pasted mask pixel is foreground.
    mask_threshold: Probability = 0.5


@dataclass
class KeypointHeadConfig(Section):
    # Keypoints per instance (17 for COCO persons); the training data must have as many.
    num_keypoints: PositiveInt = 17
    # torchvision's keypoint head: 8 3x3 convs of 512 on 14x14 RoIAlign (sampling 2) features, then
    # a stride-2 deconv and a x2 bilinear upsampling to 4 * pooler_resolution (56) heatmaps.
    pooler_resolution: PositiveInt = 14
    pooler_sampling_ratio: NonNegativeInt = 2
    num_convs: PositiveInt = 8
    conv_dim: PositiveInt = 512
    loss_weight: NonNegativeFloat = 1.0


@dataclass
class RetinaNetConfig(Section):
    in_features: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")
    anchors: AnchorConfig = field(
        default_factory=lambda: AnchorConfig(
            sizes=tuple(tuple(float(s * 2 ** (i / 3)) for i in range(3)) for s in (32, 64, 128, 256, 512)),
            aspect_ratios=(0.5, 1.0, 2.0),
        )
    )
    num_convs: NonNegativeInt = 4
    norm: Literal["", "GN"] = ""  # v2 uses GN
    prior_prob: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.01
    fg_iou_thresh: Probability = 0.5
    bg_iou_thresh: Probability = 0.4
    focal_alpha: Probability = 0.25
    focal_gamma: NonNegativeFloat = 2.0
    box_loss: Literal["l1", "smooth_l1", "giou"] = "l1"
    smooth_l1_beta: NonNegativeFloat = 0.0
    box_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0, 1.0)
    score_thresh: Probability = 0.05
    topk_candidates: PositiveInt = 1000  # per level
    nms_thresh: Probability = 0.5
    detections_per_image: PositiveInt = 300


@dataclass
class FCOSConfig(Section):
    in_features: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")
    num_convs: NonNegativeInt = 4
    norm: Literal["", "GN"] = "GN"
    prior_prob: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.01
    center_sampling_radius: NonNegativeFloat = 1.5
    focal_alpha: Probability = 0.25
    focal_gamma: NonNegativeFloat = 2.0
    score_thresh: Probability = 0.2
    topk_candidates: PositiveInt = 1000
    nms_thresh: Probability = 0.6
    detections_per_image: PositiveInt = 100


@dataclass
class SSDConfig(Section):
    """``model.ssd`` (arch 'ssd'): torchvision's SSD300-VGG16 values; the layout (extra layers and
    heads: SSD300's or SSDlite's) follows model.backbone.name ('vgg16' or 'mobilenet_v3_large')."""

    # Per feature map, the aspect ratios of its default boxes besides 1 (2 + 2 * len boxes per location).
    aspect_ratios: tuple[tuple[PositiveFloat, ...], ...] = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
    # Box scales relative to the image, one per map plus one; empty: evenly spaced from min_ratio to
    # max_ratio, then 1.0 (SSDlite: 0.2 .. 0.95).
    scales: tuple[PositiveFloat, ...] = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    min_ratio: Probability = 0.15
    max_ratio: Probability = 0.9
    # Per map the pixel step between box centres; empty: the image size over the map's size.
    steps: tuple[PositiveInt, ...] = (8, 16, 32, 64, 100, 300)
    clip_default_boxes: bool = True  # clip the relative box sizes to [0, 1]
    iou_thresh: Probability = 0.5  # positives: IoU >= this with a ground truth (plus each one's best box)
    neg_to_pos_ratio: PositiveFloat = 3.0  # hard negatives per positive in the classification loss
    box_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] = (10.0, 10.0, 5.0, 5.0)
    # eps and momentum of the BatchNorm layers of SSDlite's extra blocks and heads.
    norm_eps: Annotated[float, Range(0, 1, low_open=True)] = 1e-3
    norm_momentum: Annotated[float, Range(0, 1, low_open=True)] = 0.03
    score_thresh: Probability = 0.01
    topk_candidates: PositiveInt = 400  # per image and class, before NMS
    nms_thresh: Probability = 0.45
    detections_per_image: PositiveInt = 200

    def validate(self) -> None:
        _check(not self.scales or len(self.scales) == len(self.aspect_ratios) + 1,
               f"model.ssd.scales has {len(self.scales)} values for {len(self.aspect_ratios)} maps; give one per map "
               "plus one, or none (then min_ratio .. max_ratio).")
        _check(not self.steps or len(self.steps) == len(self.aspect_ratios),
               f"model.ssd.steps has {len(self.steps)} values for {len(self.aspect_ratios)} maps; give one per map or none.")
        _check(self.scales or self.min_ratio < self.max_ratio, "model.ssd: need min_ratio < max_ratio.")


@dataclass
class ModelConfig(Section):
    # 'rpn': the region proposal network alone; its proposals are the output (evaluated by AR).
    arch: Literal["rcnn", "retinanet", "fcos", "ssd", "rpn"] = "rcnn"
    # Whose numerical conventions the model follows, so that weights trained there give the same
    # outputs here. 'torchvision': rounded anchors (ratio-major), (x/255 - mean/255) / (std/255),
    # FPN level rule with +1e-6, tiny boxes removed before NMS, torchvision's mask pasting and
    # keypoint scores. 'detectron2': unrounded anchors (size-major, model.rpn.anchors.offset),
    # (x - mean) / std, detectron2's level rule, box filtering, mask pasting (no box padding) and
    # keypoint scores (heatmap softmax), RetinaNet boxes clipped after NMS.
    convention: Literal["torchvision", "detectron2"] = "torchvision"
    # Foreground classes; the only place this number is stated. 0: not given, training takes it from
    # data.train's categories (and the run's config.yaml and checkpoints hold the number it took).
    num_classes: NonNegativeInt = 0
    mask_on: bool = False
    # 'fpn': FPN features for RPN and RoI heads; 'c4': RPN on res4 and res5 as the RoI box head;
    # 'single': RPN and RoI heads on one backbone feature (detectron2's DC5: res5 with res5_dilation=2).
    layout: Literal["fpn", "c4", "single"] = "fpn"
    # Per-channel normalisation of 0-255 input pixels in input_format order.
    # torchvision weights: RGB, mean/std of ImageNet in 0-255; caffe weights: BGR, std 1.
    input_format: Literal["RGB", "BGR"] = "RGB"
    pixel_mean: tuple[Pixel, Pixel, Pixel] = (123.675, 116.28, 103.53)
    pixel_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (58.395, 57.12, 57.375)
    backbone: ResNetConfig = field(default_factory=ResNetConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    keypoint_on: bool = False
    keypoint_head: KeypointHeadConfig = field(default_factory=KeypointHeadConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    ssd: SSDConfig = field(default_factory=SSDConfig)
    # Where an R-CNN's proposals come from: 'rpn' (Faster R-CNN) or 'precomputed' (Fast R-CNN,
    # detectron2's LOAD_PROPOSALS: no RPN; each image's proposals come from data.train/test.proposals).
    proposal_generator: Literal["rpn", "precomputed"] = "rpn"
    # Checkpoint of the whole model (ours, or converted) loaded at build time; "" for none.
    weights: str = ""
    # mmdetection's GN+WS models: every conv followed by a GroupNorm (backbone, FPN, box-head and
    # mask-head convs) standardises its weight per output channel (mmcv's ConvWS2d).
    weight_standardization: bool = False

    def validate(self) -> None:
        _check(not (self.mask_on and self.arch != "rcnn"), f"model.mask_on needs arch 'rcnn' (got '{self.arch}').")
        gn = [k for k, on in (("model.backbone.norm", self.backbone.norm == "GN" and self.backbone.name == "resnet"),
                              ("model.fpn.norm", self.fpn.norm == "GN" and self.layout == "fpn"),
                              ("model.box_head.norm", self.box_head.norm == "GN" and self.box_head.head == "4conv1fc"),
                              ("model.mask_head.norm", self.mask_head.norm == "GN" and self.mask_on)) if on]
        _check(not self.weight_standardization or (self.arch == "rcnn" and gn),
               "model.weight_standardization standardises the convs followed by a GroupNorm of an R-CNN: it needs "
               "arch 'rcnn' and norm 'GN' in model.backbone (ResNet), model.fpn, model.box_head (head '4conv1fc') or "
               "model.mask_head (with mask_on).")
        _check(not (self.layout == "c4" and (self.backbone.res5_dilation != 1 or self.backbone.deform_on_per_stage[3])),
               "model.layout 'c4' runs res5 as the RoI head on pooled regions, with stride 2 and plain convs: "
               "model.backbone.res5_dilation must be 1 and deform_on_per_stage[3] false.")
        _check(self.layout == "fpn" or self.arch == "rcnn", "model.layout 'c4' exists only for arch 'rcnn'.")
        # RetinaNet and FCOS build a ResNet trunk; the MobileNetV3 trunk is wired into R-CNN (FPN layout).
        _check(self.backbone.name != "mobilenet_v3_large" or (self.arch == "rcnn" and self.layout == "fpn") or self.arch == "ssd",
               f"model.backbone.name 'mobilenet_v3_large' needs arch 'rcnn' with layout 'fpn', or 'ssd' (got '{self.arch}', '{self.layout}').")
        _check(self.arch != "ssd" or self.backbone.name in ("vgg16", "mobilenet_v3_large"),
               f"model.arch 'ssd' builds on model.backbone.name 'vgg16' (SSD300) or 'mobilenet_v3_large' (SSDlite), "
               f"not '{self.backbone.name}'.")
        _check(self.backbone.name != "vgg16" or self.arch == "ssd",
               f"model.backbone.name 'vgg16' serves model.arch 'ssd' only (got '{self.arch}').")
        _check(self.layout in ("fpn", "c4") or self.arch == "rcnn", "model.layout 'single' exists only for arch 'rcnn'.")
        _check(self.cascade.num_stages == 0 or (self.arch == "rcnn" and self.layout == "fpn"),
               "model.cascade needs arch 'rcnn' with layout 'fpn'.")
        _check(self.convention == "detectron2" or self.rpn.anchors.offset == 0.0,
               "model.rpn.anchors.offset is detectron2's ANCHOR_GENERATOR.OFFSET: set model.convention=detectron2 or leave it 0.")
        _check(self.convention == "detectron2" or self.retinanet.anchors.offset == 0.0,
               "model.retinanet.anchors.offset is detectron2's ANCHOR_GENERATOR.OFFSET: set model.convention=detectron2 or "
               "leave it 0.")
        _check(self.proposal_generator == "rpn" or (self.arch == "rcnn" and self.cascade.num_stages == 0),
               f"model.proposal_generator 'precomputed' (Fast R-CNN) needs arch 'rcnn' without model.cascade "
               f"(got arch '{self.arch}', cascade.num_stages {self.cascade.num_stages}).")
        # C4 runs res5 as the box head, on which detectron2 has no keypoint head either.
        _check(not (self.keypoint_on and (self.arch != "rcnn" or self.layout == "c4")),
               f"model.keypoint_on needs arch 'rcnn' with layout 'fpn' or 'single' (got '{self.arch}', '{self.layout}').")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
_CROP_TYPES = ("absolute", "relative", "absolute_range", "relative_range")


@dataclass
class CropConfig(Section):
    """``input.crop``: a random crop of the original image (detectron2's INPUT.CROP / RandomCrop)."""

    # 'relative': a (h * size[0]) x (w * size[1]) window; 'relative_range': each side a fraction
    # uniform in [size[i], 1]; 'absolute': size[0] x size[1] pixels (height x width; the image's side
    # where smaller); 'absolute_range': height and width uniform integers in [size[0], size[1]].
    type: Literal["none", "absolute", "relative", "absolute_range", "relative_range"] = "none"
    size: tuple[PositiveFloat, PositiveFloat] = (0.9, 0.9)
    # Crop keeping instances (mmdet's allow_negative_crop=False): a window must keep at least one
    # box; up to 10 windows are tried, then the image is left uncropped.
    keep_instances: bool = False

    def validate(self) -> None:
        if self.type == "none":
            d = CropConfig()
            unused = [f"input.crop.{k}" for k in ("size", "keep_instances") if getattr(self, k) != getattr(d, k)]
            _check(not unused, f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with "
                               f"input.crop.type 'none'; set input.crop.type to one of {list(_CROP_TYPES)}.")
        elif self.type.startswith("relative"):
            _check(all(0 < v <= 1 for v in self.size),
                   f"input.crop.size {list(self.size)}: a '{self.type}' crop takes fractions of the image side in "
                   "(0, 1], e.g. [0.9, 0.9].")
        else:
            _check(all(float(v).is_integer() for v in self.size),
                   f"input.crop.size {list(self.size)}: an '{self.type}' crop takes whole pixels, e.g. [512, 512].")
            _check(self.type != "absolute_range" or self.size[0] <= self.size[1],
                   f"input.crop.size {list(self.size)}: 'absolute_range' takes [min, max] pixels with min <= max.")


@dataclass
class LsjConfig(Section):
    """``input.lsj``: large-scale jitter, the training resize of input.resize='lsj' (detectron2's
    new baselines: ResizeScale(0.1, 2.0, 1024, 1024) + FixedSizeCrop(1024))."""

    size: tuple[PositiveInt, PositiveInt] = (1024, 1024)  # (height, width) of every training image
    # The image fits in size * s, s uniform in this range (aspect ratio kept), then is cropped / padded to size.
    scale_range: tuple[PositiveFloat, PositiveFloat] = (0.1, 2.0)

    def validate(self) -> None:
        _check(self.scale_range[0] <= self.scale_range[1],
               f"input.lsj.scale_range {list(self.scale_range)} must be [min, max] with min <= max.")


@dataclass
class MosaicConfig(Section):
    """``input.mosaic``: 4 images on a 2x2 canvas (YOLOX / mmdet Mosaic), before every other augmentation."""

    prob: Probability = 0.0  # 0: off (mmdet's default when enabled: 1.0)
    # (height, width) of one cell: each image is fitted in it; the canvas is twice as high and wide.
    size: tuple[PositiveInt, PositiveInt] = (640, 640)
    # Where the 4 images meet, as a fraction of the cell size, uniform in this range on each axis.
    center_range: tuple[Annotated[float, Range(0, 2)], Annotated[float, Range(0, 2)]] = (0.5, 1.5)

    def validate(self) -> None:
        _check(self.center_range[0] <= self.center_range[1],
               f"input.mosaic.center_range {list(self.center_range)} must be [min, max] with min <= max.")


@dataclass
class CopyPasteConfig(Section):
    """``input.copy_paste``: paste instances (with masks) of another training image, last of all
    augmentations (Ghiasi et al. 2021; mmdet's CopyPaste). Needs a dataset with masks."""

    prob: Probability = 0.0  # 0: off
    max_pasted: PositiveInt = 100  # at most this many instances pasted (1 to min(N, max_pasted), uniform)


@dataclass
class InputConfig(Section):
    # Training picks one shortest-edge size per image from min_size_train (multi-scale).
    min_size_train: tuple[PositiveInt, ...] = (800,)
    max_size_train: PositiveInt = 1333
    min_size_test: PositiveInt = 800
    max_size_test: PositiveInt = 1333
    hflip_prob: Probability = 0.5
    size_divisibility: PositiveInt = 32
    # 'shortest_edge': the min_size_*/max_size_* resize above (aspect ratio kept). 'fixed': every
    # image, in training and at test time, is stretched to fixed_size = (height, width) (SSD; the
    # aspect ratio is not kept) and min_size_*/max_size_* are not used (setting them is an error).
    # 'lsj': training uses large-scale jitter (input.lsj) instead of min/max_size_train; the test
    # resize is the shortest-edge one of min/max_size_test (detectron2's LSJ configs: 1024, 1024).
    resize: Literal["shortest_edge", "fixed", "lsj"] = "shortest_edge"
    fixed_size: tuple[PositiveInt, PositiveInt] = (300, 300)
    # SSD training augmentations (torchvision's detection references), all off by default; they run
    # before the flip and the resize. Photometric distortion: each of brightness, contrast,
    # saturation, hue and a channel permutation applied with this probability (torchvision: 0.5).
    photometric_distort_prob: Probability = 0.0
    # Zoom out: with this probability the image is placed at a random spot of a canvas 1 to
    # zoom_out_max_scale times its size, filled with model.pixel_mean (torchvision: 0.5 and 4).
    zoom_out_prob: Probability = 0.0
    zoom_out_max_scale: Annotated[float, Range(1, 4)] = 4.0
    # SSD's random IoU crop: a crop whose IoU with some box reaches a random minimum (or no crop);
    # boxes whose centre falls outside the crop are dropped.
    iou_crop: bool = False
    # Augmentations for every architecture, all off by default; the order they compose in is
    # documented in swiftdet/data/transforms.py (TrainTransform) and the README's "Augmentations".
    crop: CropConfig = field(default_factory=CropConfig)
    # With this probability the image turns 90, 180 or 270 degrees (evenly), boxes, masks and keypoints along.
    rotate90_prob: Probability = 0.0
    lsj: LsjConfig = field(default_factory=LsjConfig)
    mosaic: MosaicConfig = field(default_factory=MosaicConfig)
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)

    def validate(self) -> None:
        _check(len(self.min_size_train) > 0, "input.min_size_train needs at least one size.")
        if self.resize == "lsj":
            defaults = InputConfig()
            unused = [f"input.{k}" for k in ("min_size_train", "max_size_train") if getattr(self, k) != getattr(defaults, k)]
            _check(not unused, f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with input.resize "
                               f"'lsj': training images are jittered to input.lsj.size {list(self.lsj.size)}. Reset "
                               f"them to the defaults (input.min_size_train={list(defaults.min_size_train)} "
                               f"input.max_size_train={defaults.max_size_train}) and set input.lsj, or set "
                               "input.resize=shortest_edge.")
        elif self.lsj != LsjConfig():
            _check(False, f"input.lsj is used only with input.resize 'lsj' (it is '{self.resize}'); set "
                          "input.resize=lsj, or leave input.lsj at its defaults.")
        for name in ("mosaic", "copy_paste"):
            section, default = getattr(self, name), type(getattr(self, name))()
            _check(section.prob > 0 or section == default,
                   f"input.{name} fields are set but input.{name}.prob is 0 (off); set input.{name}.prob > 0 "
                   "or leave the section at its defaults.")
        if self.resize == "fixed":
            # A changed min/max size would otherwise be silently ignored.
            defaults = InputConfig()
            unused = [f"input.{k}" for k in ("min_size_train", "max_size_train", "min_size_test", "max_size_test")
                      if getattr(self, k) != getattr(defaults, k)]
            _check(not unused, f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used with input.resize "
                               f"'fixed': every image is resized to input.fixed_size {list(self.fixed_size)} (height, "
                               "width). Leave the min/max sizes at their defaults and set input.fixed_size, or set "
                               "input.resize=shortest_edge.")


@dataclass
class DatasetSpec(Section):
    """Where a dataset is and how it is written: ``format`` picks the reader and, for ``data.test``,
    the evaluation (COCO AP; VOC's mAP at IoU 0.5; LVIS's federated AP; Cityscapes' instance AP)."""

    format: Literal["coco", "voc", "lvis", "cityscapes"] = "coco"
    json: str = ""  # coco / lvis: the annotation file
    image_root: str = ""  # coco / lvis: folder the json's file_name entries are relative to
    # voc: one or more VOC year folders (each with Annotations/, ImageSets/Main/, JPEGImages/);
    # cityscapes: the dataset root (with leftImg8bit/ and gtFine/).
    roots: tuple[str, ...] = ()
    split: str = ""  # voc: ImageSets/Main/<split>.txt ("trainval", "test"); cityscapes: "train", "val"
    # coco / lvis: precomputed proposals of the json's images (a detectron2 or mmdetection .pkl), read
    # by a Fast R-CNN (model.proposal_generator 'precomputed') only.
    proposals: str = ""

    @property
    def is_set(self) -> bool:
        """Whether a dataset is named at all (an unset data.test means: train without evaluation)."""
        return bool(self.roots) if self.format in ("voc", "cityscapes") else bool(self.json)

    @property
    def source(self) -> str:
        """The dataset as messages name it: the json, or the roots and split."""
        if self.format in ("voc", "cityscapes"):
            return f"{', '.join(self.roots)} ({self.format} split '{self.split}')"
        return self.json

    def validate(self) -> None:
        # A field the chosen format does not read would be silently ignored.
        by_files = self.format in ("coco", "lvis")
        unused = [name for name, value, used in (("json", self.json, by_files), ("image_root", self.image_root, by_files),
                                                 ("roots", self.roots, not by_files), ("split", self.split, not by_files))
                  if value and not used]
        _check(not unused, f"{', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not read by format "
                           f"'{self.format}': {'coco and lvis datasets are a json and an image_root' if by_files else 'voc and cityscapes datasets are roots and a split'}.")
        _check(not (self.proposals and not by_files),
               f"proposals files are read for coco and lvis datasets only, not format '{self.format}'.")
        _check(not (self.format == "cityscapes" and len(self.roots) > 1),
               f"format 'cityscapes' reads one dataset root; got roots {list(self.roots)}.")
        _check(not (self.roots and not self.split),
               f"format '{self.format}' needs a split (voc: the ImageSets/Main/<split>.txt name such as 'trainval' or "
               "'test'; cityscapes: 'train' or 'val').")


@dataclass
class DataConfig(Section):
    train: DatasetSpec = field(default_factory=DatasetSpec)
    test: DatasetSpec = field(default_factory=DatasetSpec)
    # Training drops images without usable annotations (counted in the load summary).
    filter_empty: bool = True
    aspect_ratio_grouping: bool = True
    num_workers: NonNegativeInt = 2
    # Left/right keypoint name pairs swapped by a horizontal flip; empty: derived from names
    # that start with 'left_'/'right_' (COCO) or are 'left'/'right'.
    keypoint_flip_map: tuple[tuple[str, str], ...] = ()
    # 'repeat_factor': LVIS's repeat-factor sampling (detectron2's RepeatFactorTrainingSampler): an
    # image repeats max(1, sqrt(repeat_threshold / f(c))) times per epoch in expectation, c its rarest
    # category and f(c) the fraction of training images holding c.
    sampler: Literal["uniform", "repeat_factor"] = "uniform"
    repeat_threshold: Fraction = 0.001  # read by sampler='repeat_factor' only
    # Fast R-CNN: each image's best proposals kept after the transforms (detectron2's
    # PRECOMPUTED_PROPOSAL_TOPK_TRAIN / TEST).
    proposal_topk_train: PositiveInt = 2000
    proposal_topk_test: PositiveInt = 1000

    def validate(self) -> None:
        _check(self.sampler == "repeat_factor" or self.repeat_threshold == 0.001,
               f"data.repeat_threshold={self.repeat_threshold} is read by data.sampler=repeat_factor only (data.sampler "
               f"is '{self.sampler}'): set data.sampler=repeat_factor too, or leave the threshold out.")


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------
@dataclass
class SolverConfig(Section):
    optimizer: Literal["SGD", "AdamW"] = "SGD"
    base_lr: PositiveFloat = 0.02
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    # Set to 0.0 to exempt norm layers / biases from weight decay.
    weight_decay_norm: NonNegativeFloat = 1e-4
    weight_decay_bias: NonNegativeFloat = 1e-4
    ims_per_batch: PositiveInt = 16  # total over all processes
    # base_lr is for this total batch size; another ims_per_batch scales it linearly.
    reference_batch_size: PositiveInt = 16
    max_iter: PositiveInt = 90000
    schedule: Literal["multistep", "cosine"] = "multistep"
    steps: tuple[PositiveInt, ...] = (60000, 80000)
    # The steps as fractions of max_iter (each in (0, 1), increasing), for a schedule that follows a
    # changed max_iter: when given they replace `steps` by round(f * max_iter); set steps=[] with them.
    steps_fraction: tuple[Annotated[float, Range(0, 1, low_open=True, high_open=True)], ...] = ()
    gamma: Fraction = 0.1
    # A run shorter than its warm-up warms up over all of max_iter (the schedule logs a warning).
    warmup_iters: NonNegativeInt = 1000
    warmup_factor: Fraction = 0.001
    amp: Literal["off", "fp16", "bf16"] = "off"
    accumulate_steps: PositiveInt = 1
    clip_grad_norm: NonNegativeFloat = 0.0  # 0: no clipping
    ema_decay: Annotated[float, Range(0, 1, high_open=True)] = 0.0  # 0: no EMA of weights
    checkpoint_period: PositiveInt = 5000
    keep_last: PositiveInt = 3
    log_period: PositiveInt = 20
    # Wall-clock budget of the training loop in minutes (0: none): when spent, the run ends cleanly with
    # a checkpoint and the final evaluation at the iteration it reached; --resume continues it.
    max_minutes: NonNegativeFloat = 0.0

    def validate(self) -> None:
        _check(not (self.steps and self.steps_fraction),
               f"solver.steps={list(self.steps)} and solver.steps_fraction={list(self.steps_fraction)} are both set; "
               "give one: solver.steps=[] to use the fractions of solver.max_iter, or solver.steps_fraction=[] "
               "to use the iterations.")
        _check(all(a < b for a, b in zip(self.steps_fraction, self.steps_fraction[1:])),
               f"solver.steps_fraction {list(self.steps_fraction)} must be increasing.")
        _check(all(0 < s < self.max_iter for s in self.steps) or self.schedule == "cosine",
               f"solver.steps {self.steps} must lie inside (0, solver.max_iter={self.max_iter}).")
        _check(list(self.steps) == sorted(self.steps), "solver.steps must be increasing.")


@dataclass
class TestAugConfig(Section):
    """Test-time augmentation (swiftdet.model.tta): every image is run at each of ``min_sizes``
    (short side, long side at most ``max_size``), and mirrored too with ``flip``; the detections of
    all runs are merged. detectron2's TEST.AUG settings and defaults."""

    enabled: bool = False
    flip: bool = True
    min_sizes: tuple[PositiveInt, ...] = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
    max_size: PositiveInt = 4000

    def validate(self) -> None:
        _check(not self.enabled or len(self.min_sizes) > 0,
               "test.aug.enabled=true needs at least one size in test.aug.min_sizes, e.g. test.aug.min_sizes=[600,800,1000].")


@dataclass
class TestConfig(Section):
    eval_period: NonNegativeInt = 0  # 0: evaluate only at the end of training
    ims_per_batch: PositiveInt = 1
    # Metric that decides the 'best' checkpoint, e.g. 'bbox/AP' or 'segm/AP'.
    best_metric: str = "bbox/AP"
    # Areas that put segm detections in the small/medium/large ranges: 'mask' (detectron2's
    # evaluator) or 'loadres' (pycocotools' loadRes: box areas, what `swiftdet coco-eval` gives).
    segm_area_from: Literal["mask", "loadres"] = "mask"
    # Per-keypoint OKS sigmas of the keypoint AP; empty: COCO's 17 person sigmas (other keypoint
    # layouts must give one per keypoint).
    keypoint_oks_sigmas: tuple[PositiveFloat, ...] = ()
    # VOC AP of a data.test in format 'voc' (swiftdet.evaluation.voc): 'area' (VOC2010+, the area under
    # the precision envelope) or 'voc07' (VOC2007's 11-point AP, what VOC2007-test results quote).
    voc_metric: Literal["voc07", "area"] = "area"
    # Test-time augmentation of `swiftdet eval`, the evaluations during training and `swiftdet predict`.
    aug: TestAugConfig = field(default_factory=TestAugConfig)


@dataclass
class Config(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: NonNegativeInt = 0
    output_dir: str = "output"

    def validate(self) -> None:
        sigmas, k = self.test.keypoint_oks_sigmas, self.model.keypoint_head.num_keypoints
        # Checked here, not after hours of training when the keypoint AP is first computed.
        _check(not (self.model.keypoint_on and sigmas and len(sigmas) != k),
               f"test.keypoint_oks_sigmas has {len(sigmas)} values but model.keypoint_head.num_keypoints is {k}: "
               "give one sigma per keypoint.")
        _check(not (self.model.keypoint_on and self.data.test.is_set and not sigmas and k != 17),
               f"model.keypoint_head.num_keypoints={k}: the keypoint AP needs test.keypoint_oks_sigmas, one OKS "
               "sigma per keypoint (the default, COCO's person sigmas, has 17).")
        d, fixed = self.input.size_divisibility, self.input.fixed_size
        # SSD lays its default boxes out on the padded batch: padding a fixed-size input past
        # fixed_size would move them off the boxes its weights were trained with.
        _check(not (self.model.arch == "ssd" and self.input.resize == "fixed" and any(v % d for v in fixed)),
               f"input.size_divisibility={d} would pad SSD's input.fixed_size {list(fixed)} to other sizes and move its "
               "default boxes: set input.size_divisibility=1 (or a divisor of both sides).")
        _check_proposal_settings(self)
        aug = self.test.aug
        # Test-time augmentation resizes to each of test.aug.min_sizes and merges detections.
        _check(not (aug.enabled and (self.input.resize == "fixed" or self.model.arch in ("ssd", "rpn"))),
               f"test.aug.enabled=true does not apply to model.arch '{self.model.arch}' with input.resize "
               f"'{self.input.resize}': test-time augmentation resizes the short side to test.aug.min_sizes and merges "
               "detections (R-CNN, RetinaNet, FCOS). Set test.aug.enabled=false.")
        _check(not (aug.enabled and aug.flip and self.model.keypoint_on),
               "test.aug.flip=true with a keypoint model: a mirrored image swaps left and right keypoints, which "
               "test-time augmentation does not map back. Set test.aug.flip=false (sizes only) for keypoint models.")


def _check_proposal_settings(cfg: "Config") -> None:
    """Proposal files and their top-k are read by a Fast R-CNN only, which needs one for each
    dataset it trains or evaluates on."""
    data, precomputed = cfg.data, cfg.model.proposal_generator == "precomputed"
    for name, spec in (("data.train", data.train), ("data.test", data.test)):
        _check(precomputed or not spec.proposals,
               f"{name}.proposals is set but model.proposal_generator is 'rpn': the RPN makes its own proposals. "
               f"Set model.proposal_generator=precomputed (Fast R-CNN) or leave {name}.proposals empty.")
        _check(not (precomputed and spec.is_set and not spec.proposals),
               f"model.proposal_generator 'precomputed' (Fast R-CNN) has no RPN: set {name}.proposals to the proposal "
               f"file of {name} (a detectron2 or mmdetection .pkl).")
    topk = [k for k, v, d in (("data.proposal_topk_train", data.proposal_topk_train, 2000),
                              ("data.proposal_topk_test", data.proposal_topk_test, 1000)) if v != d]
    _check(precomputed or not topk,
           f"{', '.join(topk)} is read by a Fast R-CNN (model.proposal_generator=precomputed) only.")
    _check(not (precomputed and cfg.test.aug.enabled),
           "test.aug.enabled=true with model.proposal_generator=precomputed: test-time augmentation resizes each image "
           "itself and does not move the precomputed proposals. Set test.aug.enabled=false.")


def _record_config_keys(cls: type, prefix: str = "") -> None:
    """Give each section class the dotted keys it sits at (``SolverConfig.config_keys ==
    ("solver",)``), so that an unknown attribute set in a .py config is named by its full key."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            key = f"{prefix}{f.name}"
            tp.config_keys = tuple(tp.__dict__.get("config_keys", ())) + (key,)
            _record_config_keys(tp, key + ".")


_record_config_keys(Config)
