"""Second stage of Faster/Mask R-CNN: RoI pooling, box and mask heads, their losses and inference.

Class layout follows torchvision: the box classifier has num_classes + 1 outputs with background
at index 0, box regression and mask logits are class-specific over the same num_classes + 1
slots. Labels handed out are 0-based foreground indices.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from swiftdet.model.box_coder import BoxCoder, clip_boxes
from swiftdet.model.keypoint_head import KeypointHead, heatmaps_to_keypoints, keypoint_loss
from swiftdet.model.layers import ConvNormAct, linear_relu
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.nms import per_image_nms
from swiftdet.model.roi_align import _gather_applies, roi_align
from swiftdet.model.tracing import is_tracing
from swiftdet.structures import Instances

__all__ = [
    "BoxHead", "BoxPredictor", "MaskHead", "MultiScaleRoIPooler", "Res5BoxHead", "RoIHeads", "boxes_to_rois",
    "federated_classes", "sigmoid_classification_loss",
]


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """(R, 5) rois (batch index, x0, y0, x1, y1) from per-image (R_i, 4) boxes."""
    cat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, cat], dim=1)


# RoIs pooled per call in inference (bounds the pooler's temporaries, large enough for full-speed calls).
_POOL_CHUNK = 256


class MultiScaleRoIPooler(nn.Module):
    """RoIAlign from the level chosen by box size (FPN paper eq. 1, as in torchvision).

    A box of side sqrt(area) goes to level floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to
    the available levels; in detectron2's convention (its ``assign_boxes_to_levels``) to
    floor(4 + log2(sqrt(area) / 224 + 1e-8)).

    Args:
        in_features: feature names, finest first; their strides are powers of two.
        strides: stride of each feature.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        strides: Sequence[int],
        output_size: int,
        sampling_ratio: int,
        aligned: bool = False,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
        convention: str = "torchvision",
    ):
        super().__init__()
        if convention not in ("torchvision", "detectron2"):
            raise ValueError(f"MultiScaleRoIPooler: unknown convention {convention!r}")
        self.convention = convention
        self.in_features = tuple(in_features)
        self.scales = [1.0 / s for s in strides]
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.k_min = int(round(math.log2(strides[0])))
        self.k_max = int(round(math.log2(strides[-1])))
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, features: dict[str, Tensor], boxes: Sequence[Tensor]) -> Tensor:
        """(R, C, S, S) pooled features of the per-image (R_i, 4) boxes of every image, in order."""
        return self.pool(features, boxes_to_rois(boxes))

    def pool(self, features: dict[str, Tensor], rois: Tensor) -> Tensor:
        """(R, C, S, S) pooled features of (R, 5) rois (batch index, x0, y0, x1, y1)."""
        feats = [features[f] for f in self.in_features]
        if len(feats) == 1:
            return roi_align(feats[0], rois, self.output_size, self.scales[0], self.sampling_ratio, self.aligned)
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        if self.convention == "detectron2":
            levels = torch.floor(self.canonical_level + torch.log2(area.sqrt() / self.canonical_scale + 1e-8))
        else:
            levels = torch.floor(
                self.canonical_level + torch.log2(area.sqrt() / self.canonical_scale) + torch.tensor(1e-6, dtype=area.dtype)
            )
        levels = levels.clamp(min=self.k_min, max=self.k_max).to(torch.int64) - self.k_min
        c = feats[0].shape[1]
        # In inference the gathering roi_align's channels-last rows keep their layout (the mask head's
        # convs want it); in training the rows are put in NCHW order, so that the box head's flatten
        # is a view, not a second copy of every pooled feature kept for the backward.
        inference = not (torch.is_grad_enabled() and feats[0].requires_grad)
        layout = torch.channels_last if inference and _gather_applies(feats[0]) else torch.contiguous_format
        shape = (rois.shape[0], c) + self.output_size
        # Allocated in its layout at once: a .contiguous() of NCHW zeros would hold the pooled size twice.
        out = feats[0].new_zeros(shape) if is_tracing() else torch.empty(
            shape, dtype=feats[0].dtype, device=feats[0].device, memory_format=layout).zero_()
        for level, (feat, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if is_tracing():
                # Exporters write index_copy_ as a ScatterElements whose index is expanded to every
                # pooled value (an R x C x S x S int64 tensor): 28% of an onnxruntime batch-4 Mask
                # R-CNN run. A row index_put is a ScatterND of R rows.
                pooled = roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio, self.aligned)
                out = out.index_put((idx,), pooled.to(out.dtype))
                continue
            # In inference a few hundred RoIs at a time, so a level's pooled rows are not held a second
            # time beside ``out`` (most RoIs often fall on one level).
            for part in idx.split(_POOL_CHUNK) if inference else (idx,):
                pooled = roi_align(feat, rois[part], self.output_size, scale, self.sampling_ratio, self.aligned)
                out.index_copy_(0, part, pooled.to(out.dtype))
        return out


