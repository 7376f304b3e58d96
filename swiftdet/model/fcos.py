"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection"), as in torchvision.

One point per location of P3-P7 (a square "anchor" of side the level's stride, used only for its
centre and scale), GN towers, per-class sigmoid logits, distances to the four box sides, and a
centre-ness logit. Training: a point is positive for a ground-truth box when it lies inside the box,
within ``center_sampling_radius`` strides of its centre, and the box's largest side distance fits the
level's scale range; ambiguous points take the smallest box. Losses: sigmoid focal loss, GIoU on
the decoded boxes, BCE on centre-ness, all normalised by the batch's number of positives.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.backbone import FPN, ResNet
from swiftdet.model.dense_head import (
    build_backbone_and_fpn,
    batched_detections,
    conv_tower,
    flatten_level_output,
    float32_shapes,
    focal_loss_per_anchor,
    init_prediction_conv,
    select_candidates,
)
from swiftdet.model.detector import Detector, shell_settings
from swiftdet.structures import ImageList, Instances

__all__ = ["FCOS", "FCOSHead", "build_fcos", "fcos_decode", "fcos_encode"]


def fcos_encode(points: Tensor, boxes: Tensor) -> Tensor:
    """(..., 4) distances (left, top, right, bottom) from the centres of ``points`` (square boxes,
    (..., 4) xyxy) to the sides of ``boxes``, in units of the point box's width/height."""
    cx = 0.5 * (points[..., 0] + points[..., 2])
    cy = 0.5 * (points[..., 1] + points[..., 3])
    w = points[..., 2] - points[..., 0]
    h = points[..., 3] - points[..., 1]
    return torch.stack(
        ((cx - boxes[..., 0]) / w, (cy - boxes[..., 1]) / h, (boxes[..., 2] - cx) / w, (boxes[..., 3] - cy) / h), dim=-1
    )


def fcos_decode(distances: Tensor, points: Tensor) -> Tensor:
    """Inverse of :func:`fcos_encode`: (..., 4) xyxy boxes."""
    points = points.to(distances.dtype)
    cx = 0.5 * (points[..., 0] + points[..., 2])
    cy = 0.5 * (points[..., 1] + points[..., 3])
    w = points[..., 2] - points[..., 0]
    h = points[..., 3] - points[..., 1]
    d = distances * torch.stack((w, h, w, h), dim=-1)
    return torch.stack((cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]), dim=-1)


class FCOSHead(nn.Module):
    """Classification tower, and a box tower feeding both the side distances and centre-ness.

    Args:
        in_channels: channels of every pyramid level.
        num_classes: foreground classes (K).
        num_convs: depth of each tower (convs keep their bias, as in torchvision's FCOS).
        norm: "" or "GN".
        prior_prob: initial foreground probability of every class logit.
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int, norm: str, prior_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = conv_tower(in_channels, num_convs, norm, conv_bias=True)
        self.box_tower = conv_tower(in_channels, num_convs, norm, conv_bias=True)
        self.cls_score = init_prediction_conv(nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1), prior_prob)
        self.bbox_pred = init_prediction_conv(nn.Conv2d(in_channels, 4, kernel_size=3, padding=1))
        self.ctrness = init_prediction_conv(nn.Conv2d(in_channels, 1, kernel_size=3, padding=1))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: (B, H*W, K) class logits, (B, H*W, 4) non-negative side distances (in units
        of the level's point size) and (B, H*W, 1) centre-ness logits."""
        logits, distances, ctrness = [], [], []
        for x in features:
            logits.append(flatten_level_output(self.cls_score(self.cls_tower(x)), self.num_classes))
            box_features = self.box_tower(x)
            distances.append(flatten_level_output(F.relu(self.bbox_pred(box_features)), 4))
            ctrness.append(flatten_level_output(self.ctrness(box_features), 1))
        return logits, distances, ctrness


