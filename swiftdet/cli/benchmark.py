"""`swiftdet benchmark CONFIG [KEY=VALUE ...] [--weights W] [--images DIR] [--batch-size N] [--num-images N]
[--warmup N] [--fuse] [--compile] [--device cpu|cuda] [--train] [--out benchmark.json]`.

The model-zoo table's figures, measured as mmdetection's ``tools/analysis_tools/benchmark.py``
measures them (:mod:`swiftdet.inference.benchmark`): inference time per image and images/s --
normalisation, network and post-processing to the original image size, between CUDA
synchronisations, the images decoded and resized before the clock starts -- over ``--num-images``
images after ``--warmup`` untimed batches, and the peak memory of those timed steps (CUDA:
``max_memory_allocated``; CPU: peak resident set size, see :class:`PeakMemory`). With ``--compile``
the warm-up batches are where torch.compile compiles (their wall time is reported, not timed).

Without ``--images`` the images are synthetic (uniform noise) of the config's largest test size
(``min_size_test x max_size_test``, or ``input.fixed_size``); without ``--weights`` (and no
``model.weights``) the weights are random. Both are said in the output, with the mean number of
detections per image: random scores mostly fall under the config's threshold, so that the
per-detection work (mask and keypoint heads, mask pasting) runs on few boxes or none;
``--score-thresh 0`` runs it on the model's ``detections_per_image`` boxes, and the class-wise
NMS on every candidate (all proposals x classes): an upper bound, slower than a trained model.

``--train`` also times training steps: swiftdet's :class:`~swiftdet.engine.trainer.Trainer` runs
its own iterations (optimizer, schedule, AMP, accumulation, clipping, EMA as configured) on
batches of ``--batch-size`` images built before the clock starts -- the same images through the
training transform (multi-scale resize, flip) -- with **random targets** (boxes, labels, box-shaped
polygon masks for mask models, keypoints inside the boxes for keypoint models): the cost of a
step depends on the number of boxes, not on whether they are right. It reports seconds per
iteration and the peak memory (CUDA ``max_memory_allocated``, what mmdetection's training logs call
``memory``) of the timed iterations. No checkpoint is written.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any

from swiftdet.cli.options import add_compile_argument, add_precision_argument

NAME = "benchmark"
HELP = "measure inference time per image, images/s and peak memory (and with --train seconds per training iteration)"

# At most this many distinct decoded images are kept (then cycled): enough variety for the
# timing, without holding a whole folder of full-size float images in memory.
MAX_DISTINCT_IMAGES = 64
# Random targets per training image (a COCO image has 7.3 annotations on average).
TRAIN_BOXES_PER_IMAGE = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="built-in config name, a .py config or a run's config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=600")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="checkpoint path or URL (default: the config's model.weights; with none, random weights, "
                             "said in the output)")
    parser.add_argument("--images", default=None, metavar="DIR",
                        help="folder of images to run on (searched recursively; up to 64 distinct images kept, "
                             "cycled); default: synthetic images of the config's test size")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1, "
                                                                               "mmdetection's)")
    parser.add_argument("--num-images", type=int, default=50, metavar="N",
                        help="timed images after the warm-up (default 50; mmdetection times 2000 on a GPU)")
    parser.add_argument("--warmup", type=int, default=5, metavar="N",
                        help="untimed batches (training: iterations) first (default 5, mmdetection's)")
    parser.add_argument("--fuse", action="store_true",
                        help="time the fast inference copy (norms folded into the convs, channels-last; what predict runs "
                             "by default), as mmdetection's fuse-conv-bn option; default: the model as trained")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="T",
                        help="keep detections scoring at least T (default: the config's); with random weights, 0 times "
                             "the per-detection heads on the most boxes the model returns (an upper bound)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available, else cpu)")
    parser.add_argument("--train", action="store_true",
                        help="also time training iterations (--num-images / --batch-size of them after --warmup) on "
                             "random targets")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figures as json (e.g. benchmark.json)")
    add_precision_argument(parser)
    add_compile_argument(parser)


def _check_args(args: argparse.Namespace) -> None:
    from swiftdet.errors import ConfigError, InputError

    for option, value, low in (("--batch-size", args.batch_size, 1), ("--num-images", args.num_images, 1),
                               ("--warmup", args.warmup, 0)):
        if value < low:
            raise ConfigError(f"{option} must be >= {low}, got {value}.")
    if args.score_thresh is not None and not 0.0 <= args.score_thresh <= 1.0:
        raise ConfigError(f"--score-thresh must be in [0, 1], got {args.score_thresh}.")
    if args.compile and args.warmup < 1:
        # The first batch compiles (tens of seconds or more): timed, it would be all the figure says.
        raise ConfigError("--compile needs --warmup >= 1: the warm-up batches are where torch.compile compiles, "
                          "and they are not timed (give more when the images have several sizes).")
    if args.images is not None and not os.path.isdir(args.images):
        # Said before the model is built, which takes a while.
        raise InputError(f"--images '{args.images}' is not a folder. Give a folder of images, or leave --images out "
                         "for synthetic images.")


def _device_name(device) -> str:
    import torch

    from swiftdet.utils.cpu import cpu_model

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _load_images(args: argparse.Namespace, cfg) -> tuple[list, str]:
    """Up to MAX_DISTINCT_IMAGES (3, H, W) uint8 RGB originals, and a sentence saying where they came from."""
    import torch

    from swiftdet.cli.flops import test_image_size

    wanted = min(max(args.num_images, args.batch_size), MAX_DISTINCT_IMAGES)
    if args.images is None:
        h, w = test_image_size(cfg)
        gen = torch.Generator().manual_seed(0)
        count = min(wanted, args.batch_size)  # one batch of distinct noise images is variety enough
        images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen) for _ in range(count)]
        return images, f"synthetic: {count} uniform-noise image(s) of the config's test size {h}x{w}, cycled"

    from swiftdet.cli.predict import collect_images
    from swiftdet.inference.predictor import to_rgb_tensor

    paths = collect_images([args.images])[:wanted]
    images = [to_rgb_tensor(p, str(p)) for p in paths]
    cycled = ", cycled" if len(paths) < args.num_images else ""
    return images, f"{len(paths)} image(s) from {args.images}{cycled}"


def _model(args: argparse.Namespace, cfg):
    """(model on the CPU, the config it was built with, a sentence about its weights, whether random)."""
    from swiftdet.cli.flops import random_model
    from swiftdet.weights.checkpoint import build_model_with_weights, config_for_weights

    source = args.weights or cfg.model.weights
    if not source:
        import torch

        torch.manual_seed(0)
        return random_model(cfg), cfg, "random (no --weights and no model.weights)", True
    cfg, note = config_for_weights(cfg, args.weights, args.overrides)
    if note:
        print(note, file=sys.stderr)
    model, _ = build_model_with_weights(cfg, args.weights, require_complete=True)
    return model, cfg, str(source), False


def _batches(prepared: list, batch_size: int) -> list:
    """Full batches over the cycled list of prepared (image, original size) pairs."""
    count = max(1, math.ceil(len(prepared) / batch_size))
    batches = []
    for b in range(count):
        items = [prepared[(b * batch_size + i) % len(prepared)] for i in range(batch_size)]
        batches.append(([image for image, _ in items], [size for _, size in items]))
    return batches


def _progress(total: int, desc: str):
    from swiftdet.cli.progress import Progress

    return Progress(total, "img", desc)


def measure_inference(args, cfg, model, originals, device) -> dict[str, Any]:
    import time

    from swiftdet.data.transforms import TestTransform
    from swiftdet.inference.benchmark import PeakMemory, time_inference
    from swiftdet.model.layers import fuse_for_inference

    transform = TestTransform.from_config(cfg)
    # Decoded and resized before timing (mmdetection's data loader runs outside its timer too).
    prepared = [(transform(img.to(device).float()), (int(img.shape[1]), int(img.shape[2]))) for img in originals]
    net = fuse_for_inference(model) if args.fuse else model
    net.set_compiled(args.compile)  # after the fusion: what is compiled is what runs
    batches = _batches(prepared, args.batch_size)
    memory = PeakMemory(device)
    with _progress(args.num_images, "benchmark inference") as bar:
        start = time.perf_counter()
        timing = time_inference(net, batches, num_images=args.num_images, warmup=args.warmup, device=device,
                                progress=bar, memory=memory)
    # The untimed warm-up's wall time (with --compile: the compilation), for the record.
    warmup_s = max(time.perf_counter() - start - timing.total_seconds, 0.0)
    sizes = sorted({tuple(int(s) for s in image.shape[-2:]) for image, _ in prepared})
    return {
        "images": timing.images,
        "batches": len(timing.batch_seconds),
        "batch_size": args.batch_size,
        "warmup_batches": args.warmup,
        "warmup_s": warmup_s,
        "input_sizes": [list(s) for s in sizes],
        "total_s": timing.total_seconds,
        "ms_per_image": timing.ms_per_image,
        "images_per_s": timing.images_per_second,
        "median_ms_per_batch": timing.median_ms_per_batch,
        "mean_detections_per_image": sum(timing.detections) / max(len(timing.detections), 1),
        "peak_memory_mb": memory.peak_bytes / 2**20,
        "memory_increase_mb": memory.increase_bytes / 2**20,
        "memory_method": memory.method,
        "fused": bool(args.fuse),
        "compiled": bool(args.compile),
    }


def random_targets(cfg, height: int, width: int, generator) -> Any:
    """Random training targets for a height x width image: TRAIN_BOXES_PER_IMAGE boxes (sides 5-50%
    of the image's), uniform labels, the boxes as polygon masks (mask models), keypoints uniform in
    their boxes, all visible (keypoint models)."""
    import torch

    from swiftdet.structures import Boxes, Instances, Keypoints, PolygonMasks

    n = TRAIN_BOXES_PER_IMAGE
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    size = (0.05 + 0.45 * torch.rand(n, 2, generator=generator)) * scale[:2]
    corner = torch.rand(n, 2, generator=generator) * (scale[:2] - size)
    boxes = torch.cat([corner, corner + size], dim=1)
    labels = torch.randint(0, cfg.model.num_classes, (n,), generator=generator)
    masks = None
    if cfg.model.mask_on:
        masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()])
    keypoints = None
    if cfg.model.keypoint_on:
        k = cfg.model.keypoint_head.num_keypoints
        xy = boxes[:, None, :2] + torch.rand(n, k, 2, generator=generator) * size[:, None, :]
        keypoints = Keypoints(torch.cat([xy, torch.full((n, k, 1), 2.0)], dim=2))
    return Instances((height, width), boxes=Boxes(boxes), labels=labels, masks=masks, keypoints=keypoints)


def measure_training(args, cfg, model, originals, device) -> dict[str, Any]:
    """Seconds per iteration and peak memory of the Trainer's own training steps (see the module doc)."""
    import copy

    import torch

    from swiftdet.data.loader import Sample
    from swiftdet.data.transforms import TrainTransform, augmentation_rng
    from swiftdet.engine.trainer import Trainer
    from swiftdet.inference.benchmark import PeakMemory

    cfg = copy.deepcopy(cfg)
    solver = cfg.solver
    per_iter = args.batch_size * solver.accumulate_steps
    iters = max(1, math.ceil(args.num_images / per_iter))
    solver.ims_per_batch = args.batch_size  # the linear lr scaling sees the benchmark's batch
    solver.log_period, solver.max_minutes, cfg.test.eval_period = 1, 0.0, 0

    transform = TrainTransform.from_config(cfg)
    flip_index = list(range(cfg.model.keypoint_head.num_keypoints)) if cfg.model.keypoint_on else None
    gen = torch.Generator().manual_seed(0)
    samples = []
    # Built before the clock starts: the training transform of each stream position, random targets.
    for position in range(max(per_iter, len(originals))):
        image = originals[position % len(originals)]
        h, w = int(image.shape[1]), int(image.shape[2])
        targets = random_targets(cfg, h, w, gen)
        resized, instances = transform(image, targets, augmentation_rng(cfg.seed, position), flip_index)
        samples.append(Sample(image=resized.to(device), image_id=position, file_name="", original_size=(h, w),
                              instances=instances.to(device)))

    def loader_factory(start: int):
        def batches():
            position = start * args.batch_size
            while True:
                yield [samples[(position + i) % len(samples)] for i in range(args.batch_size)]
                position += args.batch_size
        return batches()

    bar = _progress(iters * per_iter, "benchmark training")
    times: list[float] = []

    class TimedTrainer(Trainer):
        """The Trainer's iterations as they are; its per-iteration record kept here, no checkpoints."""

        def _log(self, values, lr, iter_time, data_time, mean_time, image_ids):
            if self.iteration > args.warmup:
                times.append(iter_time - data_time)
                bar.update(per_iter)

        def save_checkpoint(self):
            pass

    model = model.to(device).train()
    with tempfile.TemporaryDirectory(prefix="swiftdet-benchmark-") as tmp, bar:
        trainer = TimedTrainer(cfg, model, loader_factory, None, {}, tmp, device)
        # Two legs of the same loop (it continues from its iteration), so that the memory peak is that
        # of the timed iterations only.
        if args.warmup:
            solver.max_iter = args.warmup
            trainer._loop()
        solver.max_iter = args.warmup + iters
        with PeakMemory(device) as memory:
            trainer._loop()
    mean = sum(times) / len(times)
    return {
        "iterations": len(times),
        "warmup_iterations": args.warmup,
        "batch_size": args.batch_size,
        "accumulate_steps": solver.accumulate_steps,
        "amp": solver.amp,
        "s_per_iter": mean,
        "median_s_per_iter": sorted(times)[len(times) // 2],
        "images_per_s": per_iter / mean if mean > 0 else float("inf"),
        "peak_memory_mb": memory.peak_bytes / 2**20,
        "memory_increase_mb": memory.increase_bytes / 2**20,
        "memory_method": memory.method,
        "targets": f"random: {TRAIN_BOXES_PER_IMAGE} boxes per image"
                   + (", box-shaped polygon masks" if cfg.model.mask_on else "")
                   + (", keypoints inside the boxes" if cfg.model.keypoint_on else ""),
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    inf = result["inference"]
    lines = [f"benchmark of {result['config']} on {result['device']} ({result['device_name']}, "
             f"{result['torch_threads']} torch threads)",
             f"  weights: {result['weights']}; images: {result['images']}",
             f"  {'':28s} {'ms/img':>9s} {'img/s':>8s} {'peak MiB':>10s} {'+MiB':>9s}",
             f"  {'inference' + (' (fused)' if inf['fused'] else '') + (' (compiled)' if inf['compiled'] else ''):28s} "
             f"{inf['ms_per_image']:9.1f} "
             f"{inf['images_per_s']:8.2f} {inf['peak_memory_mb']:10.1f} {inf['memory_increase_mb']:9.1f}"]
    lines.append(f"  {inf['images']} images in {inf['batches']} batches of {inf['batch_size']} after "
                 f"{inf['warmup_batches']} warm-up batches ({inf['warmup_s']:.1f} s"
                 f"{', torch.compile compiling: not timed' if inf['compiled'] else ''}); "
                 f"{inf['mean_detections_per_image']:.1f} detections per image")
    train = result.get("train")
    if train:
        lines.append(f"  {'training':28s} {1000 * train['s_per_iter'] / (train['batch_size'] * train['accumulate_steps']):9.1f} "
                     f"{train['images_per_s']:8.2f} {train['peak_memory_mb']:10.1f} {train['memory_increase_mb']:9.1f}")
        lines.append(f"  training: {train['s_per_iter']:.3f} s/iter (median {train['median_s_per_iter']:.3f}) over "
                     f"{train['iterations']} iterations of {train['batch_size']} images after {train['warmup_iterations']} "
                     f"warm-up; targets {train['targets']}")
    if result["random_weights"]:
        lines.append(f"  note: random weights, so detections are noise: {inf['mean_detections_per_image']:.1f} per image at "
                     f"score threshold {result['score_thresh']:g}; --score-thresh 0 times the per-detection heads (and "
                     "NMS) on the most boxes the model returns, an upper bound")
    if result["synthetic_images"]:
        lines.append("  note: synthetic images (uniform noise); --images DIR times real ones")
    lines.append(f"  memory: {inf['memory_method']}")
    return lines


def run(args: argparse.Namespace) -> int:
    import torch

    from swiftdet.config.core import load_config
    from swiftdet.inference.predictor import resolve_device

    _check_args(args)
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = load_config(args.config, args.overrides)
    model, cfg, weights, random = _model(args, cfg)
    if args.score_thresh is not None:
        model.score_thresh = args.score_thresh
    model = model.to(device).eval()
    model.set_precision(args.precision)
    if args.compile:  # said before the images are loaded; measure_inference compiles the model it runs
        from swiftdet.model.detector import check_compile_toolchain

        check_compile_toolchain(device)
    originals, where = _load_images(args, cfg)
    result: dict[str, Any] = {
        "config": args.config,
        "overrides": list(args.overrides),
        "device": str(device),
        "device_name": _device_name(device),
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        "compiled": bool(args.compile),
        "torch_version": torch.__version__,
        "weights": weights,
        "random_weights": random,
        "score_thresh": float(model.score_thresh),
        "images": where,
        "synthetic_images": args.images is None,
    }
    result["inference"] = measure_inference(args, cfg, model, originals, device)
    if args.train:
        result["train"] = measure_training(args, cfg, model, originals, device)
    print("\n".join(summary_lines(result)))
    if args.out:
        from swiftdet.cli.flops import write_json

        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
