"""Faster R-CNN and Mask R-CNN: backbone (+ FPN), RPN, RoI heads, and the detector contract.

``build_rcnn(cfg)`` assembles the model a ``ModelConfig`` describes, in either the FPN layout
(torchvision's fasterrcnn/maskrcnn_resnet50_fpn, v1 and v2) or detectron2's C4 layout (RPN on
res4, res5 as the RoI head).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError, InputError
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.backbone import FPN, ResNet, build_fpn, build_resnet, make_resnet_stage
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.postprocess import postprocess_instances
from swiftdet.model.roi_heads import BoxHead, BoxPredictor, MaskHead, MultiScaleRoIPooler, Res5BoxHead, RoIHeads
from swiftdet.model.rpn import RPN, RPNHead
from swiftdet.structures import ImageList, Instances

__all__ = ["GeneralizedRCNN", "build_rcnn"]


class GeneralizedRCNN(nn.Module):
    """Backbone, optional FPN, RPN and RoI heads, with the pre/post-processing of the detector contract."""

    def __init__(
        self,
        cfg: ModelConfig,
        backbone: ResNet,
        fpn: FPN | None,
        rpn: RPN,
        roi_heads: RoIHeads,
        size_divisibility: int = 32,
    ):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.fpn = fpn
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.size_divisibility = size_divisibility
        self.input_format = cfg.input_format
        # Not in the state_dict: they come from the config.
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: list[Tensor], original_sizes: list[tuple[int, int]] | None = None) -> ImageList:
        """(3, H_i, W_i) RGB 0-255 images -> normalised, padded batch on the model's device.

        ``original_sizes``: the (h, w) each image had before resizing (default: as given).
        """
        normalised = []
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise InputError(
                    f"Image {i} of the batch has shape {tuple(img.shape)}; the model expects (3, H, W) RGB tensors with values 0-255. "
                    "Convert grayscale or RGBA images to RGB and put channels first."
                )
            x = img.to(self.device, torch.float32, non_blocking=True)
            if self.input_format == "BGR":
                x = x.flip(0)
            normalised.append((x - self.pixel_mean) / self.pixel_std)
        if original_sizes is None:
            original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        return ImageList.from_tensors(normalised, self.size_divisibility, 0.0, original_sizes)

    def extract_features(self, images: ImageList) -> dict[str, Tensor]:
        features = self.backbone(images.tensor)
        if self.fpn is not None:
            features = self.fpn(features)
        return features

    def forward(self, images: ImageList, targets: list[Instances] | None = None):
        """Training: dict of scalar losses. Eval: per-image Instances in resized-image coordinates."""
        if self.training:
            if targets is None or len(targets) != len(images):
                raise InputError("Training a detector needs one target Instances per image (got "
                                 f"{'none' if targets is None else len(targets)} for {len(images)} images).")
            self._check_targets(targets)
            targets = [t.to(self.device) for t in targets]
        features = self.extract_features(images)
        proposals, rpn_losses = self.rpn(images, features, targets if self.training else None)
        results, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets if self.training else None)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return results

    def _check_targets(self, targets: list[Instances]) -> None:
        labels = [t.labels for t in targets if t.labels is not None and len(t) > 0]
        if any(t.labels is None for t in targets):
            raise InputError("Every training target needs labels (Instances.labels).")
        if self.roi_heads.mask_on and any(t.masks is None for t in targets):
            raise InputError("Mask R-CNN training needs masks (Instances.masks) in every target; "
                             "set model.mask_on=false to train boxes only.")
        if labels:
            all_labels = torch.cat([lab.cpu() for lab in labels])
            lo, hi = int(all_labels.min()), int(all_labels.max())
            if lo < 0 or hi >= self.roi_heads.num_classes:
                raise InputError(
                    f"Target labels span [{lo}, {hi}] but model.num_classes is {self.roi_heads.num_classes}: labels "
                    "must be contiguous indices 0..num_classes-1. Check the dataset's category mapping or model.num_classes."
                )

    def postprocess(self, results: list[Instances], images: ImageList) -> list[Instances]:
        """Rescale to the original image sizes; paste masks as (N, H, W) bool at the original size.

        Boxes scale by float32 per-axis ratios and masks are pasted with those boxes, exactly as
        torchvision does; the boxes are then clipped to the original image.
        """
        out = []
        for r, orig in zip(results, images.original_sizes):
            r = postprocess_instances(r, orig, self.cfg.mask_head.mask_threshold)
            out.append(r.with_fields(boxes=r.boxes.clip(orig)))
        return out

    @torch.no_grad()
    def predict(self, images: list[Tensor], original_sizes: list[tuple[int, int]] | None = None) -> list[Instances]:
        """preprocess -> forward (eval) -> postprocess. Leaves the module's train/eval mode as it was."""
        was_training = self.training
        self.eval()
        try:
            batch = self.preprocess(images, original_sizes)
            return self.postprocess(self(batch), batch)
        finally:
            self.train(was_training)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def build_rcnn(cfg: ModelConfig, size_divisibility: int = 32) -> GeneralizedRCNN:
    """Faster R-CNN (or Mask R-CNN when ``cfg.mask_on``) described by ``cfg``, randomly initialised;
    its batches are padded to multiples of ``size_divisibility`` (``input.size_divisibility``)."""
    cfg.validate()
    k = cfg.num_classes
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

    rpn_cfg = cfg.rpn
    bad = [f for f in rpn_cfg.in_features if f not in shapes]
    _check(not bad, f"model.rpn.in_features has {bad}, not among the features {sorted(shapes)}.")
    _check(len(rpn_cfg.anchors.sizes) == len(rpn_cfg.in_features),
           f"model.rpn.anchors.sizes has {len(rpn_cfg.anchors.sizes)} levels but model.rpn.in_features has {len(rpn_cfg.in_features)}.")
    channels = {shapes[f][0] for f in rpn_cfg.in_features}
    _check(len(channels) == 1, f"model.rpn.in_features {list(rpn_cfg.in_features)} have different channel counts {sorted(channels)}.")
    anchors = AnchorGenerator(rpn_cfg.anchors.sizes, rpn_cfg.anchors.aspect_ratios)
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
    )

    bh = cfg.box_head
    bad = [f for f in bh.in_features if f not in shapes]
    _check(not bad, f"model.box_head.in_features has {bad}, not among the features {sorted(shapes)}.")
    in_channels = shapes[bh.in_features[0]][0]
    strides = [shapes[f][1] for f in bh.in_features]
    box_pooler = MultiScaleRoIPooler(bh.in_features, strides, bh.pooler_resolution, bh.pooler_sampling_ratio, bh.pooler_aligned)
    mask_pooler, mask_head = None, None
    if cfg.layout == "fpn":
        if bh.head == "2fc":
            box_head = BoxHead(in_channels, bh.pooler_resolution, 0, bh.conv_dim, 2, bh.fc_dim, bh.norm)
        else:
            box_head = BoxHead(in_channels, bh.pooler_resolution, 4, bh.conv_dim, 1, bh.fc_dim, bh.norm)
        if cfg.mask_on:
            mh = cfg.mask_head
            mask_pooler = MultiScaleRoIPooler(bh.in_features, strides, mh.pooler_resolution, mh.pooler_sampling_ratio, bh.pooler_aligned)
            mask_head = MaskHead(in_channels, mh.num_convs, mh.conv_dim, k, mh.norm)
    else:
        _check(cfg.backbone.out_features == ("res4",) or "res5" not in cfg.backbone.out_features,
               "The C4 layout runs res5 in the RoI head: model.backbone.out_features must stop at res4.")
        res5, res5_channels = make_resnet_stage(cfg.backbone, 5)
        box_head = Res5BoxHead(res5, res5_channels)
        if cfg.mask_on:
            mh = cfg.mask_head
            mask_head = MaskHead(res5_channels, mh.num_convs, mh.conv_dim, k, mh.norm)
    roi_heads = RoIHeads(
        k,
        box_pooler,
        box_head,
        BoxPredictor(box_head.out_dim, k),
        BoxCoder(bh.box_reg_weights),
        Matcher(bh.fg_iou_thresh, bh.bg_iou_thresh, allow_low_quality_matches=False),
        BalancedPositiveNegativeSampler(bh.batch_size_per_image, bh.positive_fraction),
        score_thresh=bh.score_thresh,
        nms_thresh=bh.nms_thresh,
        detections_per_image=bh.detections_per_image,
        smooth_l1_beta=bh.smooth_l1_beta,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_from_box_head=cfg.layout == "c4",
    )
    return GeneralizedRCNN(cfg, backbone, fpn, rpn, roi_heads, size_divisibility)
