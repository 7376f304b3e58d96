"""Static post-training int8 quantization of an exported fp32 ONNX file (onnxruntime's QDQ form).

:func:`quantize_onnx` calibrates the activations' ranges on a few images and writes a copy of the
file in which the backbone's, FPN's and heads' convolutions and matrix products run in int8
(``QuantizeLinear`` / ``DequantizeLinear`` pairs around them, int8 weights per output channel,
standard ONNX domains only), while what decides boxes stays float: the box predictor (class scores
and box deltas), the RPN's objectness and deltas and the keypoint heatmaps by default, and
everything after them (decoding, NMS, RoIAlign, top-k, the keypoint ``Loop``, whose body holds no
convolution or matrix product and is left as exported). The quantized file
keeps the swiftdet metadata (``quantized: int8`` and the calibration count are added), so
``swiftdet predict --backend onnxruntime|openvino --model FILE`` runs it unchanged.

The calibration images go through exactly what the runtime does with an image: they are run by
the fp32 file behind :func:`swiftdet.export.runtime.load_exported_predictor` (the config's test
resize, padding, every graph input) and the feeds its session receives are recorded.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from swiftdet.errors import ConfigError, DatasetError, InputError
from swiftdet.export.runtime import load_exported_predictor, read_export_info
from swiftdet.utils.io import atomic_write

__all__ = ["DEFAULT_CALIB_IMAGES", "DEFAULT_KEEP_FLOAT", "calibration_images",
           "calibration_feeds", "quantize_onnx"]

#: 32 images: the min/max ranges of a detector's activations stop moving after a few dozen images
#: (on the demo model 8 and 32 images gave APs within noise, see README), and each costs one fp32 run.
DEFAULT_CALIB_IMAGES = 32
#: Node-name parts kept in float: the layers that turn features into scores, box deltas and keypoint
#: heatmaps (R-CNN's box_predictor, the RPN's objectness_logits / anchor_deltas, the keypoint head's
#: score_lowres; RetinaNet's and FCOS's cls_score / bbox_pred / ctrness convs; SSD's cls_logits /
#: bbox_reg). A few small layers: their int8 saves little time, and their outputs are ranked (top-k,
#: NMS, a heatmap's arg-max): quantized to 256 levels they tie, and runtimes break ties differently
#: (with an int8 RPN, OpenVINO and onnxruntime kept different proposals of the same file).
DEFAULT_KEEP_FLOAT = ("box_predictor", "/objectness_logits", "/anchor_deltas", "keypoint_head/score_lowres",
                      "/cls_score/", "/bbox_pred/", "/ctrness/", "/cls_logits", "/bbox_reg")
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# What the quantizer may touch: the compute-heavy layers. Everything else (Resize, MaxPool, the
# box arithmetic) stays float, so no QDQ pair is inserted where it buys nothing.
_OP_TYPES = ("Conv", "MatMul", "Gemm", "ConvTranspose")


def calibration_images(source: str | os.PathLike, count: int = DEFAULT_CALIB_IMAGES, *,
                       image_roots: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """Up to ``count`` image files, spread evenly over ``source``: a folder (its images, searched
    recursively, in sorted order) or a COCO json (its ``images`` entries' ``file_name``, under the
    ``image_root`` paired with that json in ``image_roots`` (json path, image root) -- a config's
    data.train / data.test -- else under the json's own folder)."""
    if count < 1:
        raise ConfigError(f"--calib-images must be a positive number, got {count}.")
    path = Path(source)
    if not path.exists():
        raise InputError(f"Calibration set '{path}' does not exist. Give --calib a folder of images or a COCO json "
                         "(the training set's images are a good choice).")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"Calibration folder '{path}' holds no images ({', '.join(_IMAGE_EXTENSIONS)}).")
    else:
        try:
            data = json.loads(path.read_text())
            names = [str(entry["file_name"]) for entry in data["images"]]
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"Calibration file '{path}' is not a COCO json with an 'images' list of entries with a "
                               f"'file_name' ({type(error).__name__}: {error}). Give a COCO json or a folder of "
                               "images.") from None
        if not names:
            raise DatasetError(f"Calibration file '{path}' lists no images.")
        root = next((Path(r) for j, r in image_roots if j and r and Path(j).resolve() == path.resolve()), path.parent)
        files = [root / name for name in names]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"Calibration file '{path}': {len(missing)} of its {len(files)} images are not under "
                               f"{root} (e.g. '{missing[0]}'). Give the images' folder to --calib instead, or a config "
                               "whose data.train (or data.test) pairs this json with its image_root.")
    if len(files) <= count:
        return files
    picks = np.linspace(0, len(files) - 1, count).round().astype(int)  # spread over the set, not its first N
    return [files[i] for i in picks]


