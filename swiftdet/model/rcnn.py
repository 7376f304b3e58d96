"""Faster, Mask and Keypoint R-CNN: backbone (+ FPN), RPN and RoI heads inside the detector shell.

``build_rcnn(cfg)`` assembles the model a ``ModelConfig`` describes, in the FPN layout
(torchvision's fasterrcnn/maskrcnn_resnet50_fpn, v1 and v2), detectron2's C4 layout (RPN on
res4, res5 as the RoI head), or on one backbone feature without FPN (layout 'single', detectron2's DC5).
"""
from __future__ import annotations

import torch
from torch import Tensor

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError, InputError
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.backbone import FPN, MobileNetV3, ResNet, build_fpn, build_mobilenet_v3, build_resnet, make_resnet_stage
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.cascade import CascadeRoIHeads, build_cascade_stages
from swiftdet.model.detector import Detector, check_targets, shell_settings
from swiftdet.model.keypoint_head import KeypointHead
from swiftdet.model.layers import use_weight_standardization
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.roi_heads import BoxHead, BoxPredictor, MaskHead, MultiScaleRoIPooler, Res5BoxHead, RoIHeads
from swiftdet.model.rpn import RPN, RPNHead
from swiftdet.structures import ImageList, Instances

__all__ = ["GeneralizedRCNN", "build_proposal_stage", "build_rcnn", "padded_to_rois"]

_NEEDS_PROPOSALS = ("This Fast R-CNN (model.proposal_generator 'precomputed') has no RPN: it needs each image's "
                    "proposals, model(images, targets, proposals=(boxes (B, P, 4), counts (B,))) in the resized images' "
                    "pixels (swiftdet.data.proposals.batch_proposals of samples loaded with data.*.proposals). To run "
                    "on images alone use the Faster R-CNN (model.proposal_generator 'rpn').")