class BoxHead(nn.Module):
    """``num_convs`` 3x3 convs (with norm) then ``num_fcs`` fully connected layers, all with ReLU.

    torchvision v1 is 0 convs + 2 fcs ("2fc"); v2 is 4 convs with BN + 1 fc ("4conv1fc").
    """

    def __init__(
        self, in_channels: int, resolution: int, num_convs: int, conv_dim: int, num_fcs: int, fc_dim: int, norm: str = ""
    ):
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvNormAct(in_channels if i == 0 else conv_dim, conv_dim, 3, norm=norm) for i in range(num_convs))
        )
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        flat = (conv_dim if num_convs > 0 else in_channels) * resolution * resolution
        self.resolution = resolution
        self.fcs = nn.ModuleList(nn.Linear(flat if i == 0 else fc_dim, fc_dim) for i in range(num_fcs))
        self.out_dim = fc_dim if num_fcs > 0 else flat
        # The first fc reads each RoI's features in (C, S, S) order; (S, S, C) after use_channels_last_rows.
        self.hwc_rows = False

    def use_channels_last_rows(self) -> None:
        """Reorder the first fc's input columns to (S, S, C), so that a channels-last (R, C, S, S)
        input (the fused model's pooled features) flattens as a view instead of a copy of every
        pooled feature (1000 x 12544 floats for an R50-FPN). Called by ``fuse_for_inference`` on its
        own copy; the outputs are the same up to float rounding, on any input layout."""
        if self.hwc_rows or not self.fcs:
            return
        fc = self.fcs[0]
        c = fc.in_features // self.resolution**2
        w = fc.weight.detach().reshape(fc.out_features, c, self.resolution, self.resolution)
        fc.weight = nn.Parameter(w.permute(0, 2, 3, 1).reshape(fc.out_features, -1).contiguous(),
                                 requires_grad=fc.weight.requires_grad)
        self.hwc_rows = True

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, out_dim)."""
        x = self.convs(x)
        # Channels-last pooled features are the fused model's inference path (see linear_relu).
        onednn = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x.permute(0, 2, 3, 1).flatten(1) if self.hwc_rows else x.flatten(1)
        for fc in self.fcs:
            x = linear_relu(fc, x, onednn)
        return x


class Res5BoxHead(nn.Module):
    """C4 layout: the res5 stage run on 14x14 RoI features, then global average pooling."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_dim = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


CLS_LOSSES = ("softmax", "sigmoid", "federated")


