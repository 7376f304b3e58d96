"""Keypoint R-CNN's head: heatmaps of K keypoints in each RoI, their training loss and decoding.

The layout is torchvision's (keypointrcnn_resnet50_fpn): ``num_convs`` 3x3 convs with ReLU on the
pooled (R, C, S, S) features, a 4x4 stride-2 transposed conv to K channels and a x2 bilinear
upsampling, so S = 14 gives (R, K, 56, 56) heatmap logits. The head is class-agnostic.

Training (torchvision's ``keypoints_to_heatmap`` + cross entropy): each ground-truth keypoint of a
positive proposal becomes the one heatmap cell it falls in; it counts only when it is labelled
(visibility > 0) and inside the proposal. The loss is the mean cross entropy over the S*S cells of
every counted keypoint.

Inference (torchvision's ``heatmaps_to_keypoints``): each RoI's heatmaps are resized bicubically
to the box's size rounded up, the arg-max cell's centre mapped back to the image gives x, y, and the
resized heatmap's value there is the keypoint's score (a logit, not a probability). detectron2's
``heatmaps_to_keypoints`` finds the same x, y; its score is the softmax-normalised value there:
exp(0) over the sum of exp(heatmap - max) across the S x S map (not the resized one), so it may
exceed 1.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from swiftdet.model.layers import ConvNormAct

__all__ = ["KeypointHead", "heatmaps_to_keypoints", "keypoint_loss", "keypoints_to_heatmap"]


class KeypointHead(nn.Module):
    """``num_convs`` 3x3 convs of ``conv_dim`` with ReLU, a 4x4 stride-2 deconv to ``num_keypoints``
    channels, a x2 bilinear upsampling: (R, C, S, S) -> (R, K, 4S, 4S) heatmap logits."""

    def __init__(self, in_channels: int, num_convs: int, conv_dim: int, num_keypoints: int):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.convs = nn.Sequential(
            *(ConvNormAct(in_channels if i == 0 else conv_dim, conv_dim, 3) for i in range(num_convs))
        )
        self.score_lowres = nn.ConvTranspose2d(conv_dim, num_keypoints, 4, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.score_lowres(self.convs(x))
        # A fixed factor (not a size): the same op and rounding as torchvision's predictor.
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False)


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Heatmap cell of each keypoint in its RoI, and whether it counts in the loss.

    Args:
        keypoints: (R, K, 3) x, y, visibility in image pixels (the matched ground truth).
        rois: (R, 4) x0, y0, x1, y1 proposals.
        size: heatmap side S.
    Returns:
        (R, K) int64 cell index y * S + x (0 where not counted) and (R, K) bool: the keypoint is
        labelled (visibility > 0) and lies inside the RoI.
    """
    x0, y0, x1, y1 = (rois[:, i : i + 1] for i in range(4))
    x, y = keypoints[..., 0], keypoints[..., 1]
    cx = ((x - x0) * (size / (x1 - x0))).floor().long()
    cy = ((y - y0) * (size / (y1 - y0))).floor().long()
    # A keypoint on the right or bottom edge belongs to the last cell, not one past it.
    cx = torch.where(x == x1, torch.full_like(cx, size - 1), cx)
    cy = torch.where(y == y1, torch.full_like(cy, size - 1), cy)
    valid = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size) & (keypoints[..., 2] > 0)
    return (cy * size + cx) * valid, valid


def keypoint_loss(logits: Tensor, rois: Tensor, gt_keypoints: Tensor) -> Tensor:
    """Mean cross entropy over the S*S cells of every counted keypoint (see :func:`keypoints_to_heatmap`).

    Args:
        logits: (R, K, S, S) heatmap logits of the positive proposals.
        rois: (R, 4) those proposals; gt_keypoints: (R, K, 3) their matched ground truth.
    Returns:
        A scalar; 0 (still connected to ``logits``) when no keypoint counts.
    """
    r, k, size, _ = logits.shape
    targets, valid = keypoints_to_heatmap(gt_keypoints, rois, size)
    valid = valid.reshape(-1)
    if r == 0 or not bool(valid.any()):
        return logits.sum() * 0.0
    flat = logits.reshape(r * k, size * size)
    return F.cross_entropy(flat[valid], targets.reshape(-1)[valid])


def _decode_loop(maps: Tensor, rois: Tensor, softmax_score: bool = False) -> Tensor:
    """The per-RoI decoding of :func:`heatmaps_to_keypoints` (TorchScript-compatible);
    ``softmax_score``: detectron2's score (module docstring).

    Each RoI's rows are concatenated onto the result instead of written into a preallocated
    tensor: the ONNX exporter drops in-place writes made inside a loop.
    """
    num_keypoints = maps.shape[1]
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_ceil = widths.ceil()
    heights_ceil = heights.ceil()
    widths_int, heights_int = widths_ceil.long(), heights_ceil.long()
    out = torch.zeros((0, num_keypoints, 3), dtype=torch.float32, device=maps.device)
    for i in range(maps.shape[0]):
        # From int64 tensors: the ONNX exporter keeps .item() of a float tensor as a float.
        w = int(widths_int[i].item())
        h = int(heights_int[i].item())
        roi_map = F.interpolate(maps[i][:, None], size=[h, w], mode="bicubic", align_corners=False)[:, 0]
        flat = roi_map.reshape(num_keypoints, -1)
        pos = flat.argmax(dim=1)
        # The value at the arg-max is the maximum: no indexing by (y, x) needed (ONNX cannot
        # export advanced indexing inside the loop).
        peak = flat.amax(dim=1)
        x_int = pos % w
        y_int = torch.div(pos - x_int, w, rounding_mode="floor")
        # Cell centres (d + 0.5), scaled from the rounded-up map back to the box's true size
        # (divided by it as a float tensor, the same value as the int: ONNX's Div takes one type).
        x = (x_int.float() + 0.5) * (widths[i] / widths_ceil[i]) + rois[i, 0]
        y = (y_int.float() + 0.5) * (heights[i] / heights_ceil[i]) + rois[i, 1]
        if softmax_score:
            # detectron2's exp(roi_map - peak) at the arg-max is exp(0) = 1, over the sum of
            # exp(heatmap - peak) on the S x S map; the peak is the resized map's maximum.
            score = 1.0 / (maps[i] - peak.view(num_keypoints, 1, 1)).exp().sum((1, 2))
        else:
            score = peak
        out = torch.cat([out, torch.stack([x, y, score], dim=1)[None]])
    return out


@functools.lru_cache(maxsize=None)
def _scripted_decode_loop():
    return torch.jit.script(_decode_loop)


def heatmaps_to_keypoints(maps: Tensor, rois: Tensor, convention: str = "torchvision") -> Tensor:
    """(R, K, 3) x, y (image pixels) and score of each keypoint from (R, K, S, S) heatmap logits of
    the (R, 4) boxes ``rois``, exactly as torchvision's ``heatmaps_to_keypoints`` (module docstring);
    ``convention="detectron2"``: with detectron2's softmax-normalised score.

    The resize to each box's own size is a loop over the RoIs whose sizes are values; under
    ``torch.jit.trace`` the loop is recorded as a scripted function, so a trace replays it for
    any number and size of boxes instead of baking in the first input's.
    """
    softmax_score = convention == "detectron2"
    if torch.jit.is_tracing():
        return _scripted_decode_loop()(maps, rois, softmax_score)
    return _decode_loop(maps, rois, softmax_score)
