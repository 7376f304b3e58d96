"""Inference latency and memory of swiftdet's RetinaNet / FCOS vs torchvision's, on the same weights.

    python benchmarks/dense_inference.py [--model retinanet|retinanet_v2|fcos] [--iters 5] [--threads 2] [--plain]

torchvision's ``retinanet_resnet50_fpn`` (v1), ``retinanet_resnet50_fpn_v2`` or ``fcos_resnet50_fpn``
is built with random weights (no download; 91 class slots), given FrozenBatchNorm2d wherever the
swiftdet config has it (as torchvision does for pretrained backbones), its norm statistics, affine
parameters and biases randomised and its head convs rescaled to unit gain so scores spread out, then
converted into swiftdet with ``convert_dense_state_dict``. The score threshold is 0 and both keep
100 detections. swiftdet runs its fast inference path (``fuse_for_inference``: norms folded into
the convs, channels-last convolutions) unless ``--plain`` is given.

Latency, memory and agreement are measured as in ``rcnn_inference.py``: one 3x800x1216 image (no
resize at 800/1333), end to end, alternating runs after a warm-up, median; peak RSS of one inference
above the loaded model in a fresh subprocess per library; detections matched one to one with
torchvision's (same label, box within 1e-2 px, score within 1e-5, the same order except between
scores closer than 1e-5), maximum differences and swaps printed.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import nn

from _harness import add_common_arguments, compare
from rcnn_inference import agreement, make_image  # noqa: F401 (the harness calls make_image)

_VARIANTS = {
    "retinanet": ("retinanet_resnet50_fpn", "retinanet_R_50_FPN_1x", "retinanet"),
    "retinanet_v2": ("retinanet_resnet50_fpn_v2", "retinanet_R_50_FPN_v2", "retinanet"),
    "fcos": ("fcos_resnet50_fpn", "fcos_R_50_FPN_1x", "fcos"),
}


def _freeze_where_frozen(tv: nn.Module, ours: nn.Module) -> None:
    """Replace torchvision's backbone BatchNorm2d by FrozenBatchNorm2d where swiftdet's has one."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, mod in ours.backbone.named_modules():
        if isinstance(mod, FrozenBatchNorm2d):
            parent_name, _, leaf = name.rpartition(".")
            parent = tv.backbone.body.get_submodule(parent_name) if parent_name else tv.backbone.body
            bn = getattr(parent, leaf)
            setattr(parent, leaf, FrozenBatchNorm2d(bn.num_features, eps=bn.eps))


@torch.no_grad()
def _randomise(tv: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for mod in tv.head.modules():
        if isinstance(mod, nn.Conv2d):  # N(0, 0.01) would make every score nearly the prior
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / math.sqrt(mod.weight[0].numel()))
    for name, buf in tv.named_buffers():
        if name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
        elif name.endswith(".weight"):  # FrozenBN scale
            buf.copy_(torch.rand(buf.shape, generator=gen) * 0.5 + 0.5)
        elif name.endswith(".bias"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.05)
    for mod in tv.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
            mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) * 0.5 + 0.5)
    for name, p in tv.named_parameters():
        if name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def build_models(model: str, seed: int = 0, fast: bool = True):
    """(torchvision model, swiftdet model) with identical random weights, both in eval mode.

    With ``fast`` the swiftdet model is the :func:`fuse_for_inference` copy.
    """
    import torchvision.models.detection as tvd

    from swiftdet.config.core import load_config
    from swiftdet.model.build import build_model
    from swiftdet.model.layers import fuse_for_inference
    from swiftdet.weights.torchvision_dense import convert_dense_state_dict

    builder, config, head = _VARIANTS[model]
    torch.manual_seed(seed)
    tv = getattr(tvd, builder)(weights=None, weights_backbone=None, num_classes=91, score_thresh=0.0,
                               detections_per_img=100)
    cfg = load_config(config, ["model.num_classes=91", f"model.{head}.score_thresh=0.0",
                               f"model.{head}.detections_per_image=100"])
    ours = build_model(cfg.model)
    _freeze_where_frozen(tv, ours)
    _randomise(tv, seed + 1)
    tv.eval()
    ours.load_state_dict(convert_dense_state_dict(tv.state_dict(), cfg.model), strict=True)
    ours.eval()
    return tv, fuse_for_inference(ours) if fast else ours


def run_tv(tv, image):
    with torch.no_grad():
        return tv([image / 255.0])[0]


def run_ours(ours, image):
    return ours.predict([image], [tuple(image.shape[-2:])])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(_VARIANTS), default="retinanet")
    add_common_arguments(parser)
    args = parser.parse_args()
    compare(Path(__file__).stem, args, f"{args.model} R50-FPN", lambda tv_out, ours_out: agreement(tv_out, ours_out, label_offset=0))


if __name__ == "__main__":
    main()
