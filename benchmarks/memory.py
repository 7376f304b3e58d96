"""Peak resident memory of inference: swiftdet's Predictor against torchvision's model, same weights.

    python benchmarks/memory.py [--models [faster_rcnn] [mask_rcnn]] [--threads 2] [--iters 2]
                                [--large-size 8000] [--large-detections 10 25 50] [--no-large]

Every figure comes from a fresh process (``multiprocessing`` spawn) that imports its library, loads
its model from a file, runs ``--iters`` inferences and reads its peak RSS (``VmHWM`` of
/proc/self/status, the high-water mark of the whole process's life: the load is included).

**The benchmark image** (one 3x800x1216 uint8 image, no resize at 800/1333; ``rcnn_inference.py``'s
image): Faster and Mask R-CNN R50-FPN with the same random weights as ``rcnn_inference.py``
(FrozenBN statistics, affine parameters and biases randomised; 91 class slots, score threshold 0,
100 detections), written once as torchvision's state_dict and as a swiftdet checkpoint. Each process
does what a user of that library does:

* ``torchvision``: builds ``FasterRCNN`` / ``MaskRCNN`` on ``resnet50`` with FrozenBN, loads the
  state_dict file, and calls ``model([image.float()])`` under ``torch.no_grad()``; its masks come
  back pasted at full size as (N, 1, H, W) float.
* ``swiftdet``: ``Predictor(cfg, checkpoint)`` (fast path: the norms folded into the convs of the
  model it built, in place) on the uint8 image; masks come back as box-sized crops.
* ``swiftdet, two copies``: what the Predictor did before it fused in place: the trained model kept
  beside a fused copy (``fast=False`` plus ``fuse_for_inference`` of it, both held).

Printed: RSS after the imports, the RSS the loaded model holds above that, the peak, the peak above
the imports, and the ratios swiftdet / torchvision of the peak and of the peak above the imports.

**The large image** (``--large-size`` square, default 8000x8000, swiftdet Mask R-CNN only):
predict, then COCO RLEs for predictions.json, ``json.dumps`` and the drawn image, with the model's
``detections_per_image`` set to each of ``--large-detections``. Printed: the peak of predict above
the loaded model and image, and the peak of the writing above the RSS after predict (VmHWM reset
in between), which should grow with the detections' crops, not with the image's area per
detection: the growth per detection is printed against the 64 MB a full-size bool mask of
8000x8000 needs (torchvision's float masks: 256 MB each, 12.8 GB for 50: not run).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

import torch

CONFIGS = {"faster_rcnn": "faster_rcnn_R_50_FPN_1x", "mask_rcnn": "mask_rcnn_R_50_FPN_1x"}
# rcnn_inference.py's settings: 90 classes + background (torchvision's 91 slots), every detection kept.
OVERRIDES = ["model.num_classes=90", "model.box_head.score_thresh=0.0", "model.box_head.detections_per_image=100"]
WAYS = ("torchvision", "swiftdet", "swiftdet, two copies")


def _status_bytes(key: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS: now, VmHWM: the peak so far) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: 5 written to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _swiftdet_config(model: str, overrides: list[str] = ()):
    from swiftdet.config.core import load_config

    return load_config(CONFIGS[model], OVERRIDES + list(overrides))


def write_weights(model: str, folder: Path) -> tuple[Path, Path]:
    """(torchvision state_dict file, swiftdet checkpoint file) of rcnn_inference.py's random weights."""
    from rcnn_inference import build_models

    from swiftdet.config.core import config_to_dict
    from swiftdet.utils.io import atomic_torch_save
    from swiftdet.weights import make_checkpoint

    tv, ours = build_models(model, fast=False)
    tv_path, ours_path = folder / f"{model}_torchvision.pth", folder / f"{model}_swiftdet.pth"
    torch.save(tv.state_dict(), tv_path)
    atomic_torch_save(make_checkpoint(ours, config_to_dict(_swiftdet_config(model))), ours_path)
    return tv_path, ours_path


def _torchvision_model(model: str):
    """rcnn_inference.py's torchvision architecture (weights come from the file)."""
    import torchvision
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    cls = FasterRCNN if model == "faster_rcnn" else MaskRCNN
    return cls(backbone, num_classes=91, box_score_thresh=0.0, box_detections_per_img=100,
               image_mean=[123.675, 116.28, 103.53], image_std=[58.395, 57.12, 57.375])


def _image_800x1216() -> torch.Tensor:
    from rcnn_inference import make_image

    return make_image().round().to(torch.uint8)


def _benchmark_worker(way: str, model: str, tv_path: str, ours_path: str, threads: int, iters: int, queue) -> None:
    import torchvision  # noqa: F401  (both sides pay for torch and torchvision)

    if way != "torchvision":
        from swiftdet.inference.predictor import Predictor
        from swiftdet.model.layers import fuse_for_inference
    torch.set_num_threads(threads)
    image = _image_800x1216()
    imported = _status_bytes("VmRSS")
    if way == "torchvision":
        net = _torchvision_model(model)
        net.load_state_dict(torch.load(tv_path, map_location="cpu", weights_only=True))
        net.eval()

        def infer():
            with torch.no_grad():
                return net([image.float()])[0]
    else:
        predictor = Predictor(_swiftdet_config(model), ours_path, fast=way == "swiftdet")
        if way != "swiftdet":  # the trained model stays (predictor.source_model) beside the fused copy
            predictor.model = fuse_for_inference(predictor.model)

        def infer():
            return predictor(image)[0]
    loaded = _status_bytes("VmRSS")
    for _ in range(iters):
        out = infer()
    count = len(out["boxes"]) if isinstance(out, dict) else len(out)
    queue.put({"imported": imported, "loaded": loaded, "peak": _status_bytes("VmHWM"), "detections": count})