class _FeedRecorder:
    """Stands in for an onnxruntime session: records each feed, then runs the real session."""

    def __init__(self, session):
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, output_names, feed, *args, **kwargs):
        self.feeds.append({name: np.array(value, copy=True) for name, value in feed.items()})
        return self.session.run(output_names, feed, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def calibration_feeds(model_path: str | os.PathLike, images: Sequence) -> list[dict[str, np.ndarray]]:
    """The inputs the runtime gives the graph of ``model_path`` for each image (a file, or an
    array / tensor as :class:`~swiftdet.inference.Predictor` takes it), one image per feed: the
    runtime's own preprocessing (test resize, padding, image sizes and any other input)."""
    predictor = load_exported_predictor(model_path, "onnxruntime")
    exported = predictor.model
    recorder = _FeedRecorder(exported._session)  # the session is the one place the feed is final
    exported._session = recorder
    for image in images:
        predictor([image])
    return recorder.feeds


@contextlib.contextmanager
def _quiet_preprocess_advice():
    """onnxruntime's quantizer logs twice that the model could be pre-processed (symbolic shape
    inference): its shape inference does not follow this graph's dynamic detections, and the
    quantization is complete without it. Other messages pass."""
    def advice(record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_onnx(model_path: str | os.PathLike, output: str | os.PathLike, images: Sequence, *,
                  keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT, per_channel: bool = True) -> Path:
    """Write an int8 (QDQ) copy of the swiftdet ONNX file ``model_path`` to ``output``.

    Args:
        images: the calibration images: files (:func:`calibration_images`), or arrays / tensors.
        keep_float: nodes whose name contains one of these stay float.
        per_channel: int8 weights per output channel (else one scale per tensor).
    Returns:
        The written path.

    Activation ranges are the min / max seen over the calibration images: onnxruntime's histogram
    calibrators (entropy, percentile) stack each tensor over the images and fail on the tensors
    whose length is the image's number of proposals or detections.
    """
    model_path, output = Path(model_path), Path(output)
    info = read_export_info(model_path)
    if info.get("quantized"):
        raise ConfigError(f"'{model_path}' is already quantized ({info['quantized']}); quantize the fp32 export.")
    if not images:
        raise InputError("No calibration images were given.")
    try:
        import onnx
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
    except ImportError:
        raise ConfigError('--quantize int8 needs onnx and onnxruntime: pip install -e ".[export]".') from None

    feeds = calibration_feeds(model_path, images)
    proto = onnx.load(str(model_path))
    # Only layers with learned weights (an initializer as their second input): the matrix products
    # of mask pasting or decoding multiply computed tensors and stay float with the rest.
    weights = {t.name for t in proto.graph.initializer}
    names = [n.name for n in proto.graph.node if n.op_type in _OP_TYPES and len(n.input) > 1 and n.input[1] in weights]
    exclude = [n for n in names if any(part in n for part in keep_float)]
    include = [n for n in names if n not in exclude]
    if not include:
        raise ConfigError(f"'{model_path}' has no convolution or matrix product with weights to quantize outside "
                          f"the float layers ({', '.join(keep_float)}).")

    class Reader(CalibrationDataReader):
        """The feeds, one window of them at a time (``set_range``: onnxruntime's strided calibration)."""

        def __init__(self):
            self.set_range(0, len(feeds))

        def __len__(self):
            return len(feeds)

        def set_range(self, start_index: int, end_index: int):
            self._feeds = iter(feeds[start_index:end_index])

        def get_next(self):
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory(prefix="swiftdet_quantize_") as tmp, _quiet_preprocess_advice():
        quantized = Path(tmp) / "model_int8.onnx"
        quantize_static(
            str(model_path), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(_OP_TYPES), nodes_to_quantize=include, per_channel=per_channel,
            # uint8 activations, int8 weights: the pairing x86 VNNI kernels take (u8 x s8).
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
            # Ranges merged after every image (strided calibration, stride 1): the calibration graph
            # exposes every tensor, and keeping them all for 32 full-size images takes tens of GB.
            # (CalibMaxIntermediateOutputs would drop the images between merges in onnxruntime 1.32.)
            extra_options={"CalibStridedMinMax": 1},
        )
        result = onnx.load(str(quantized))
    # The quantizer rewrites metadata_props only partly: set the swiftdet entries again, plus ours.
    del result.metadata_props[:]
    extra = {"quantized": "int8", "calibration_images": str(len(feeds)), "calibration_method": "minmax",
             "per_channel": str(per_channel).lower(), "float_nodes": ",".join(exclude)}
    for key, value in {**info, **extra}.items():
        entry = result.metadata_props.add()
        entry.key, entry.value = key, value
    data = result.SerializeToString()
    atomic_write(output, lambda f: f.write(data), mode="wb")
    return output