class FCOS(Detector):
    """FCOS detector (see the module docstring). Built by :func:`build_fcos`.

    Args:
        backbone, fpn: bottom-up network and pyramid producing ``in_features``.
        head: the :class:`FCOSHead`.
        point_generator: one square box per location, of side the level's stride.
        in_features: the pyramid levels the head reads, finest first.
        center_sampling_radius: positives lie within this many strides of a box's centre.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        score_thresh, topk_candidates, nms_thresh, detections_per_image: inference settings.
        **shell: the :class:`Detector` settings (normalisation, padding).
    """

    def __init__(
        self,
        *,
        backbone: ResNet,
        fpn: FPN,
        head: FCOSHead,
        point_generator: AnchorGenerator,
        in_features: Sequence[str],
        center_sampling_radius: float,
        focal_alpha: float,
        focal_gamma: float,
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
        self.point_generator = point_generator
        self.in_features = tuple(in_features)
        self.center_sampling_radius = center_sampling_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    def _head_outputs(self, images: Tensor):
        """Per level (B, N_l, K) logits, (B, N_l, 4) distances, (B, N_l, 1) centre-ness, the (N, 4)
        points of all levels, and the number of points per level."""
        pyramid = self.fpn(self.backbone(images), consume=True)
        features = [pyramid[f] for f in self.in_features]
        logits, distances, ctrness = self.head(features)
        points = self.point_generator(images, float32_shapes(features))
        return logits, distances, ctrness, points, [x.shape[-2] * x.shape[-1] for x in features]

    def core(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        logits, distances, ctrness, points, _ = self._head_outputs(images)
        return self.inference(logits, distances, ctrness, points, image_sizes)

    def losses(self, images: ImageList, targets: list[Instances]) -> dict[str, Tensor]:
        logits, distances, ctrness, points, level_sizes = self._head_outputs(images.tensor)
        return self.loss(torch.cat(logits, 1), torch.cat(distances, 1), torch.cat(ctrness, 1), points, level_sizes, targets)

    def match(self, points: Tensor, level_sizes: list[int], targets: list[Instances]) -> tuple[Tensor, Tensor]:
        """Per point of each image: class (-1 background) and assigned box.

        Args:
            points: (N, 4) square point boxes of all levels; level_sizes: points per level.
        Returns:
            labels (B, N) int64 and boxes (B, N, 4) (zeros where unmatched).
        """
        radius = self.center_sampling_radius
        centers = 0.5 * (points[:, :2] + points[:, 2:])  # (N, 2)
        sizes = points[:, 2] - points[:, 0]  # (N,)
        # Scale range of each level: the largest side distance must lie in (4 * size, 8 * size),
        # open below on the finest level and above on the coarsest.
        lower = sizes * 4
        lower[: level_sizes[0]] = 0
        upper = sizes * 8
        upper[-level_sizes[-1]:] = float("inf")

        labels, boxes = [], []
        for t in targets:
            gt = t.boxes.tensor.to(device=points.device, dtype=points.dtype)
            if gt.shape[0] == 0:
                labels.append(torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device))
                boxes.append(points.new_zeros(points.shape))
                continue
            gt_centers = 0.5 * (gt[:, :2] + gt[:, 2:])  # (M, 2)
            near_center = (centers[:, None, :] - gt_centers[None]).abs().amax(dim=2) < radius * sizes[:, None]
            x, y = centers[:, 0:1], centers[:, 1:2]
            sides = torch.stack([x - gt[None, :, 0], y - gt[None, :, 1], gt[None, :, 2] - x, gt[None, :, 3] - y], dim=2)
            inside = sides.amin(dim=2) > 0
            reach = sides.amax(dim=2)
            in_scale = (reach > lower[:, None]) & (reach < upper[:, None])
            candidate = near_center & inside & in_scale  # (N, M)
            # Several boxes: the smallest wins (largest 1e8 - area, as torchvision scores them).
            area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
            score = candidate.to(torch.float32) * (1e8 - area[None, :])
            best, idx = score.max(dim=1)
            idx[best < 1e-5] = -1
            safe = idx.clamp(min=0)
            labels.append(torch.where(idx >= 0, t.labels.to(idx.device)[safe], idx))
            boxes.append(gt[safe])
        return torch.stack(labels), torch.stack(boxes)

    def loss(
        self,
        logits: Tensor,
        distances: Tensor,
        ctrness: Tensor,
        points: Tensor,
        level_sizes: list[int],
        targets: list[Instances],
    ) -> dict[str, Tensor]:
        """Focal, GIoU and centre-ness losses, each summed and divided by max(1, #positives).

        Args:
            logits: (B, N, K); distances: (B, N, 4); ctrness: (B, N, 1); points: (N, 4).
        """
        logits, distances, ctrness = logits.float(), distances.float(), ctrness.float()
        labels, matched_boxes = self.match(points, level_sizes, targets)
        foreground = labels >= 0
        img_idx, point_idx = foreground.nonzero(as_tuple=True)
        normaliser = foreground.sum().clamp(min=1).to(logits.dtype)

        loss_cls = focal_loss_per_anchor(logits, img_idx, point_idx, labels[img_idx, point_idx], self.focal_alpha,
                                         self.focal_gamma).sum()

        fg_points = points[point_idx]
        gt = matched_boxes[img_idx, point_idx]
        pred_boxes = fcos_decode(distances[img_idx, point_idx], fg_points)
        loss_box = generalized_box_iou_loss(pred_boxes, gt, reduction="sum", eps=1e-7)

        # Centre-ness target: sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), positives only.
        sides = fcos_encode(fg_points, gt)
        lr, tb = sides[:, [0, 2]], sides[:, [1, 3]]
        ctr_target = torch.sqrt((lr.amin(dim=1) / lr.amax(dim=1)) * (tb.amin(dim=1) / tb.amax(dim=1)))
        loss_ctr = F.binary_cross_entropy_with_logits(ctrness[img_idx, point_idx, 0], ctr_target, reduction="sum")
        return {"loss_cls": loss_cls / normaliser, "loss_box": loss_box / normaliser, "loss_ctr": loss_ctr / normaliser}

    def inference(
        self,
        logits: list[Tensor],
        distances: list[Tensor],
        ctrness: list[Tensor],
        points: Tensor,
        image_sizes: Tensor,
    ) -> dict[str, Tensor]:
        """Raw detections; the score is sqrt(class probability * centre-ness probability).

        Args:
            per level (B, N_l, K) logits, (B, N_l, 4) distances, (B, N_l, 1) centre-ness; points (N, 4);
            image_sizes (B, 2) int64.
        """
        level_scores = [torch.sqrt(torch.sigmoid(c.float()) * torch.sigmoid(q.float())) for c, q in zip(logits, ctrness)]
        img_idx, point_idx, labels, scores = select_candidates(level_scores, self.score_thresh, self.topk_candidates)
        all_distances = torch.cat(distances, dim=1).float()
        boxes = fcos_decode(all_distances[img_idx, point_idx], points[point_idx])
        return batched_detections(
            boxes, scores, labels, img_idx, image_sizes, self.num_classes, self.nms_thresh, self.detections_per_image
        )


def build_fcos(cfg: ModelConfig, size_divisibility: int = 32) -> FCOS:
    """FCOS described by ``cfg`` (``cfg.arch == "fcos"``), randomly initialised."""
    fc = cfg.fcos
    if cfg.convention != "torchvision":
        raise ConfigError(
            f"model.convention '{cfg.convention}' is not available for arch 'fcos': detectron2's model zoo has no "
            "FCOS, so FCOS follows torchvision's conventions only; set model.convention=torchvision."
        )
    backbone, fpn = build_backbone_and_fpn(cfg, fc.in_features, "fcos")
    # One point per location whose square "anchor" has the level's stride as its side.
    strides = [fpn.output_shape()[f][1] for f in fc.in_features]
    point_generator = AnchorGenerator([(float(s),) for s in strides], (1.0,))
    head = FCOSHead(fpn.out_channels, cfg.num_classes, fc.num_convs, fc.norm, fc.prior_prob)
    return FCOS(
        backbone=backbone,
        fpn=fpn,
        head=head,
        point_generator=point_generator,
        in_features=fc.in_features,
        center_sampling_radius=fc.center_sampling_radius,
        focal_alpha=fc.focal_alpha,
        focal_gamma=fc.focal_gamma,
        score_thresh=fc.score_thresh,
        topk_candidates=fc.topk_candidates,
        nms_thresh=fc.nms_thresh,
        detections_per_image=fc.detections_per_image,
        **shell_settings(cfg, size_divisibility),
    )
