"""Pieces shared by the dense (one-stage) detectors RetinaNet and FCOS.

Both predict, at every position of every pyramid level, class logits and a box; they differ in how
boxes are encoded and how training targets are assigned. What is common lives here: building the
backbone and FPN, the conv towers of the heads, and inference decoding
(per-level score threshold and top-k, box clipping, class-wise NMS and a per-image cap), which is
vectorised over images and levels: no Python loop per box, one host sync per level.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError
from swiftdet.model.backbone import FPN, ResNet, build_fpn, build_resnet
from swiftdet.model.box_coder import clip_boxes
from swiftdet.model.nms import per_image_nms
from swiftdet.model.tracing import is_tracing, traced_min

__all__ = [
    "build_backbone_and_fpn",
    "conv_tower",
    "init_prediction_conv",
    "flatten_level_output",
    "float32_shapes",
    "focal_loss_per_anchor",
    "logit",
    "topk_above_threshold",
    "select_candidates",
    "batched_detections",
]


def build_backbone_and_fpn(cfg: ModelConfig, in_features: Sequence[str], section: str) -> tuple[ResNet, FPN]:
    """The ResNet and FPN of ``cfg``, checked to produce the ``in_features`` the head reads
    (``section`` names the config section holding them, for the error message)."""
    backbone = build_resnet(cfg.backbone)
    fpn = build_fpn(cfg, backbone.output_shape())
    missing = [f for f in in_features if f not in fpn.out_features]
    if missing:
        raise ConfigError(
            f"model.{section}.in_features names {missing}, which the FPN does not produce (it gives "
            f"{list(fpn.out_features)}); set model.fpn.in_features / model.fpn.top_block accordingly."
        )
    return backbone, fpn


def conv_tower(channels: int, num_convs: int, norm: str, conv_bias: bool) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, optional GroupNorm(32), ReLU), as one flat Sequential.

    Layer ``k`` of the tower is at index ``k * (3 if norm else 2)``; the weights converter relies on
    this layout. Convs are initialised N(0, 0.01) with zero bias, as in the RetinaNet/FCOS papers.
    """
    if norm not in ("", "GN"):
        raise ValueError(f"dense head norm must be '' or 'GN', got {norm!r}")
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=conv_bias)
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers.append(conv)
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_prediction_conv(conv: nn.Conv2d, prior_prob: float | None = None) -> nn.Conv2d:
    """N(0, 0.01) weights; bias 0, or -log((1-p)/p) so every class starts at probability ``p``.

    The prior keeps the focal loss of the ~100k background positions from swamping the first steps.
    """
    nn.init.normal_(conv.weight, std=0.01)
    if prior_prob is None:
        nn.init.zeros_(conv.bias)
    else:
        nn.init.constant_(conv.bias, -math.log((1.0 - prior_prob) / prior_prob))
    return conv


def flatten_level_output(x: Tensor, channels_per_anchor: int) -> Tensor:
    """(B, A*C, H, W) -> (B, H*W*A, C): position-major, then anchor, the order of the anchors."""
    b, _, h, w = x.shape
    return x.view(b, -1, channels_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, channels_per_anchor)


def float32_shapes(features: Sequence[Tensor]) -> list[Tensor]:
    """Empty float32 stand-ins with the features' spatial sizes and device, for anchor generation.

    Anchors take the dtype of the tensors they are given; under fp16/bf16 autocast the features
    are half precision, where pixel coordinates near 1000 are off by several pixels.
    """
    return [f.new_empty((0, 0, f.shape[-2], f.shape[-1]), dtype=torch.float32) for f in features]


