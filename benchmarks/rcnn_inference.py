"""Inference latency and memory of swiftdet's R-CNN vs torchvision's, on the same weights.

    python benchmarks/rcnn_inference.py [--model mask_rcnn|faster_rcnn|d2_mask_rcnn] [--iters 5] [--threads 2] [--plain]

swiftdet runs its fast inference path (``fuse_for_inference``: FrozenBN folded into the convs,
channels-last convolutions) unless ``--plain`` is given, which runs the model as trained.

Both models are R50-FPN with the same random weights (fixed seed; FrozenBN statistics, affine
parameters and biases randomised so features are not degenerate), torchvision's converted into
swiftdet with ``convert_rcnn_state_dict``. The class head keeps torchvision's 91 slots (swiftdet
num_classes=90) so both rank the same classes, and the box score threshold is 0 so each returns
its 100 best detections. Both normalise 0-255 input with the same mean/std, so the inputs agree.

``--model d2_mask_rcnn`` times swiftdet's Mask R-CNN in detectron2's conventions (the
``d2_mask_rcnn_R_50_FPN_1x`` config: unrounded anchors, ROIAlignV2 with adaptive sampling, detectron2's
mask pasting and box filtering) against torchvision's Mask R-CNN on the same weights. Its backbone
keeps torchvision's stride placement (detectron2's MSRA ResNet puts the stride in the 1x1 conv and
has slightly fewer FLOPs) and its RoIAlign samples 2x2 points per bin as torchvision's does
(detectron2's adaptive sampling, POOLER_SAMPLING_RATIO 0, takes ceil(box / 7) points per bin side:
more work on large boxes), so both run the same FLOPs; the detections differ by design, so no
agreement is checked.

Latency: one 3x800x1216 image (no resize needed at 800/1333), end to end (preprocess, network,
postprocess incl. mask pasting at full size), runs alternating between the two models after one
warm-up each; the median is printed.

Memory: peak resident memory of inference only. Each model runs in a fresh subprocess that builds
the model, runs a warm-up, reads its current RSS, runs one inference and reads the peak RSS
(``ru_maxrss``); the difference is what one inference needs above the loaded model. (tracemalloc
does not see torch's allocations, and the torch profiler's memory view misses allocator caching.)

Agreement: the same detections, each matched one to one with torchvision's: the same label, box
within 1e-2 px (about 1e-5 of the image size), score within 1e-5, and in the same order except
between detections whose scores differ by less than 1e-5 (folded norms round differently: the plain
path agrees to 0, the fast path by ~1e-4..1e-3 px, and two scores 1 ulp apart may swap). Masks equal
torchvision's pasted probabilities > 0.5 except at pixels whose probability lies within 1e-3 of the
threshold (where rounding decides). The maximum differences and the swaps are printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _harness import add_common_arguments, compare

BOX_TOL = 1e-2
SCORE_TOL = 1e-5
MASK_BORDER = 1e-3


def build_models(model: str, seed: int = 0, fast: bool = True):
    """(torchvision model, swiftdet model) with identical random weights, both in eval mode.

    With ``fast`` the swiftdet model is the :func:`fuse_for_inference` copy.
    """
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    from swiftdet.config.core import load_config
    from swiftdet.model.build import build_model
    from swiftdet.model.layers import fuse_for_inference
    from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

    torch.manual_seed(seed)
    resnet = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, 3)
    cls = FasterRCNN if model == "faster_rcnn" else MaskRCNN
    tv = cls(backbone, num_classes=91, box_score_thresh=0.0, box_detections_per_img=100,
             image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in tv.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
        for name, p in tv.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, buf in tv.named_buffers():
            if name.endswith(".weight"):  # FrozenBN scale
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.5 + 0.5)
            elif name.endswith(".bias"):
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.05)
    tv.eval()
    config = {"mask_rcnn": "mask_rcnn_R_50_FPN_1x", "faster_rcnn": "faster_rcnn_R_50_FPN_1x",
              "d2_mask_rcnn": "d2_mask_rcnn_R_50_FPN_1x"}[model]
    same_flops = ["model.backbone.style=torchvision", "model.box_head.pooler_sampling_ratio=2",
                  "model.mask_head.pooler_sampling_ratio=2"] if model == "d2_mask_rcnn" else []
    cfg = load_config(config, ["model.num_classes=90", "model.box_head.score_thresh=0.0",
                               "model.box_head.detections_per_image=100", *same_flops])
    ours = build_model(cfg.model)
    ours.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg.model), strict=True)
    ours.eval()
    return tv, fuse_for_inference(ours) if fast else ours


def make_image(seed: int = 0) -> torch.Tensor:
    """A 3x800x1216 float image in 0-255 with structure at several scales (not white noise)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 25, 38, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(800, 1216), mode="bilinear", align_corners=False)[0]
    image = image * 200 + torch.rand(3, 800, 1216, generator=gen) * 55
    return image.clamp(0, 255)


