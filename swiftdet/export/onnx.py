"""Write a detector as a whole-model ONNX file (or TorchScript) that runs without swiftdet's Python.

The graph is :class:`swiftdet.export.graph.ExportGraph`: normalisation, backbone, FPN, (RPN and
RoIAlign,) heads, box decoding, candidate selection, class-wise NMS and the per-image top-k, and a
mask model's masks pasted into the original images (or, ``paste_masks=False``, its per-detection
mask probabilities), in standard ONNX operators
(default opset 17), with a dynamic batch and image size unless fixed at export. What a runtime
needs besides the graph travels in the file: the config (its test resize), the class names and
category ids, and the format tag that :mod:`swiftdet.export.runtime` checks.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch

from swiftdet.config.core import config_to_dict
from swiftdet.config.schema import Config
from swiftdet.errors import ConfigError
from swiftdet.export.graph import ExportGraph, input_names, output_names
from swiftdet.model.detector import Detector
from swiftdet.utils.io import atomic_write

__all__ = ["EXPORT_FORMAT", "EXPORTABLE_ARCHS", "check_exportable", "export_model", "export_graph_for"]

#: Written into every exported file; a runtime refuses files of another format version.
EXPORT_FORMAT = "swiftdet-export/1"
#: Architectures whose core exports (every one swiftdet has).
EXPORTABLE_ARCHS = ("rcnn", "retinanet", "fcos", "ssd")
FORMATS = ("onnx", "torchscript")


def check_exportable(cfg: Config) -> None:
    """ConfigError for a model whose core does not export yet."""
    if cfg.model.arch not in EXPORTABLE_ARCHS:
        raise ConfigError(
            f"Exporting model.arch={cfg.model.arch!r} is not supported yet; the exportable architectures are "
            f"{', '.join(EXPORTABLE_ARCHS)}. Run this model with swiftdet predict (eager) instead."
        )
    if cfg.model.proposal_generator == "precomputed":
        # The exported graph's inputs are images and sizes; a Fast R-CNN's core also takes proposals.
        raise ConfigError(
            "Exporting a Fast R-CNN (model.proposal_generator=precomputed) is not supported: it has no RPN and its "
            "core needs each image's proposals from a file, which an exported graph is not given. Export a Faster "
            "R-CNN (model.proposal_generator=rpn) instead."
        )


def export_graph_for(model: Detector, cfg: Config, paste_masks: bool = False) -> ExportGraph:
    """The graph of ``model`` (eval mode) with K = its detections per image; ``paste_masks``: a
    mask model's graph pastes its masks into the original images (with the config's threshold and
    convention), and takes original_sizes."""
    check_exportable(cfg)
    heads = getattr(model, "roi_heads", model)  # R-CNN keeps its per-image cap in the RoI heads
    return ExportGraph(model.eval(), max_detections=heads.detections_per_image, paste_masks=paste_masks,
                       mask_threshold=cfg.model.mask_head.mask_threshold, convention=cfg.model.convention).eval()


def _example_inputs(cfg: Config, batch: int, image_size: tuple[int, int] | None,
                    original: bool = False) -> tuple[torch.Tensor, ...]:
    """A batch to trace with: images of two different sizes inside the padding, so that no size
    is special (the sizes are inputs of the graph); ``original``: with original sizes too, other
    ratios on each axis."""
    d = cfg.input.size_divisibility
    if image_size is None:
        height = width = max(2 * d, (min(cfg.input.min_size_test, 320) + d - 1) // d * d)
    else:
        height, width = image_size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, height, width, generator=g) * 255
    sizes = torch.tensor([[height, width]] + [[max(height - d // 2, 1), max(width - d, 1)]] * (batch - 1))
    if not original:
        return images, sizes
    originals = torch.stack((sizes[:, 0] * 3 // 2 + 1, sizes[:, 1] * 5 // 4 + 3), dim=1)
    return images, sizes, originals


def export_model(
    model: Detector,
    cfg: Config,
    output: str | os.PathLike,
    *,
    fmt: str = "onnx",
    meta: dict | None = None,
    opset: int = 17,
    batch: int | None = None,
    image_size: tuple[int, int] | None = None,
    paste_masks: bool = True,
) -> Path:
    """Export ``model`` (built from ``cfg``, weights loaded) to ``output``, written atomically.

    Args:
        fmt: "onnx" or "torchscript".
        meta: class names / category ids to store (a checkpoint's meta).
        opset: ONNX opset, 17 or newer.
        batch: fix the batch size (None: dynamic).
        image_size: fix the padded input (height, width), multiples of ``input.size_divisibility``
            (None: dynamic).
        paste_masks: a mask model's graph pastes its thresholded masks into the original images
            (input original_sizes, output masks); False: it outputs mask_probs, which the runtime
            pastes (``--no-masks-paste``). Models without masks ignore it.
    Returns:
        The written path.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if opset < 17:
        raise ConfigError(f"--opset {opset} is too old: swiftdet exports at opset 17 or newer.")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch must be 'dynamic' or a positive number, got {batch}.")
    if cfg.input.resize == "fixed":
        # Every image is resized to fixed_size (SSD), whose default boxes are laid out for it: the
        # graph takes exactly that padded size.
        d = cfg.input.size_divisibility
        fixed = tuple((s + d - 1) // d * d for s in cfg.input.fixed_size)
        if image_size is not None and tuple(image_size) != fixed:
            raise ConfigError(f"--image-size {image_size[0]}x{image_size[1]}: this model resizes every image to "
                              f"input.fixed_size {list(cfg.input.fixed_size)}, so its input is {fixed[0]}x{fixed[1]}; "
                              "leave --image-size out.")
        image_size = fixed
    if image_size is not None:
        d = cfg.input.size_divisibility
        if any(s <= 0 or s % d for s in image_size):
            raise ConfigError(f"--image-size {image_size[0]}x{image_size[1]} must be positive multiples of "
                              f"input.size_divisibility ({d}).")
    graph = export_graph_for(model, cfg, paste_masks)
    inputs, outputs = input_names(model, graph.paste_masks), output_names(model, graph.paste_masks)
    example = _example_inputs(cfg, batch or 2, image_size, original=graph.paste_masks)
    info = {
        "swiftdet_format": EXPORT_FORMAT,
        "swiftdet_version": _version(),
        "arch": cfg.model.arch,
        "config": json.dumps(config_to_dict(cfg)),
        "meta": json.dumps({k: v for k, v in (meta or {}).items() if k in ("class_names", "category_ids")}),
        "max_detections": str(graph.max_detections),
        "inputs": ",".join(inputs),
        "outputs": ",".join(outputs),
        # Missing in files written before masks were pasted in the graph: read as "0".
        "masks_pasted": "1" if graph.paste_masks else "0",
        "batch": "dynamic" if batch is None else str(batch),
        "image_size": "dynamic" if image_size is None else f"{image_size[0]}x{image_size[1]}",
    }
    output = Path(output)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python int read from a shape; the traced paths read shapes
        # as tensors where it matters (tests/test_export.py replays other sizes and batches).
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            data = _onnx_bytes(graph, example, opset, batch is None, image_size is None, info, inputs, outputs)
        else:
            traced = torch.jit.trace(graph, example, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={"swiftdet.json": json.dumps(info)})
            data = buffer.getvalue()
    atomic_write(output, lambda f: f.write(data), mode="wb")
    return output


def _onnx_bytes(graph: ExportGraph, example, opset: int, dynamic_batch: bool, dynamic_size: bool, info: dict,
                inputs: tuple[str, ...], outputs: tuple[str, ...]) -> bytes:
    import onnx  # an optional extra: pip install -e ".[export]"

    axes: dict[str, dict[int, str]] = {name: {} for name in inputs + outputs}
    if dynamic_batch:
        for name in inputs + outputs:
            axes[name][0] = "batch"
    if dynamic_size:
        axes["images"].update({2: "height", 3: "width"})
    if "masks" in outputs:
        # The batch's largest original size: dynamic even when the input size is fixed.
        axes["masks"].update({2: "original_height", 3: "original_width"})
    buffer = io.BytesIO()
    torch.onnx.export(graph, example, buffer, dynamo=False, opset_version=opset, input_names=list(inputs),
                      output_names=list(outputs), dynamic_axes={k: v for k, v in axes.items() if v})
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _version() -> str:
    from swiftdet import __version__

    return __version__
