"""Run an exported file (ONNX through onnxruntime or OpenVINO, or TorchScript) behind swiftdet's Predictor.

:class:`ExportedModel` has the Detector's ``predict(images, original_sizes)`` contract, so
:func:`load_exported_predictor` gives a :class:`~swiftdet.inference.Predictor` whose input
handling, test resize (from the config stored in the file), batching and outputs are the eager
ones: ``swiftdet predict --backend onnxruntime --model model.onnx`` writes the same
``predictions.json`` as the eager model.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from swiftdet.config.core import config_from_dict
from swiftdet.config.schema import Config
from swiftdet.errors import ConfigError, InputError, WeightsError
from swiftdet.export.onnx import EXPORT_FORMAT
from swiftdet.inference.predictor import Predictor
from swiftdet.model.postprocess import postprocess_instances
from swiftdet.structures import Boxes, CroppedMasks, ImageList, Instances, Keypoints

__all__ = ["BACKENDS", "ExportedModel", "load_exported_predictor", "predict_command", "read_export_info"]

BACKENDS = ("onnxruntime", "openvino", "torchscript")
_INSTALL = {"onnxruntime": 'pip install -e ".[export]" (or pip install onnx onnxruntime)',
            "openvino": 'pip install -e ".[export]" (or pip install openvino)'}


def read_export_info(path: str | os.PathLike) -> dict[str, str]:
    """The swiftdet metadata of an exported file (ONNX or TorchScript); WeightsError when it is
    not a swiftdet export of this format version."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Exported model '{path}' does not exist. Write one with swiftdet export.")
    info: dict[str, str] = {}
    if _is_torchscript(path):
        # The metadata is a file in the archive's extra/ folder: read it without loading the model.
        try:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/extra/swiftdet.json")), None)
                info = json.loads(archive.read(name)) if name else {}
        except (zipfile.BadZipFile, ValueError) as error:
            raise WeightsError(f"'{path}' is not a TorchScript file that can be read ({error}).") from None
    else:
        onnx = _import("onnx", "onnxruntime")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # onnx raises DecodeError and others for a file that is not ONNX
            raise WeightsError(f"'{path}' is not an ONNX file ({type(error).__name__}). Give a file written by "
                               "swiftdet export.") from None
        info = {p.key: p.value for p in proto.metadata_props}
    found = info.get("swiftdet_format")
    if found != EXPORT_FORMAT:
        what = "has no swiftdet metadata (exported by another tool?)" if found is None else \
            f"is a {found} file (this swiftdet reads {EXPORT_FORMAT})"
        raise WeightsError(f"'{path}' {what}. Export it again with this version: swiftdet export CONFIG --weights W "
                           f"--output {path.name}.")
    return info


def predict_command(path: str | os.PathLike, fmt: str = "onnx") -> str:
    """The ``swiftdet predict`` command line that runs the file ``path`` exported in format ``fmt``."""
    backend = "torchscript" if fmt == "torchscript" else "onnxruntime"
    return f"swiftdet predict --backend {backend} --model {path} --input IMAGES --output DIR"


