"""The exported graph: a detector's normalisation, tensor-only core and (mask models) postprocess, with padded per-image outputs.

``ExportGraph(model)`` is what ``torch.onnx.export`` and ``torch.jit.trace`` record. Inputs and
outputs are plain tensors with a dynamic batch and image size:

inputs
    images: (B, 3, H, W) float32 RGB in 0-255, each image at its test size (resized as
        ``TestTransform`` does) in the top-left corner of the batch; the padding may hold anything.
    image_sizes: (B, 2) int64, the (height, width) of each image inside the padding.
    original_sizes: (B, 2) int64, graphs with pasted masks only (the default for mask models): each
        image's (height, width) before the test resize.

outputs, for K = the model's detections per image
    boxes: (B, K, 4) float32 x0, y0, x1, y1 in the input images' pixels, or, in graphs with pasted
        masks, in the original images' pixels (rescaled and clipped as ``postprocess_instances``);
    scores: (B, K) float32; labels: (B, K) int64 (contiguous class indices);
    num_detections: (B,) int64, how many of the K rows of each image are detections (the rest are 0);
    mask models, pasted (default): masks (B, K, Hmax, Wmax) uint8 0/1, each detection's thresholded
        mask pasted into its original image (Hmax, Wmax: the batch's largest original size; 0
        outside the image), with torchvision's paste arithmetic (detectron2's for
        model.convention=detectron2, which also drops detections whose clipped box is empty);
    mask models exported with ``--no-masks-paste``: mask_probs (B, K, M, M) float32, each
        detection's mask probabilities in its box (pasted by the runtime, swiftdet.export.runtime);
    keypoint models: keypoints (B, K, P, 3) float32, x, y and score of each of P keypoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swiftdet.model.detector import Detector

__all__ = ["ExportGraph", "OUTPUT_NAMES", "INPUT_NAMES", "PASTED_INPUT_NAMES", "input_names", "output_names",
           "has_masks"]

INPUT_NAMES = ("images", "image_sizes")
#: Inputs of graphs that paste masks (and so map everything to the original images).
PASTED_INPUT_NAMES = INPUT_NAMES + ("original_sizes",)
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
#: Outputs of models with these heads, after OUTPUT_NAMES and in this order.
OPTIONAL_OUTPUTS = ("mask_probs", "keypoints")
# Detections pasted at once: the float temporaries are (B, _PASTE_CHUNK, Hmax, Wmax).
_PASTE_CHUNK = 10


def has_masks(model: Detector) -> bool:
    heads = getattr(model, "roi_heads", None)
    return bool(heads is not None and heads.mask_on)


def input_names(model: Detector, paste_masks: bool = False) -> tuple[str, ...]:
    """The graph's input names: INPUT_NAMES, and original_sizes for a mask model that pastes."""
    return PASTED_INPUT_NAMES if paste_masks and has_masks(model) else INPUT_NAMES


def output_names(model: Detector, paste_masks: bool = False) -> tuple[str, ...]:
    """The graph's output names for ``model``: OUTPUT_NAMES, then its mask / keypoint outputs."""
    heads = getattr(model, "roi_heads", None)
    present = {"mask_probs": has_masks(model), "keypoints": bool(heads is not None and heads.keypoint_on)}
    names = OUTPUT_NAMES + tuple(name for name in OPTIONAL_OUTPUTS if present[name])
    if paste_masks:
        names = tuple("masks" if name == "mask_probs" else name for name in names)
    return names


