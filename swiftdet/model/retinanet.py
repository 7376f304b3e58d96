"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection"), v1 and torchvision's v2.

ResNet + FPN P3-P7, 9 anchors per location (3 scales x 3 aspect ratios), a classification and a
box-regression tower shared across levels, sigmoid focal loss, and an L1 / smooth-L1 / GIoU box
loss. v2 (``retinanet.norm = "GN"``, ``box_loss = "giou"``, ``fpn.top_block = "p6p7_c5"``) is
torchvision's ``retinanet_resnet50_fpn_v2``. Inference and losses follow torchvision's semantics
(per-image loss normalisation, per-level threshold and top-k, class-wise NMS).

``model.convention = "detectron2"`` gives detectron2's RetinaNet instead: size-major anchors at
nominal strides (with its anchor offset), and at inference the threshold on sigmoid probabilities,
class-wise NMS across levels on the unclipped boxes, the per-image cap, then clipping (the shell
drops boxes clipped to nothing). Training uses the same anchors and the losses above, normalised
detectron2's way (a moving average of the foreground count, see :meth:`RetinaNet.loss`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.backbone import FPN, ResNet
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.dense_head import (
    build_backbone_and_fpn,
    batched_detections,
    conv_tower,
    flatten_level_output,
    float32_shapes,
    focal_loss_per_anchor,
    init_prediction_conv,
    logit,
    select_candidates,
)
from swiftdet.model.detector import Detector, shell_settings
from swiftdet.model.matcher import Matcher
from swiftdet.structures import ImageList, Instances

__all__ = ["RetinaNet", "RetinaNetHead", "build_retinanet"]


class RetinaNetHead(nn.Module):
    """Classification and box towers applied to every level with shared weights.

    Args:
        in_channels: channels of every pyramid level.
        num_anchors: anchors per location (A).
        num_classes: foreground classes (K); no background logit (sigmoid per class).
        num_convs: depth of each tower.
        norm: "" or "GN" after each tower conv (the convs then have no bias, as in torchvision).
        prior_prob: initial foreground probability of every class logit.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int, norm: str, prior_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = conv_tower(in_channels, num_convs, norm, conv_bias=norm == "")
        self.box_tower = conv_tower(in_channels, num_convs, norm, conv_bias=norm == "")
        self.cls_score = init_prediction_conv(
            nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, padding=1), prior_prob
        )
        self.bbox_pred = init_prediction_conv(nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: (B, H*W*A, K) class logits and (B, H*W*A, 4) box deltas."""
        logits, deltas = [], []
        for x in features:
            logits.append(flatten_level_output(self.cls_score(self.cls_tower(x)), self.num_classes))
            deltas.append(flatten_level_output(self.bbox_pred(self.box_tower(x)), 4))
        return logits, deltas


