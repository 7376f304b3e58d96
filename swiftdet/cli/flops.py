"""`swiftdet flops CONFIG [KEY=VALUE ...] [--image-size HxW] [--out flops.json]`.

Parameters and FLOPs of one inference (preprocessing, network, post-processing) per module group
-- backbone, neck (FPN / SSD extras), RPN, the R-CNN box / mask / keypoint heads, the dense head --
counted by PyTorch's FLOP counter (:mod:`swiftdet.inference.flops`, which states the convention:
2 FLOPs per multiply-add; the GMACs printed beside them are what mmdetection, fvcore and
torchvision call GFLOPs). The model has random weights and a score threshold of 0, so that the
per-detection heads (mask, keypoint) run on the model's full ``detections_per_image``: the upper
bound; a trained model on a real image runs them on fewer boxes. Operators without a FLOP formula
(RoIAlign, NMS, interpolation, elementwise) are listed as uncounted.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

NAME = "flops"
HELP = "count parameters and FLOPs of one inference per module group (backbone, neck, heads) with PyTorch's FLOP counter"

# Uncounted operators worth naming in the printout (the rest are elementwise, indexing and shape
# operators, whose cost is memory traffic more than arithmetic); flops.json lists every one.
_NOTABLE = ("pool", "upsample", "interpolate", "grid_sampler", "_unsafe_index", "sort", "topk")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="built-in config name, a .py config or a run's config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.mask_on=true")
    parser.add_argument("--image-size", default=None, metavar="HxW",
                        help="the network's input image (before padding to input.size_divisibility), e.g. 800x1333 "
                             "(default: the config's test size: min_size_test x max_size_test, or input.fixed_size)")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the figures as json (total_gflops, params, "
                                                                  "groups, ...)")


def parse_size(text: str, option: str = "--image-size") -> tuple[int, int]:
    """'800x1333' -> (800, 1333)."""
    from swiftdet.errors import ConfigError

    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"{option} must be HxW with positive integers, such as 800x1333; got {text!r}.")
    return int(parts[0]), int(parts[1])


def test_image_size(cfg) -> tuple[int, int]:
    """(H, W) of the largest image the config's test resize produces: the fixed size, or
    min_size_test x max_size_test (an image of that shape is left as it is by the resize)."""
    if cfg.input.resize == "fixed":
        return int(cfg.input.fixed_size[0]), int(cfg.input.fixed_size[1])
    return int(cfg.input.min_size_test), int(cfg.input.max_size_test)


def write_json(path: str | Path, payload: dict[str, Any], option: str = "--out") -> None:
    from swiftdet.errors import OutputWriteError
    from swiftdet.utils.io import atomic_write

    out = Path(path)
    text = json.dumps(payload, indent=2) + "\n"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(text), mode="w")
    except OSError as exc:
        raise OutputWriteError(f"Cannot write {str(out)!r} ({exc.strerror or exc}). Choose a writable path for "
                               f"{option}.") from exc


def random_model(cfg):
    """The config's model with random weights and no initialisation file read (no download)."""
    import copy

    from swiftdet.weights.checkpoint import build_model_with_weights

    cfg = copy.deepcopy(cfg)
    cfg.model.weights, cfg.model.backbone.weights = "", ""
    model, _ = build_model_with_weights(cfg)
    return model


def _g(flops: int) -> float:
    return round(flops / 1e9, 4)


def measure(cfg, image_size: tuple[int, int]) -> dict[str, Any]:
    """The figures ``swiftdet flops`` prints and writes, for ``cfg`` at ``image_size``."""
    import torch

    from swiftdet.inference.flops import detector_flops

    torch.manual_seed(0)
    model = random_model(cfg).eval()
    model.score_thresh = 0.0  # every image yields detections_per_image boxes for the mask / keypoint heads
    # A fixed smooth-free test pattern: the counted FLOPs depend on shapes and on the number of boxes only.
    image = torch.rand(3, *image_size, generator=torch.Generator().manual_seed(0)) * 255
    count, detections = detector_flops(model, image)
    div = int(cfg.input.size_divisibility)
    padded = [int(math.ceil(s / div) * div) for s in image_size]
    return {
        "image_size": list(image_size),
        "padded_size": padded,
        "flop_convention": "FlopCounterMode (torch.utils.flop_counter): 1 multiply-add = 2 FLOPs; gmacs = gflops / 2 "
                           "(what mmdetection, fvcore and torchvision's weights meta call GFLOPs)",
        "weights": "random; score threshold 0, so the per-detection heads run on the maximum number of detections",
        "detections": detections,
        "total_gflops": _g(count.total_flops),
        "total_gmacs": _g(count.total_flops // 2),
        "params": count.params,
        "groups": {name: {"gflops": _g(g["flops"]), "gmacs": _g(g["flops"] // 2), "params": g["params"]}
                   for name, g in count.groups.items()},
        "modules": {path or "(model)": _g(f) for path, f in count.modules.items()},
        "by_operator": {op: _g(f) for op, f in count.by_operator.items()},
        "uncounted_ops": count.uncounted_ops,
    }


def summary_lines(result: dict[str, Any], title: str) -> list[str]:
    """The printed table of :func:`measure`'s figures."""
    h, w = result["image_size"]
    ph, pw = result["padded_size"]
    lines = [f"{title}: one inference of a {h}x{w} image (padded to {ph}x{pw}), {result['detections']} detections",
             f"{'group':20s} {'params (M)':>11s} {'GFLOPs':>10s} {'GMACs':>10s} {'share':>7s}"]
    total = result["total_gflops"] or 1.0
    for name, g in result["groups"].items():
        lines.append(f"{name:20s} {g['params'] / 1e6:11.3f} {g['gflops']:10.2f} {g['gmacs']:10.2f} "
                     f"{100 * g['gflops'] / total:6.1f}%")
    lines.append(f"{'total':20s} {result['params'] / 1e6:11.3f} {result['total_gflops']:10.2f} "
                 f"{result['total_gmacs']:10.2f}")
    lines.append("FLOPs: 1 multiply-add = 2 FLOPs (PyTorch's FlopCounterMode); GMACs = GFLOPs / 2 are what mmdetection, "
                 "fvcore and torchvision's weights meta report as GFLOPs.")
    lines.append("Weights: random, score threshold 0: the mask / keypoint heads run on the most detections a model "
                 "returns; a trained model on a real image costs less there.")
    uncounted = result["uncounted_ops"]
    notable = [op for op in uncounted if not op.startswith("aten.") or any(k in op for k in _NOTABLE)]
    shown = ", ".join(f"{op} ({uncounted[op]} calls)" for op in notable)
    rest = len(uncounted) - len(notable)
    lines.append(f"Not counted (no FLOP formula in torch.utils.flop_counter): {shown or 'none'}"
                 + (f"; and {rest} elementwise, indexing and shape operators (all listed in the json)" if rest else ""))
    return lines


def run(args: argparse.Namespace) -> int:
    from swiftdet.config.core import load_config

    cfg = load_config(args.config, args.overrides)
    size = parse_size(args.image_size) if args.image_size else test_image_size(cfg)
    result = {"config": args.config, "overrides": list(args.overrides), **measure(cfg, size)}
    print("\n".join(summary_lines(result, args.config)))
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
