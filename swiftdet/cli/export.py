"""`swiftdet export CONFIG --weights W --format onnx --output model.onnx [--opset N] [--batch dynamic|N]
[--image-size HxW|dynamic] [--no-masks-paste] [--quantize int8 --calib DIR_OR_JSON [--calib-images N]] [KEY=VALUE ...]`.

Writes the whole model (normalisation to the per-image top-k) as one ONNX file of standard
operators, or TorchScript; run it with ``swiftdet predict --backend onnxruntime --model FILE``.
"""
from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a model to ONNX or TorchScript (the whole pipeline, dynamic batch and image size)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="built-in config name, a .py config or a run's config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.retinanet.score_thresh=0.3 (baked into the exported model)")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="checkpoint path or URL (default: the config's model.weights)")
    parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="file format (default onnx)")
    parser.add_argument("--output", required=True, metavar="FILE", help="the file to write (e.g. model.onnx)")
    parser.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset, 17 or newer (default 17)")
    parser.add_argument("--batch", default="dynamic", metavar="dynamic|N",
                        help="batch size of the exported graph: dynamic (default) or a fixed N")
    parser.add_argument("--image-size", default="dynamic", metavar="HxW|dynamic",
                        help="padded input size: dynamic (default) or fixed HxW, multiples of input.size_divisibility")
    parser.add_argument("--no-masks-paste", action="store_true",
                        help="mask models: output each detection's mask probabilities in its box (mask_probs) instead of "
                             "masks pasted into the original image (input original_sizes); the runtime then pastes them. "
                             "Models without masks ignore it")
    parser.add_argument("--quantize", default=None, choices=("int8",),
                        help="int8: static post-training quantization of the ONNX file (onnxruntime QDQ, int8 weights "
                             "per channel) of the backbone, FPN and heads; the layers whose outputs are ranked (box "
                             "predictor, RPN scores and deltas, keypoint heatmaps) and everything after them stay "
                             "float. Needs --calib")
    parser.add_argument("--calib", default=None, metavar="DIR_OR_JSON",
                        help="calibration images for --quantize: a folder (searched recursively) or a COCO json, whose "
                             "file names are under the image_root the config pairs with that json (data.train or "
                             "data.test), else under the json's own folder; use training images, not the test set")
    parser.add_argument("--calib-images", type=int, default=None, metavar="N",
                        help="how many calibration images, spread evenly over --calib (default 32)")


def _parse_batch(text: str) -> int | None:
    from swiftdet.errors import ConfigError

    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--batch must be 'dynamic' or a positive number, got {text!r}.")
    return int(text)


def _parse_size(text: str) -> tuple[int, int] | None:
    from swiftdet.errors import ConfigError

    if text == "dynamic":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--image-size must be 'dynamic' or HxW such as 800x1344, got {text!r}.")
    return int(parts[0]), int(parts[1])


def run(args: argparse.Namespace) -> int:
    from swiftdet.config.core import load_config
    from swiftdet.errors import ConfigError
    from swiftdet.export.onnx import check_exportable, export_model
    from swiftdet.export.runtime import predict_command
    from swiftdet.weights.checkpoint import build_model_with_weights, config_for_weights

    batch, size = _parse_batch(args.batch), _parse_size(args.image_size)
    cfg, note = config_for_weights(load_config(args.config, args.overrides), args.weights, args.overrides)
    if note:
        print(note)
    check_exportable(cfg)  # before the weights are read
    calib = _calibration_images(args, cfg)  # refused before the export's minutes, not after
    if not (args.weights or cfg.model.weights):
        raise ConfigError("Nothing to export: give the trained weights with --weights W (a checkpoint or converted file).")
    model, report = build_model_with_weights(cfg, args.weights, require_complete=True)
    meta = dict(report.meta) if report is not None else {}
    if calib is None:
        path = export_model(model, cfg, args.output, fmt=args.format, meta=meta, opset=args.opset, batch=batch,
                            image_size=size, paste_masks=not args.no_masks_paste)
    else:
        import tempfile
        from pathlib import Path

        from swiftdet.export.quantize import quantize_onnx

        with tempfile.TemporaryDirectory(prefix="swiftdet_export_") as tmp:
            fp32 = export_model(model, cfg, Path(tmp) / "model_fp32.onnx", fmt="onnx", meta=meta, opset=args.opset,
                                batch=batch, image_size=size, paste_masks=not args.no_masks_paste)
            path = quantize_onnx(fp32, args.output, calib)
    what = f"{args.format}{', int8 from ' + str(len(calib)) + ' calibration images' if calib else ''}"
    print(f"Wrote {path} ({what}, {cfg.model.arch}, batch {args.batch}, image size {args.image_size}). "
          f"Run it with: {predict_command(path, args.format)}")
    return 0


def _calibration_images(args: argparse.Namespace, cfg):
    """The calibration files of --quantize int8 (None without it); ConfigError for a bad combination."""
    from swiftdet.errors import ConfigError
    from swiftdet.export.quantize import DEFAULT_CALIB_IMAGES, calibration_images

    if args.quantize is None:
        if args.calib is not None or args.calib_images is not None:
            raise ConfigError("--calib and --calib-images are for --quantize int8; add --quantize int8 or leave them out.")
        return None
    if args.format != "onnx":
        raise ConfigError(f"--quantize {args.quantize} writes an ONNX file (run by onnxruntime or OpenVINO); it does not "
                          f"apply to --format {args.format}. Use --format onnx.")
    if args.calib is None:
        raise ConfigError(f"--quantize {args.quantize} needs calibration images: --calib DIR_OR_JSON (a folder of "
                          "images or a COCO json, e.g. the training set's).")
    roots = [(spec.json, spec.image_root) for spec in (cfg.data.train, cfg.data.test)]
    count = DEFAULT_CALIB_IMAGES if args.calib_images is None else args.calib_images
    return calibration_images(args.calib, count, image_roots=roots)
