"""The exported graph: a detector's normalisation and tensor-only core with padded per-image outputs.

``ExportGraph(model)`` is what ``torch.onnx.export`` and ``torch.jit.trace`` record. Inputs and
outputs are plain tensors with a dynamic batch and image size:

inputs
    images: (B, 3, H, W) float32 RGB in 0-255, each image at its test size (resized as
        ``TestTransform`` does) in the top-left corner of the batch; the padding may hold anything.
    image_sizes: (B, 2) int64, the (height, width) of each image inside the padding.

outputs, for K = the model's detections per image
    boxes: (B, K, 4) float32 x0, y0, x1, y1 in the input images' pixels;
    scores: (B, K) float32; labels: (B, K) int64 (contiguous class indices);
    num_detections: (B,) int64, how many of the K rows of each image are detections (the rest are 0);
    mask models: mask_probs (B, K, M, M) float32, each detection's mask probabilities in its box
    (pasted into the image by the runtime, swiftdet.export.runtime);
    keypoint models: keypoints (B, K, P, 3) float32, x, y and score of each of P keypoints.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from swiftdet.model.detector import Detector

__all__ = ["ExportGraph", "OUTPUT_NAMES", "INPUT_NAMES", "output_names"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
#: Outputs of models with these heads, after OUTPUT_NAMES and in this order.
OPTIONAL_OUTPUTS = ("mask_probs", "keypoints")


def output_names(model: Detector) -> tuple[str, ...]:
    """The graph's output names for ``model``: OUTPUT_NAMES, then its mask / keypoint outputs."""
    heads = getattr(model, "roi_heads", None)
    present = {"mask_probs": bool(heads is not None and heads.mask_on),
               "keypoints": bool(heads is not None and heads.keypoint_on)}
    return OUTPUT_NAMES + tuple(name for name in OPTIONAL_OUTPUTS if present[name])


class ExportGraph(nn.Module):
    """Normalise, zero the padding, run ``model.core`` and scatter its flat detections into
    (B, K, ...) tensors; the same arithmetic as ``Detector.preprocess`` + ``core``.

    Args:
        model: a detector in eval mode whose ``core`` returns at most ``max_detections`` per image.
        max_detections: K, the rows per image of the outputs.
    """

    def __init__(self, model: Detector, max_detections: int):
        super().__init__()
        self.model = model
        self.max_detections = int(max_detections)

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
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
        out = [boxes, scores, labels, counts]
        for name in OPTIONAL_OUTPUTS:
            if raw.get(name) is not None:
                value = raw[name]
                padded = value.new_zeros((batch, k) + tuple(value.shape[1:]))
                out.append(padded.index_put((image, rank), value))
        return tuple(out)
