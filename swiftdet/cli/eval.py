"""`swiftdet eval CONFIG --weights W [key=value ...] [--output DIR]`."""
from __future__ import annotations

import argparse

from swiftdet.cli.options import add_compile_argument, add_precision_argument
from swiftdet.config.core import load_config
from swiftdet.errors import ConfigError

NAME = "eval"
HELP = ("evaluate a trained model file on the config's test set (COCO box/mask/keypoint AP; an RPN-only model, "
        "model.arch=rpn: detectron2's proposal AR@100/1000)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG",
                        help="built-in config name, a .py config file or a run's config.yaml (OUTPUT/config.yaml of "
                             "swiftdet train)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.test.json=...")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="model file (.pth) written by swiftdet train (OUTPUT/model_final.pth, or a checkpoint: "
                             "checkpoints/last.pth, best.pth, model_*.pth); the model and input settings it stores take "
                             "precedence over CONFIG's (said when they differ), KEY=VALUE overrides win over both; "
                             "required for --backend eager")
    parser.add_argument("--output", metavar="DIR", default=None, help="also append the metrics to DIR/metrics.jsonl")
    add_precision_argument(parser)
    add_compile_argument(parser)
    parser.add_argument("--backend", default="eager", choices=("eager", "onnxruntime", "openvino", "torchscript"),
                        help="what runs the model: eager PyTorch (default, with --weights), or an exported file given "
                             "with --model (fp32 or int8), evaluated on CONFIG's data.test with the file's own model "
                             "and test resize settings")
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="the file swiftdet export wrote; run by --backend onnxruntime, openvino or torchscript")


def run(args: argparse.Namespace) -> int:
    import os

    from swiftdet.engine.run import run_evaluation
    from swiftdet.weights.checkpoint import config_for_weights

    cfg = load_config(args.config, args.overrides)
    if args.backend != "eager":
        _run_exported(cfg, args)
        return 0
    if args.model is not None:
        raise ConfigError("--model is the exported file of --backend onnxruntime|openvino|torchscript; for the eager "
                          "model give --weights W (or add --backend onnxruntime).")
    if args.weights is None:
        raise ConfigError("Give the model to evaluate: --weights W (a .pth written by swiftdet train); or "
                          "--backend onnxruntime --model model.onnx for an exported file.")
    # A run's checkpoint is evaluated with its own model and test settings (the overrides still apply).
    cfg, note = config_for_weights(cfg, args.weights, args.overrides)
    if note and os.environ.get("RANK", "0") == "0":  # once, not from every torchrun process
        print(note)
    run_evaluation(cfg, args.weights, output_dir=args.output, precision=args.precision, compile=args.compile)
    return 0


class _ExportedForEvaluation:
    """The evaluator's view of an exported model: ``predict`` plus the train/eval switch it flips."""

    training = False

    def __init__(self, exported):
        self.exported = exported

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def predict(self, images, original_sizes=None):
        return self.exported.predict(images, original_sizes)


def _run_exported(cfg, args: argparse.Namespace) -> dict[str, float]:
    """Evaluate the exported file ``args.model`` on ``cfg.data.test`` with the evaluator of eager
    eval (the test loader's resize is the file's own config's, as the runtime's predictor's)."""
    import dataclasses
    import json

    from swiftdet.config.core import config_from_dict
    from swiftdet.config.schema import Config
    from swiftdet.data import build_test_loader, evaluation_ground_truth, load_dataset
    from swiftdet.engine.evaluator import evaluate_model
    from swiftdet.engine.logging import MetricsWriter, setup_logger
    from swiftdet.engine.run import prepare_output_dir_for_eval
    from swiftdet.export.runtime import ExportedModel, read_export_info

    if args.model is None:
        raise ConfigError(f"--backend {args.backend} needs the exported file: --model model.onnx (swiftdet export).")
    if args.weights is not None:
        raise ConfigError(f"--weights is for the eager model; --backend {args.backend} evaluates --model {args.model}, "
                          "which holds its weights.")
    if args.precision != "fp32":
        raise ConfigError(f"--precision {args.precision} is for the eager model; an exported file runs in the precision "
                          "it was exported with (swiftdet export --quantize int8 for int8).")
    if args.compile:
        raise ConfigError(f"--compile is for the eager model (torch.compile); an exported file is run by its runtime as "
                          f"it is (--backend {args.backend}).")
    if cfg.data.test.format != "coco":
        raise ConfigError(f"--backend {args.backend} evaluates COCO-format test sets; data.test.format is "
                          f"{cfg.data.test.format!r}. Use the eager model (--weights) for this dataset.")
    output_dir = prepare_output_dir_for_eval(args.output) if args.output is not None else None
    setup_logger(output_dir, 0)
    info = read_export_info(args.model)
    stored = config_from_dict(Config, json.loads(info["config"]))
    # The file's model and test resize (what it was exported and calibrated with), CONFIG's test set.
    cfg = dataclasses.replace(cfg, model=stored.model, input=stored.input)
    if not cfg.data.test.is_set:
        raise ConfigError("data.test is not set: set data.test.json=... and data.test.image_root=... to evaluate.")
    test_set = load_dataset(cfg.data.test, training=False, field="data.test", verbose=True)
    if test_set.meta.num_classes != cfg.model.num_classes:
        raise ConfigError(f"'{args.model}' detects {cfg.model.num_classes} classes but data.test ({test_set.meta.name}) "
                          f"has {test_set.meta.num_classes}; evaluate it on the dataset it was trained for.")
    model = _ExportedForEvaluation(ExportedModel(args.model, args.backend, cfg, info))
    batch = int(info["batch"]) if info.get("batch", "dynamic") != "dynamic" else cfg.test.ims_per_batch
    loader = build_test_loader(cfg, test_set, batch_size=batch, with_targets=False)
    metrics = evaluate_model(model, loader, evaluation_ground_truth(cfg.data.test), list(test_set.meta.category_ids),
                             mask_on=cfg.model.mask_on, segm_area_from=cfg.test.segm_area_from,
                             kpt_sigmas=cfg.test.keypoint_oks_sigmas)
    if output_dir is not None:
        writer = MetricsWriter(output_dir, tensorboard=False)
        writer.write({"iter": 0, "weights": str(args.model), "backend": args.backend,
                      "quantized": info.get("quantized", "no"), **metrics})
        writer.close()
    return metrics
