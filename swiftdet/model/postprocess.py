"""From a detector's raw output to results in the original image: rescaled boxes, pasted masks.

Mask pasting follows torchvision's ``paste_masks_in_image`` exactly (the M x M probabilities are
padded by one pixel, the box is grown by (M + 2) / M, truncated to integers, the padded mask is
resized bilinearly to the box's integer size and placed, clipped, in the image), but it never
builds a full-image mask per detection: detections are grouped by box size, each group is
resampled at once inside a window as large as its largest box, and each mask is kept as the crop
of its box that lies in the image (:class:`CroppedMasks`) until a writer needs it.

The arithmetic mirrors PyTorch's CPU bilinear kernels operation by operation, including the fused
multiply-adds the compiler emits for them (emulated here in float64, which rounds once like a
hardware FMA), so the thresholded masks equal ``torchvision_paste > threshold`` bit for bit on CPU.
PyTorch resizes an output whose height + width is at most 128 with its channels-last kernel and
larger ones with the generic kernel, whose roundings differ; both are reproduced. On other
backends (CUDA) PyTorch rounds differently again, so a pixel whose probability lies within one
float32 ulp of the threshold can differ there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from swiftdet.structures import Boxes, CroppedMasks, Instances, Keypoints

__all__ = ["paste_masks_in_image", "paste_masks_cropped", "paste_masks_cropped_detectron2", "rescale_instances",
           "postprocess_instances"]

# PyTorch switches to its channels-last bilinear kernel when output height + width <= this.
_SMALL_OUTPUT_SUM = 128
# Upper bound on window pixels resampled at once (float64 temporaries of this many elements).
_CHUNK_PIXELS = 1 << 18


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """float32 ``a * b + c`` rounded once: the float64 product of two float32 values is exact."""
    return (a.double() * b.double() + c.double()).float()


def _linear_weights(index: Tensor, out_size: Tensor, in_size: int, fused_source: bool):
    """Source indices and weights of 1-d bilinear resizing (align_corners=False), as PyTorch.

    Args:
        index: (K, L) int64 output positions in [0, out_size).
        out_size: (K, 1) int64 output lengths.
        in_size: input length.
        fused_source: compute ``scale * (i + 0.5) - 0.5`` with one rounding (channels-last kernel).

    Returns:
        i0, i1: (K, L) int64 input indices; l0, l1: (K, L) float32 weights.
    """
    scale = torch.full_like(out_size, in_size, dtype=torch.float32) / out_size.float()
    dst = index.float() + 0.5
    if fused_source:
        src = (scale.double() * dst.double() - 0.5).float()
    else:
        src = scale * dst - 0.5
    src = src.clamp(min=0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    l1 = (src - i0.float()).clamp(0, 1)
    i1 = i0 + (i0 < in_size - 1).long()
    l0 = 1 - l1
    # Same size: PyTorch copies (index i, weights 1 and 0) instead of computing.
    same = (out_size == in_size).expand_as(index)
    i0 = torch.where(same, index, i0)
    i1 = torch.where(same, index, i1)
    l0 = torch.where(same, torch.ones_like(l0), l0)
    l1 = torch.where(same, torch.zeros_like(l1), l1)
    return i0, i1, l0, l1


def _expanded_int_boxes(boxes: Tensor, scale: float) -> Tensor:
    """(N, 4) boxes grown about their centres by ``scale``, truncated to int64 like torchvision."""
    boxes = boxes.float()
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5
    half = half * scale
    center = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    return torch.cat([center - half, center + half], dim=1).to(torch.int64)


def _paste_group(
    crops: list,
    image_size: tuple[int, int],
    padded: Tensor,
    box: Tensor,
    size: Tensor,
    region: Tensor,
    threshold: float,
    small: bool,
) -> None:
    """Paste K masks of similar size, each into the part of its box inside the image.

    Args:
        crops: length-N list; entry ``region[k, 0]`` is set to detection k's (y_end - y_start,
            x_end - x_start) bool crop.
        image_size: (height, width) of the image.
        padded: (K, S, S) padded mask probabilities.
        box: (K, 2) int64 (x0, y0) of each integer box (may be outside the image).
        size: (K, 2) int64 (width, height) each mask is resized to.
        region: (K, 5) int64 detection index, x_start, y_start, x_end, y_end of the part of the box
            inside the image (non-empty).
        small: whether these boxes take PyTorch's channels-last kernel (width + height <= 128).
    """
    k, s = padded.shape[0], padded.shape[-1]
    height, width = image_size
    device = padded.device
    _, rx0, ry0, rx1, ry1 = region.unbind(1)
    win_w = int((rx1 - rx0).max())
    win_h = int((ry1 - ry0).max())
    # Windows of the group's largest size, shifted left/up where they would leave the image.
    sx = torch.minimum(rx0, torch.full_like(rx0, width - win_w))
    sy = torch.minimum(ry0, torch.full_like(ry0, height - win_h))
    xs = sx[:, None] + torch.arange(win_w, device=device)  # (K, Ww) image columns
    ys = sy[:, None] + torch.arange(win_h, device=device)  # (K, Wh) image rows
    inside = ((ys >= ry0[:, None]) & (ys < ry1[:, None]))[:, :, None] & (
        (xs >= rx0[:, None]) & (xs < rx1[:, None])
    )[:, None, :]
    # Positions in the resized mask; outside the box they are clamped and masked by ``inside``.
    mx = (xs - box[:, 0:1]).clamp(min=0).minimum(size[:, 0:1] - 1)
    my = (ys - box[:, 1:2]).clamp(min=0).minimum(size[:, 1:2] - 1)
    xi0, xi1, xl0, xl1 = _linear_weights(mx, size[:, 0:1], s, fused_source=small)
    yi0, yi1, yl0, yl1 = _linear_weights(my, size[:, 1:2], s, fused_source=small)

    if small:
        # Channels-last kernel: 4 corner weights, accumulated as fma(v11, w11, fma(v10, w10, fma(v00, w00, v01 * w01))).
        flat = padded.reshape(k, s * s)

        def corner(yi: Tensor, xi: Tensor) -> Tensor:
            idx = (yi[:, :, None] * s + xi[:, None, :]).reshape(k, -1)
            return flat.gather(1, idx).reshape(k, win_h, win_w)

        y0w, y1w = yl0[:, :, None], yl1[:, :, None]
        x0w, x1w = xl0[:, None, :], xl1[:, None, :]
        value = corner(yi0, xi1) * (y0w * x1w)
        value = _fma(corner(yi0, xi0), y0w * x0w, value)
        value = _fma(corner(yi1, xi0), y1w * x0w, value)
        value = _fma(corner(yi1, xi1), y1w * x1w, value)
    else:
        # Generic kernel: along x first, t = fma(v0, l0, v1 * l1), then along y the same way.
        def along_x(xi: Tensor) -> Tensor:
            return padded.gather(2, xi[:, None, :].expand(k, s, win_w))

        cols = _fma(along_x(xi0), xl0[:, None, :], along_x(xi1) * xl1[:, None, :])  # (K, S, Ww)

        def along_y(yi: Tensor) -> Tensor:
            return cols.gather(1, yi[:, :, None].expand(k, win_h, win_w))

        value = _fma(along_y(yi0), yl0[:, :, None], along_y(yi1) * yl1[:, :, None])
    keep = (value > threshold) & inside
    # Each crop is copied out of the group's window so that the window's memory is freed.
    for j, (d, x0, y0, x1, y1, wx, wy) in enumerate(zip(*region.T.tolist(), sx.tolist(), sy.tolist())):
        crops[d] = keep[j, y0 - wy : y1 - wy, x0 - wx : x1 - wx].clone()


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> Tensor:
    """Paste per-box mask probabilities into the image and threshold them, at full size.

    Args:
        masks: (N, 1, M, M) mask probabilities in [0, 1].
        boxes: (N, 4) xyxy boxes in the output image's pixels.
        image_size: (height, width) of the output image.
        threshold: a pixel is foreground where the resized probability is > threshold (>= 0).

    Returns:
        (N, height, width) bool masks, equal to ``torchvision.models.detection.roi_heads.
        paste_masks_in_image(masks, boxes, image_size) > threshold`` (see the module docstring).
        :func:`paste_masks_cropped` gives the same masks in the memory of their boxes.
    """
    return paste_masks_cropped(masks, boxes, image_size, threshold).to_bitmasks().tensor


def paste_masks_cropped(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> CroppedMasks:
    """:func:`paste_masks_in_image`, each mask kept only inside the part of its grown box that
    lies in the image (outside it the pasted mask is empty).

    Returns:
        :class:`CroppedMasks` of N crops whose ``to_bitmasks()`` equals ``paste_masks_in_image``.
    """
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must be (N, 1, M, M), got shape {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be ({masks.shape[0]}, 4), got shape {tuple(boxes.shape)}")
    if threshold < 0:
        # Outside its box a mask is 0, so a negative threshold would make every pixel foreground.
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    height, width = int(image_size[0]), int(image_size[1])
    n, m = masks.shape[0], masks.shape[-1]
    crops = [torch.zeros((0, 0), dtype=torch.bool, device=masks.device)] * n
    offsets = torch.zeros((n, 2), dtype=torch.int64)
    if n == 0 or height == 0 or width == 0:
        return CroppedMasks(crops, offsets, (height, width))
    padded = F.pad(masks[:, 0].float(), (1, 1, 1, 1))  # (N, S, S), S = M + 2
    ibox = _expanded_int_boxes(boxes, float(m + 2) / m)
    size = (ibox[:, 2:] - ibox[:, :2] + 1).clamp(min=1)  # (N, 2) width, height
    start = ibox[:, :2].clamp(min=0)
    end = torch.minimum(ibox[:, 2:] + 1, torch.tensor([width, height], device=ibox.device))
    extent = (end - start).clamp(min=0)  # (N, 2) part of the box inside the image
    valid = (extent > 0).all(dim=1)
    small = size.sum(dim=1) <= _SMALL_OUTPUT_SUM
    # Group by kernel and by the power of two of the window's width and height, so that each
    # group's window is at most twice as wide and tall as any of its boxes.
    log_w = torch.log2(extent[:, 0].clamp(min=1).float()).floor().long()
    log_h = torch.log2(extent[:, 1].clamp(min=1).float()).floor().long()
    key = (small.long() * 64 + log_w) * 64 + log_h
    key = torch.where(valid, key, torch.full_like(key, -1))
    order = torch.argsort(key, stable=True)
    keys_sorted = key[order]
    uniq, counts = torch.unique_consecutive(keys_sorted, return_counts=True)
    region = torch.stack([torch.arange(n, device=masks.device), start[:, 0], start[:, 1], end[:, 0], end[:, 1]], 1)
    begin = 0
    for group_key, count in zip(uniq.tolist(), counts.tolist()):
        idx = order[begin : begin + count]
        begin += count
        if group_key < 0:
            continue  # boxes entirely outside the image: nothing to paste
        is_small = group_key >= 64 * 64
        win = int((extent[idx, 0].max() * extent[idx, 1].max()))
        per_chunk = max(1, _CHUNK_PIXELS // max(win, 1))
        for c in range(0, count, per_chunk):
            sel = idx[c : c + per_chunk]
            _paste_group(crops, (height, width), padded[sel], ibox[sel, :2], size[sel], region[sel], threshold, is_small)
    offsets = torch.where(valid[:, None], start, torch.zeros_like(start)).cpu()
    return CroppedMasks(crops, offsets, (height, width))


def paste_masks_cropped_detectron2(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float = 0.5
) -> CroppedMasks:
    """detectron2's ``paste_masks_in_image`` (its CPU path), each mask kept as the crop it pastes.

    Each (M, M) mask is sampled with ``grid_sample`` (bilinear, zeros outside, align_corners=False)
    at the image pixel centres (i + 0.5) of the region [floor(x0) - 1, ceil(x1) + 1) x
    [floor(y0) - 1, ceil(y1) + 1) clipped to the image, mapped to [-1, 1] across the box (no
    padding, no integer box), and a pixel is foreground where the value is >= ``threshold``.
    Outside that region detectron2's mask is empty, so the region is the crop.

    Args:
        masks: (N, 1, M, M) mask probabilities; boxes: (N, 4) xyxy in the image's pixels.
    """
    if masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks must be (N, 1, M, M), got shape {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be ({masks.shape[0]}, 4), got shape {tuple(boxes.shape)}")
    height, width = int(image_size[0]), int(image_size[1])
    n = masks.shape[0]
    boxes = boxes.float()
    lo = (boxes[:, :2].floor() - 1).clamp(min=0)
    hi = torch.minimum(boxes[:, 2:].ceil() + 1, torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device))
    lo = torch.minimum(lo, torch.tensor([width, height], dtype=boxes.dtype, device=boxes.device))
    crops, offsets = [], torch.zeros((n, 2), dtype=torch.int64)
    # One mask at a time, as detectron2 does on CPU: the grid holds only that mask's region.
    for i, ((x0i, y0i), (x1i, y1i)) in enumerate(zip(lo.long().tolist(), hi.long().tolist())):
        x1i, y1i = max(x1i, x0i), max(y1i, y0i)
        x0, y0, x1, y1 = boxes[i].unbind()
        gx = (torch.arange(x0i, x1i, device=boxes.device, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(y0i, y1i, device=boxes.device, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        h, w = gy.numel(), gx.numel()
        if h == 0 or w == 0:
            crops.append(torch.zeros((h, w), dtype=torch.bool, device=masks.device))
        else:
            grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=2)[None]
            pasted = F.grid_sample(masks[i : i + 1].float(), grid.to(torch.float32), align_corners=False)
            crops.append(pasted[0, 0] >= threshold)
        offsets[i, 0], offsets[i, 1] = (x0i, y0i) if h and w else (0, 0)
    return CroppedMasks(crops, offsets, (height, width))


def rescale_instances(results: Instances, from_size: tuple[int, int], to_size: tuple[int, int]) -> Instances:
    """Instances with boxes and keypoints scaled from an image of ``from_size`` to ``to_size``.

    Each axis is scaled by its own float32 ratio to/from, as torchvision's ``resize_boxes`` and
    ``resize_keypoints`` do (no clipping; masks and mask probabilities are left as they are).
    """
    device = results.boxes.tensor.device
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32, device=device) / torch.tensor(
        from_size[0], dtype=torch.float32, device=device
    )
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32, device=device) / torch.tensor(
        from_size[1], dtype=torch.float32, device=device
    )
    x0, y0, x1, y1 = results.boxes.tensor.unbind(1)
    boxes = Boxes(torch.stack((x0 * ratio_w, y0 * ratio_h, x1 * ratio_w, y1 * ratio_h), dim=1))
    keypoints = results.keypoints
    if keypoints is not None:
        kp = keypoints.tensor.clone()
        kp[..., 0] *= ratio_w
        kp[..., 1] *= ratio_h
        keypoints = Keypoints(kp)
    return results.with_fields(image_size=tuple(int(v) for v in to_size), boxes=boxes, keypoints=keypoints)


def postprocess_instances(
    results: Instances, original_size: tuple[int, int], mask_threshold: float = 0.5, convention: str = "torchvision"
) -> Instances:
    """Detections of one resized image mapped to its original size.

    Boxes and keypoints are rescaled (:func:`rescale_instances`); (N, M, M) ``mask_probs``, when
    present, are pasted at the original size into :class:`CroppedMasks` ``masks`` (and dropped),
    so that memory grows with the boxes, not with the image; then the boxes are clipped.

    ``convention="detectron2"`` follows its ``detector_postprocess``: rescaled boxes are clipped
    to the image, detections whose clipped box has no width or height are dropped, and masks are
    pasted with the clipped boxes by :func:`paste_masks_cropped_detectron2`.
    """
    out = rescale_instances(results, results.image_size, original_size)
    if convention == "detectron2":
        boxes = out.boxes.clip(out.image_size)
        wh = boxes.tensor[:, 2:] - boxes.tensor[:, :2]
        out = out.with_fields(boxes=boxes)[(wh > 0).all(dim=1)]
        if out.mask_probs is not None:
            masks = paste_masks_cropped_detectron2(out.mask_probs[:, None], out.boxes.tensor, out.image_size, mask_threshold)
            out = out.with_fields(masks=masks, mask_probs=None)
        return out
    if out.mask_probs is not None:
        masks = paste_masks_cropped(out.mask_probs[:, None], out.boxes.tensor, out.image_size, mask_threshold)
        out = out.with_fields(masks=masks, mask_probs=None)
    # torchvision pastes with the rescaled boxes, then clips them.
    return out.with_fields(boxes=out.boxes.clip(out.image_size))
