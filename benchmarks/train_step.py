"""One training step of swiftdet's detectors vs torchvision's, on the same weights and batch.

    python benchmarks/train_step.py [--model faster_rcnn|mask_rcnn|retinanet] [--iters 3] [--threads 2] [--no-memory]

Both models are R50-FPN with the random weights of the inference benchmarks (``rcnn_inference`` and
``dense_inference``: FrozenBN statistics and biases randomised, torchvision's state dict converted into
swiftdet's), the same parameters trainable in both (torchvision's frozen ``conv1``/``layer1`` are
swiftdet's frozen stem and res2). The batch: 2 images of 3x512x640 with 4 boxes each (and their
bitmasks for Mask R-CNN), a fixed seed. torchvision's transform is told ``min_size=512`` so it keeps the
images at their size, as swiftdet's data pipeline hands them to the model.

A step is what a training loop does per iteration: forward in train mode (losses), backward, an SGD
step (momentum 0.9, weight decay 1e-4) and ``zero_grad``, starting from the list of 0-255 images and
their targets (torchvision's transform and swiftdet's ``preprocess`` included). After one warm-up step
each, steps alternate between the two models; the median is printed with the ratio.

Losses at step 1 are compared with sampling made deterministic: every sampler takes all candidates
(``batch_size_per_image`` raised to 10^7; the RPN and RoI samplers then select every positive and every
negative), so the losses depend on the weights only. Expected differences are printed beside them:
swiftdet crops ground-truth masks for the mask loss with aligned RoIAlign (detectron2's rule), torchvision
with the legacy unaligned one.

Memory: each model in a fresh process builds the model and an SGD optimiser, runs one step (which
allocates the momentum buffers and warms the allocator), then runs one more step inside
``swiftdet.inference.benchmark.PeakMemory`` (the peak resident set size, VmHWM, reset before the step:
the lifetime peak ``ru_maxrss`` would be the build's, with both models loaded); the figure is that peak
minus the resident memory before the step, what a step needs above the model and its optimiser state.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from swiftdet.inference.benchmark import PeakMemory

from _harness import in_fresh_process

NAMES = ("torchvision", "swiftdet")
SIZE = (512, 640)
BOXES = torch.tensor([[40.0, 60.0, 200.0, 300.0], [300.0, 80.0, 420.0, 200.0],
                      [100.0, 350.0, 380.0, 500.0], [450.0, 250.0, 630.0, 480.0]])


def build_models(model: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(torchvision model, swiftdet model), same weights and the same trainable parameters, in train mode."""
    if model == "retinanet":
        from dense_inference import build_models as build
    else:
        from rcnn_inference import build_models as build
    from swiftdet.model.layers import prepare_for_training

    tv, ours = build(model, seed=seed, fast=False)
    tv.transform.min_size = (SIZE[0],)
    tv.transform.max_size = 1333
    frozen = [name for name, p in ours.backbone.named_parameters() if not p.requires_grad]
    for name, p in tv.backbone.body.named_parameters():
        if name.startswith(("conv1.", "bn1.", "layer1.")):
            p.requires_grad_(False)
    counts = [sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (tv, ours)]
    if counts[0] != counts[1]:
        raise SystemExit(f"trainable parameters differ: torchvision {counts[0]}, swiftdet {counts[1]} "
                         f"(swiftdet freezes {len(frozen)} backbone tensors)")
    # swiftdet's model as its Trainer prepares it (channels-last convolutions).
    return tv.train(), prepare_for_training(ours).train()