def logit(p: float) -> float:
    """Inverse sigmoid, with -inf / inf at 0 / 1 (so a threshold on probabilities maps to logits)."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


def topk_above_threshold(values: Tensor, threshold: float, k: int) -> tuple[Tensor, Tensor]:
    """The entries of each row above ``threshold``, at most the ``k`` largest per row.

    Args:
        values: (B, M) scores (or any quantity where larger is better).
    Returns:
        batch index (P,) and column index (P,) of the kept entries, grouped by row.
    """
    if is_tracing():
        return _topk_above_threshold_traced(values, threshold, k)
    if values.shape[1] > k > 0:
        # Many entries above the threshold (a low one): the k largest of each row are then exactly
        # the k largest above it, found without listing every entry above the threshold (~12M
        # (anchor, class) pairs per image on RetinaNet's finest level at threshold 0, which a batch
        # of 4 then sorted twice: 10 s of its 25). Only when in every row the k-th and (k+1)-th
        # values differ, so that the selection does not depend on how ties are broken; each row
        # then gets what it would alone.
        top_values, top_cols = values.topk(k + 1, dim=1)
        kth = top_values[:, k - 1]
        if bool(((kth > threshold) & (kth > top_values[:, k])).all()):
            rows = torch.arange(values.shape[0], device=values.device).repeat_interleave(k)
            return rows, top_cols[:, :k].reshape(-1)
    rows, cols = (values > threshold).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return rows, cols
    kept = values[rows, cols]
    if values.shape[0] == 1:
        if kept.numel() > k:
            order = kept.topk(k).indices
            rows, cols = rows[order], cols[order]
        return rows, cols
    # Several images: sort by value, then (stably) by image, and keep each image's first k.
    order = kept.argsort(descending=True, stable=True)
    order = order[rows[order].argsort(stable=True)]
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=values.shape[0])
    starts = counts.cumsum(0) - counts
    rank = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    keep = rank < k
    return rows[keep], cols[keep]


def _topk_above_threshold_traced(values: Tensor, threshold: float, k: int) -> tuple[Tensor, Tensor]:
    """:func:`topk_above_threshold` in operations a trace records for any input: one top-k per row
    (of min(k, M) entries, M read from the shape at run time), then the entries above
    ``threshold``. The same entries, but for which of several values tied at the k-th place is kept."""
    top_values, top_cols = values.topk(traced_min(values, 1, k), dim=1)
    rows, slots = (top_values > threshold).nonzero(as_tuple=True)
    return rows, top_cols[rows, slots]


def select_candidates(
    level_values: Sequence[Tensor], threshold: float, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per level and image, the (anchor, class) pairs above ``threshold``, at most ``k`` best.

    Args:
        level_values: per level, (B, N_l, K) scores or logits (larger is better).
    Returns:
        image index, anchor index (into the levels concatenated), class and value of each
        candidate, (P,) each.
    """
    rows, anchors, classes, values = [], [], [], []
    offset = 0
    for level in level_values:
        b, n, c = level.shape
        flat_values = level.reshape(b, n * c)
        r, flat = topk_above_threshold(flat_values, threshold, k)
        rows.append(r)
        anchors.append(torch.div(flat, c, rounding_mode="floor") + offset)
        classes.append(flat % c)
        values.append(flat_values[r, flat])
        offset += n
    return torch.cat(rows), torch.cat(anchors), torch.cat(classes), torch.cat(values)


def batched_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    batch_idx: Tensor,
    image_sizes: Tensor,
    num_classes: int,
    nms_thresh: float,
    detections_per_image: int,
    *,
    clip_before_nms: bool = True,
) -> dict[str, Tensor]:
    """Clip, class-wise NMS per image, and keep each image's ``detections_per_image`` best.

    Args:
        boxes: (P, 4) decoded candidate boxes of all images.
        scores, labels, batch_idx: (P,) each candidate's score, class and image.
        image_sizes: (B, 2) int64 (h, w) per image, the clipping bounds.
        clip_before_nms: True: NMS sees the clipped boxes (torchvision); False: NMS and the cap
            see the decoded boxes and only the kept ones are clipped (detectron2's RetinaNet).
    Returns:
        raw detections (see swiftdet.model.detector): boxes, scores, labels, num_detections.
    """
    if clip_before_nms:
        boxes = clip_boxes(boxes, image_sizes[batch_idx])
    keep, counts = per_image_nms(
        boxes, scores, labels, batch_idx, image_sizes.shape[0], num_classes, nms_thresh, detections_per_image
    )
    kept_boxes = boxes[keep] if clip_before_nms else clip_boxes(boxes[keep], image_sizes[batch_idx[keep]])
    return {"boxes": kept_boxes, "scores": scores[keep], "labels": labels[keep], "num_detections": counts}


