"""torch.compile of the detector's core (``--compile``) against the eager fast path and torchvision.

    python benchmarks/compile_inference.py [--model faster_rcnn|retinanet|both] [--iters 5] [--threads 2]

One 3x800x1216 image (``rcnn_inference.make_image``), Faster R-CNN R50-FPN and RetinaNet R50-FPN with
the same random weights as ``rcnn_inference.py`` / ``dense_inference.py`` (their ``build_models``):
swiftdet's fast path (``fuse_for_inference``) run eagerly, the same fused model with its core
compiled (``Detector.set_compiled``: TorchInductor, ``dynamic=True`` as ``--compile`` runs it),
and torchvision's model, end to end (preprocess, network, postprocess), in one run.

Printed per model: the compile time (the compiled model's first call, minus an eager call's time),
the median latency of each of the three over ``--iters`` calls after one warm-up call
(``_harness.median_time``), the ratios compiled/eager and compiled/torchvision, and whether the
compiled detections equal the eager ones (same count and labels, boxes and scores within 1e-4) and
the eager ones torchvision's (the scripts' own agreement check).
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

import dense_inference
import rcnn_inference
from _harness import median_time

TOL = 1e-4


def same_detections(eager, compiled) -> str:
    """One line: YES/NO the compiled detections equal the eager ones within TOL, with the differences."""
    if len(eager) != len(compiled):
        return f"NO: {len(eager)} vs {len(compiled)} detections"
    if not torch.equal(eager.labels, compiled.labels):
        return f"NO: {len(eager)} detections, labels differ"
    if len(eager) == 0:
        return "YES: no detections either way"
    boxes = float((eager.boxes.tensor - compiled.boxes.tensor).abs().max())
    scores = float((eager.scores - compiled.scores).abs().max())
    ok = boxes <= TOL and scores <= TOL
    return (f"{'YES' if ok else 'NO'}: {len(eager)} detections, labels equal, max box diff {boxes:.2e} px, "
            f"max score diff {scores:.2e}")


def run(model: str, iters: int) -> None:
    bench = rcnn_inference if model == "faster_rcnn" else dense_inference
    tv, eager = bench.build_models(model, fast=True)
    compiled = copy.deepcopy(eager)
    compiled.set_compiled(True)
    image = rcnn_inference.make_image()

    start = time.perf_counter()
    eager_out = bench.run_ours(eager, image)
    eager_first = time.perf_counter() - start
    start = time.perf_counter()
    compiled_out = bench.run_ours(compiled, image)
    compile_s = time.perf_counter() - start - eager_first
    tv_out = bench.run_tv(tv, image)

    med = {"swiftdet eager": median_time(lambda: bench.run_ours(eager, image), iters),
           "swiftdet compiled": median_time(lambda: bench.run_ours(compiled, image), iters),
           "torchvision": median_time(lambda: bench.run_tv(tv, image), iters)}
    print(f"{model} R50-FPN, 3x{image.shape[-2]}x{image.shape[-1]}, {torch.get_num_threads()} threads, median of "
          f"{iters} runs after one warm-up each, load average {os.getloadavg()[0]:.2f}")
    print(f"  compile time (first compiled call minus an eager call): {compile_s:.1f} s")
    for name, seconds in med.items():
        print(f"  {name:18s} median {seconds * 1000:8.1f} ms")
    print(f"  ratio compiled/eager: {med['swiftdet compiled'] / med['swiftdet eager']:.3f}; "
          f"compiled/torchvision: {med['swiftdet compiled'] / med['torchvision']:.3f}; "
          f"eager/torchvision: {med['swiftdet eager'] / med['torchvision']:.3f}")
    print(f"  compiled detections equal eager's: {same_detections(eager_out, compiled_out)}")
    label_offset = 1 if model == "faster_rcnn" else 0
    print(f"  eager detections agree with torchvision's: {rcnn_inference.agreement(tv_out, eager_out, label_offset)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["faster_rcnn", "retinanet", "both"], default="both")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per model after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in (["faster_rcnn", "retinanet"] if args.model == "both" else [args.model]):
        run(model, args.iters)


if __name__ == "__main__":
    main()