def make_batch(model: str, seed: int = 0):
    """(two 3x512x640 float images 0-255, torchvision targets, swiftdet targets)."""
    from swiftdet.structures import BitMasks, Boxes, Instances

    gen = torch.Generator().manual_seed(seed)
    images, tv_targets, targets = [], [], []
    for i in range(2):
        coarse = torch.rand(1, 3, 16, 20, generator=gen)
        image = nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)[0] * 200
        image = (image + torch.rand(3, *SIZE, generator=gen) * 55).clamp(0, 255)
        boxes = BOXES + i * 5.0
        labels = torch.tensor([1, 3, 17, 62]) if i == 0 else torch.tensor([5, 3, 44, 1])
        masks = torch.zeros(len(boxes), *SIZE, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.round().int().tolist()):
            m[y0 + (y1 - y0) // 4:y1, x0:x1 - (x1 - x0) // 5] = 1  # not the whole box: a shape to learn
            image[:, m.bool()] *= 0.6
        images.append(image)
        tv_target = {"boxes": boxes, "labels": labels}
        # torchvision's R-CNN labels count the background as 0; swiftdet's start at 0 for the first class.
        offset = 0 if model == "retinanet" else 1
        ours_target = Instances(SIZE, boxes=Boxes(boxes.clone()), labels=labels - offset)
        if model == "mask_rcnn":
            tv_target["masks"] = masks
            ours_target.masks = BitMasks(masks.bool())
        tv_targets.append(tv_target)
        targets.append(ours_target)
    return images, tv_targets, targets


def losses_tv(tv: nn.Module, images, targets) -> dict[str, torch.Tensor]:
    return tv([im / 255.0 for im in images] if _dense(tv) else list(images), targets)


def losses_ours(ours: nn.Module, images, targets) -> dict[str, torch.Tensor]:
    return ours(ours.preprocess(list(images)), targets)


def _dense(tv: nn.Module) -> bool:
    return hasattr(tv, "head")  # RetinaNet takes 0-1 images; the R-CNN benchmarks give 0-255 with 0-255 mean/std


def make_step(net: nn.Module, loss_fn, images, targets):
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step() -> dict[str, float]:
        losses = loss_fn(net, images, targets)
        sum(losses.values()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def set_sampling(net: nn.Module, batch_size: int | None) -> list[tuple[object, int]]:
    """Set every sampler's ``batch_size_per_image`` (None: restore); returns what it replaced."""
    found = []
    for mod in net.modules():
        for value in vars(mod).values():
            if hasattr(value, "batch_size_per_image") and hasattr(value, "positive_fraction"):
                found.append((value, value.batch_size_per_image))
                if batch_size is not None:
                    value.batch_size_per_image = batch_size
    return found


# torchvision's loss names -> swiftdet's.
LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_box", "loss_classifier": "loss_cls",
              "loss_box_reg": "loss_box", "loss_mask": "loss_mask", "classification": "loss_cls",
              "bbox_regression": "loss_box"}


def compare_losses(tv: nn.Module, ours: nn.Module, images, tv_targets, targets, model: str) -> None:
    saved = set_sampling(tv, 10**7) + set_sampling(ours, 10**7)
    a, b = losses_tv(tv, images, tv_targets), losses_ours(ours, images, targets)  # with autograd, as in training
    for sampler, value in saved:
        sampler.batch_size_per_image = value
    print("  losses at step 1 (all candidates sampled):")
    for name, value in a.items():
        ours_name = LOSS_NAMES.get(name, name)
        other = b.get(ours_name)
        note = ""
        if model == "mask_rcnn" and ours_name == "loss_mask":
            note = "  (mask targets: aligned vs unaligned RoIAlign, see the docstring)"
        if other is None:
            print(f"    {name:18s} torchvision {float(value.detach()):.6f}  swiftdet: no {ours_name}")
        else:
            diff = abs(float(value.detach()) - float(other.detach()))
            print(f"    {name:18s} torchvision {float(value.detach()):.6f}  swiftdet {ours_name} {float(other.detach()):.6f}  "
                  f"diff {diff:.1e} {'(within 1e-4)' if diff <= 1e-4 else '(NOT within 1e-4)'}{note}")


def _memory_worker(which: str, model: str, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    tv, ours = build_models(model)
    images, tv_targets, targets = make_batch(model)
    step = (make_step(tv, losses_tv, images, tv_targets) if which == "torchvision"
            else make_step(ours, losses_ours, images, targets))
    del tv, ours
    step()
    with PeakMemory(torch.device("cpu")) as memory:
        step()
    queue.put(memory.increase_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["faster_rcnn", "mask_rcnn", "retinanet"], default="faster_rcnn")
    parser.add_argument("--iters", type=int, default=3, help="timed steps per model (alternating)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tv, ours = build_models(args.model)
    images, tv_targets, targets = make_batch(args.model)
    print(f"{args.model} R50-FPN training step, 2x3x{SIZE[0]}x{SIZE[1]}, 4 boxes per image, {args.threads} threads, "
          f"{args.iters} steps each (alternating) after one warm-up, load average {os.getloadavg()[0]:.2f}")
    compare_losses(tv, ours, images, tv_targets, targets, args.model)
    steps = {"torchvision": make_step(tv, losses_tv, images, tv_targets),
             "swiftdet": make_step(ours, losses_ours, images, targets)}
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(args.iters):
        for name in NAMES:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in NAMES:
        print(f"  {name:12s} median {med[name] * 1000:8.1f} ms   (all: {', '.join(f'{t * 1000:.0f}' for t in times[name])})")
    print(f"  step time ratio swiftdet/torchvision: {med['swiftdet'] / med['torchvision']:.3f}")
    if not args.no_memory:
        del tv, ours, steps
        mem = {name: in_fresh_process(_memory_worker, name, args.model, args.threads) for name in NAMES}
        for name, value in mem.items():
            print(f"  {name:12s} peak step memory above the model and optimiser: {value / 2**20:8.1f} MiB")
        print(f"  memory ratio swiftdet/torchvision: {mem['swiftdet'] / max(mem['torchvision'], 1):.3f}")


if __name__ == "__main__":
    main()
