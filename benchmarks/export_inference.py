"""Latency of exported swiftdet models (onnxruntime, OpenVINO, TorchScript) vs eager swiftdet and torchvision.

    python benchmarks/export_inference.py [--model retinanet|fcos|mask_rcnn] [--batch 1] [--iters 5] [--threads 2]
        [--runners torchvision,eager,onnxruntime,int8,openvino,openvino-int8,torchscript] [--calib-images 2]

The same random weights in all (``dense_inference.build_models`` / ``rcnn_inference.build_models``:
torchvision's model converted into swiftdet's), one 3x800x1216 image (``rcnn_inference.make_image``,
or ``--batch`` copies of it, shifted so they differ), end to end: each runner takes the images at
their test size (800x1216 needs no resize) and returns detections in image pixels (Mask R-CNN's
masks pasted at full size by every runner). Runners alternate after one warm-up each; medians are printed with
their ratio to torchvision, and the exported models' detections are checked against eager
swiftdet (counts, labels, and the largest box and score differences; int8 is not expected to be
equal). ``int8`` is onnxruntime on the file ``swiftdet export --quantize int8`` writes
(``swiftdet.export.quantize``), calibrated here on ``--calib-images`` other images of the same kind
(``make_image`` with other seeds); ``openvino-int8`` runs that QDQ file through OpenVINO. A row of
Mask R-CNN with a batch of 4 fits in about 5 minutes with ``--iters 2 --runners torchvision,eager,int8``;
``--model retinanet --batch 4 --iters 1`` with the default runners took 9 minutes on a busy 2-core machine.
The agreement line compares detections position by position: at ``score_thresh=0.0`` a random model has
many detections of (nearly) equal score, which a runner may list in another order, so "labels equal
False" or a large box difference beside a score difference near 1e-7 can be that reordering (the
parity tests in tests/test_export.py check exported files against eager).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dense_inference import build_models as build_dense_models
from rcnn_inference import build_models as build_rcnn_models
from rcnn_inference import make_image

RUNNERS = ("torchvision", "eager", "onnxruntime", "int8", "openvino", "openvino-int8", "torchscript")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("retinanet", "fcos", "mask_rcnn"), default="retinanet")
    parser.add_argument("--batch", type=int, default=1, help="images per call")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per runner (alternating)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--runners", default="torchvision,eager,onnxruntime,int8,openvino",
                        help=f"comma-separated, of {','.join(RUNNERS)} (torchvision is always run: the ratios' base)")
    parser.add_argument("--calib-images", type=int, default=2, metavar="N", help="calibration images of the int8 file")
    args = parser.parse_args()
    chosen = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in RUNNERS]
    if unknown:
        parser.error(f"unknown runner(s) {', '.join(unknown)}; choose from {', '.join(RUNNERS)}")
    torch.set_num_threads(args.threads)

    from swiftdet.config.core import load_config
    from swiftdet.export.onnx import export_model
    from swiftdet.export.quantize import quantize_onnx
    from swiftdet.export.runtime import ExportedModel, read_export_info
    from swiftdet.model.layers import fuse_for_inference

    if args.model == "mask_rcnn":
        tv, plain = build_rcnn_models("mask_rcnn", fast=False)
        cfg = load_config("mask_rcnn_R_50_FPN_1x", ["model.num_classes=90", "model.box_head.score_thresh=0.0",
                                                    "model.box_head.detections_per_image=100"])
        tv_scale = 1.0  # rcnn_inference's torchvision model normalises 0-255 input
    else:
        tv, plain = build_dense_models(args.model, fast=False)
        cfg = load_config(f"{args.model}_R_50_FPN_1x", ["model.num_classes=91", f"model.{args.model}.score_thresh=0.0",
                                                        f"model.{args.model}.detections_per_image=100"])
        tv_scale = 1 / 255.0
    fast = fuse_for_inference(plain)
    base = make_image()
    images = [base.roll(17 * i, dims=-1) for i in range(args.batch)]
    sizes = [tuple(img.shape[-2:]) for img in images]

    folder = Path(tempfile.mkdtemp(prefix="swiftdet_export_bench_"))
    runners = {"torchvision": lambda: tv([img * tv_scale for img in images])}
    if "eager" in chosen:
        runners["swiftdet eager (fast)"] = lambda: fast.predict(images, sizes)
    started = time.perf_counter()
    files = {"onnxruntime": ("onnxruntime", "model.onnx"), "openvino": ("openvino", "model.onnx"),
             "torchscript": ("torchscript", "model.pt"), "int8": ("onnxruntime", "model_int8.onnx"),
             "openvino-int8": ("openvino", "model_int8.onnx")}
    for runner in (r for r in RUNNERS if r in chosen and r in files):
        backend, name = files[runner]
        path = folder / name
        if not (folder / "model.onnx").exists() and name.endswith(".onnx"):
            export_model(fast, cfg, folder / "model.onnx")
        if not path.exists() and name == "model.pt":
            export_model(fast, cfg, path, fmt="torchscript")
        if not path.exists() and name == "model_int8.onnx":
            t0 = time.perf_counter()
            calib = [make_image(seed) for seed in range(1, args.calib_images + 1)]
            quantize_onnx(folder / "model.onnx", path, calib)
            print(f"quantized to int8 on {len(calib)} calibration images in {time.perf_counter() - t0:.1f} s")
        exported = ExportedModel(path, backend, cfg, read_export_info(path), threads=args.threads)
        label = f"swiftdet {backend}" + (" int8" if "int8" in runner else "")
        runners[label] = (lambda e: lambda: e.predict(images, sizes))(exported)
    print(f"exported and loaded {len(runners) - 1} swiftdet runners in {time.perf_counter() - started:.1f} s")

    outputs = {}
    with torch.no_grad():
        for name, run in runners.items():
            outputs[name] = run()  # warm-up and agreement
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.iters):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{args.model} R50-FPN, batch {args.batch} of 3x800x1216, {args.threads} threads, {args.iters} runs each "
          f"(alternating), load average {os.getloadavg()[0]:.2f}")
    for name in runners:
        print(f"  {name:24s} median {med[name] * 1000:8.1f} ms   ratio to torchvision {med[name] / med['torchvision']:.3f}")
    lscpu = os.popen("lscpu 2>/dev/null").read()
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f" {f}" in lscpu]
    print(f"  CPU: {model_name}; flags: {' '.join(flags) or 'none of avx2/avx512/vnni/amx'}")
    reference = outputs.get("swiftdet eager (fast)")
    if reference is None:
        return
    for name in (n for n in runners if n.startswith("swiftdet ") and n != "swiftdet eager (fast)"):
        got = outputs[name]
        counts = [len(r) for r in got] == [len(r) for r in reference]
        labels = counts and all(torch.equal(a.labels, b.labels) for a, b in zip(got, reference))
        pairs = [(a, b) for a, b in zip(got, reference) if counts and len(a)]
        box = max((float((a.boxes.tensor - b.boxes.tensor).abs().max()) for a, b in pairs), default=float("nan"))
        score = max((float((a.scores - b.scores).abs().max()) for a, b in pairs), default=float("nan"))
        print(f"  {name} vs eager: counts equal {counts}, labels equal {labels}, max box diff {box:.2e} px, "
              f"max score diff {score:.2e}")


if __name__ == "__main__":
    main()
