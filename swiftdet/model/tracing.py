"""Whether the model is being traced or compiled (for export), rather than run eagerly."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_tracing", "traced_min", "count_values"]


def is_tracing() -> bool:
    """True under ``torch.jit.trace`` (and so ONNX export) and ``torch.export``.

    The detector cores take a few eager-only shortcuts whose choice reads tensor values (a faster
    NMS for many boxes, a top-k without listing every candidate); each has a tensor-only path with
    the same result, which a trace must record instead, or it would bake in one input's choice.
    ``torch.compile`` (``Detector.set_compiled``) runs the eager paths: it breaks the graph where
    they read values, guards on what it specialised, and so gives eager's detections exactly.
    """
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting())


def traced_min(tensor: Tensor, dim: int, k: int) -> int | Tensor:
    """``min(k, tensor.shape[dim])``; traced, as a tensor computed from the shape at run time (a
    Python int would bake the traced input's size into the graph, e.g. for a top-k)."""
    if not is_tracing():
        return min(k, tensor.shape[dim])
    size = torch._shape_as_tensor(tensor)[dim]
    return torch.clamp(size, max=k)


def count_values(values: Tensor, minlength: int) -> Tensor:
    """``torch.bincount(values, minlength=minlength)`` for (N,) int64 values in [0, minlength);
    traced, as a scatter-add (exporters have no bincount)."""
    if not is_tracing():
        return torch.bincount(values, minlength=minlength)
    counts = torch.zeros(minlength, dtype=torch.int64, device=values.device)
    return counts.scatter_add(0, values, torch.ones_like(values))