def focal_loss_per_anchor(logits: Tensor, img_idx: Tensor, anchor_idx: Tensor, labels: Tensor, alpha: float,
                          gamma: float) -> Tensor:
    """(B, N) sigmoid focal loss of (B, N, K) ``logits``, summed over the K classes, for one-hot
    targets: 1 at the F foreground entries ``(img_idx, anchor_idx, labels)`` (each (F,)), 0 elsewhere.

    The value of ``torchvision.ops.sigmoid_focal_loss(logits, targets, alpha, gamma).sum(-1)``
    (alpha < 0: no weighting), computed as every entry's target-0 term ``(1 - alpha) p^gamma
    softplus(x)`` (:class:`_NegativeFocalSum`, in cache-sized chunks) with the target-1 term swapped
    in at the F foreground entries only. torchvision's formula makes about 15 full-size (B, N, K)
    temporaries forward and as many backward for a target that is almost all zeros: on RetinaNet's
    2 x 61380 anchors x 91 classes (44 MB each, above glibc's mmap threshold, so each is
    page-faulted afresh) forward and backward took 540 ms, here 173 ms (``benchmarks/training_kernels.py``).
    """
    negative = _NegativeFocalSum.apply(logits, gamma)
    x = logits[img_idx, anchor_idx, labels]
    p = torch.sigmoid(x)
    positive = F.softplus(-x) * (1 - p).pow(gamma)  # -log(p) (1 - p)^gamma
    negative_fg = F.softplus(x) * p.pow(gamma)  # the target-0 term counted at those entries
    if alpha >= 0:
        negative = negative * (1 - alpha)
        positive, negative_fg = positive * alpha, negative_fg * (1 - alpha)
    return negative.index_put((img_idx, anchor_idx), positive - negative_fg, accumulate=True)


class _NegativeFocalSum(torch.autograd.Function):
    """(B, N, K) logits x -> (B, N) sum over K of ``p^gamma softplus(x)``, p = sigmoid(x), in chunks of
    rows; the backward recomputes p per chunk: d/dx = p^gamma (gamma (1 - p) softplus(x) + p)."""

    CHUNK = 4096  # rows of K values: a few MB, in cache

    @staticmethod
    def forward(ctx, logits: Tensor, gamma: float) -> Tensor:
        ctx.save_for_backward(logits)
        ctx.gamma = gamma
        rows = logits.reshape(-1, logits.shape[-1])
        out = rows.new_empty(rows.shape[0])
        for start in range(0, rows.shape[0], _NegativeFocalSum.CHUNK):
            x = rows[start:start + _NegativeFocalSum.CHUNK]
            out[start:start + x.shape[0]] = (F.softplus(x) * torch.sigmoid(x).pow(gamma)).sum(dim=1)
        return out.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (logits,) = ctx.saved_tensors
        gamma = ctx.gamma
        rows = logits.reshape(-1, logits.shape[-1])
        grad_rows = grad_out.reshape(-1, 1)
        grad = torch.empty_like(rows)
        for start in range(0, rows.shape[0], _NegativeFocalSum.CHUNK):
            end = start + _NegativeFocalSum.CHUNK
            x = rows[start:end]
            p = torch.sigmoid(x)
            grad[start:end] = p.pow(gamma) * (gamma * (1 - p) * F.softplus(x) + p) * grad_rows[start:end]
        return grad.view(logits.shape), None