class GeneralizedRCNN(Detector):
    """Backbone, optional FPN, RPN and RoI heads inside the detector shell (swiftdet.model.detector).

    Args:
        backbone: bottom-up network, a features dict from a (B, 3, H, W) batch.
        fpn: pyramid over the backbone's features, or None (C4 layout).
        rpn: proposals from the features; None for Fast R-CNN (``model.proposal_generator='precomputed'``),
            whose proposals are an input of :meth:`forward`, :meth:`predict` and :meth:`core`.
        roi_heads: box (and mask) heads on the proposals.
        **shell: the :class:`Detector` settings (normalisation, padding, mask threshold).
    """

    def __init__(self, *, backbone: ResNet | MobileNetV3, fpn: FPN | None, rpn: RPN | None, roi_heads: RoIHeads, **shell):
        super().__init__(num_classes=roi_heads.num_classes, **shell)
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads

    @property
    def score_thresh(self) -> float:
        return self.roi_heads.score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.roi_heads.score_thresh = value

    def extract_features(self, images: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        if self.fpn is not None:
            features = self.fpn(features, consume=True)
        return features

    @property
    def needs_proposals(self) -> bool:
        """A Fast R-CNN (no RPN) takes the batch's proposals: (B, P, 4) float32 xyxy boxes in the resized
        images' pixels, zero-padded per image, and their (B,) int64 counts
        (:func:`swiftdet.data.proposals.batch_proposals`); training adds the ground truth to them (the
        RoI heads' sampling)."""
        return self.rpn is None

    def check_proposals(self, proposals: tuple[Tensor, Tensor] | None, num_images: int) -> tuple[Tensor, Tensor]:
        if not self.needs_proposals:
            return super().check_proposals(proposals, num_images)
        if proposals is None:
            raise InputError(_NEEDS_PROPOSALS)
        boxes, counts = proposals
        if boxes.dim() != 3 or boxes.shape[0] != num_images or boxes.shape[2] != 4 or counts.shape != (num_images,):
            raise InputError(f"Fast R-CNN proposals of shapes {tuple(boxes.shape)} and {tuple(counts.shape)} do not fit a "
                             f"batch of {num_images} images: expected (B, P, 4) boxes and (B,) counts.")
        return boxes.to(self.device, torch.float32), counts.to(self.device, torch.int64)

    def core(self, images: Tensor, image_sizes: Tensor,
             proposals: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """The contract's core; a Fast R-CNN's takes a third input, ``proposals`` = ((B, P, 4) float32
        padded boxes, (B,) int64 counts), turned into rois by tensor operations only."""
        features = self.extract_features(images)
        if self.rpn is None:
            if proposals is None:
                raise InputError(_NEEDS_PROPOSALS)
            return self.roi_heads(features, padded_to_rois(*proposals), image_sizes)
        rois, _ = self.rpn(images, image_sizes, features)
        return self.roi_heads(features, rois, image_sizes)

    def losses(self, images: ImageList, targets: list[Instances],
               proposals: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        sizes = torch.tensor(images.image_sizes, dtype=torch.int64, device=images.tensor.device).reshape(-1, 2)
        features = self.extract_features(images.tensor)
        if self.rpn is None:  # Fast R-CNN: the given proposals; the RoI heads' sampling adds the ground truth
            if proposals is None:
                raise InputError(_NEEDS_PROPOSALS)
            boxes, counts = proposals
            return self.roi_heads(features, [b[:n] for b, n in zip(boxes, counts.tolist())], sizes, targets)
        rpn_proposals, rpn_losses = self.rpn(images.tensor, sizes, features, targets)
        return {**rpn_losses, **self.roi_heads(features, rpn_proposals, sizes, targets)}

    def check_targets(self, targets, num_images: int) -> list[Instances]:
        keypoints = self.roi_heads.keypoint_head.num_keypoints if self.roi_heads.keypoint_on else 0
        return check_targets(targets, num_images, self.num_classes, needs_masks=self.roi_heads.mask_on,
                             num_keypoints=keypoints)


def padded_to_rois(boxes: Tensor, counts: Tensor) -> Tensor:
    """(B, P, 4) padded proposals and their (B,) counts -> (R, 5) rois (image index first), by tensor
    operations only (a trace replays them for any counts)."""
    b, p = boxes.shape[:2]
    keep = torch.arange(p, device=boxes.device)[None, :] < counts[:, None]
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(b, p, 1)
    return torch.cat([index, boxes], dim=2)[keep]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def build_proposal_stage(cfg: ModelConfig) -> tuple[ResNet | MobileNetV3, FPN | None, dict[str, tuple[int, int]], RPN]:
    """The first stage of the R-CNN ``cfg`` describes: backbone, FPN (None outside the FPN layout),
    {feature name: (channels, stride)} of the features the heads may read, and the RPN. The RPN-only
    model (``arch='rpn'``) is exactly this stage."""
    if cfg.backbone.name == "mobilenet_v3_large":
        # torchvision's fasterrcnn_mobilenet_v3_large(_320)_fpn: FPN on the last two stages.
        _check(cfg.layout == "fpn", "model.layout 'c4' runs ResNet's res5 as the RoI head: it needs model.backbone.name 'resnet'.")
        backbone = build_mobilenet_v3(cfg.backbone)
    else:
        backbone = build_resnet(cfg.backbone)
    fpn = None
    if cfg.layout == "fpn":
        missing = [f for f in cfg.fpn.in_features if f not in cfg.backbone.out_features]
        _check(not missing, f"model.fpn.in_features {list(cfg.fpn.in_features)} needs {missing} in model.backbone.out_features "
               f"(now {list(cfg.backbone.out_features)}).")
        fpn = build_fpn(cfg, backbone.output_shape())
        shapes = fpn.output_shape()
    else:
        shapes = backbone.output_shape()
    if cfg.layout == "single":
        # detectron2's DC5 models: RPN and RoI heads on one backbone feature (res5, res5_dilation=2).
        _check(len(cfg.rpn.in_features) == 1 and tuple(cfg.box_head.in_features) == tuple(cfg.rpn.in_features),
               f"model.layout 'single' runs the RPN and RoI heads on one backbone feature: model.rpn.in_features and "
               f"model.box_head.in_features must both name the same one (now {list(cfg.rpn.in_features)} and "
               f"{list(cfg.box_head.in_features)}), e.g. ['res5'].")
    rpn_cfg = cfg.rpn
    bad = [f for f in rpn_cfg.in_features if f not in shapes]
    _check(not bad, f"model.rpn.in_features has {bad}, not among the features {sorted(shapes)}.")
    _check(len(rpn_cfg.anchors.sizes) == len(rpn_cfg.in_features),
           f"model.rpn.anchors.sizes has {len(rpn_cfg.anchors.sizes)} levels but model.rpn.in_features has {len(rpn_cfg.in_features)}.")
    channels = {shapes[f][0] for f in rpn_cfg.in_features}
    _check(len(channels) == 1, f"model.rpn.in_features {list(rpn_cfg.in_features)} have different channel counts {sorted(channels)}.")
    anchors = AnchorGenerator(rpn_cfg.anchors.sizes, rpn_cfg.anchors.aspect_ratios, convention=cfg.convention,
                              strides=[shapes[f][1] for f in rpn_cfg.in_features], offset=rpn_cfg.anchors.offset)
    num_anchors = set(anchors.num_anchors_per_location())
    _check(len(num_anchors) == 1, "model.rpn.anchors.sizes must give every level the same number of sizes (one shared RPN head).")
    rpn = RPN(
        rpn_cfg.in_features,
        RPNHead(channels.pop(), num_anchors.pop(), rpn_cfg.num_convs),
        anchors,
        BoxCoder(rpn_cfg.box_reg_weights),
        Matcher(rpn_cfg.fg_iou_thresh, rpn_cfg.bg_iou_thresh, allow_low_quality_matches=True),
        BalancedPositiveNegativeSampler(rpn_cfg.batch_size_per_image, rpn_cfg.positive_fraction),
        pre_nms_topk=(rpn_cfg.pre_nms_topk_train, rpn_cfg.pre_nms_topk_test),
        post_nms_topk=(rpn_cfg.post_nms_topk_train, rpn_cfg.post_nms_topk_test),
        nms_thresh=rpn_cfg.nms_thresh,
        min_box_size=rpn_cfg.min_box_size,
        score_thresh=rpn_cfg.score_thresh,
        smooth_l1_beta=rpn_cfg.smooth_l1_beta,
        loss_weight=rpn_cfg.loss_weight,
        convention=cfg.convention,
    )
    return backbone, fpn, shapes, rpn


def build_rcnn(cfg: ModelConfig, size_divisibility: int = 32) -> GeneralizedRCNN:
    """Faster R-CNN (Mask R-CNN when ``cfg.mask_on``, Keypoint R-CNN when ``cfg.keypoint_on``, or both)
    described by ``cfg``, randomly initialised; its batches are padded to multiples of
    ``size_divisibility`` (``input.size_divisibility``)."""
    cfg.validate()
    k = cfg.num_classes
    backbone, fpn, shapes, rpn = build_proposal_stage(cfg)
    if cfg.proposal_generator == "precomputed":
        rpn = None  # Fast R-CNN: no RPN (nor its weights); the proposals are an input of forward and core

    bh = cfg.box_head
    bad = [f for f in bh.in_features if f not in shapes]
    _check(not bad, f"model.box_head.in_features has {bad}, not among the features {sorted(shapes)}.")
    in_channels = shapes[bh.in_features[0]][0]
    strides = [shapes[f][1] for f in bh.in_features]
    box_pooler = MultiScaleRoIPooler(bh.in_features, strides, bh.pooler_resolution, bh.pooler_sampling_ratio, bh.pooler_aligned,
                                     convention=cfg.convention)
    mask_pooler, mask_head = None, None
    keypoint_pooler, keypoint_head = None, None
    if cfg.layout in ("fpn", "single"):
        def make_box_head() -> BoxHead:  # also called once per further Cascade R-CNN stage
            if bh.head == "2fc":
                return BoxHead(in_channels, bh.pooler_resolution, 0, bh.conv_dim, 2, bh.fc_dim, bh.norm)
            return BoxHead(in_channels, bh.pooler_resolution, 4, bh.conv_dim, 1, bh.fc_dim, bh.norm)

        box_head = make_box_head()
        if cfg.mask_on:
            mh = cfg.mask_head
            mask_pooler = MultiScaleRoIPooler(bh.in_features, strides, mh.pooler_resolution, mh.pooler_sampling_ratio, bh.pooler_aligned,
                                              convention=cfg.convention)
            mask_head = MaskHead(in_channels, mh.num_convs, mh.conv_dim, k, mh.norm)
        if cfg.keypoint_on:
            kh = cfg.keypoint_head
            keypoint_pooler = MultiScaleRoIPooler(bh.in_features, strides, kh.pooler_resolution, kh.pooler_sampling_ratio,
                                                  bh.pooler_aligned, convention=cfg.convention)
            keypoint_head = KeypointHead(in_channels, kh.num_convs, kh.conv_dim, kh.num_keypoints)
    else:
        _check(cfg.backbone.out_features == ("res4",) or "res5" not in cfg.backbone.out_features,
               "The C4 layout runs res5 in the RoI head: model.backbone.out_features must stop at res4.")
        res5, res5_channels = make_resnet_stage(cfg.backbone, 5)
        box_head = Res5BoxHead(res5, res5_channels)
        if cfg.mask_on:
            mh = cfg.mask_head
            mask_head = MaskHead(res5_channels, mh.num_convs, mh.conv_dim, k, mh.norm)
    _check(cfg.cascade.num_stages == 0 or bh.cls_loss == "softmax",
           f"model.box_head.cls_loss='{bh.cls_loss}' is for the plain R-CNN box head: Cascade R-CNN's stages "
           "(model.cascade.num_stages > 0) train a softmax classifier; set model.box_head.cls_loss=softmax.")
    if cfg.cascade.num_stages > 0:
        # Cascade R-CNN (FPN layout only, see the schema): a box head, class-agnostic predictor, box
        # coder and matcher per stage; pooler, sampler, thresholds, mask / keypoint heads as below.
        heads_class, box_stages = CascadeRoIHeads, build_cascade_stages(cfg, box_head, make_box_head)
    else:
        heads_class, box_stages = RoIHeads, (
            box_head,
            BoxPredictor(box_head.out_dim, k, bh.cls_agnostic_bbox_reg, bh.cls_loss, bh.fed_loss_num_classes,
                         bh.fed_loss_freq_weight_power),
            BoxCoder(bh.box_reg_weights),
            Matcher(bh.fg_iou_thresh, bh.bg_iou_thresh, allow_low_quality_matches=False),
        )
    roi_heads = heads_class(
        k,
        box_pooler,
        *box_stages,
        BalancedPositiveNegativeSampler(bh.batch_size_per_image, bh.positive_fraction),
        score_thresh=bh.score_thresh,
        nms_thresh=bh.nms_thresh,
        detections_per_image=bh.detections_per_image,
        smooth_l1_beta=bh.smooth_l1_beta,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_from_box_head=cfg.layout == "c4",
        keypoint_pooler=keypoint_pooler,
        keypoint_head=keypoint_head,
        keypoint_loss_weight=cfg.keypoint_head.loss_weight,
        convention=cfg.convention,
    )
    if cfg.weight_standardization:  # mmdetection's GN+WS: every conv followed by a GroupNorm
        for part in (backbone, fpn, roi_heads):
            if part is not None:
                use_weight_standardization(part)
    return GeneralizedRCNN(
        backbone=backbone, fpn=fpn, rpn=rpn, roi_heads=roi_heads, **shell_settings(cfg, size_divisibility)
    )
