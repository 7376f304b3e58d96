"""FLOPs and parameters of one inference, per module group, counted by PyTorch's FLOP counter.

The counting is :class:`torch.utils.flop_counter.FlopCounterMode` (its per-module breakdown), not
formulas written here. Its convention: a multiply-add is **2 FLOPs** (a convolution producing
``N x C_out x H_out x W_out`` values from ``C_in / groups x k_h x k_w`` inputs each counts
``2 * N * C_out * H_out * W_out * C_in / groups * k_h * k_w``; a matrix product ``m x k @ k x n``
counts ``2 * m * n * k``; biases are not counted). mmdetection (mmcv's
``get_model_complexity_info``), fvcore / detectron2's ``flop_count`` and torchvision's weights
meta ("GFLOPS") count one multiply-add as one, so their "GFLOPs" are the GMACs reported here
(``gflops / 2``).

Only the operators that have a formula in ``torch.utils.flop_counter`` are counted: convolutions,
matrix products, attention. Everything else runs uncounted and is listed by name with its number
of calls (:attr:`FlopCount.uncounted_ops`): RoIAlign (``torchvision.roi_align``), NMS
(``torchvision.nms``), interpolation (the FPN's upsampling, mask pasting), pooling, elementwise
and indexing operators. fvcore leaves out the same kinds of operators by default.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

__all__ = ["DETECTOR_GROUPS", "FlopCount", "count_flops", "detector_flops"]

# Module groups of swiftdet's detectors: (group, attribute paths below the detector). A path that
# a model lacks is skipped; FlopCounterMode's count of a module includes its children. The
# poolers (RoIAlign) belong to the head that reads them; their FLOPs are uncounted anyway.
DETECTOR_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("backbone", ("backbone",)),
    # FPN for R-CNN, RetinaNet and FCOS; SSD's extra layers on the VGG / MobileNet trunk (mmdetection
    # puts them in SSD's neck).
    ("neck", ("fpn", "extras")),
    ("rpn", ("rpn",)),
    # The box head of the R-CNNs: FPN's two FCs or C4's res5 stage, the predictor, cascade's stages
    # (C4 Mask R-CNN's res5 run on the detections for the mask head counts as the mask's: detector_flops).
    ("roi_heads/box", ("roi_heads.box_pooler", "roi_heads.box_head", "roi_heads.box_predictor",
                       "roi_heads.box_heads", "roi_heads.box_predictors")),
    ("roi_heads/mask", ("roi_heads.mask_pooler", "roi_heads.mask_head")),
    ("roi_heads/keypoint", ("roi_heads.keypoint_pooler", "roi_heads.keypoint_head")),
    # RetinaNet's, FCOS's and SSD's head.
    ("dense_head", ("head",)),
)


def _nnpack_conv_flops(x_shape, w_shape, bias_shape, padding, stride=1, *, out_shape=None) -> int:
    """The fast path's large 3x3 convolutions run NNPACK's Winograd op, which multiplies less; they
    count as the direct convolution they compute, as published FLOP figures do."""
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape))


_NNPACK_OP = getattr(torch.ops.aten, "_nnpack_spatial_convolution", None)
_CUSTOM_FORMULAS = {_NNPACK_OP: _nnpack_conv_flops} if _NNPACK_OP is not None else {}


@dataclass
class FlopCount:
    """What :func:`count_flops` measured.

    Attributes:
        total_flops: all counted FLOPs (2 per multiply-add).
        params: number of parameters of the module (trainable or frozen; buffers not included).
        groups: {group: {"flops": int, "params": int}} for the groups the module has; "other"
            holds what lies outside every group (FLOPs counted at the top level, parameters of
            modules in no group) when it is not zero.
        modules: {module path: flops} of every module FlopCounterMode saw (the root is "").
        by_operator: {operator: flops} over the whole run.
        uncounted_ops: {operator: calls} of the operators that ran without a FLOP formula.
    """

    total_flops: int
    params: int
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    modules: dict[str, int] = field(default_factory=dict)
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)


class _OperatorRecorder(TorchDispatchMode):
    """Counts the calls of every operator that reaches it. Entered outside FlopCounterMode, it sees
    the operators that mode executes after its own decompositions: the ones it counted or not."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _op_name(packet: Any) -> str:
    # aten.convolution, torchvision.roi_align: namespace.name, as FlopCounterMode's table prints them.
    return str(packet).replace("::", ".")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, run: Callable[[], Any],
                groups: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> FlopCount:
    """Count the FLOPs of ``run()`` (which calls ``module``) with FlopCounterMode.

    Args:
        module: the model ``run`` calls; its submodules' counts are read from FlopCounterMode's
            per-module breakdown, keyed by attribute path.
        run: the computation to count, e.g. ``lambda: model.predict([image])``; runs once, under
            ``torch.no_grad()``.
        groups: (group name, attribute paths below ``module``) for :attr:`FlopCount.groups`.
    """
    recorder = _OperatorRecorder()
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_CUSTOM_FORMULAS)
    with torch.no_grad(), recorder, counter:
        run()
    # FlopCounterMode names the root by its class and children by their attribute paths.
    root = type(module).__name__
    modules: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key[len(root) + 1:] if key.startswith(root + ".") else key
        modules[path] = int(sum(per_op.values()))
    by_operator: Counter[str] = Counter()
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        by_operator[_op_name(op)] += int(flops)
    counted = set(counter.flop_registry)
    uncounted = {_op_name(op): n for op, n in recorder.calls.most_common() if op not in counted}
    total = int(counter.get_total_flops())
    params = _params(module)

    group_figures: dict[str, dict[str, int]] = {}
    for name, paths in groups:
        present = [p for p in paths if _has_submodule(module, p)]
        if not present:
            continue
        group_figures[name] = {"flops": sum(_flops_under(modules, p) for p in present),
                               "params": sum(_params(module.get_submodule(p)) for p in present)}
    if groups:
        other_flops = total - sum(g["flops"] for g in group_figures.values())
        other_params = params - sum(g["params"] for g in group_figures.values())
        if other_flops or other_params:
            group_figures["other"] = {"flops": other_flops, "params": other_params}
    return FlopCount(total, params, group_figures, modules, dict(by_operator), uncounted)


