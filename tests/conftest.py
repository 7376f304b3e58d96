"""Shared pytest fixtures.

The real COCO subset lives in ../shared/datasets beside a developer's or CI's checkout, never in a
user's clone: tests that need it take the ``tiny_coco`` fixture, which skips with a reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("SWIFTDET_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def tiny_coco() -> Path:
    """Root of ../shared/datasets/tiny_coco (image root; jsons under annotations/)."""
    root = SHARED_DATASETS / "tiny_coco"
    if not (root / "annotations" / "instances_val.json").is_file():
        pytest.skip(f"real test data not found at {root} (present only beside a developer's or CI's checkout)")
    return root


def randomise_weights(model, generator) -> None:
    """Random weights that keep activations O(1) through a deep network (1/sqrt(fan-in) convs,
    biases slightly negative, He-scaled linear layers) and BatchNorms reset to calibrate their
    statistics on real images afterwards (cumulative averages); in place, without autograd."""
    import math

    import torch
    from torch import nn

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) / math.sqrt(mod.weight[0].numel()))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=generator) * 0.1 - 1.0)
            elif isinstance(mod, nn.Linear):  # R-CNN's box head and predictor
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * math.sqrt(2.0 / mod.weight.shape[1]))
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=generator) * 0.1)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
            elif isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(torch.rand(mod.num_channels, generator=generator) + 0.5)
