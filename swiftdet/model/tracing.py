"""Whether the model is being traced or compiled (for export), rather than run eagerly."""
from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True under ``torch.jit.trace`` (and so ONNX export) and ``torch.compile``/``torch.export``.

    The detector cores take a few eager-only shortcuts whose choice reads tensor values (a faster
    NMS for many boxes, a top-k without listing every candidate); each has a tensor-only path with
    the same result, which a trace must record instead, or it would bake in one input's choice.
    """
    if torch.jit.is_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())
