"""RoIAlign on CPU as a gather: every output bin is the weighted sum of its sampling points'
bilinear taps, one weighted ``embedding_bag`` over the features' (B*H*W, C) pixel rows.

torchvision's CPU kernel walks the RoIs one by one on one thread, a channel stride apart per tap, and
its backward scatters into an NCHW gradient the same way. The gather sums contiguous C-vectors on
every thread and its gradient is ``embedding_bag``'s own (pixel rows accumulated per tap); it reads
channels-last features as they are, with no NCHW copy of the levels. ``benchmarks/training_kernels.py``
times forward + backward of 1024 RoIs against torchvision's op, and ``benchmarks/fused_epilogues.py``
the whole fast inference path.

The sampling rule is torchvision's kernel, point for point: bin grid ``sampling_ratio`` (or
``ceil(roi size / output size)`` when it is <= 0), points outside ``[-1, size]`` contribute nothing,
coordinates clamped to the border, the average over the grid; only the order of the sums differs
(outputs and gradients within ~1e-6 relative of torchvision's). CUDA, traces and compiled graphs
(which export torchvision's RoiAlign op) and NCHW inputs that need no gradient run torchvision's op,
so the reference path's detections stay bit-identical to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align

from swiftdet.model.tracing import is_tracing

__all__ = ["roi_align"]


def roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align(input, rois, ...)`` for (B, C, H, W) ``input`` and (R, 5) ``rois``
    (batch index, x0, y0, x1, y1) -> (R, C, PH, PW). On CPU with a gradient to compute, or on
    channels-last CPU features without one, through :func:`_gather_roi_align` (its output has
    channels-last strides); otherwise torchvision's op."""
    if input.device.type != "cpu" or rois.numel() == 0 or is_tracing():
        return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    args = (tuple(output_size), float(spatial_scale), int(sampling_ratio), bool(aligned))
    if torch.is_grad_enabled() and input.requires_grad:
        if input.dtype == torch.float32:
            return _gather_roi_align(input, rois, *args)
        return _gather_roi_align(input.float(), rois, *args).to(input.dtype)  # bf16 autocast: sums in float32
    if _gather_applies(input):
        return _gather_roi_align(input, rois, *args)
    return tv_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def _gather_applies(input: Tensor) -> bool:
    """Whether inference pools ``input`` by gathering: float32 or bfloat16 (``--precision bf16``)
    channels-last (not also NCHW-contiguous) features, eager (an exported or compiled graph keeps
    torchvision's RoiAlign op, which autocast would run in float32 on an NCHW copy of each level)."""
    return (input.dtype in (torch.float32, torch.bfloat16) and input.dim() == 4 and not input.is_contiguous()
            and input.is_contiguous(memory_format=torch.channels_last)
            and not is_tracing() and not torch.jit.is_scripting() and not torch.compiler.is_compiling())


def _gather_roi_align(input: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign of float32 or bfloat16 (B, C, H, W) ``input`` as one weighted ``embedding_bag`` of its
    pixel rows per grid size -> (R, C, PH, PW) with channels-last strides; differentiable in ``input``.
    bfloat16 features take bfloat16 tap weights (the op wants one dtype; it sums in float32)."""
    b, c, h, w = input.shape
    ph, pw = output_size
    table = input.permute(0, 2, 3, 1).reshape(-1, c)  # (B*H*W, C): a view of channels-last features, a copy of NCHW
    x0, y0, bin_h, bin_w, grid_h, grid_w = _sampling_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    batch = rois[:, 0].to(torch.int64)

    def bins(sel: Tensor | slice, gh: int, gw: int) -> Tensor:
        """(n, PH, PW, C) pooled rows of the rois ``sel``, whose grids are all gh x gw."""
        rows, wy = _axis_weights(y0[sel], bin_h[sel], grid_h[sel], max(gh, 1), ph, h)  # (n, PH, Gh, 2)
        cols, wx = _axis_weights(x0[sel], bin_w[sel], grid_w[sel], max(gw, 1), pw, w)  # (n, PW, Gw, 2)
        n = rows.shape[0]
        # Each (roi, bin row, bin col) bag holds its Gh*2 x Gw*2 taps.
        weights = wy.reshape(n, ph, 1, -1, 1) * wx.reshape(n, 1, pw, 1, -1) / float(max(gh * gw, 1))
        pixels = (batch[sel].view(n, 1, 1, 1, 1) * h + rows.reshape(n, ph, 1, -1, 1)) * w + cols.reshape(n, 1, pw, 1, -1)
        taps = weights.shape[-2] * weights.shape[-1]
        return F.embedding_bag(pixels.reshape(-1, taps), table, per_sample_weights=weights.reshape(-1, taps).to(table.dtype),
                               mode="sum").view(n, ph, pw, c)

    if sampling_ratio > 0:
        out = bins(slice(None), sampling_ratio, sampling_ratio)
    else:  # adaptive grids: one exact-size call per (grid_h, grid_w), so no bag carries padding
        out = input.new_empty((rois.shape[0], ph, pw, c))
        stride = int(grid_w.max()) + 1
        key = grid_h * stride + grid_w
        for k in torch.unique(key).tolist():
            idx = torch.nonzero(key == k).squeeze(1)
            out.index_copy_(0, idx, bins(idx, k // stride, k % stride))
    return out.permute(0, 3, 1, 2)


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