class BoxPredictor(nn.Module):
    """Class scores over num_classes + 1 (background first) and box deltas: class-specific over the
    same K + 1 slots, or one class-agnostic regression (``cls_agnostic``, 4 outputs).

    ``cls_loss`` is how the scores are trained and read, as detectron2's ``FastRCNNOutputLayers``:
    'softmax' (cross entropy over the K + 1 scores, softmax probabilities); 'sigmoid' (one binary
    cross entropy per foreground class, summed and divided by the number of RoIs; probabilities are
    sigmoids); 'federated' (the sigmoid loss over the classes :func:`federated_classes` draws each
    iteration only). In both sigmoid forms the background score is kept (detectron2's checkpoints
    have it) but neither trained nor read.

    With 'federated' the buffer ``fed_loss_cls_weights`` (K,) holds each class's weight for the
    draw, (training images holding the class) ** ``fed_loss_freq_weight_power`` (detectron2's
    buffer of the same name); :meth:`set_class_image_counts` fills it before training and the
    checkpoint keeps it. It starts at zero: training refuses to draw from unset weights.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        cls_agnostic: bool = False,
        cls_loss: str = "softmax",
        fed_loss_num_classes: int = 50,
        fed_loss_freq_weight_power: float = 0.5,
    ):
        super().__init__()
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"BoxPredictor: unknown cls_loss {cls_loss!r}, not one of {CLS_LOSSES}")
        self.cls_agnostic = cls_agnostic
        self.cls_loss = cls_loss
        self.fed_loss_num_classes = fed_loss_num_classes
        self.fed_loss_freq_weight_power = fed_loss_freq_weight_power
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4 if cls_agnostic else (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        if cls_loss == "federated":
            self.register_buffer("fed_loss_cls_weights", torch.zeros(num_classes))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, D) -> (R, K+1) logits, (R, 4(K+1)) deltas, in float32 also under autocast: these two
        small layers decide every box and score (bf16 deltas would move boxes by ~0.4%)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return self.cls_score(x), self.bbox_pred(x)

    def set_class_image_counts(self, counts: Tensor) -> None:
        """Federated loss: the draw weights from (K,) counts of training images holding each class."""
        if self.cls_loss != "federated":
            raise ValueError(f"BoxPredictor: class image counts serve the federated loss, not cls_loss={self.cls_loss!r}")
        counts = torch.as_tensor(counts, dtype=torch.float32).reshape(-1)
        if counts.shape != self.fed_loss_cls_weights.shape:
            raise ValueError(f"BoxPredictor: {counts.numel()} class image counts for {self.fed_loss_cls_weights.numel()} classes")
        self.fed_loss_cls_weights.copy_(counts ** self.fed_loss_freq_weight_power)

    def classification_loss(self, class_logits: Tensor, labels: Tensor) -> Tensor:
        """Scalar loss of (R, K + 1) logits against (R,) labels (0 background, 1..K foreground)."""
        if self.cls_loss == "softmax":
            return F.cross_entropy(class_logits, labels)
        mask = None
        if self.cls_loss == "federated":
            if not bool((self.fed_loss_cls_weights > 0).any()):
                raise ValueError("BoxPredictor: the federated loss's class weights are unset (all zero): call "
                                 "set_class_image_counts with the training set's per-class image counts first "
                                 "(swiftdet train does it from data.train)")
            mask = federated_classes(labels, self.fed_loss_num_classes, self.fed_loss_cls_weights)
        return sigmoid_classification_loss(class_logits, labels, mask)

    def class_probs(self, class_logits: Tensor) -> Tensor:
        """(R, K + 1) probabilities of (R, K + 1) logits: softmax, or per-class sigmoids (detectron2's predict_probs)."""
        if self.cls_loss == "softmax":
            return F.softmax(class_logits, dim=-1)
        return class_logits.sigmoid()


def sigmoid_classification_loss(class_logits: Tensor, labels: Tensor, class_mask: Tensor | None = None) -> Tensor:
    """detectron2's ``sigmoid_cross_entropy_loss`` in swiftdet's layout: binary cross entropy of the K
    foreground logits of (R, K + 1) ``class_logits`` (background first) against one-hot targets of (R,)
    ``labels`` (0: background, all targets zero), summed over classes and RoIs and divided by R.
    ``class_mask`` (K,) keeps the loss of the classes it marks only (the federated loss)."""
    num_rois = class_logits.shape[0]
    if num_rois == 0:
        return class_logits.sum() * 0.0
    logits = class_logits[:, 1:]
    classes = torch.arange(1, class_logits.shape[1], device=labels.device)
    if class_mask is not None:
        # Only the kept columns: the same sum as masking every term, at a fraction of LVIS's 1203.
        keep = torch.nonzero(class_mask).squeeze(1)
        logits, classes = logits[:, keep], classes[keep]
    target = (labels[:, None] == classes[None, :]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / num_rois


def federated_classes(labels: Tensor, num_fed_classes: int, weights: Tensor) -> Tensor:
    """(K,) bool: the foreground classes of this iteration's federated loss (detectron2's
    ``get_fed_loss_classes``, from CenterNet2): every class among the (R,) sampled RoIs' labels, plus
    classes drawn without replacement with probability proportional to (K,) ``weights`` until
    ``num_fed_classes`` are chosen.

    As in detectron2, the background (when some RoI is background) counts as one of the
    ``num_fed_classes`` though it is never in the loss, and the draw is one ``torch.multinomial`` over
    the K + 1 slots in detectron2's order (foreground 0..K-1, background last, weight 0), so that it
    picks what detectron2 picks from the same random state. Where fewer classes than wanted have a
    weight above zero all of them are taken (detectron2's multinomial would fail there).
    """
    k = weights.shape[0]
    present = torch.unique(torch.where(labels == 0, k, labels - 1))  # detectron2's numbering
    chosen = torch.zeros(k + 1, dtype=torch.bool, device=labels.device)
    chosen[present] = True
    wanted = num_fed_classes - present.numel()
    if wanted > 0:
        prob = weights.detach().float().to(labels.device).clone()
        prob = torch.cat([prob, prob.new_zeros(1)])
        prob[present] = 0
        wanted = min(wanted, int((prob > 0).sum()))
        if wanted > 0:
            chosen[torch.multinomial(prob, wanted, replacement=False)] = True
    return chosen[:k]


class MaskHead(nn.Module):
    """``num_convs`` 3x3 convs (with norm), a 2x2 stride-2 deconv, ReLU, 1x1 per-class logits.

    Output (R, num_classes + 1, 2S, 2S) for (R, C, S, S) input; channel 0 (background) is unused.
    """

    def __init__(self, in_channels: int, num_convs: int, conv_dim: int, num_classes: int, norm: str = ""):
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvNormAct(in_channels if i == 0 else conv_dim, conv_dim, 3, norm=norm) for i in range(num_convs))
        )
        self.deconv = nn.ConvTranspose2d(conv_dim if num_convs > 0 else in_channels, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes + 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, slots: Tensor | None = None) -> Tensor:
        """(R, C, S, S) -> (R, num_classes + 1, 2S, 2S) logits; with (R,) int64 ``slots``, only each
        RoI's slot: (R, 2S, 2S). Inference needs one class per detection; the 1x1 predictor over every
        class (91 for COCO) would compute them all for each of the 100 detections."""
        features = F.relu(self.deconv(self.convs(x)))
        if slots is None:
            return self.predictor(features)
        weight = self.predictor.weight[slots, :, 0, 0]  # (R, C)
        return torch.einsum("rchw,rc->rhw", features, weight) + self.predictor.bias[slots][:, None, None]


