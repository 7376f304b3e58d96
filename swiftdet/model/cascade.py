"""Cascade R-CNN (Cai & Vasconcelos, 2018) box stages, as detectron2's ``CascadeROIHeads``.

Stage 0 runs on the RPN's proposals, stage k + 1 on the (clipped) boxes stage k regressed. Every
stage has its own box head, class-agnostic predictor, box coder weights and, in training, its own
foreground IoU. At test time the class probabilities of all stages are averaged and the boxes are
the last stage's; thresholds, NMS, top-k and the mask / keypoint heads are the plain RoIHeads'.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError
from swiftdet.model.box_coder import BoxCoder, clip_boxes
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.roi_heads import BoxPredictor, MultiScaleRoIPooler, RoIHeads, boxes_to_rois
from swiftdet.structures import Instances

__all__ = ["CascadeRoIHeads", "build_cascade_stages"]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class CascadeRoIHeads(RoIHeads):
    """RoIHeads with ``len(box_heads)`` box stages (``roi_heads.box_heads.{k}``,
    ``roi_heads.box_predictors.{k}``) on one shared box pooler.

    Args:
        box_heads, box_predictors, box_coders, matchers: one per stage; the predictors are
            class-agnostic; matcher k labels stage k's inputs (stage 0: the sampled proposals).
        sampler: samples stage 0's RoIs (later stages train on all of the previous stage's boxes).
        **kwargs: the other :class:`RoIHeads` settings (thresholds, mask and keypoint heads).
    """

    def __init__(
        self,
        num_classes: int,
        box_pooler: MultiScaleRoIPooler,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[BoxPredictor],
        box_coders: Sequence[BoxCoder],
        matchers: Sequence[Matcher],
        sampler: BalancedPositiveNegativeSampler,
        **kwargs,
    ):
        n = len(box_heads)
        if not (n >= 2 and len(box_predictors) == len(box_coders) == len(matchers) == n):
            raise ValueError(f"CascadeRoIHeads: {n} box heads need as many predictors, coders and matchers (2 or more)")
        if not all(p.cls_agnostic for p in box_predictors):
            raise ValueError("CascadeRoIHeads: every stage's box predictor must be class-agnostic")
        # No single box head / predictor: the stages' own sit at box_heads.{k} / box_predictors.{k}.
        # The base's matcher and coder are stage 0's, so its _sample labels the RPN proposals.
        super().__init__(num_classes, box_pooler, None, None, box_coders[0], matchers[0], sampler, **kwargs)
        self.box_heads = nn.ModuleList(box_heads)
        self.box_predictors = nn.ModuleList(box_predictors)
        self.box_coders = list(box_coders)
        self.matchers = list(matchers)

    @property
    def num_stages(self) -> int:
        return len(self.box_heads)

    def _run_stage(self, features: dict[str, Tensor], rois: Tensor, stage: int) -> tuple[Tensor, Tensor]:
        """(R, K + 1) class logits and (R, 4) deltas of stage ``stage`` on (R, 5) rois."""
        pooled = self.box_pooler.pool(features, rois)
        if self.training:
            # As detectron2 (and the paper's code, which averages the stages' losses but scales up the
            # heads' gradients): the stage losses are summed, and the gradient each stage sends back
            # into the shared features is scaled by 1 / num_stages.
            pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictors[stage](self.box_heads[stage](pooled))

    # ---------------------------------------------------------------------------------- training
    @torch.no_grad()
    def _next_proposals(self, boxes: Tensor, image_of_roi: Tensor, image_sizes: Tensor, num_images: int) -> list[Tensor]:
        """Per image the (detached) boxes of a stage, clipped, empty ones (w or h == 0) removed."""
        boxes = clip_boxes(boxes.detach(), image_sizes[image_of_roi])
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return [boxes[(image_of_roi == i) & nonempty] for i in range(num_images)]

    @torch.no_grad()
    def _match(self, proposals: list[Tensor], targets: list[Instances], stage: int) -> tuple[list[Tensor], list[Tensor]]:
        """Labels (1-based, 0 background) and matched ground truth of every proposal at stage's IoU."""
        labels, matched = [], []
        for props, t in zip(proposals, targets):
            gt = t.boxes.tensor.to(props)
            matches = self.matchers[stage](box_iou(gt, props))
            m = matches.clamp(min=0)
            if len(gt) == 0:
                lab = torch.zeros_like(m)
            else:
                lab = t.labels.to(props.device)[m] + 1
                lab[matches < 0] = 0
            labels.append(lab)
            matched.append(m)
        return labels, matched

    def _losses(self, features: dict[str, Tensor], proposals: list[Tensor], targets: list[Instances]) -> dict[str, Tensor]:
        sizes = torch.tensor([t.image_size for t in targets], dtype=torch.int64, device=proposals[0].device)
        # Stage 0: the RPN proposals + ground truth, sampled (RoIHeads._sample with matcher 0). Later
        # stages, as detectron2: all of the previous stage's regressed boxes (those of the ground-truth
        # proposals included), clipped, empty ones dropped, labelled at the stage's IoU, not resampled.
        props0, labels0, matched0 = self._sample(proposals, targets)
        props, labels, matched = props0, labels0, matched0
        losses = {}
        for k in range(self.num_stages):
            rois = boxes_to_rois(props)
            class_logits, deltas = self._run_stage(features, rois, k)
            labels_all = torch.cat(labels)
            pos = torch.nonzero(labels_all > 0).squeeze(1)
            gt_boxes = torch.cat([t.boxes.tensor.to(p)[m] if len(t) else torch.zeros_like(p)
                                  for t, p, m in zip(targets, props, matched)])
            reg_targets = self.box_coders[k].encode(gt_boxes[pos], rois[pos, 1:])
            losses[f"loss_cls_stage{k}"] = F.cross_entropy(class_logits, labels_all)
            losses[f"loss_box_stage{k}"] = F.smooth_l1_loss(
                deltas[pos], reg_targets, beta=self.smooth_l1_beta, reduction="sum") / max(labels_all.numel(), 1)
            if k + 1 < self.num_stages:
                boxes = self.box_coders[k].decode(deltas, rois[:, 1:])
                props = self._next_proposals(boxes, rois[:, 0].to(torch.int64), sizes, len(targets))
                labels, matched = self._match(props, targets, k + 1)
        # The mask and keypoint heads train on stage 0's sampled RoIs (as detectron2).
        if self.mask_on:
            losses["loss_mask"] = self._mask_loss(features, props0, labels0, matched0, targets, None)
        if self.keypoint_on:
            losses["loss_keypoint"] = self._keypoint_loss(features, props0, labels0, matched0, targets) * self.keypoint_loss_weight
        return losses

    # --------------------------------------------------------------------------------- inference
    def _predict(self, features: dict[str, Tensor], rois: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Mean class probabilities of the stages (R, K + 1) and the last stage's clipped boxes
        (R, K + 1, 4, the same box in every slot) of (R, 5) rois."""
        sizes = image_sizes[rois[:, 0].to(torch.int64)]
        stage_rois = rois
        probs = []
        for k in range(self.num_stages):
            class_logits, deltas = self._run_stage(features, stage_rois, k)
            probs.append(F.softmax(class_logits, dim=-1))
            # No empty boxes removed between stages: every stage scores the same R rois.
            boxes = clip_boxes(self.box_coders[k].decode(deltas, stage_rois[:, 1:]), sizes)
            stage_rois = torch.cat([rois[:, :1], boxes], dim=1)
        # detectron2's order of operations: the sum, then times 1 / num_stages.
        mean = sum(probs) * (1.0 / self.num_stages)
        return mean, boxes[:, None, :].expand(-1, mean.shape[1], 4)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def build_cascade_stages(
    cfg: ModelConfig, first_box_head: nn.Module, make_box_head: Callable[[], nn.Module]
) -> tuple[list[nn.Module], list[BoxPredictor], list[BoxCoder], list[Matcher]]:
    """The per-stage box heads (stage 0's given, the others from ``make_box_head``), class-agnostic
    predictors, box coders (``model.cascade.box_reg_weights``) and matchers (``model.cascade.ious``)."""
    cc, bh = cfg.cascade, cfg.box_head
    _check(bh.cls_agnostic_bbox_reg, "model.cascade needs model.box_head.cls_agnostic_bbox_reg=true "
           "(each stage regresses one box for all classes).")
    _check(bh.fg_iou_thresh == bh.bg_iou_thresh == cc.ious[0],
           f"model.cascade.ious[0] ({cc.ious[0]}) labels stage 0: set model.box_head.fg_iou_thresh and bg_iou_thresh "
           f"to it (now {bh.fg_iou_thresh}, {bh.bg_iou_thresh}).")
    _check(tuple(bh.box_reg_weights) == tuple(cc.box_reg_weights[0]),
           f"a cascade's stage weights are model.cascade.box_reg_weights: model.box_head.box_reg_weights "
           f"{tuple(bh.box_reg_weights)} must equal stage 0's {tuple(cc.box_reg_weights[0])}.")
    heads = [first_box_head] + [make_box_head() for _ in range(cc.num_stages - 1)]
    predictors = [BoxPredictor(h.out_dim, cfg.num_classes, cls_agnostic=True) for h in heads]
    coders = [BoxCoder(w) for w in cc.box_reg_weights]
    # One threshold per stage: IoU >= ious[k] foreground, below it background (no ignored band).
    matchers = [Matcher(iou, iou, allow_low_quality_matches=False) for iou in cc.ious]
    return heads, predictors, coders, matchers
