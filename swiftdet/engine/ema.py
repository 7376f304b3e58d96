"""Exponential moving average of a model's weights, evaluated and saved beside the raw weights."""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * weights`` after every optimizer step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates ``n``, so the
    average is not dominated by the random initial weights. Floating-point parameters and buffers
    (e.g. BN running statistics) are averaged; integer buffers (e.g. BN's batch counter) are copied.

    Attributes:
        model: a frozen copy of the model in eval mode holding the averaged weights; evaluate it
            like the model itself.
        decay: the final decay.
        updates: number of :meth:`update` calls so far.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.model = copy.deepcopy(_unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        source = _unwrap(model).state_dict()
        for name, ema_value in self.model.state_dict().items():
            value = source[name].detach()
            if ema_value.is_floating_point():
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