class RoIHeads(nn.Module):
    """Box (and optionally mask and keypoint) heads on the RPN's proposals.

    With ``mask_from_box_head`` (C4 layout) the mask head reads the res5 maps of the box head
    instead of pooling its own features.
    """

    def __init__(
        self,
        num_classes: int,
        box_pooler: MultiScaleRoIPooler,
        box_head: nn.Module,
        box_predictor: BoxPredictor,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        smooth_l1_beta: float = 1.0 / 9,
        mask_pooler: MultiScaleRoIPooler | None = None,
        mask_head: MaskHead | None = None,
        mask_from_box_head: bool = False,
        keypoint_pooler: MultiScaleRoIPooler | None = None,
        keypoint_head: KeypointHead | None = None,
        keypoint_loss_weight: float = 1.0,
        convention: str = "torchvision",
    ):
        super().__init__()
        if convention not in ("torchvision", "detectron2"):
            raise ValueError(f"RoIHeads: unknown convention {convention!r}")
        self.convention = convention
        self.num_classes = num_classes
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.mask_from_box_head = mask_from_box_head
        self.keypoint_pooler = keypoint_pooler
        self.keypoint_head = keypoint_head
        self.keypoint_loss_weight = keypoint_loss_weight

    @property
    def mask_on(self) -> bool:
        return self.mask_head is not None

    @property
    def keypoint_on(self) -> bool:
        return self.keypoint_head is not None

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: Tensor,
        targets: list[Instances] | None = None,
    ) -> dict[str, Tensor]:
        """Training: the scalar losses. Eval: raw detections (see swiftdet.model.detector): boxes,
        scores, 0-based labels, num_detections, mask_probs (N, M, M) with a mask head, and
        keypoints (N, K, 3) x, y, score with a keypoint head.

        Args:
            proposals: per image (P_i, 4) boxes, or at inference (P, 5) rois (image index first);
                image_sizes: (B, 2) int64 (height, width).
        """
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            return self._losses(features, proposals, targets)
        return self._inference(features, proposals, image_sizes)

    # ---------------------------------------------------------------------------------- training
    def _sample(self, proposals: list[Tensor], targets: list[Instances]):
        """Add the ground truth to the proposals, match, sample.

        Returns per-image sampled proposals, their labels (1-based, 0 = background), and the
        index of the matched ground truth (valid where label > 0).
        """
        labels, matched = [], []
        all_props = []
        for props, t in zip(proposals, targets):
            gt = t.boxes.tensor.to(props.dtype)
            props = torch.cat([props, gt])
            if len(gt) == 0:
                m = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                lab = torch.zeros_like(m)
            else:
                matches = self.matcher(box_iou(gt, props))
                m = matches.clamp(min=0)
                lab = t.labels.to(props.device)[m] + 1
                lab[matches == Matcher.BELOW_LOW_THRESHOLD] = 0
                lab[matches == Matcher.BETWEEN_THRESHOLDS] = -1
            all_props.append(props)
            labels.append(lab)
            matched.append(m)
        pos_masks, neg_masks = self.sampler(labels)
        out_props, out_labels, out_matched = [], [], []
        for props, lab, m, pos, neg in zip(all_props, labels, matched, pos_masks, neg_masks):
            idx = torch.nonzero(pos | neg).squeeze(1)
            out_props.append(props[idx])
            out_labels.append(lab[idx])
            out_matched.append(m[idx])
        return out_props, out_labels, out_matched

    def _losses(self, features: dict[str, Tensor], proposals: list[Tensor], targets: list[Instances]) -> dict[str, Tensor]:
        props, labels, matched = self._sample(proposals, targets)
        pooled = self.box_pooler(features, props)
        if self.mask_from_box_head:
            res5_maps = self.box_head.res5(pooled)
            box_features = res5_maps.mean(dim=(2, 3))
        else:
            box_features = self.box_head(pooled)
        class_logits, box_deltas = self.box_predictor(box_features)

        labels_all = torch.cat(labels)
        loss_cls = self.box_predictor.classification_loss(class_logits, labels_all)
        pos = torch.nonzero(labels_all > 0).squeeze(1)
        pos_labels = labels_all[pos]
        gt_boxes = torch.cat([t.boxes.tensor.to(p.dtype)[m] if len(t) else torch.zeros_like(p) for t, p, m in zip(targets, props, matched)])
        props_all = torch.cat(props)
        reg_targets = self.box_coder.encode(gt_boxes[pos], props_all[pos])
        deltas = box_deltas.view(box_deltas.shape[0], -1, 4)
        deltas = deltas[pos, 0] if self.box_predictor.cls_agnostic else deltas[pos, pos_labels]
        loss_box = F.smooth_l1_loss(deltas, reg_targets, beta=self.smooth_l1_beta, reduction="sum") / max(labels_all.numel(), 1)
        losses = {"loss_cls": loss_cls, "loss_box": loss_box}
        if self.mask_on:
            losses["loss_mask"] = self._mask_loss(features, props, labels, matched, targets, res5_maps if self.mask_from_box_head else None)
        if self.keypoint_on:
            losses["loss_keypoint"] = self._keypoint_loss(features, props, labels, matched, targets) * self.keypoint_loss_weight
        return losses

    def _keypoint_loss(
        self,
        features: dict[str, Tensor],
        props: list[Tensor],
        labels: list[Tensor],
        matched: list[Tensor],
        targets: list[Instances],
    ) -> Tensor:
        """Heatmap cross entropy of the positive proposals against their matched ground truth."""
        pos_props, gt = [], []
        for p, lab, m, t in zip(props, labels, matched, targets):
            pos = torch.nonzero(lab > 0).squeeze(1)
            pos_props.append(p[pos])
            if pos.numel() == 0:
                continue  # an image without objects (data.filter_empty=false) needs no keypoints
            if t.keypoints is None:
                raise ValueError("Keypoint R-CNN training needs Instances.keypoints in every target")
            gt.append(t.keypoints.tensor.to(p.device)[m[pos]])
        logits = self.keypoint_head(self.keypoint_pooler(features, pos_props))
        k = self.keypoint_head.num_keypoints
        gt_all = torch.cat(gt) if gt else logits.new_zeros((0, k, 3))
        return keypoint_loss(logits, torch.cat(pos_props), gt_all)

    def _mask_loss(
        self,
        features: dict[str, Tensor],
        props: list[Tensor],
        labels: list[Tensor],
        matched: list[Tensor],
        targets: list[Instances],
        res5_maps: Tensor | None,
    ) -> Tensor:
        """Mean per-pixel BCE of the ground-truth class's mask on positive proposals."""
        pos_props, pos_labels, mask_targets, pos_flat = [], [], [], []
        offset = 0
        for p, lab, m, t in zip(props, labels, matched, targets):
            pos = torch.nonzero(lab > 0).squeeze(1)
            pos_flat.append(pos + offset)
            offset += p.shape[0]
            pos_props.append(p[pos])
            pos_labels.append(lab[pos])
            mask_targets.append((t.masks, m[pos], p[pos]))
        if res5_maps is not None:
            mask_features = res5_maps[torch.cat(pos_flat)]
        else:
            mask_features = self.mask_pooler(features, pos_props)
        logits = self.mask_head(mask_features)
        labels_all = torch.cat(pos_labels)
        if labels_all.numel() == 0:
            return logits.sum() * 0.0
        size = logits.shape[-1]
        gt = []
        for masks, m, boxes in mask_targets:
            if m.numel() == 0:
                continue
            if masks is None:
                raise ValueError("Mask R-CNN training needs Instances.masks in every target")
            gt.append(masks.crop_and_resize(boxes.detach(), size, indices=m))
        gt = torch.cat(gt).to(logits.dtype)
        selected = logits[torch.arange(labels_all.numel(), device=logits.device), labels_all]
        return F.binary_cross_entropy_with_logits(selected, gt)

    # --------------------------------------------------------------------------------- inference
    def _inference(self, features: dict[str, Tensor], proposals: list[Tensor] | Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        # torchvision's roi_align copies a channels-last input to contiguous on every call; with the
        # box and the mask pooler reading the same levels, copy once here instead (a no-op for NCHW
        # features). Channels-last CPU features that roi_align pools by gathering stay as they are.
        features = {k: v if _gather_applies(v) else v.contiguous() for k, v in features.items()}
        # A traced RPN gives the batch's (P, 5) rois at once (a list would fix the batch size).
        rois = proposals if isinstance(proposals, Tensor) else boxes_to_rois(proposals)
        probs, boxes = self._predict(features, rois, image_sizes)
        return self._detections(features, rois, probs, boxes, image_sizes)

    def _predict(self, features: dict[str, Tensor], rois: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Class probabilities (R, K + 1) and decoded, clipped boxes (R, K + 1, 4) of (R, 5) rois
        (class-agnostic regression: the same box in every slot)."""
        image_of_roi = rois[:, 0].to(torch.int64)
        class_logits, box_deltas = self.box_predictor(self.box_head(self.box_pooler.pool(features, rois)))
        boxes = self.box_coder.decode(box_deltas, rois[:, 1:]).view(rois.shape[0], box_deltas.shape[1] // 4, 4)
        boxes = clip_boxes(boxes, image_sizes[image_of_roi][:, None, :])
        if boxes.shape[1] == 1:
            boxes = boxes.expand(-1, class_logits.shape[1], 4)
        return self.box_predictor.class_probs(class_logits), boxes

    def _detections(
        self, features: dict[str, Tensor], rois: Tensor, probs: Tensor, boxes: Tensor, image_sizes: Tensor
    ) -> dict[str, Tensor]:
        """Raw detections from per-roi class probabilities (R, K + 1) and boxes (R, K + 1, 4):
        score threshold, per-class NMS per image, top-k, then the mask and keypoint heads.

        torchvision drops boxes under 0.01 px before NMS; detectron2 (``fast_rcnn_inference``)
        does not (the shell drops boxes clipped to nothing afterwards) and numbers the NMS groups
        from 0, which decides the offsets of torchvision's one-call batched NMS."""
        image_of_roi = rois[:, 0].to(torch.int64)
        num_slots = probs.shape[1]
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = probs[:, 1:].reshape(-1)
        # 1-based during NMS (the same class ids torchvision feeds batched_nms), 0-based after.
        labels = torch.arange(1, num_slots, device=scores.device).repeat(probs.shape[0])
        image_idx = image_of_roi.repeat_interleave(num_slots - 1)
        candidates = scores > self.score_thresh
        if self.convention == "torchvision":
            wh = boxes[:, 2:] - boxes[:, :2]
            candidates = candidates & (wh >= 1e-2).all(dim=1)
        cand = torch.nonzero(candidates).squeeze(1)
        boxes, scores, labels, image_idx = boxes[cand], scores[cand], labels[cand], image_idx[cand]
        first = 0 if self.convention == "detectron2" else 1
        keep, counts = per_image_nms(
            boxes, scores, labels - 1 + first, image_idx, image_sizes.shape[0], num_slots, self.nms_thresh,
            self.detections_per_image,
        )
        raw = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep] - 1, "num_detections": counts}
        if self.mask_on:
            raw["mask_probs"] = self._mask_probs(features, torch.cat([image_idx[keep, None].to(boxes.dtype), raw["boxes"]], 1), labels[keep])
        if self.keypoint_on:
            # As torchvision: the keypoints of the final (clipped) boxes, not of their proposals.
            det_rois = torch.cat([image_idx[keep, None].to(boxes.dtype), raw["boxes"]], 1)
            maps = self.keypoint_head(self.keypoint_pooler.pool(features, det_rois))
            raw["keypoints"] = heatmaps_to_keypoints(maps, raw["boxes"], self.convention)
        return raw

    def _mask_probs(self, features: dict[str, Tensor], rois: Tensor, slots: Tensor) -> Tensor:
        """(N, M, M) probabilities of the mask of each detection's class (``slots``, 1-based)."""
        if self.mask_from_box_head:
            mask_features = self.box_head.res5(self.box_pooler.pool(features, rois))
        else:
            mask_features = self.mask_pooler.pool(features, rois)
        return self.mask_head(mask_features, slots).sigmoid()
