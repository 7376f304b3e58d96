"""Tiny RetinaNet and FCOS models train: finite named losses that fall, empty images handled."""
from __future__ import annotations

import math

import pytest
import torch

from swiftdet.config import load_config
from swiftdet.model.build import build_model
from swiftdet.structures import Boxes, Instances

LOSS_NAMES = {
    "retinanet_R_50_FPN_1x": {"loss_cls", "loss_box"},
    "fcos_R_50_FPN_1x": {"loss_cls", "loss_box", "loss_ctr"},
}


def _tiny_model(config_name: str, overrides: tuple[str, ...] = ()):
    head = "fcos" if config_name.startswith("fcos") else "retinanet"
    cfg = load_config(
        config_name,
        [
            "model.num_classes=3",
            "model.backbone.depth=18",
            "model.backbone.norm=BN",
            "model.backbone.freeze_at=0",
            "model.fpn.out_channels=128",
            f"model.{head}.num_convs=2",
            *overrides,
        ],
    ).model
    torch.manual_seed(0)
    return build_model(cfg)


def _batch(model, with_empty: bool):
    """Two 128 x 160 images with coloured rectangles on noise, their boxes as targets."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    specs = [
        [((10, 20, 70, 90), 0), ((80, 30, 150, 110), 2)],
        [] if with_empty else [((30, 40, 100, 120), 1)],
    ]
    for boxes in specs:
        img = torch.rand(3, 128, 160, generator=g) * 60
        for (x0, y0, x1, y1), label in boxes:
            img[label, y0:y1, x0:x1] = 255.0
        images.append(img)
        t = torch.tensor([b for b, _ in boxes], dtype=torch.float32).reshape(-1, 4)
        targets.append(Instances((128, 160), boxes=Boxes(t), labels=torch.tensor([l for _, l in boxes], dtype=torch.int64)))
    return model.preprocess(images), targets


@pytest.mark.parametrize("config_name", sorted(LOSS_NAMES))
def test_losses_are_finite_named_and_fall(config_name):
    model = _tiny_model(config_name).train()
    batch, targets = _batch(model, with_empty=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(20):
        losses = model(batch, targets)
        assert set(losses) == LOSS_NAMES[config_name]
        assert all(v.dim() == 0 and math.isfinite(v.item()) for v in losses.values()), losses
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.75 * sum(totals[:3]) / 3, totals


@pytest.mark.parametrize("config_name", ["retinanet_R_50_FPN_1x", "fcos_R_50_FPN_1x"])
def test_images_without_objects(config_name):
    model = _tiny_model(config_name).train()
    batch, targets = _batch(model, with_empty=True)
    losses = model(batch, targets)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    # A batch with no objects at all: only background classification is learnt.
    empty = [Instances.empty((128, 160)), Instances.empty((128, 160))]
    losses = model(batch, empty)
    assert losses["loss_box"].item() == 0.0 and losses["loss_cls"].item() > 0.0
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize(
    "config_name,box_loss",
    [("retinanet_R_50_FPN_1x", "l1"), ("retinanet_R_50_FPN_1x", "smooth_l1"), ("retinanet_R_50_FPN_v2", "giou")],
)
def test_retinanet_box_losses(config_name, box_loss):
    overrides = (f"model.retinanet.box_loss={box_loss}", "model.retinanet.smooth_l1_beta=0.1")
    model = _tiny_model(config_name, overrides).train()
    batch, targets = _batch(model, with_empty=False)
    losses = model(batch, targets)
    assert losses["loss_box"].item() > 0.0 and math.isfinite(losses["loss_box"].item())


def test_eval_output_after_training_step_is_instances():
    model = _tiny_model("fcos_R_50_FPN_1x", ("model.fcos.score_thresh=0.0",)).eval()
    batch, _ = _batch(model, with_empty=False)
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 2
    for inst, size in zip(out, batch.image_sizes):
        assert inst.image_size == size and 0 < len(inst) <= 100
        assert inst.labels.dtype == torch.int64 and int(inst.labels.max()) < 3
        b = inst.boxes.tensor
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= size[1]).all() and (b[:, 3] <= size[0]).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()


@pytest.mark.parametrize("config_name", ["retinanet_R_50_FPN_1x", "fcos_R_50_FPN_1x"])
def test_bf16_autocast_training_step(config_name):
    """Mixed precision: losses stay float32 and finite (anchors are made in float32)."""
    model = _tiny_model(config_name).train()
    batch, targets = _batch(model, with_empty=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(batch, targets)
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
