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
@dataclass
class ResNetConfig(Section):
    depth: Literal[18, 34, 50, 101, 152] = 50
    groups: PositiveInt = 1  # ResNeXt cardinality (32 for X-101 32x8d)
    width_per_group: PositiveInt = 64  # 8 for X-101 32x8d
    # torchvision: stride on the 3x3 conv; caffe (MSRA/Detectron): stride on the first 1x1 conv.
    style: Literal["torchvision", "caffe"] = "torchvision"
    norm: NormName = "FrozenBN"
    # 0: train everything; 1: freeze the stem; k>=2: also freeze res2..res{k}.
    freeze_at: Annotated[int, Range(0, 5)] = 2
    out_features: tuple[str, ...] = ("res2", "res3", "res4", "res5")
    # Optional ImageNet initialisation (path or URL of torchvision's resnet checkpoint).
    weights: str = ""

    def validate(self) -> None:
        _check(self.norm != "", "model.backbone.norm must name a norm layer (FrozenBN, BN, SyncBN or GN).")
        _check(
            not (self.depth in (18, 34) and (self.groups != 1 or self.width_per_group != 64)),
            "ResNet-18/34 use basic blocks: model.backbone.groups must be 1 and width_per_group 64.",
        )
        valid = {"stem", "res2", "res3", "res4", "res5"}
        bad = [f for f in self.out_features if f not in valid]
        _check(not bad, f"model.backbone.out_features has unknown names {bad}; valid: {sorted(valid)}.")


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
    fg_iou_thresh: Probability = 0.5
    bg_iou_thresh: Probability = 0.5
    batch_size_per_image: PositiveInt = 512
    positive_fraction: Fraction = 0.25
    box_reg_weights: tuple[PositiveFloat, PositiveFloat, PositiveFloat, PositiveFloat] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: NonNegativeFloat = 1.0 / 9
    score_thresh: Probability = 0.05
    nms_thresh: Probability = 0.5
    detections_per_image: PositiveInt = 100


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
class ModelConfig(Section):
    arch: Literal["rcnn", "retinanet", "fcos"] = "rcnn"
    # Foreground classes; the only place this number is stated. 0: not given, training takes it from
    # data.train's categories (and the run's config.yaml and checkpoints hold the number it took).
    num_classes: NonNegativeInt = 0
    mask_on: bool = False
    # 'fpn': FPN features for RPN and RoI heads; 'c4': RPN on res4 and res5 as the RoI box head.
    layout: Literal["fpn", "c4"] = "fpn"
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
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)
    fcos: FCOSConfig = field(default_factory=FCOSConfig)
    # Checkpoint of the whole model (ours, or converted) loaded at build time; "" for none.
    weights: str = ""

    def validate(self) -> None:
        _check(not (self.mask_on and self.arch != "rcnn"), f"model.mask_on needs arch 'rcnn' (got '{self.arch}').")
        _check(self.layout == "fpn" or self.arch == "rcnn", "model.layout 'c4' exists only for arch 'rcnn'.")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
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
    resize: Literal["shortest_edge", "fixed"] = "shortest_edge"
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

    def validate(self) -> None:
        _check(len(self.min_size_train) > 0, "input.min_size_train needs at least one size.")
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
    json: str = ""  # COCO-format annotation file
    image_root: str = ""  # folder the json's file_name entries are relative to


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
class TestConfig(Section):
    eval_period: NonNegativeInt = 0  # 0: evaluate only at the end of training
    ims_per_batch: PositiveInt = 1
    # Metric that decides the 'best' checkpoint, e.g. 'bbox/AP' or 'segm/AP'.
    best_metric: str = "bbox/AP"
    # Areas that put segm detections in the small/medium/large ranges: 'mask' (detectron2's
    # evaluator) or 'loadres' (pycocotools' loadRes: box areas, what `swiftdet coco-eval` gives).
    segm_area_from: Literal["mask", "loadres"] = "mask"


@dataclass
class Config(Section):
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: NonNegativeInt = 0
    output_dir: str = "output"


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
