"""RoIAlign for training on CPU: forward and backward as products with one sparse sampling matrix.

torchvision's CPU ``roi_align`` backward walks the RoIs one by one on one thread and scatters into an
NCHW gradient, a channel stride apart per add. Here the bilinear sampling is written once per call as
a sparse (B*H*W, R*PH*PW) matrix of weights; the forward multiplies its transpose with the features
laid out (B*H*W, C) and the backward multiplies it with the output gradient laid out (R*PH*PW, C),
both summing contiguous C-vectors on every thread: forward and backward of 1024 RoIs on 256
channels of two 512x640 images took 209 ms instead of 1026 ms (``benchmarks/training_kernels.py``).
The sampling rule is torchvision's kernel, point for point: bin grid ``sampling_ratio`` (or
``ceil(roi size / output size)`` when it is <= 0), points outside ``[-1, size]`` contribute
nothing, coordinates clamped to the border, the average over the grid; only the order of the sums
differs (outputs and gradients within ~1e-6 relative of torchvision's). CUDA and NCHW inputs that
need no gradient run torchvision's op, so the reference path's detections stay bit-identical to it.

Inference on channels-last CPU features (the fast path) gathers instead: each output bin is the
weighted sum of its grid points' bilinear taps, one ``embedding_bag`` over the features' (B*H*W, C)
rows, which sums contiguous C-vectors on every thread and needs no NCHW copy of the levels.
torchvision's kernel walks the RoIs on one thread with a channel stride between taps: 1000 RoIs
pooled to 7x7 from R50-FPN levels of an 800x1216 image took 448 ms there and 34 ms here (quiet
2-core AVX-512 run of a scratch script; ``benchmarks/fused_epilogues.py`` gives the whole-model
effect).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

from swiftdet.model.tracing import is_tracing

__all__ = ["roi_align", "roi_align_sampling_matrix"]


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align(input, rois, ...)`` for (B, C, H, W) ``input`` and (R, 5) ``rois``
    (batch index, x0, y0, x1, y1) -> (R, C, PH, PW); on CPU with a gradient to compute, through
    :func:`roi_align_sampling_matrix`; on channels-last CPU features without one, through
    :func:`_gather_roi_align` (its output has channels-last strides). CUDA keeps torchvision's kernels."""
    if input.device.type != "cpu" or rois.numel() == 0:
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if torch.is_grad_enabled() and input.requires_grad:
        return _RoIAlign.apply(input, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
    if _gather_applies(input):
        return _gather_roi_align(input, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
    return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _gather_applies(input: Tensor) -> bool:
    """Whether inference pools ``input`` by gathering: float32 channels-last (not also NCHW-contiguous)
    features, eager (an exported or compiled graph keeps torchvision's RoiAlign op)."""
    return (input.dtype == torch.float32 and input.dim() == 4 and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last)
            and not is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling())


def _gather_roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of channels-last (B, C, H, W) ``input`` as one weighted ``embedding_bag`` of its pixel
    rows per grid size -> (R, C, PH, PW) with channels-last strides."""
    b, c, h, w = input.shape
    ph, pw = output_size
    num = rois.shape[0]
    table = input.permute(0, 2, 3, 1).reshape(-1, c)  # (B*H*W, C): a view of channels-last features
    x0, y0, bin_h, bin_w, grid_h, grid_w = _sampling_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    batch = rois[:, 0].to(torch.int64)
    out = input.new_empty((num, ph, pw, c))
    if sampling_ratio > 0:
        groups = [(None, sampling_ratio, sampling_ratio)]
    else:  # adaptive grids: one exact-size call per (grid_h, grid_w), so no bag carries padding
        key = grid_h * (int(grid_w.max()) + 1) + grid_w
        groups = []
        for k in torch.unique(key).tolist():
            idx = torch.nonzero(key == k).squeeze(1)
            groups.append((idx, int(grid_h[idx[0]]), int(grid_w[idx[0]])))
    for idx, gh, gw in groups:
        part = (lambda t: t) if idx is None else (lambda t: t[idx])
        rows, wy = _axis_weights(part(y0), part(bin_h), part(grid_h), max(gh, 1), ph, h)  # (n, PH, Gh, 2)
        cols, wx = _axis_weights(part(x0), part(bin_w), part(grid_w), max(gw, 1), pw, w)  # (n, PW, Gw, 2)
        n = rows.shape[0]
        # Each (roi, bin row, bin col) bag holds its Gh*2 x Gw*2 taps.
        weights = wy.reshape(n, ph, 1, -1, 1) * wx.reshape(n, 1, pw, 1, -1) / float(max(gh * gw, 1))
        pixels = (part(batch).view(n, 1, 1, 1, 1) * h + rows.reshape(n, ph, 1, -1, 1)) * w + cols.reshape(n, 1, pw, 1, -1)
        bags = weights.shape[-2] * weights.shape[-1]
        pooled = F.embedding_bag(pixels.reshape(-1, bags), table, per_sample_weights=weights.reshape(-1, bags),
                                 mode="sum").view(n, ph, pw, c)
        if idx is None:
            out = pooled
        else:
            out.index_copy_(0, idx, pooled)
    return out.permute(0, 3, 1, 2)


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        b, c, h, w = input.shape
        matrix = roi_align_sampling_matrix(rois, (b, h, w), output_size, spatial_scale, sampling_ratio, aligned)
        ctx.matrix, ctx.shape, ctx.dtype = matrix, (b, c, h, w), input.dtype
        # (B, C, H, W) -> (B * H * W, C) rows: a free view of channels-last features, one copy of NCHW ones.
        pixels = input.float().permute(0, 2, 3, 1).reshape(-1, c)
        pooled = torch.sparse.mm(matrix.t(), pixels)  # (R * PH * PW, C)
        return pooled.view(rois.shape[0], *output_size, c).permute(0, 3, 1, 2).to(input.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor):
        b, c, h, w = ctx.shape
        # (R, C, PH, PW) -> (R * PH * PW, C): each bin's gradient is one contiguous C-vector.
        grad_bins = grad_output.float().permute(0, 2, 3, 1).reshape(-1, c)
        grad = torch.sparse.mm(ctx.matrix, grad_bins)  # (B * H * W, C)
        grad_input = grad.view(b, h, w, c).permute(0, 3, 1, 2).to(ctx.dtype)  # channels-last strides, no copy
        return grad_input, None, None, None, None, None


def _sampling_geometry(rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
                       aligned: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's kernel's per-roi start (x0, y0), bin size (bin_h, bin_w) in feature pixels and
    sampling grid (grid_h, grid_w) of (R, 5) ``rois``; every output (R,)."""
    ph, pw = output_size
    rois = rois.float()
    offset = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    roi_w, roi_h = rois[:, 3] * spatial_scale - offset - x0, rois[:, 4] * spatial_scale - offset - y0
    if not aligned:  # the legacy kernel makes every roi at least 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full_like(x0, sampling_ratio, dtype=torch.int64)
        grid_w = grid_h
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).to(torch.int64), torch.ceil(roi_w / pw).to(torch.int64)
    return x0, y0, bin_h, bin_w, grid_h, grid_w


