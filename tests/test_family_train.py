"""detectron2's model families train: DC5, deformable convolutions, GroupNorm (+WS) and an RPN alone
each give named finite losses that fall on the synthetic batch of test_rcnn_train, at a test width."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.model.build import build_model
from test_rcnn_train import synthetic_batch, tiny_config, train_steps

FAMILIES = {
    # name: (named config, loss names, steps)
    "dc5": ("d2_faster_rcnn_R_50_DC5_1x", {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}, 20),
    "dcn": ("d2_mask_rcnn_R_50_FPN_1x_dconv_c3_c5", {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}, 20),
    "gn": ("d2_mask_rcnn_R_50_FPN_3x_gn", {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}, 20),
    "gn_ws": ("d2_mask_rcnn_R_50_FPN_3x_gn", {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}, 20),
    "rpn": ("d2_rpn_R_50_FPN_1x", {"loss_rpn_cls", "loss_rpn_box"}, 20),
}


def _family_model(kind: str):
    name, _, _ = FAMILIES[kind]
    cfg = tiny_config(name)
    # Dilation and deformable convs live in bottleneck blocks: R50's layout, narrowed (GroupNorm's 32
    # groups need widths that are multiples of 32).
    cfg.backbone.depth = 50
    cfg.backbone.stem_out_channels, cfg.backbone.res2_out_channels, cfg.backbone.width_per_group = (
        (32, 32, 32) if kind.startswith("gn") else (16, 32, 8))
    if kind.startswith("gn"):
        cfg.box_head.conv_dim = 32
    cfg.weight_standardization = kind == "gn_ws"
    return cfg, build_model(cfg)


def _calibrate_frozen_norms(model, images: torch.Tensor) -> None:
    """Set every frozen BatchNorm's statistics to those of its input on ``images``, layer after
    layer: a random-weight R50 without normalisation grows its activations stage by stage (mask
    logits in the hundreds, a diverging first step) where a pretrained one would not."""
    def calibrate(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)) - module.eps)

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.backbone(images)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_family_losses_are_named_finite_and_fall(kind):
    torch.manual_seed(0)
    cfg, model = _family_model(kind)
    if kind == "dcn":
        assert any(type(m).__name__ == "DeformConv2d" for m in model.backbone.modules())
    if kind == "dc5":
        assert model.backbone.layer4[0].conv2.dilation == (2, 2)
    if kind.startswith("gn"):
        assert any(type(m).__name__ == "GroupNorm" for m in model.backbone.modules())
        assert any(type(m).__name__ == "WSConv2d" for m in model.modules()) == (kind == "gn_ws")
    model.train()
    images, targets = synthetic_batch()
    batch = model.preprocess(images)
    _calibrate_frozen_norms(model, batch.tensor)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    _, names, steps = FAMILIES[kind]
    totals = train_steps(model, batch, targets, names, steps, opt)
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:3]), totals
    if kind == "dcn":  # the offsets start at zero (detectron2's init) and learn
        offsets = [p for n, p in model.named_parameters() if n.endswith("conv2_offset.weight")]
        assert offsets and all(p.abs().sum() > 0 for p in offsets)