def run_tv(tv, image):
    with torch.no_grad():
        return tv([image])[0]


def run_ours(ours, image):
    return ours.predict([image], [tuple(image.shape[-2:])])[0]


def match_detections(tv_boxes, tv_scores, tv_labels, boxes, scores, labels) -> tuple[torch.Tensor | None, int]:
    """For each torchvision detection i, the index of its swiftdet counterpart (same label, box and
    score within BOX_TOL / SCORE_TOL, at a position whose score ties with i's within SCORE_TOL), and
    the number of detections not at their own position; (None, 0) when some detection has none."""
    n = len(tv_boxes)
    if n != len(boxes):
        return None, 0
    fits = ((tv_boxes[:, None] - boxes[None]).abs().amax(dim=2) <= BOX_TOL) & (tv_labels[:, None] == labels[None])
    fits &= (tv_scores[:, None] - scores[None]).abs() <= SCORE_TOL
    perm, used = [], set()
    for i in range(n):
        j = next((int(j) for j in fits[i].nonzero()[:, 0] if int(j) not in used), None)
        if j is None:
            return None, 0
        used.add(j)
        perm.append(j)
    perm = torch.tensor(perm, dtype=torch.int64)
    return perm, int((perm != torch.arange(n)).sum())


def no_agreement(tv_out: dict, ours_out) -> str:
    return (f"not compared: detectron2's conventions differ from torchvision's by design ({len(tv_out['boxes'])} vs "
            f"{len(ours_out)} detections)")


def agreement(tv_out: dict, ours_out, label_offset: int = 1) -> str:
    """One line: YES/NO within the tolerances of the module docstring, and the measured differences.

    ``label_offset``: torchvision's label minus swiftdet's (1 for R-CNN's background slot).
    """
    n_tv, n_ours = len(tv_out["boxes"]), len(ours_out)
    if n_tv != n_ours:
        return f"NO: {n_tv} vs {n_ours} detections"
    labels = ours_out.labels + label_offset
    perm, moved = match_detections(tv_out["boxes"], tv_out["scores"], tv_out["labels"],
                                   ours_out.boxes.tensor, ours_out.scores, labels)
    if perm is None:
        same = torch.equal(tv_out["labels"], labels)
        return f"NO: {n_tv} detections, not all matched within the tolerances (labels in order {'equal' if same else 'differ'})"
    boxes = float((tv_out["boxes"] - ours_out.boxes.tensor[perm]).abs().max()) if n_tv else 0.0
    scores = float((tv_out["scores"] - ours_out.scores[perm]).abs().max()) if n_tv else 0.0
    parts = [f"{n_tv} detections", f"max box diff {boxes:.2e} px", f"max score diff {scores:.2e}", "labels equal",
             f"{moved} swapped between near-tied scores" if moved else "same order"]
    ok = True
    if "masks" in tv_out:
        probs = tv_out["masks"][:, 0]
        differ = (probs > 0.5) != ours_out.masks.tensor[perm]
        borderline = (probs - 0.5).abs() <= MASK_BORDER
        outside = int((differ & ~borderline).sum())
        parts.append(f"mask pixels differing {int(differ.sum())} (all within {MASK_BORDER:g} of the threshold: "
                     f"{'yes' if outside == 0 else f'NO, {outside} not'})")
        ok = outside == 0
    return ("YES: " if ok else "NO: ") + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mask_rcnn", "faster_rcnn", "d2_mask_rcnn"], default="mask_rcnn")
    add_common_arguments(parser)
    args = parser.parse_args()
    compare(Path(__file__).stem, args, f"{args.model} R50-FPN", no_agreement if args.model == "d2_mask_rcnn" else agreement)


if __name__ == "__main__":
    main()