def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, max_grid: int, pooled: int, size: int):
    """Bilinear taps along one axis for every (roi, bin, grid point): (R, pooled, G, 2) pixel
    indices and weights (0 for points the kernel skips and for grid slots beyond a roi's grid)."""
    device = start.device
    bins = torch.arange(pooled, device=device, dtype=start.dtype)[None, :, None]
    points = torch.arange(max_grid, device=device)
    offsets = (points.to(start.dtype) + 0.5)[None, None, :]
    coord = start[:, None, None] + bins * bin_size[:, None, None] + offsets * bin_size[:, None, None] / grid.clamp(min=1).to(start.dtype)[:, None, None]
    valid = (coord >= -1.0) & (coord <= size) & (points[None, None, :] < grid[:, None, None])
    coord = coord.clamp(min=0)
    low = coord.floor().to(torch.int64)
    at_border = low >= size - 1
    low = torch.where(at_border, torch.full_like(low, size - 1), low)
    high = torch.where(at_border, low, low + 1)
    frac = torch.where(at_border, torch.zeros_like(coord), coord - low.to(coord.dtype))
    weights = torch.stack([1 - frac, frac], dim=-1) * valid[..., None].to(coord.dtype)
    return torch.stack([low, high], dim=-1), weights


def roi_align_sampling_matrix(rois: Tensor, image_shape: tuple[int, int, int], output_size: tuple[int, int],
                              spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """The sparse (B*H*W, R*PH*PW) float32 matrix M with ``roi_align(x)[r, :, i, j] ==
    sum_p M[p, r*PH*PW + i*PW + j] * x.permute(0, 2, 3, 1).reshape(-1, C)[p]`` for (R, 5) ``rois`` on
    (B, C, H, W) features of ``image_shape`` (B, H, W): its product with the output gradient is the
    input gradient."""
    b, h, w = image_shape
    ph, pw = output_size
    x0, y0, bin_h, bin_w, grid_h, grid_w = _sampling_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    max_h, max_w = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    rows, wy = _axis_weights(y0, bin_h, grid_h, max_h, ph, h)  # (R, PH, Gh, 2)
    cols, wx = _axis_weights(x0, bin_w, grid_w, max_w, pw, w)  # (R, PW, Gw, 2)
    count = (grid_h * grid_w).clamp(min=1).to(torch.float32)
    num = rois.shape[0]
    # Every (roi, bin row, grid row, tap row, bin col, grid col, tap col): weight and pixel index.
    weights = (wy[:, :, :, :, None, None, None] * wx[:, None, None, None, :, :, :]) / count[:, None, None, None, None, None, None]
    batch = rois[:, 0].to(torch.int64)
    pixels = (batch[:, None, None, None, None, None, None] * h + rows[:, :, :, :, None, None, None]) * w + cols[:, None, None, None]
    bins = (torch.arange(num, device=rois.device)[:, None, None, None, None, None, None] * ph
            + torch.arange(ph, device=rois.device)[None, :, None, None, None, None, None]) * pw \
        + torch.arange(pw, device=rois.device)[None, None, None, None, :, None, None]
    shape = weights.shape
    keep = weights.reshape(-1) != 0
    pixels = pixels.expand(shape).reshape(-1)[keep]
    bins = bins.expand(shape).reshape(-1)[keep]
    return torch.sparse_coo_tensor(torch.stack([pixels, bins]), weights.reshape(-1)[keep],
                                   (b * h * w, num * ph * pw), check_invariants=False).coalesce()
