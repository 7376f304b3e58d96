"""The training step's pieces, each against what it replaced, in one run.

    python benchmarks/training_kernels.py [--threads 2] [--repeats 3]

- RoIAlign forward + backward of 1024 RoIs on a (2, 256, 64, 80) feature map (an FPN level of two
  512x640 images), 7x7 bins, sampling ratio 2: torchvision's op against ``swiftdet.model.roi_align``
  (the sparse sampling matrix); the maximum gradient difference is printed as the check.
- Focal loss forward + backward on RetinaNet's (2, 61380, 91) logits of two 512x640 images with 30
  foreground anchors: ``torchvision.ops.sigmoid_focal_loss`` summed per anchor against
  ``swiftdet.model.dense_head.focal_loss_per_anchor``.
- A Faster R-CNN R50-FPN training step (``train_step.py``'s model and batch) with NCHW convolutions
  against the channels-last ones ``prepare_for_training`` sets.

Each figure is the median of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse

import torch
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import sigmoid_focal_loss

from swiftdet.model.dense_head import focal_loss_per_anchor
from swiftdet.model.roi_align import roi_align

from _harness import median_time


def roi_align_rows(repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 256, 64, 80, generator=gen)
    xy = torch.rand(1024, 2, generator=gen) * torch.tensor([640.0, 512.0]) - 20
    wh = torch.rand(1024, 2, generator=gen) * 150 + 0.5
    rois = torch.cat([torch.randint(0, 2, (1024, 1), generator=gen).float(), xy, xy + wh], dim=1)
    grad = torch.randn(1024, 256, 7, 7, generator=gen)
    grads = {}

    def run(op, name):
        def step():
            x = feats.clone().requires_grad_()
            (op(x, rois, (7, 7), 1 / 8, 2, False) * grad).sum().backward()
            grads[name] = x.grad
        return step

    t_tv = median_time(run(tv_roi_align, "tv"), repeats)
    t_ours = median_time(run(roi_align, "ours"), repeats)
    print(f"RoIAlign fwd+bwd, 1024 RoIs, 256 channels: torchvision {t_tv * 1000:.0f} ms, swiftdet {t_ours * 1000:.0f} ms "
          f"({t_ours / t_tv:.2f}x); max gradient difference {float((grads['tv'] - grads['ours']).abs().max()):.1e}")


def focal_rows(repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 61380, 91, generator=gen) * 3 - 4
    labels = torch.full((2, 61380), -1)
    labels[0, 1000:1015] = torch.randint(0, 91, (15,), generator=gen)
    labels[1, 40000:40015] = torch.randint(0, 91, (15,), generator=gen)
    img, anchor = (labels >= 0).nonzero(as_tuple=True)

    def tv_step():
        x = logits.clone().requires_grad_()
        target = torch.zeros_like(x)
        target[img, anchor, labels[img, anchor]] = 1.0
        sigmoid_focal_loss(x, target, alpha=0.25, gamma=2.0, reduction="none").sum(dim=2).sum().backward()

    def ours_step():
        x = logits.clone().requires_grad_()
        focal_loss_per_anchor(x, img, anchor, labels[img, anchor], 0.25, 2.0).sum().backward()

    t_tv, t_ours = median_time(tv_step, repeats), median_time(ours_step, repeats)
    print(f"focal loss fwd+bwd, 2 x 61380 x 91 logits: torchvision {t_tv * 1000:.0f} ms, swiftdet {t_ours * 1000:.0f} ms "
          f"({t_ours / t_tv:.2f}x)")


def layout_rows(repeats: int) -> None:
    from train_step import build_models, losses_ours, make_batch, make_step

    _, ours = build_models("faster_rcnn")  # channels-last, as the Trainer prepares it
    images, _, targets = make_batch("faster_rcnn")
    step = make_step(ours, losses_ours, images, targets)
    figures = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
        ours.to(memory_format=fmt)
        figures[name] = median_time(step, repeats)
    print(f"Faster R-CNN R50-FPN training step, 2x3x512x640: NCHW {figures['NCHW'] * 1000:.0f} ms, channels-last "
          f"{figures['channels-last'] * 1000:.0f} ms ({figures['channels-last'] / figures['NCHW']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from swiftdet.utils.cpu import cpu_description

    print(f"{args.threads} threads; {cpu_description()}")
    roi_align_rows(args.repeats)
    focal_rows(args.repeats)
    layout_rows(args.repeats)


if __name__ == "__main__":
    main()