def _flops_under(modules: dict[str, int], path: str) -> int:
    """FLOPs of the module at ``path``: its own entry, or for a container that is never called
    itself (a ModuleList such as cascade's ``box_heads``) the sum of its outermost called children."""
    if path in modules:
        return modules[path]
    below = [k for k in modules if k.startswith(path + ".")]
    outermost = [k for k in below if not any(k.startswith(other + ".") for other in below)]
    return sum(modules[k] for k in outermost)


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def detector_flops(model: nn.Module, image: torch.Tensor) -> tuple[FlopCount, int]:
    """FLOPs of one inference of a swiftdet detector on ``image``, by :data:`DETECTOR_GROUPS`.

    Args:
        model: a :class:`~swiftdet.model.detector.Detector` (put in eval mode here).
        image: (3, H, W) float RGB 0-255 image at the network's input size (the model pads it to
            its size divisibility); ``predict`` runs end to end: preprocessing, network,
            post-processing (mask pasting at H x W).

    Returns:
        (the count, the number of detections of the image: the per-detection heads, mask and
        keypoint, cost in proportion to it).
    """
    model.eval()
    size = (int(image.shape[-2]), int(image.shape[-1]))
    results: list = []
    count = count_flops(model, lambda: results.extend(model.predict([image], [size])), DETECTOR_GROUPS)
    # C4 Mask R-CNN: the mask branch runs the box head's res5 stage itself, on the detected boxes
    # (the mask head reads those maps). Those res5 calls are the res5 count beyond box_head's own.
    res5, box_head = count.modules.get("roi_heads.box_head.res5"), count.modules.get("roi_heads.box_head")
    if res5 is not None and box_head is not None and "roi_heads/mask" in count.groups and res5 > box_head:
        moved = res5 - box_head
        count.groups["roi_heads/mask"]["flops"] += moved
        other = count.groups.get("other")
        if other is not None:
            other["flops"] -= moved
            if not other["flops"] and not other["params"]:
                del count.groups["other"]
    return count, len(results[0]) if results else 0