def _is_torchscript(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # TorchScript files are zip archives; ONNX is protobuf


def _import(module: str, backend: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"--backend {backend} needs the {module} package, which is not installed: "
                          f"{_INSTALL.get(backend, 'pip install ' + module)}.") from None


class ExportedModel:
    """An exported detector with the ``predict`` contract of :class:`swiftdet.model.detector.Detector`.

    Args:
        path: the exported file.
        backend: "onnxruntime" or "openvino" (ONNX files), or "torchscript".
        cfg: its config (from the file's metadata); info: the file's swiftdet metadata.
        threads: onnxruntime's intra-op / OpenVINO's inference threads (None: their default, one per core).
    """

    def __init__(self, path: str | os.PathLike, backend: str, cfg: Config, info: dict[str, str],
                 threads: int | None = None):
        if backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        self.path = Path(path)
        self.backend = backend
        self.num_classes = cfg.model.num_classes
        self.size_divisibility = cfg.input.size_divisibility
        self.mask_threshold = cfg.model.mask_head.mask_threshold
        self.convention = cfg.model.convention  # how results map back to the image (mask pasting, empty boxes)
        self.inputs = tuple(info.get("inputs", "images,image_sizes").split(","))
        self.outputs = tuple(info.get("outputs", "boxes,scores,labels,num_detections").split(","))
        # Files written before masks were pasted in the graph have no such key: their mask models
        # output mask_probs, pasted here as for --no-masks-paste files.
        self.masks_pasted = info.get("masks_pasted", "0") == "1"
        self.batch = None if info.get("batch", "dynamic") == "dynamic" else int(info["batch"])
        size = info.get("image_size", "dynamic")
        self.image_size = None if size == "dynamic" else tuple(int(v) for v in size.split("x"))
        if backend == "onnxruntime":
            if _is_torchscript(self.path):
                raise ConfigError(f"'{path}' is a TorchScript file: use --backend torchscript.")
            ort = _import("onnxruntime", backend)
            options = ort.SessionOptions()
            # Errors only: its graph optimiser warns about every name it keeps inside the keypoint
            # decoding's loop, which is not a problem of the user's.
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads = threads
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        elif backend == "openvino":
            if _is_torchscript(self.path):
                raise ConfigError(f"'{path}' is a TorchScript file: use --backend torchscript.")
            ov = _import("openvino", backend)
            core = ov.Core()
            # f32: on CPUs with native bf16 OpenVINO would otherwise run in bf16 (scores off by ~1e-3).
            config = {"INFERENCE_PRECISION_HINT": "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            self._compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        else:
            if not _is_torchscript(self.path):
                raise ConfigError(f"'{path}' is an ONNX file: use --backend onnxruntime.")
            self._module = torch.jit.load(str(self.path), map_location="cpu").eval()

    def run(self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """The graph's outputs by name (boxes, scores, labels, num_detections, and mask_probs or
        masks / keypoints for models with those heads) for a padded batch; ``original_sizes``
        (B, 2) int64 is needed by graphs that paste masks (``self.masks_pasted``)."""
        args = [images.float(), image_sizes.to(torch.int64)]
        if "original_sizes" in self.inputs:
            if original_sizes is None:
                raise InputError(f"'{self.path}' pastes masks into the original images: run it with original_sizes "
                                 "(B, 2), each image's (height, width) before the test resize.")
            args.append(original_sizes.to(torch.int64))
        if self.backend in ("onnxruntime", "openvino"):
            feed = {name: value.numpy() for name, value in zip(self.inputs, args)}
            if self.backend == "onnxruntime":
                values = [torch.from_numpy(o) for o in self._session.run(list(self.outputs), feed)]
            else:
                result = self._compiled(feed)
                by_name = {port.get_any_name(): result[port] for port in self._compiled.outputs}
                values = [torch.from_numpy(np.array(by_name[name])) for name in self.outputs]
        else:
            with torch.no_grad():
                values = list(self._module(*args))
        return dict(zip(self.outputs, values))

    def predict(self, images: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None) -> list[Instances]:
        """(3, H_i, W_i) 0-255 RGB images at the test size -> detections in original pixels."""
        batch = ImageList.from_tensors([img.float().cpu() for img in images], self.size_divisibility, 0.0, original_sizes)
        tensor = batch.tensor
        if self.image_size is not None:
            h, w = self.image_size
            if tensor.shape[-2] > h or tensor.shape[-1] > w:
                raise InputError(f"The exported model takes images up to {h}x{w} (fixed at export), but this batch "
                                 f"needs {tensor.shape[-2]}x{tensor.shape[-1]}. Export with --image-size dynamic.")
            tensor = torch.nn.functional.pad(tensor, (0, w - tensor.shape[-1], 0, h - tensor.shape[-2]))
        if self.batch is not None and len(images) != self.batch:
            raise InputError(f"The exported model takes batches of exactly {self.batch} images (fixed at export), "
                             f"got {len(images)}. Use --batch-size {self.batch} or export with --batch dynamic.")
        sizes = torch.tensor(batch.image_sizes, dtype=torch.int64).reshape(-1, 2)
        originals = torch.tensor(batch.original_sizes, dtype=torch.int64).reshape(-1, 2)
        outputs = self.run(tensor, sizes, originals)
        counts = outputs["num_detections"]
        out = []
        for i, (size, original) in enumerate(zip(batch.image_sizes, batch.original_sizes)):
            n = int(counts[i])
            if self.masks_pasted:
                out.append(self._pasted_instances(outputs, i, n, tuple(original)))
                continue
            extra = {}
            if "mask_probs" in outputs:
                extra["mask_probs"] = outputs["mask_probs"][i, :n]
            if "keypoints" in outputs:
                extra["keypoints"] = Keypoints(outputs["keypoints"][i, :n])
            raw = Instances(tuple(size), boxes=Boxes(outputs["boxes"][i, :n]), scores=outputs["scores"][i, :n],
                            labels=outputs["labels"][i, :n], **extra)
            out.append(postprocess_instances(raw, tuple(original), self.mask_threshold, self.convention))
        return out

    @staticmethod
    def _pasted_instances(outputs: dict[str, Tensor], i: int, n: int, original: tuple[int, int]) -> Instances:
        """Image i's n detections of a graph that pasted its masks: already in the original
        image's pixels (rescaled, clipped, and for detectron2's convention filtered), masks
        (Hmax, Wmax) kept as the crops of their foreground (CroppedMasks, as eager results)."""
        height, width = original
        extra = {"masks": _cropped(outputs["masks"][i, :n, :height, :width])}
        if "keypoints" in outputs:
            extra["keypoints"] = Keypoints(outputs["keypoints"][i, :n])
        return Instances(original, boxes=Boxes(outputs["boxes"][i, :n]), scores=outputs["scores"][i, :n],
                         labels=outputs["labels"][i, :n], **extra)


def _cropped(masks: Tensor) -> CroppedMasks:
    """(N, H, W) 0/1 masks as CroppedMasks, each the bounding box of its foreground (an empty
    mask: an empty crop)."""
    masks = masks.to(torch.bool)
    n, height, width = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
    # First and one past the last foreground row / column; argmax finds the first True.
    y0, x0 = rows.to(torch.uint8).argmax(dim=1), cols.to(torch.uint8).argmax(dim=1)
    y1 = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x1 = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    empty = ~rows.any(dim=1)
    crops, offsets = [], torch.zeros((n, 2), dtype=torch.int64)
    for k, (a, b, c, d, e) in enumerate(zip(y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), empty.tolist())):
        if e:
            crops.append(torch.zeros((0, 0), dtype=torch.bool))
            continue
        crops.append(masks[k, a:b, c:d].clone())
        offsets[k, 0], offsets[k, 1] = c, a
    return CroppedMasks(crops, offsets, (height, width))


def load_exported_predictor(path: str | os.PathLike, backend: str = "onnxruntime", *, batch_size: int = 1,
                            score_thresh: float | None = None) -> Predictor:
    """A Predictor running the exported file ``path`` with ``backend``; its test resize, class
    names and category ids come from the file. ``score_thresh`` may only raise the exported one."""
    info = read_export_info(path)
    cfg = config_from_dict(Config, json.loads(info["config"]))
    exported = ExportedModel(path, backend, cfg, info)
    meta = json.loads(info.get("meta", "{}"))
    baked = _baked_score_thresh(cfg)
    if score_thresh is not None and score_thresh < baked:
        raise ConfigError(f"--score-thresh {score_thresh} is below the threshold {baked} the model was exported with; "
                          f"export again with a lower one (swiftdet export ... "
                          f"model.{'box_head' if cfg.model.arch == 'rcnn' else cfg.model.arch}.score_thresh={score_thresh}).")
    predictor = Predictor.from_model(cfg, exported, meta=meta, batch_size=batch_size, min_score=score_thresh)
    return predictor


def _baked_score_thresh(cfg: Config) -> float:
    head = cfg.model.box_head if cfg.model.arch == "rcnn" else getattr(cfg.model, cfg.model.arch)
    return float(head.score_thresh)
