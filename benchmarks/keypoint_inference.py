"""Inference latency and memory of swiftdet's Keypoint R-CNN vs torchvision's keypointrcnn_resnet50_fpn, on the same weights.

    python benchmarks/keypoint_inference.py [--iters 5] [--threads 2] [--plain] [--no-memory]

swiftdet runs its fast inference path (``fuse_for_inference``: FrozenBN folded into the convs,
channels-last convolutions) unless ``--plain`` is given, which runs the model as trained.

torchvision's model is its own builder (``keypointrcnn_resnet50_fpn``, 2 classes: background +
person, 17 keypoints) with seeded random weights; its BatchNorms (what the builder gives without
pretrained weights) take the statistics of a training-mode pass over the benchmark image, then
become FrozenBatchNorm2d as in its pretrained model. It is converted with ``convert_rcnn_state_dict``
for the keypoint_rcnn_R_50_FPN_1x recipe. The box score threshold is 0, so both keep their
:data:`DETECTIONS` best detections (20, not torchvision's 100: the keypoint head costs ~3.7
GFLOPs per detection, so 100 would time the head alone on a CPU).

Latency: one 3x800x1216 image (no resize at 800/1333), end to end (preprocess, network, keypoint
decoding, postprocess), runs alternating between the two models after one warm-up each; medians are
printed. Memory: as benchmarks/rcnn_inference.py (peak RSS of one inference above the loaded model,
each model in a fresh process).

Agreement: each torchvision detection paired with swiftdet's nearest box: the same label, box within
1e-2 px, score within 1e-4 (the fast path's folded norms; benchmarks/rcnn_inference.py allows
1e-5 for its model), then the keypoints of the pairs: the largest x/y and score differences, and
how many keypoints lie within 1e-2 px of torchvision's.
(A keypoint is the arg-max cell of a resized heatmap: folded norms change the heatmap by float
rounding, which can move the arg-max of a flat heatmap to a neighbouring cell; the plain path
agrees exactly.)
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from _harness import add_common_arguments, compare
from rcnn_inference import make_image

# Folded norms round differently from torchvision's FrozenBN (the plain path agrees exactly): box and
# score tolerances of the fast path.
BOX_TOL = 1e-2
SCORE_TOL = 1e-4
KEYPOINT_TOL = 1e-2
DETECTIONS = 20
# Weight scale per layer-name fragment: activations O(1) and scores spread out (few near-ties).
GAINS = {"fpn": 0.5, "rpn.head.cls_logits": 0.1, "rpn.head.bbox_pred": 0.01, "box_predictor.cls_score": 0.3,
         "box_predictor.bbox_pred": 0.05}


def build_models(model: str = "keypoint_rcnn", seed: int = 0, fast: bool = True):
    """(torchvision model, swiftdet model) with identical random weights, both in eval mode."""
    from torch import nn
    from torchvision.models.detection import keypointrcnn_resnet50_fpn
    from torchvision.ops import FrozenBatchNorm2d

    from swiftdet.config.core import load_config
    from swiftdet.model.build import build_model
    from swiftdet.model.layers import fuse_for_inference
    from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

    torch.manual_seed(seed)
    tv = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=800, max_size=1333,
                                   box_score_thresh=0.0, box_detections_per_img=DETECTIONS)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, m in tv.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                fan_in = m.weight.shape[0] * 4 if isinstance(m, nn.ConvTranspose2d) else m.weight[0].numel()
                gain = next((v for k, v in GAINS.items() if k in name), 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1 * min(gain, 1.0))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the statistics of the calibration pass
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        tv.backbone.train()
        tv.backbone(tv.transform([make_image() / 255])[0].tensors)
        for name, m in list(tv.backbone.body.named_modules()):
            if isinstance(m, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(m.num_features, eps=m.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(m, key))
                parent, _, leaf = name.rpartition(".")
                setattr(tv.backbone.body.get_submodule(parent) if parent else tv.backbone.body, leaf, frozen)
    tv.eval()
    cfg = load_config("keypoint_rcnn_R_50_FPN_1x", ["model.box_head.score_thresh=0.0",
                                                    f"model.box_head.detections_per_image={DETECTIONS}"])
    ours = build_model(cfg.model)
    ours.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg.model), strict=True)
    ours.eval()
    return tv, fuse_for_inference(ours) if fast else ours


def run_tv(tv, image):
    with torch.no_grad():
        return tv([image / 255])[0]


def run_ours(ours, image):
    return ours.predict([image], [tuple(image.shape[-2:])])[0]


def agreement(tv_out: dict, ours_out) -> str:
    """One line: YES/NO (label equal, box within BOX_TOL px, score within SCORE_TOL, each detection
    paired one to one with its nearest box) and the measured differences, keypoints included."""
    n = len(tv_out["boxes"])
    if n != len(ours_out):
        return f"NO: {n} vs {len(ours_out)} detections"
    if n == 0:
        return "YES: no detections in either"
    dist = (tv_out["boxes"][:, None] - ours_out.boxes.tensor[None]).abs().amax(dim=2)
    perm = dist.argmin(dim=1)
    if len(set(perm.tolist())) != n or not torch.equal(ours_out.labels[perm] + 1, tv_out["labels"]):
        return f"NO: {n} detections that do not pair one to one by box and label"
    boxes = float(dist[torch.arange(n), perm].max())
    scores = float((tv_out["scores"] - ours_out.scores[perm]).abs().max())
    kp = ours_out.keypoints.tensor[perm]
    xy = (kp[..., :2] - tv_out["keypoints"][..., :2]).abs().amax(dim=2)
    kp_scores = float((kp[..., 2] - tv_out["keypoints_scores"]).abs().max())
    moved = int((perm != torch.arange(n)).sum())
    ok = boxes <= BOX_TOL and scores <= SCORE_TOL
    return (f"{'YES' if ok else 'NO'}: {n} detections, max box diff {boxes:.2e} px, max score diff {scores:.2e}, labels "
            f"equal, {f'{moved} in another order' if moved else 'same order'}; keypoints: "
            f"{int((xy <= KEYPOINT_TOL).sum())}/{xy.numel()} within {KEYPOINT_TOL:g} px of torchvision's, max x/y diff "
            f"{float(xy.max()):.2e} px, max keypoint score diff {kp_scores:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["keypoint_rcnn"], default="keypoint_rcnn")
    add_common_arguments(parser)
    args = parser.parse_args()
    compare(Path(__file__).stem, args, f"keypointrcnn R50-FPN ({DETECTIONS} detections)", agreement)


if __name__ == "__main__":
    main()
