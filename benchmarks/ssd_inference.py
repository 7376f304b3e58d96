"""Inference latency and memory of swiftdet's SSD300-VGG16 / SSDlite320-MobileNetV3 vs torchvision's, same weights.

    python benchmarks/ssd_inference.py [--model ssd300_vgg16|ssdlite320] [--iters 5] [--threads 2] [--plain]

torchvision's ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large`` is built with random weights
(no download; 91 class slots, background included), each conv rescaled on the benchmark image so
that its output has unit spread (the class logits a spread of 2, so softmax scores do not
saturate), BatchNorm statistics calibrated on it, then converted into swiftdet (90 classes + the
background) with ``convert_ssd_state_dict``. Both keep torchvision's postprocessing settings.
swiftdet runs its fast inference path (``fuse_for_inference``: norms folded into the convs,
channels-last convolutions) unless ``--plain`` is given.

One 3x480x640 image, end to end: each library's own resize to the fixed 300x300 / 320x320
(torchvision normalises then resizes; swiftdet's TestTransform resizes, the model normalises),
network, postprocessing and the boxes mapped back to 480x640. Latency, memory and agreement as in
``rcnn_inference.py``: alternating runs after a warm-up, median; peak RSS of one inference above
the loaded model in a fresh subprocess per library; detections matched one to one with
torchvision's (same label, box within 1e-2 px, score within 1e-5, the same order except between
scores closer than 1e-5).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from _harness import add_common_arguments, compare
from rcnn_inference import agreement

_VARIANTS = {
    "ssd300_vgg16": ("ssd300_vgg16", "ssd300_VGG16"),
    "ssdlite320": ("ssdlite320_mobilenet_v3_large", "ssdlite320_MV3"),
}


def make_image(seed: int = 0) -> torch.Tensor:
    """A 3x480x640 float image in 0-255 with structure at several scales (not white noise)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 15, 20, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(480, 640), mode="bilinear", align_corners=False)[0]
    image = image * 200 + torch.rand(3, 480, 640, generator=gen) * 55
    return image.clamp(0, 255)


@torch.no_grad()
def _randomise(tv: nn.Module, image01: torch.Tensor, seed: int) -> None:
    """Random weights scaled, in one pass over ``image01``, so every conv's output has unit spread
    (the class logits 2); then BatchNorm statistics of that pass (SSDlite), on it and its mirror image."""
    gen = torch.Generator().manual_seed(seed)
    for mod in tv.modules():
        if isinstance(mod, nn.Conv2d):
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen))
            if mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
        elif isinstance(mod, nn.BatchNorm2d):
            mod.weight.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
            mod.bias.copy_(torch.randn(mod.num_features, generator=gen) * 0.1)
    x = tv.transform([image01, image01.flip(-1)])[0].tensors  # two: BatchNorm needs a spread on 1x1 maps
    cls_out = {m for m in tv.head.classification_head.modules() if isinstance(m, nn.Conv2d) and m.groups == 1}

    def rescale(mod, _inputs, out):
        factor = (2.0 if mod in cls_out else 1.0) / out.std().clamp(min=1e-6)
        mod.weight.mul_(factor)
        if mod.bias is not None:
            mod.bias.mul_(factor)
        return out * factor

    tv.eval()
    handles = [m.register_forward_hook(rescale) for m in tv.modules() if isinstance(m, nn.Conv2d)]
    tv.head(list(tv.backbone(x).values()))
    for h in handles:
        h.remove()
    norms = [m for m in tv.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        tv.train()
        tv.head(list(tv.backbone(x).values()))
        tv.eval()
        for m in norms:  # the coarsest maps have two positions: floor the variances
            m.running_var.clamp_(min=max(m.running_var.mean().item(), 1e-3))


@dataclass
class SwiftdetSSD:
    """swiftdet's model with its test-time transform (the resize torchvision's model does inside)."""

    model: nn.Module
    transform: object

    def set_precision(self, precision: str) -> None:  # the harness sets it on every benchmarked model
        self.model.set_precision(precision)


def build_models(model: str, seed: int = 0, fast: bool = True):
    """(torchvision model, SwiftdetSSD) with identical random weights, both in eval mode.

    With ``fast`` the swiftdet model is the :func:`fuse_for_inference` copy.
    """
    import torchvision.models.detection as tvd

    from swiftdet.config.core import load_config
    from swiftdet.data.transforms import TestTransform
    from swiftdet.model.build import build_model
    from swiftdet.model.layers import fuse_for_inference
    from swiftdet.weights.torchvision_ssd import convert_ssd_state_dict

    builder, config = _VARIANTS[model]
    torch.manual_seed(seed)
    tv = getattr(tvd, builder)(weights=None, weights_backbone=None, num_classes=91)
    _randomise(tv, make_image() / 255.0, seed + 1)
    cfg = load_config(config, ["model.num_classes=90"])
    ours = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    ours.load_state_dict(convert_ssd_state_dict(tv.state_dict(), cfg.model), strict=True)
    ours.eval()
    return tv, SwiftdetSSD(fuse_for_inference(ours) if fast else ours, TestTransform.from_config(cfg))


def run_tv(tv, image):
    with torch.no_grad():
        return tv([image / 255.0])[0]


def run_ours(ours: SwiftdetSSD, image):
    return ours.model.predict([ours.transform(image)], [tuple(image.shape[-2:])])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(_VARIANTS), default="ssd300_vgg16")
    add_common_arguments(parser)
    args = parser.parse_args()
    title = {"ssd300_vgg16": "SSD300 VGG16", "ssdlite320": "SSDlite320 MobileNetV3-Large"}[args.model]
    compare(Path(__file__).stem, args, title, lambda tv_out, ours_out: agreement(tv_out, ours_out, label_offset=1))


if __name__ == "__main__":
    main()
