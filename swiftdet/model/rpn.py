"""Region Proposal Network: objectness and box deltas per anchor, losses, proposal selection.

Proposal selection follows torchvision: per level the top-k anchors by objectness, decoding,
clipping, removal of tiny boxes and low scores, NMS within each level (batched over levels), then
the post-NMS top-k per image. Train and test use separate top-k settings.

``convention="detectron2"`` follows its ``find_top_rpn_proposals``: the same steps on the
objectness logits themselves (the scores returned are logits; ``score_thresh`` still applies to
their sigmoid, 0 by default as detectron2 has no such threshold),
keeping boxes whose width and height both exceed ``min_box_size`` (strictly).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.box_coder import BoxCoder, clip_boxes
from swiftdet.model.layers import ConvNormAct
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.nms import best_class_wise_nms, per_image_nms
from swiftdet.model.tracing import is_tracing, traced_min
from swiftdet.structures import Instances

__all__ = ["RPN", "RPNHead"]


class RPNHead(nn.Module):
    """``num_convs`` shared 3x3 convs + ReLU, then 1x1 convs for A objectness logits and 4A deltas."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        self.convs = nn.Sequential(*(ConvNormAct(in_channels, in_channels, 3) for _ in range(num_convs)))
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level (B, A, H, W) logits and (B, 4A, H, W) deltas."""
        logits, deltas = [], []
        for x in features:
            t = self.convs(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


def _flatten_levels(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """(B, sum H*W*A) logits and (B, sum H*W*A, 4) deltas, location-major like the anchors."""
    flat_logits, flat_deltas = [], []
    for lg, dl in zip(logits, deltas):
        b, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(b, -1))
        flat_deltas.append(dl.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


class RPN(nn.Module):
    """Region proposal network over the feature maps named ``in_features``.

    ``forward(images, image_sizes, features, targets)`` returns (per-image (P_i, 4) proposals
    sorted by decreasing objectness, losses) where losses is empty outside training.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 1e-3,
        score_thresh: float = 0.0,
        smooth_l1_beta: float = 1.0 / 9,
        loss_weight: float = 1.0,
        convention: str = "torchvision",
    ):
        super().__init__()
        if convention not in ("torchvision", "detectron2"):
            raise ValueError(f"RPN: unknown convention {convention!r}")
        self.convention = convention
        self.in_features = tuple(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.pre_nms_topk = {True: pre_nms_topk[0], False: pre_nms_topk[1]}
        self.post_nms_topk = {True: post_nms_topk[0], False: post_nms_topk[1]}
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.score_thresh = score_thresh
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight

    def forward(
        self, images: Tensor, image_sizes: Tensor, features: dict[str, Tensor], targets: list[Instances] | None = None,
        *, with_scores: bool = False,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals of each image and, in training, the RPN losses.

        Args:
            images: the (B, C, H, W) padded batch (only its shape is read, for the anchors).
            image_sizes: (B, 2) int64 (height, width) of each image inside the batch.
        Returns:
            per image (P_i, 4) proposals sorted by decreasing objectness; losses (empty outside training).
            With ``with_scores`` (an RPN-only model's output) the first element is the pair (proposals,
            per image (P_i,) objectness scores), traced: ((P, 5) rois, (P,) scores).
        """
        feats = [features[f] for f in self.in_features]
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_per_level = [lg.shape[1] * lg.shape[2] * lg.shape[3] for lg in logits]
        objectness, pred_deltas = _flatten_levels(logits, deltas)
        b = objectness.shape[0]
        proposals = self.box_coder.decode(pred_deltas.detach().reshape(-1, 4), anchors.repeat(b, 1)).view(b, -1, 4)
        if is_tracing() and not self.training:
            rois, roi_scores = self._select_proposals_traced(proposals, logits, image_sizes)
            return ((rois, roi_scores) if with_scores else rois), {}
        boxes, box_scores = self._select_proposals(proposals, objectness.detach(), image_sizes, num_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN needs targets in training mode")
            losses = self._losses(anchors, objectness, pred_deltas, targets)
        return ((boxes, box_scores) if with_scores else boxes), losses

    def _score_and_keep(self, boxes: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of the objectness ``logits`` (...,) and which of their clipped (..., 4) boxes stay."""
        wh = boxes[..., 2:] - boxes[..., :2]
        probs = logits.sigmoid()
        # score_thresh is a probability in both conventions (detectron2 has none: its default 0 keeps all).
        if self.convention == "detectron2":
            return logits, (wh > self.min_box_size).all(dim=-1) & (probs >= self.score_thresh)
        return probs, (wh >= self.min_box_size).all(dim=-1) & (probs >= self.score_thresh)

    def _select_proposals(
        self, proposals: Tensor, objectness: Tensor, image_sizes: Tensor, num_per_level: list[int]
    ) -> tuple[list[Tensor], list[Tensor]]:
        pre_nms = self.pre_nms_topk[self.training]
        post_nms = self.post_nms_topk[self.training]
        b = objectness.shape[0]
        top_idx, level_ids, offset = [], [], 0
        for level, scores in enumerate(objectness.split(num_per_level, dim=1)):
            k = min(pre_nms, scores.shape[1])
            _, idx = scores.topk(k, dim=1)
            top_idx.append(idx + offset)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            offset += scores.shape[1]
        top_idx = torch.cat(top_idx, dim=1)
        levels = torch.cat(level_ids)
        batch_idx = torch.arange(b, device=objectness.device)[:, None]
        proposals = clip_boxes(proposals[batch_idx, top_idx], image_sizes[:, None, :])
        scores, keep_all = self._score_and_keep(proposals, objectness[batch_idx, top_idx])

        out, out_scores = [], []
        for boxes, s, keep in zip(proposals, scores, keep_all):
            keep = torch.nonzero(keep).squeeze(1)
            boxes, s, lvl = boxes[keep], s[keep], levels[keep]
            keep = best_class_wise_nms(boxes, s, lvl, self.nms_thresh, post_nms)[:post_nms]
            out.append(boxes[keep])
            out_scores.append(s[keep])
        return out, out_scores

    def _select_proposals_traced(self, proposals: Tensor, logits: list[Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_select_proposals` for the whole batch at once, in operations a trace records for
        any batch and image size (the eager one loops over images). The same proposals per image,
        returned as (P, 5) rois (image index, x0, y0, x1, y1) grouped by image, and their (P,) scores.

        Args:
            proposals: (B, A, 4) decoded boxes; logits: per level (B, A_l, H_l, W_l) objectness.
        """
        pre_nms, post_nms = self.pre_nms_topk[False], self.post_nms_topk[False]
        b = proposals.shape[0]
        top_idx, level_ids = [], []
        offset = torch.zeros((), dtype=torch.int64, device=proposals.device)
        for level, lg in enumerate(logits):
            scores = lg.detach().permute(0, 2, 3, 1).reshape(b, -1)  # location-major, as _flatten_levels
            _, idx = scores.topk(traced_min(scores, 1, pre_nms), dim=1)
            top_idx.append(idx + offset)
            level_ids.append(torch.zeros_like(idx) + level)
            offset = offset + torch._shape_as_tensor(scores)[1]
        top_idx, levels = torch.cat(top_idx, dim=1), torch.cat(level_ids, dim=1)  # (B, K) each
        images = torch.arange(b, device=proposals.device)[:, None] + torch.zeros_like(top_idx)
        flat_logits = torch.cat([lg.detach().permute(0, 2, 3, 1).reshape(b, -1) for lg in logits], dim=1)
        boxes = clip_boxes(proposals.gather(1, top_idx[:, :, None].expand(-1, -1, 4)), image_sizes[:, None, :])
        boxes, levels, images = boxes.reshape(-1, 4), levels.reshape(-1), images.reshape(-1)
        scores, keep = self._score_and_keep(boxes, flat_logits.gather(1, top_idx).reshape(-1))
        keep = torch.nonzero(keep).squeeze(1)
        boxes, scores, levels, images = boxes[keep], scores[keep], levels[keep], images[keep]
        # NMS within each (image, level); each image's best post_nms by decreasing score, as eager.
        keep, _ = per_image_nms(boxes, scores, levels, images, b, len(logits), self.nms_thresh, post_nms)
        return torch.cat([images[keep, None].to(boxes.dtype), boxes[keep]], dim=1), scores[keep]

    def _losses(self, anchors: Tensor, objectness: Tensor, deltas: Tensor, targets: list[Instances]) -> dict[str, Tensor]:
        """BCE objectness over the sampled anchors, smooth-L1 on positives / number sampled."""
        labels, matched_boxes = [], []
        for t in targets:
            gt = t.boxes.tensor.to(anchors.dtype)
            matches = self.matcher(box_iou(gt, anchors))
            lab = (matches >= 0).to(objectness.dtype)
            lab[matches == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            matched_boxes.append(gt[matches.clamp(min=0)] if len(gt) else torch.zeros_like(anchors))
        pos_masks, neg_masks = self.sampler(labels)
        pos = torch.cat(pos_masks)
        sampled = pos | torch.cat(neg_masks)
        labels_all = torch.cat(labels)
        flat_obj = objectness.reshape(-1)
        flat_deltas = deltas.reshape(-1, 4)
        num_anchors = anchors.shape[0]
        pos_idx = torch.nonzero(pos).squeeze(1)
        targets_pos = self.box_coder.encode(torch.cat(matched_boxes)[pos_idx], anchors[pos_idx % num_anchors])
        num_sampled = sampled.sum().clamp(min=1)
        loss_box = F.smooth_l1_loss(flat_deltas[pos_idx], targets_pos, beta=self.smooth_l1_beta, reduction="sum") / num_sampled
        loss_cls = F.binary_cross_entropy_with_logits(flat_obj[sampled], labels_all[sampled])
        return {"loss_rpn_cls": loss_cls * self.loss_weight, "loss_rpn_box": loss_box * self.loss_weight}
