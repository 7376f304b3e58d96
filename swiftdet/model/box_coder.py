"""Box regression targets: (dx, dy, dw, dh) of a box relative to a reference box, and clipping.

Numerically the same computation, in the same order, as torchvision's ``det_utils.BoxCoder``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder", "clip_boxes"]


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """(..., 4) xyxy boxes clipped to [0, width] x [0, height] of ``sizes`` (..., 2) = (height,
    width), broadcast against the boxes' leading dimensions; the same values as torchvision's
    ``clip_boxes_to_image``, with the sizes a tensor so that each box may have its own image."""
    sizes = sizes.to(boxes.dtype)
    h, w = sizes[..., 0:1], sizes[..., 1:2]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


class BoxCoder:
    """Encode/decode boxes with per-coordinate ``weights`` (wx, wy, ww, wh).

    ``bbox_xform_clip`` caps dw/dh before the exponential so huge predictions cannot overflow.
    """

    def __init__(self, weights: Sequence[float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """(N, 4) targets that turn ``proposals`` (N, 4) into ``reference_boxes`` (N, 4), both xyxy."""
        wx, wy, ww, wh = self.weights
        ex_widths = proposals[:, 2:3] - proposals[:, 0:1]
        ex_heights = proposals[:, 3:4] - proposals[:, 1:2]
        ex_ctr_x = proposals[:, 0:1] + 0.5 * ex_widths
        ex_ctr_y = proposals[:, 1:2] + 0.5 * ex_heights

        gt_widths = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        gt_heights = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        gt_ctr_x = reference_boxes[:, 0:1] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[:, 1:2] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.cat((dx, dy, dw, dh), dim=1)

    def decode(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Apply (N, 4*K) ``rel_codes`` to (N, 4) reference ``boxes``: (N, 4*K) xyxy boxes.

        K > 1 decodes class-specific regressions against the same reference box.
        """
        boxes = boxes.to(rel_codes.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = rel_codes[:, 0::4] / wx
        dy = rel_codes[:, 1::4] / wy
        dw = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        dh = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        half_w = 0.5 * (torch.exp(dw) * widths[:, None])
        half_h = 0.5 * (torch.exp(dh) * heights[:, None])
        return torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        ).flatten(1)
