"""The fast path's fused convolution epilogues and its Winograd convolutions: each model's whole
inference with the activation (and ResNet/MobileNet residual sums) inside the oneDNN convolution,
against the same fused model running them as separate operations, and against it with every
convolution in oneDNN (no NNPACK Winograd for the large 3x3 ones), in one process, alternating; and
all against torchvision.

    python benchmarks/fused_epilogues.py [--models faster_rcnn mask_rcnn retinanet ssd300_vgg16 ...]
                                         [--iters 5] [--threads 2]

Models and images are those of the other benchmarks (``rcnn_inference.py``, ``dense_inference.py``,
``ssd_inference.py``, ``mobilenet_rcnn_inference.py``, ``keypoint_inference.py``), with their
random weights. "separate" switches the fused call off (``swiftdet.model.layers._POINTWISE =
None``); "direct" keeps the fused calls but runs the large 3x3 convolutions in oneDNN too
(``swiftdet.model.layers._nnpack_ready`` answering no); every other part of the fast path stays.
Printed: medians, the ratios fused / separate and fused / direct, the ratio of each to torchvision,
and the largest score differences fused vs separate and fused vs direct.
"""
from __future__ import annotations

import argparse
import importlib
import os
import time

import torch

from swiftdet.model import layers

# model -> (benchmark module, its model name)
MODELS = {
    "faster_rcnn": ("rcnn_inference", "faster_rcnn"),
    "mask_rcnn": ("rcnn_inference", "mask_rcnn"),
    "retinanet": ("dense_inference", "retinanet"),
    "ssd300_vgg16": ("ssd_inference", "ssd300_vgg16"),
    "ssdlite320": ("ssd_inference", "ssdlite320"),
    "faster_rcnn_MV3_FPN": ("mobilenet_rcnn_inference", "faster_rcnn_MV3_FPN"),
    "faster_rcnn_MV3_FPN_320": ("mobilenet_rcnn_inference", "faster_rcnn_MV3_FPN_320"),
    "keypoint_rcnn": ("keypoint_inference", "keypoint_rcnn"),
}


def _scores(out) -> torch.Tensor:
    if isinstance(out, dict):
        return out["scores"]
    first = out[0] if isinstance(out, (list, tuple)) else out
    return first.scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pointwise, nnpack_ready = layers._POINTWISE, layers._nnpack_ready
    if pointwise is None:
        raise SystemExit("this PyTorch build has no oneDNN fused convolution: nothing to compare")
    print(f"{args.threads} threads, {args.iters} runs of each (alternating, after a warm-up), "
          f"load average {os.getloadavg()[0]:.2f}")
    for name in args.models:
        script, model = MODELS[name]
        bench = importlib.import_module(script)
        tv, ours = bench.build_models(model, fast=True)
        image = bench.make_image()

        def fused():
            layers._POINTWISE = pointwise
            return bench.run_ours(ours, image)

        def separate():
            layers._POINTWISE = None
            try:
                return bench.run_ours(ours, image)
            finally:
                layers._POINTWISE = pointwise

        def direct():
            layers._nnpack_ready = lambda: False
            try:
                return bench.run_ours(ours, image)
            finally:
                layers._nnpack_ready = nnpack_ready

        def torchvision():
            return bench.run_tv(tv, image)

        outs = {"fused": fused(), "separate": separate(), "direct": direct()}
        torchvision()
        times: dict[str, list[float]] = {"torchvision": [], "separate": [], "direct": [], "fused": []}
        for _ in range(args.iters):
            for key, fn in (("torchvision", torchvision), ("separate", separate), ("direct", direct), ("fused", fused)):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        a = _scores(outs["fused"])
        diffs = []
        for other in ("separate", "direct"):
            b = _scores(outs[other])
            diffs.append(f"{(a - b).abs().max().item():.2e}" if a.shape == b.shape else f"counts {len(a)} vs {len(b)}")
        print(f"{name:24s} torchvision {med['torchvision'] * 1e3:8.1f} ms  separate {med['separate'] * 1e3:8.1f} ms  "
              f"direct {med['direct'] * 1e3:8.1f} ms  fused {med['fused'] * 1e3:8.1f} ms | "
              f"fused/separate {med['fused'] / med['separate']:.3f}  fused/direct {med['fused'] / med['direct']:.3f}  "
              f"/ torchvision: separate {med['separate'] / med['torchvision']:.3f}, direct {med['direct'] / med['torchvision']:.3f}, "
              f"fused {med['fused'] / med['torchvision']:.3f}  | max score diff vs separate {diffs[0]}, vs direct {diffs[1]}")
        del tv, ours


if __name__ == "__main__":
    main()