class ExportGraph(nn.Module):
    """Normalise, zero the padding, run ``model.core`` and scatter its flat detections into
    (B, K, ...) tensors; the same arithmetic as ``Detector.preprocess`` + ``core``. With
    ``paste_masks`` (mask models) it also does ``postprocess_instances``' work: boxes and keypoints
    rescaled to ``original_sizes``, masks pasted there and thresholded.

    Args:
        model: a detector in eval mode whose ``core`` returns at most ``max_detections`` per image.
        max_detections: K, the rows per image of the outputs.
        paste_masks: paste a mask model's masks in the graph (ignored for models without masks).
        mask_threshold: a pasted pixel is foreground where its probability is > this (>= for detectron2).
        convention: "torchvision" or "detectron2", whose paste and box clipping to follow.
    """

    def __init__(self, model: Detector, max_detections: int, paste_masks: bool = False, mask_threshold: float = 0.5,
                 convention: str = "torchvision"):
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections)
        self.paste_masks = bool(paste_masks and has_masks(model))
        self.mask_threshold = float(mask_threshold)
        self.convention = convention
        # A submodule, so that the paste's nodes are named /mask_paste/... in the ONNX file (an int8
        # quantizer must leave its MatMuls float: they resample probabilities, not features).
        self.mask_paste = _MaskPaste(self.mask_threshold, convention) if self.paste_masks else None

    def forward(self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        batch, _, height, width = images.shape
        x = self.model.normalize(images.float())
        rows = torch.arange(height, device=x.device)[None, :, None] < image_sizes[:, 0, None, None]
        cols = torch.arange(width, device=x.device)[None, None, :] < image_sizes[:, 1, None, None]
        x = torch.where((rows & cols)[:, None], x, torch.zeros_like(x))  # the shell pads with zeros
        raw = self.model.core(x, image_sizes)
        counts = raw["num_detections"]
        # Detections come grouped by image; row r of image i is its r-th detection.
        ends = counts.cumsum(0)
        n = raw["scores"].shape[0]
        position = torch.arange(n, device=x.device)
        image = (position[:, None] >= ends[None, :]).sum(1)
        rank = position - (ends - counts)[image]
        k = self.max_detections
        boxes = torch.zeros(batch, k, 4, device=x.device)
        scores = torch.zeros(batch, k, device=x.device)
        labels = torch.zeros(batch, k, dtype=torch.int64, device=x.device)
        boxes = boxes.index_put((image, rank), raw["boxes"])
        scores = scores.index_put((image, rank), raw["scores"])
        labels = labels.index_put((image, rank), raw["labels"])
        out = {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": counts}
        for name in OPTIONAL_OUTPUTS:
            if raw.get(name) is not None:
                value = raw[name]
                padded = value.new_zeros((batch, k) + tuple(value.shape[1:]))
                out[name] = padded.index_put((image, rank), value)
        if self.paste_masks:
            if original_sizes is None:
                raise ValueError("a graph that pastes masks needs original_sizes (B, 2)")
            out = self._postprocess(out, image_sizes, original_sizes)
        return tuple(out.values())

    def _postprocess(self, out: dict[str, Tensor], image_sizes: Tensor, original_sizes: Tensor) -> dict[str, Tensor]:
        """``postprocess_instances`` on padded (B, K, ...) detections: rescale, (detectron2: clip and
        drop empty boxes), paste masks into (B, K, Hmax, Wmax) uint8, clip (torchvision)."""
        k = self.max_detections
        # Each axis by its own float32 ratio original / resized, as rescale_instances.
        ratio = original_sizes.float() / image_sizes.float()  # (B, 2) height, width
        rh, rw = ratio[:, 0, None], ratio[:, 1, None]
        x0, y0, x1, y1 = out["boxes"].unbind(2)
        boxes = torch.stack((x0 * rw, y0 * rh, x1 * rw, y1 * rh), dim=2)
        if "keypoints" in out:
            kp = out["keypoints"]
            out["keypoints"] = torch.stack((kp[..., 0] * rw[:, :, None], kp[..., 1] * rh[:, :, None], kp[..., 2]), dim=3)
        oh = original_sizes[:, 0, None].float()
        ow = original_sizes[:, 1, None].float()
        clipped = torch.stack((boxes[..., 0].clamp(min=0).minimum(ow), boxes[..., 1].clamp(min=0).minimum(oh),
                               boxes[..., 2].clamp(min=0).minimum(ow), boxes[..., 3].clamp(min=0).minimum(oh)), dim=2)
        counts = out["num_detections"]
        rank = torch.arange(k, device=boxes.device)[None, :]
        probs = out.pop("mask_probs")
        if self.convention == "detectron2":
            # detector_postprocess: clip, then drop detections whose clipped box is empty, keeping the order.
            wh = clipped[..., 2:] - clipped[..., :2]
            keep = (wh > 0).all(dim=2) & (rank < counts[:, None])
            key = torch.where(keep, rank, rank + k).float()
            order = torch.topk(key, k, dim=1, largest=False).indices  # (B, K), the kept rows first
            counts = keep.sum(1)
            out["num_detections"] = counts
            valid = rank < counts[:, None]
            for name in ("scores", "labels", "keypoints"):
                if name in out:
                    value = out[name]
                    index = order.reshape(order.shape + (1,) * (value.dim() - 2)).expand_as(value)
                    value = value.gather(1, index)
                    out[name] = torch.where(valid.reshape(valid.shape + (1,) * (value.dim() - 2)), value,
                                            torch.zeros_like(value))
            clipped = torch.where(valid[..., None], clipped.gather(1, order[..., None].expand(-1, -1, 4)),
                                  torch.zeros_like(clipped))
            probs = probs.gather(1, order[..., None, None].expand_as(probs))
            out["boxes"] = clipped
            paste_boxes = clipped
        else:
            valid = rank < counts[:, None]
            out["boxes"] = clipped  # torchvision pastes with the rescaled boxes, then clips them
            paste_boxes = boxes
        masks = []
        for start in range(0, k, _PASTE_CHUNK):
            part = slice(start, min(start + _PASTE_CHUNK, k))
            masks.append(self.mask_paste(probs[:, part], paste_boxes[:, part], valid[:, part], original_sizes))
        result = {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"],
                  "num_detections": out["num_detections"], "masks": torch.cat(masks, dim=1)}
        if "keypoints" in out:
            result["keypoints"] = out["keypoints"]
        return result


class _MaskPaste(nn.Module):
    """Thresholded masks pasted into the original images (torchvision's or detectron2's arithmetic)."""

    def __init__(self, mask_threshold: float, convention: str):
        super().__init__()
        self.mask_threshold = mask_threshold
        self.convention = convention

    def forward(self, probs: Tensor, boxes: Tensor, valid: Tensor, original_sizes: Tensor) -> Tensor:
        """(B, C, M, M) probabilities of C detections per image pasted into (B, C, Hmax, Wmax) uint8.

        Bilinear resampling is separable: the pasted probabilities are ``Wy @ P @ Wx^T`` with
        (B, C, Hmax, S) and (B, C, Wmax, S) weight matrices that hold each pixel's two source
        weights (zero outside the box, the image and the detections), so only matrix products and
        comparisons enter the graph.
        """
        hmax = original_sizes[:, 0].max()
        wmax = original_sizes[:, 1].max()
        ys = torch.arange(hmax, device=probs.device).float()
        xs = torch.arange(wmax, device=probs.device).float()
        oh, ow = original_sizes[:, 0, None, None].float(), original_sizes[:, 1, None, None].float()
        if self.convention == "detectron2":
            (weight_y, in_y), (weight_x, in_x) = self._d2_weights(boxes, ys, xs, oh, ow, probs.shape[-1])
            values = probs.float()
        else:
            (weight_y, in_y), (weight_x, in_x) = self._torchvision_weights(boxes, ys, xs, oh, ow, probs.shape[-1])
            values = F.pad(probs.float(), (1, 1, 1, 1))
        # Weights of 0 outside each mask's region, the image and the detections (a where, not a
        # product: detectron2's weights of an empty box are NaN).
        in_y, in_x = in_y & valid[:, :, None], in_x & valid[:, :, None]
        zero = torch.zeros((), dtype=weight_y.dtype, device=weight_y.device)
        weight_y = torch.where(in_y[..., None], weight_y, zero)
        weight_x = torch.where(in_x[..., None], weight_x, zero)
        pasted = torch.matmul(torch.matmul(weight_y, values), weight_x.transpose(2, 3))
        # The weights are 0 outside each mask's region, the image and the detections, so there the
        # pasted value is 0: never > a threshold >= 0 (torchvision), never >= one > 0 (detectron2).
        if self.convention != "detectron2":
            return (pasted > self.mask_threshold).to(torch.uint8)
        fg = pasted >= self.mask_threshold
        if self.mask_threshold <= 0:
            # Only then can a 0 outside the region count: mask it (a full-size pass, so only here).
            fg = fg & (in_y[..., None] & in_x[:, :, None, :])
        return fg.to(torch.uint8)

    @staticmethod
    def _torchvision_weights(boxes: Tensor, ys: Tensor, xs: Tensor, oh: Tensor, ow: Tensor, m: int):
        """torchvision's paste: the box grown by (M + 2) / M and truncated to integers, the padded
        (S = M + 2) mask resized to the box's integer size (bilinear, align_corners=False)."""
        s = m + 2
        half = (boxes[..., 2:] - boxes[..., :2]) * 0.5
        half = half * (float(s) / m)
        center = (boxes[..., 2:] + boxes[..., :2]) * 0.5
        lo = (center - half).long().float()  # truncation toward zero, as .to(torch.int64)
        hi = (center + half).long().float()
        size = (hi - lo + 1).clamp(min=1)  # (B, C, 2) width, height
        source = torch.arange(s, device=boxes.device).float()

        def weights(pixels: Tensor, start: Tensor, length: Tensor, limit: Tensor) -> Tensor:
            j = pixels[None, None, :] - start[..., None]  # (B, C, L) position in the resized mask
            inside = (j >= 0) & (j < length[..., None]) & (pixels[None, None, :] < limit)
            src = (float(s) / length[..., None]) * (j.clamp(min=0) + 0.5) - 0.5
            src = src.clamp(min=0)
            i0 = src.floor().clamp(max=s - 1)
            l1 = (src - i0).clamp(0, 1)
            i1 = torch.where(i0 < s - 1, i0 + 1, i0)
            l0 = 1 - l1
            w = (source == i0[..., None]).float() * l0[..., None] + (source == i1[..., None]).float() * l1[..., None]
            return w, inside  # (B, C, L, S) weights, (B, C, L) in the region

        weight_x = weights(xs, lo[..., 0], size[..., 0], ow)
        weight_y = weights(ys, lo[..., 1], size[..., 1], oh)
        return weight_y, weight_x

    @staticmethod
    def _d2_weights(boxes: Tensor, ys: Tensor, xs: Tensor, oh: Tensor, ow: Tensor, m: int):
        """detectron2's paste: grid_sample (bilinear, zeros outside, align_corners=False) of the
        M x M mask at pixel centres mapped across the box, inside [floor(x0) - 1, ceil(x1) + 1)."""
        source = torch.arange(m, device=boxes.device).float()

        def weights(pixels: Tensor, b0: Tensor, b1: Tensor, limit: Tensor) -> Tensor:
            lo = (b0.floor() - 1).clamp(min=0)
            hi = torch.minimum(b1.ceil() + 1, limit[..., 0])
            p = pixels[None, None, :]
            inside = (p >= lo[..., None]) & (p < hi[..., None])
            g = (p + 0.5 - b0[..., None]) / (b1 - b0)[..., None] * 2 - 1
            i = ((g + 1) * m - 1) / 2  # grid_sample's unnormalised source coordinate
            i0 = i.floor()
            l1 = i - i0
            l0 = 1 - l1
            w = (source == i0[..., None]).float() * l0[..., None] + (source == (i0 + 1)[..., None]).float() * l1[..., None]
            return w, inside

        weight_x = weights(xs, boxes[..., 0], boxes[..., 2], ow)
        weight_y = weights(ys, boxes[..., 1], boxes[..., 3], oh)
        return weight_y, weight_x