class RetinaNet(Detector):
    """RetinaNet detector (see the module docstring). Built by :func:`build_retinanet`.

    Args:
        backbone: bottom-up network, features dict from a (B, 3, H, W) batch.
        fpn: pyramid over the backbone's features producing ``in_features``.
        head: the :class:`RetinaNetHead`.
        anchor_generator: anchors of every level, in the head's output order.
        in_features: the pyramid levels the head reads, finest first.
        box_coder: anchor-relative box encoding.
        matcher: anchor-to-ground-truth assignment by IoU.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        box_loss: "smooth_l1", "l1" or "giou"; smooth_l1_beta: its beta (0 means L1).
        score_thresh, topk_candidates, nms_thresh, detections_per_image: inference (per level:
            candidates above the threshold, at most the top-k; then class-wise NMS and a cap).
        **shell: the :class:`Detector` settings (normalisation, padding, ``convention``, which
            also picks the inference order above).
    """

    def __init__(
        self,
        *,
        backbone: ResNet,
        fpn: FPN,
        head: RetinaNetHead,
        anchor_generator: AnchorGenerator,
        in_features: Sequence[str],
        box_coder: BoxCoder,
        matcher: Matcher,
        focal_alpha: float,
        focal_gamma: float,
        box_loss: str,
        smooth_l1_beta: float,
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_image: int,
        **shell,
    ):
        super().__init__(num_classes=head.num_classes, **shell)
        self.backbone = backbone
        self.fpn = fpn
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = tuple(in_features)
        self.box_coder = box_coder
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        if self.convention == "detectron2":
            # detectron2 divides both losses by a moving average of the batch's foreground anchor
            # count (from 100, momentum 0.9). Training state, not a weight: not in weight files, but
            # in a run's checkpoints (engine.checkpoint.training_buffers), so that a resume is exact.
            self.register_buffer("loss_normalizer", torch.tensor(100.0), persistent=False)

    def _head_outputs(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Per level (B, N_l, K) logits and (B, N_l, 4) deltas, and the (N, 4) anchors of all levels."""
        pyramid = self.fpn(self.backbone(images), consume=True)
        features = [pyramid[f] for f in self.in_features]
        logits, deltas = self.head(features)
        return logits, deltas, self.anchor_generator(images, float32_shapes(features))

    def core(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        logits, deltas, anchors = self._head_outputs(images)
        return self.inference(logits, deltas, anchors, image_sizes)

    def losses(self, images: ImageList, targets: list[Instances]) -> dict[str, Tensor]:
        logits, deltas, anchors = self._head_outputs(images.tensor)
        return self.loss(torch.cat(logits, dim=1), torch.cat(deltas, dim=1), anchors, targets)

    def match(self, anchors: Tensor, targets: list[Instances]) -> tuple[Tensor, Tensor]:
        """Per anchor of each image: class (-1 background, -2 ignored) and matched box.

        Returns:
            labels (B, N) int64 and boxes (B, N, 4) (zeros where unmatched).
        """
        labels, boxes = [], []
        for t in targets:
            gt = t.boxes.tensor.to(device=anchors.device, dtype=anchors.dtype)
            if gt.shape[0] == 0:
                labels.append(torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device))
                boxes.append(anchors.new_zeros(anchors.shape))
                continue
            idx = self.matcher(box_iou(gt, anchors))
            safe = idx.clamp(min=0)
            labels.append(torch.where(idx >= 0, t.labels.to(idx.device)[safe], idx))
            boxes.append(gt[safe])
        return torch.stack(labels), torch.stack(boxes)

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Instances]) -> dict[str, Tensor]:
        """Focal loss and box loss, each normalised per image by its number of foreground anchors
        and averaged over images (torchvision's convention); in detectron2's convention both sums
        over the batch divided by ``loss_normalizer``, first moved towards the batch's foreground
        count (``n <- 0.9 n + 0.1 max(1, #foreground)``, in training).

        Args:
            logits: (B, N, K); deltas: (B, N, 4); anchors: (N, 4).
        """
        logits, deltas = logits.float(), deltas.float()
        labels, matched_boxes = self.match(anchors, targets)
        foreground = labels >= 0
        valid = labels != Matcher.BETWEEN_THRESHOLDS
        num_images = logits.shape[0]
        if self.convention == "detectron2":
            if self.training:
                count = foreground.sum().clamp(min=1).to(self.loss_normalizer.dtype)
                self.loss_normalizer.mul_(0.9).add_(0.1 * count)
            weight = (1.0 / self.loss_normalizer).to(logits.dtype).expand(num_images)
        else:
            # Per-image weight 1 / (max(1, #foreground) * B).
            weight = 1.0 / (foreground.sum(dim=1).clamp(min=1).to(logits.dtype) * num_images)

        img_idx, anchor_idx = foreground.nonzero(as_tuple=True)
        per_anchor = focal_loss_per_anchor(logits, img_idx, anchor_idx, labels[img_idx, anchor_idx], self.focal_alpha,
                                           self.focal_gamma) * valid
        loss_cls = (per_anchor.sum(dim=1) * weight).sum()

        pred = deltas[img_idx, anchor_idx]
        gt = matched_boxes[img_idx, anchor_idx]
        fg_anchors = anchors[anchor_idx]
        if self.box_loss == "giou":
            per_box = generalized_box_iou_loss(self.box_coder.decode(pred, fg_anchors), gt, reduction="none", eps=1e-7)
        else:
            target = self.box_coder.encode(gt, fg_anchors)
            if self.box_loss == "l1" or self.smooth_l1_beta == 0.0:
                per_box = F.l1_loss(pred, target, reduction="none").sum(dim=1)
            else:
                per_box = F.smooth_l1_loss(pred, target, reduction="none", beta=self.smooth_l1_beta).sum(dim=1)
        loss_box = (per_box * weight[img_idx]).sum()
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def inference(self, logits: list[Tensor], deltas: list[Tensor], anchors: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """Raw detections: per level the top-k (anchor, class) pairs whose probability exceeds
        ``score_thresh``, decoded, clipped, class-wise NMS, at most ``detections_per_image``.
        detectron2's convention: the threshold on the probabilities, and NMS and the cap on the
        unclipped boxes, which are clipped afterwards.

        Args:
            logits: per level (B, N_l, K); deltas: per level (B, N_l, 4); anchors: (N, 4) all levels;
            image_sizes: (B, 2) int64.
        """
        detectron2 = self.convention == "detectron2"
        if detectron2:
            # detectron2 thresholds the float32 probabilities themselves (its ``scores > thresh``),
            # so a candidate at the threshold is kept or dropped exactly as there.
            probs = [torch.sigmoid(level.float()) for level in logits]
            img_idx, anchor_idx, labels, scores = select_candidates(probs, self.score_thresh, self.topk_candidates)
        else:
            # sigmoid(x) > t  <=>  x > logit(t): threshold the logits so only candidates get a sigmoid.
            img_idx, anchor_idx, labels, cand_logits = select_candidates(
                logits, logit(self.score_thresh), self.topk_candidates
            )
            scores = torch.sigmoid(cand_logits.float())
        all_deltas = torch.cat(deltas, dim=1).float()
        boxes = self.box_coder.decode(all_deltas[img_idx, anchor_idx], anchors[anchor_idx])
        return batched_detections(
            boxes, scores, labels, img_idx, image_sizes, self.num_classes, self.nms_thresh, self.detections_per_image,
            clip_before_nms=not detectron2,
        )


def build_retinanet(cfg: ModelConfig, size_divisibility: int = 32) -> RetinaNet:
    """RetinaNet described by ``cfg`` (``cfg.arch == "retinanet"``), randomly initialised."""
    rc = cfg.retinanet
    backbone, fpn = build_backbone_and_fpn(cfg, rc.in_features, "retinanet")
    if len(rc.anchors.sizes) != len(rc.in_features):
        raise ConfigError(
            f"model.retinanet.anchors.sizes has {len(rc.anchors.sizes)} levels but model.retinanet.in_features "
            f"has {len(rc.in_features)}; give one tuple of sizes per level."
        )
    # detectron2 places anchors at the levels' nominal strides (8 for p3, ...), torchvision at the
    # padded size over the feature size.
    strides = [fpn.output_shape()[f][1] for f in rc.in_features] if cfg.convention == "detectron2" else None
    anchor_generator = AnchorGenerator(
        rc.anchors.sizes, rc.anchors.aspect_ratios, convention=cfg.convention, strides=strides,
        offset=rc.anchors.offset,
    )
    num_anchors = anchor_generator.num_anchors_per_location()
    if len(set(num_anchors)) != 1:
        raise ConfigError(
            f"model.retinanet.anchors gives {num_anchors} anchors per location on the levels; the shared head "
            "needs the same number on every level (same count of sizes per level)."
        )
    head = RetinaNetHead(fpn.out_channels, num_anchors[0], cfg.num_classes, rc.num_convs, rc.norm, rc.prior_prob)
    return RetinaNet(
        backbone=backbone,
        fpn=fpn,
        head=head,
        anchor_generator=anchor_generator,
        in_features=rc.in_features,
        box_coder=BoxCoder(rc.box_reg_weights),
        matcher=Matcher(rc.fg_iou_thresh, rc.bg_iou_thresh, allow_low_quality_matches=True),
        focal_alpha=rc.focal_alpha,
        focal_gamma=rc.focal_gamma,
        box_loss=rc.box_loss,
        smooth_l1_beta=rc.smooth_l1_beta,
        score_thresh=rc.score_thresh,
        topk_candidates=rc.topk_candidates,
        nms_thresh=rc.nms_thresh,
        detections_per_image=rc.detections_per_image,
        **shell_settings(cfg, size_divisibility),
    )
