"""Inference latency and memory of swiftdet's Faster R-CNN MobileNetV3-Large FPN vs torchvision's, on the same weights.

    python benchmarks/mobilenet_rcnn_inference.py [--model faster_rcnn_MV3_FPN|faster_rcnn_MV3_FPN_320]
        [--iters 5] [--threads 2] [--plain] [--no-memory]

swiftdet runs its fast inference path (``fuse_for_inference``: FrozenBN folded into the convs,
channels-last convolutions) unless ``--plain`` is given, which runs the model as trained.

torchvision's model is its own builder (``fasterrcnn_mobilenet_v3_large_fpn`` or ``_320_fpn``) with
seeded random weights; its BatchNorms (what the builder gives without pretrained weights) take the
statistics of a training-mode pass over the benchmark image, then become FrozenBatchNorm2d, as in
its pretrained models (as tests/test_mobilenet_rcnn.py does).
It is converted into swiftdet with ``convert_rcnn_state_dict`` and the recipe of the same name.
The class head keeps torchvision's 91 slots (swiftdet num_classes=90) and the box score threshold
is 0, so each returns its 100 best detections; the RPN keeps the recipes' settings (score
threshold 0.05, top-n 1000 or 150).

Latency: one 3x480x640 image (COCO's usual size), end to end: each model resizes it to its test size
(800x1067 or 320x427; swiftdet with its TestTransform, as the predictor does), normalises, runs the
network and maps the detections back to 480x640. Runs alternate between the two models after one
warm-up each; the median is printed. Memory and agreement: as benchmarks/rcnn_inference.py (label
equal, box within 1e-2 px, score within 1e-5, order up to near-ties; the two resize and normalise
in another order, so their inputs already differ by float rounding).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _harness import add_common_arguments, compare
from rcnn_inference import agreement

MODELS = ("faster_rcnn_MV3_FPN", "faster_rcnn_MV3_FPN_320")


# Weight scale per layer-name fragment: activations O(1) and scores spread out (few near-ties).
GAINS = {"fpn": 0.5, "rpn.head.cls_logits": 0.1, "rpn.head.bbox_pred": 0.01, "box_predictor.cls_score": 0.3,
         "box_predictor.bbox_pred": 0.05}


def _randomise_and_freeze(tv: torch.nn.Module, image01: torch.Tensor, gen: torch.Generator) -> None:
    """Seeded weights; BN statistics of a training-mode pass over ``image01`` (so activations stay
    realistic through the 17 blocks), then the body's BatchNorms become FrozenBatchNorm2d."""
    import math

    from torchvision.ops import FrozenBatchNorm2d

    with torch.no_grad():
        for name, m in tv.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                gain = next((v for k, v in GAINS.items() if k in name), 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain * math.sqrt(2.0 / m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1 * min(gain, 1.0))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        tv.backbone.train()
        tv.backbone(tv.transform([image01])[0].tensors)
        tv.eval()
        body = tv.backbone.body
        for name, bn in [(n, m) for n, m in body.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(bn, key))
            frozen.running_mean.add_(torch.randn(bn.num_features, generator=gen) * 0.05)
            parent, leaf = name.rsplit(".", 1)
            setattr(body.get_submodule(parent), leaf, frozen)


def build_models(model: str, seed: int = 0, fast: bool = True):
    """(torchvision model, swiftdet model) with identical random weights, both in eval mode.

    With ``fast`` the swiftdet model is the :func:`fuse_for_inference` copy.
    """
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_mobilenet_v3_large_fpn

    from swiftdet.config.core import load_config
    from swiftdet.data.transforms import TestTransform
    from swiftdet.model.build import build_model
    from swiftdet.model.layers import fuse_for_inference
    from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

    torch.manual_seed(seed)
    fn = fasterrcnn_mobilenet_v3_large_320_fpn if model.endswith("_320") else fasterrcnn_mobilenet_v3_large_fpn
    tv = fn(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0, box_detections_per_img=100)
    _randomise_and_freeze(tv, make_image(seed) / 255, torch.Generator().manual_seed(seed + 1))
    tv.eval()
    cfg = load_config(model, ["model.num_classes=90", "model.box_head.score_thresh=0.0",
                              "model.box_head.detections_per_image=100"])
    ours = build_model(cfg.model)
    ours.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg.model), strict=True)
    ours.eval()
    ours = fuse_for_inference(ours) if fast else ours
    ours.test_transform = TestTransform.from_config(cfg)  # what the predictor resizes with
    return tv, ours


def run_tv(tv, image):
    with torch.no_grad():
        return tv([image / 255])[0]


def run_ours(ours, image):
    return ours.predict([ours.test_transform(image)], [tuple(image.shape[-2:])])[0]


def make_image(seed: int = 0) -> torch.Tensor:
    """A 3x480x640 float image in 0-255 with structure at several scales (not white noise)."""
    h, w = 480, 640
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 32, w // 32, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    image = image * 200 + torch.rand(3, h, w, generator=gen) * 55
    return image.clamp(0, 255)


__all__ = ["agreement", "build_models", "make_image", "run_ours", "run_tv"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="faster_rcnn_MV3_FPN")
    add_common_arguments(parser)
    args = parser.parse_args()
    compare(Path(__file__).stem, args, f"{args.model} (MobileNetV3-Large FPN)", agreement)


if __name__ == "__main__":
    main()
