"""Optimizer and learning-rate schedule of an iteration-based training run.

The schedule is a plain function of the iteration (warm-up, then multistep or cosine), so it needs no
state of its own beyond the iteration: resuming at iteration ``k`` gives exactly the rate a run that
never stopped would use at ``k``.
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from swiftdet.config.schema import SolverConfig

__all__ = ["NORM_TYPES", "build_optimizer", "scaled_base_lr", "lr_factor", "schedule_steps", "warmup_length",
           "IterationLRSchedule"]

logger = logging.getLogger("swiftdet")

# Layers whose parameters get ``weight_decay_norm`` instead of ``weight_decay``.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
)


def scaled_base_lr(solver: SolverConfig) -> float:
    """``base_lr`` scaled linearly from ``reference_batch_size`` to ``ims_per_batch`` (the linear scaling rule)."""
    return solver.base_lr * solver.ims_per_batch / solver.reference_batch_size


def _param_groups(model: nn.Module, solver: SolverConfig, lr: float) -> list[dict]:
    """One group per (weight decay) value: norm-layer parameters, biases, and all other weights.

    Frozen parameters (``requires_grad=False``) are left out; a parameter shared by several modules
    is counted once.
    """
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {"weight": [], "norm": [], "bias": []}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, NORM_TYPES) or type(module).__name__ == "FrozenBatchNorm2d":
                groups["norm"].append(param)
            elif name == "bias":
                groups["bias"].append(param)
            else:
                groups["weight"].append(param)
    decay = {"weight": solver.weight_decay, "norm": solver.weight_decay_norm, "bias": solver.weight_decay_bias}
    return [
        {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": decay[kind], "name": kind}
        for kind, params in groups.items()
        if params
    ]


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters, with separate norm/bias decay."""
    lr = scaled_base_lr(solver)
    groups = _param_groups(model, solver, lr)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if solver.optimizer == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=solver.momentum)
    if solver.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown solver.optimizer {solver.optimizer!r}")


def schedule_steps(solver: SolverConfig) -> tuple[int, ...]:
    """The multistep iterations: ``steps``, or ``round(f * max_iter)`` for each of ``steps_fraction``."""
    if solver.steps_fraction:
        return tuple(round(f * solver.max_iter) for f in solver.steps_fraction)
    return tuple(solver.steps)


def warmup_length(solver: SolverConfig) -> int:
    """``warmup_iters``, cut to ``max_iter``: a short run (a quick try of a recipe) still reaches the full
    rate instead of ending inside the warm-up at a small fraction of it."""
    return min(solver.warmup_iters, solver.max_iter)


def lr_factor(solver: SolverConfig, iteration: int) -> float:
    """Multiplier of the base rate at ``iteration`` (0-based): linear warm-up, then the schedule.

    Warm-up goes linearly from ``warmup_factor`` at iteration 0 to 1 at :func:`warmup_length`; it
    multiplies the schedule's own factor, so a step inside the warm-up still applies.
    """
    if solver.schedule == "multistep":
        factor = solver.gamma ** sum(1 for step in schedule_steps(solver) if iteration >= step)
    elif solver.schedule == "cosine":
        progress = min(iteration, solver.max_iter) / solver.max_iter
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown solver.schedule {solver.schedule!r}")
    warmup = warmup_length(solver)
    if iteration < warmup:
        alpha = iteration / warmup
        factor *= solver.warmup_factor * (1.0 - alpha) + alpha
    return factor


class IterationLRSchedule:
    """Sets every group's ``lr`` to ``initial_lr * lr_factor(iteration)``; call :meth:`step` before each update."""

    def __init__(self, optimizer: torch.optim.Optimizer, solver: SolverConfig):
        self.optimizer = optimizer
        self.solver = solver
        self.iteration = 0
        if solver.warmup_iters > solver.max_iter:
            logger.warning(f"solver.warmup_iters={solver.warmup_iters} is longer than solver.max_iter={solver.max_iter}: "
                           f"the warm-up is cut to {solver.max_iter} iterations")
        if solver.steps_fraction and solver.schedule == "multistep":
            logger.info(f"solver.steps_fraction={list(solver.steps_fraction)} of solver.max_iter={solver.max_iter}: "
                        f"the rate drops at iterations {list(schedule_steps(solver))}")

    def step(self, iteration: int) -> float:
        """Apply the rate of ``iteration`` and return it (of the first group)."""
        self.iteration = iteration
        factor = lr_factor(self.solver, iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.step(int(state["iteration"]))