def _large_worker(size: int, detections: int, ours_path: str, threads: int, queue) -> None:
    from swiftdet.evaluation.results import instances_to_coco_results
    from swiftdet.inference.predictor import Predictor
    from swiftdet.visualization.draw import draw_instances

    torch.set_num_threads(threads)
    cfg = _swiftdet_config("mask_rcnn", [f"model.box_head.detections_per_image={detections}"])
    predictor = Predictor(cfg, ours_path)
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 25, 25, generator=gen)
    image = (torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0] * 255).to(torch.uint8)
    del coarse
    loaded = _status_bytes("VmRSS")
    [instances] = predictor(image)
    predicted, predict_peak = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    _reset_peak()
    text = json.dumps(instances_to_coco_results(instances, 1, predictor.category_ids))
    drawn = draw_instances(image.permute(1, 2, 0).numpy(), boxes=instances.boxes.tensor.numpy(), masks=instances.masks)
    queue.put({"loaded": loaded, "predict_peak": predict_peak, "predicted": predicted,
               "write_peak": _status_bytes("VmHWM"), "detections": len(instances),
               "crop_pixels": sum(c.numel() for c in instances.masks.crops), "json_bytes": len(text),
               "drawn": tuple(drawn.shape)})


def _in_fresh_process(target, *args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        value = queue.get(timeout=3600)
    finally:
        proc.join()
    return value


def _mib(value: float) -> str:
    return f"{value / 2**20:8.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", choices=sorted(CONFIGS), default=["faster_rcnn", "mask_rcnn"],
                        help="models of the benchmark image (none: only the large image)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--iters", type=int, default=2, help="inferences per process (the first warms up)")
    parser.add_argument("--large-size", type=int, default=8000, help="side of the large square image")
    parser.add_argument("--large-detections", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--no-large", action="store_true", help="skip the large image")
    args = parser.parse_args()
    print(f"peak RSS (VmHWM) of a fresh process per figure, {args.threads} threads, {args.iters} inferences, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for model in args.models + (["mask_rcnn"] if not args.no_large else []):
            if model not in paths:
                paths[model] = write_weights(model, Path(tmp))
        for model in args.models:
            tv_path, ours_path = paths[model]
            got = {way: _in_fresh_process(_benchmark_worker, way, model, str(tv_path), str(ours_path),
                                          args.threads, args.iters) for way in WAYS}
            print(f"{CONFIGS[model]}, one 3x800x1216 image, {got['swiftdet']['detections']} detections")
            print(f"  {'':22s} {'after imports':>13s} {'model held':>13s} {'peak':>13s} {'peak - imports':>15s}")
            for way, m in got.items():
                print(f"  {way:22s} {_mib(m['imported'])} {_mib(m['loaded'] - m['imported'])} {_mib(m['peak'])} "
                      f"  {_mib(m['peak'] - m['imported'])}")
            tv = got["torchvision"]
            for way in WAYS[1:]:
                m = got[way]
                print(f"  ratio {way} / torchvision: peak {m['peak'] / tv['peak']:.3f}, "
                      f"peak above the imports {(m['peak'] - m['imported']) / (tv['peak'] - tv['imported']):.3f}")
        if args.no_large:
            return
        size = args.large_size
        runs = [_in_fresh_process(_large_worker, size, n, str(paths["mask_rcnn"][1]), args.threads)
                for n in args.large_detections]
        print(f"mask_rcnn_R_50_FPN_1x, one 3x{size}x{size} image: predict, COCO RLE, json, drawing "
              f"(a full-size bool mask: {_mib(size * size)}, torchvision's float mask: {_mib(4 * size * size)})")
        for run in runs:
            print(f"  {run['detections']:4d} detections ({_mib(run['crop_pixels'])} of crops, "
                  f"{run['crop_pixels'] / max(run['detections'], 1) / (size * size):.3f} image per detection): "
                  f"predict peak {_mib(run['predict_peak'] - run['loaded'])} above the loaded model and image; "
                  f"RLE + json + drawing peak {_mib(run['write_peak'] - run['predicted'])} above the predictions")
        first, last = runs[0], runs[-1]
        if last["detections"] > first["detections"]:
            extra = last["detections"] - first["detections"]
            for name, key, start in (("predict", "predict_peak", "loaded"), ("writing", "write_peak", "predicted")):
                per = ((last[key] - last[start]) - (first[key] - first[start])) / extra
                print(f"  {name}: peak growth per detection {_mib(per)}")
            print(f"  (full-size masks: {_mib(size * size)} bool, {_mib(4 * size * size)} float per detection)")


if __name__ == "__main__":
    main()
