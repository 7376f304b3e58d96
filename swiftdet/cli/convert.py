"""`swiftdet convert torchvision IN.pth OUT.pth --config NAME [KEY=VALUE ...]`,
`swiftdet convert detectron2 IN.(pkl|pth) OUT.pth (--d2-config CONFIG.yaml | --config NAME) [KEY=VALUE ...]` and
`swiftdet convert detectron IN.pkl OUT.pth (--d2-config CONFIG.yaml | --config NAME) [KEY=VALUE ...]`."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

NAME = "convert"
HELP = "convert another toolbox's model file (torchvision, detectron2, Detectron) into a swiftdet checkpoint"

SOURCE_FORMATS = ("torchvision", "detectron2", "detectron")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source_format", choices=SOURCE_FORMATS, help="toolbox the input file comes from")
    parser.add_argument("input", metavar="IN", help="the file to convert; a path or URL. torchvision: a state_dict, a dict "
                        "holding one under 'model'/'state_dict', or with --allow-pickle a whole pickled model; detectron2: "
                        "a model-zoo .pkl or a training .pth; detectron: a Detectron (Caffe2) .pkl")
    parser.add_argument("output", metavar="OUT", help="swiftdet checkpoint to write")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_classes=2")
    parser.add_argument("--config", metavar="NAME",
                        help="config of the swiftdet model the weights are for, e.g. mask_rcnn_R_50_FPN_1x (required "
                             "for torchvision; for detectron2 / Detectron this or --d2-config)")
    parser.add_argument("--d2-config", metavar="CONFIG.yaml",
                        help="detectron2 / Detectron input: the detectron2 yaml the file was trained with; the swiftdet "
                             "config made from it is written beside OUT (OUT with the suffix .yaml)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle arbitrary Python objects (needed for a whole saved model; trusted files only)")


def convert_torchvision(input_path: str, output_path: str, cfg, *, allow_pickle: bool = False,
                        torchvision_eps: bool = True) -> dict:
    """Convert a torchvision detection model file for ``cfg`` and write it as a swiftdet checkpoint.

    The converted weights are loaded into the model ``cfg`` builds, every key and shape checked,
    before anything is written (atomically). With ``torchvision_eps`` the checkpoint's config takes
    the FrozenBN eps torchvision runs such a file with (:func:`torchvision_norm_eps`), in place of
    ``cfg``'s. Returns the checkpoint's meta.

    Raises:
        WeightsError: unreadable file, another architecture, or a result that does not fill the model.
    """
    from swiftdet.errors import WeightsError
    from swiftdet.weights.checkpoint import extract_state_dict, is_checkpoint, read_weights_file

    eps = torchvision_norm_eps(cfg) if torchvision_eps else None
    if eps is not None and cfg.model.backbone.norm_eps != eps:
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.norm_eps = eps
        print(f"FrozenBN eps {eps:g}, as torchvision runs its COCO files of this architecture (for a model you "
              f"trained in torchvision from ImageNet weights give model.backbone.norm_eps=1e-5).")

    obj = read_weights_file(input_path, allow_pickle=allow_pickle, allow_pickle_hint="--allow-pickle")
    if is_checkpoint(obj):
        raise WeightsError(f"'{input_path}' is already a swiftdet checkpoint: nothing to convert. Use it as it is "
                           f"(swiftdet predict / swiftdet eval --weights {input_path}).")
    state_dict, _, _ = extract_state_dict(obj, input_path)
    if cfg.model.arch == "rcnn":
        from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

        converted = convert_rcnn_state_dict(state_dict, cfg.model, source=input_path)
    elif cfg.model.arch == "ssd":
        from swiftdet.weights.torchvision_ssd import convert_ssd_state_dict

        converted = convert_ssd_state_dict(state_dict, cfg.model)
    else:
        from swiftdet.weights.torchvision_dense import convert_dense_state_dict

        converted = convert_dense_state_dict(state_dict, cfg.model)
    return _save_converted(cfg, converted, input_path, output_path, "torchvision")


def _save_converted(cfg, converted: dict, input_path: str, output_path: str, source_format: str) -> dict:
    """Load ``converted`` strictly into the model ``cfg`` builds, then write it as a checkpoint
    (atomically) with meta ``converted_from`` and COCO names where the classes are COCO's."""
    from swiftdet.config.core import config_to_dict
    from swiftdet.errors import WeightsError
    from swiftdet.model.build import build_model
    from swiftdet.utils.io import atomic_torch_save
    from swiftdet.weights.checkpoint import make_checkpoint, match_state_dict
    from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, COCO_PERSON_KEYPOINT_NAMES

    model = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    # Strict: every model tensor must come from the file and every converted tensor find its place.
    report = match_state_dict(model.state_dict(), converted, input_path, num_classes=None, strict_arch=True)
    if report.missing or report.unexpected:
        raise WeightsError(
            f"The converted '{input_path}' does not fill the model of this config: missing {report.missing[:4]}, "
            f"unexpected {report.unexpected[:4]}. Check that --config matches the file's architecture."
        )
    model.load_state_dict(converted, strict=True)
    meta: dict = {"converted_from": f"{source_format}:{Path(input_path).name}"}
    if cfg.model.num_classes == 80:
        meta["class_names"] = list(COCO_CLASS_NAMES)
        meta["category_ids"] = list(COCO_CATEGORY_IDS)
    elif cfg.model.keypoint_on and cfg.model.num_classes == 1 and cfg.model.keypoint_head.num_keypoints == 17:
        # torchvision's keypointrcnn: COCO persons, drawn with their skeleton.
        from swiftdet.visualization.draw import COCO_PERSON_SKELETON

        meta.update(class_names=["person"], category_ids=[1], keypoint_names=list(COCO_PERSON_KEYPOINT_NAMES),
                    skeleton=[list(pair) for pair in COCO_PERSON_SKELETON])
    atomic_torch_save(make_checkpoint(model, config_to_dict(cfg), meta), output_path)
    return meta


def torchvision_norm_eps(cfg) -> float | None:
    """The FrozenBN eps torchvision runs a file of ``cfg``'s architecture with, where it is not the
    default: 0 for its v1 ResNet-50-FPN Faster / Mask / Keypoint R-CNN and RetinaNet, whose COCO
    files it loads with ``overwrite_eps(model, 0.0)`` (v2, FCOS, MobileNet and SSD keep 1e-5)."""
    b = cfg.model.backbone
    if cfg.model.arch in ("rcnn", "retinanet") and b.name == "resnet" and b.norm == "FrozenBN":
        return 0.0
    return None


def convert_detectron2(input_path: str, output_path: str, cfg, source_format: str = "detectron2") -> dict:
    """Convert a detectron2 (model-zoo ``.pkl``, training ``.pth``) or, with ``source_format``
    "detectron", a Detectron (Caffe2) ``.pkl`` for ``cfg`` and write it as a swiftdet checkpoint,
    after loading it strictly into the model ``cfg`` builds. Returns the checkpoint's meta.

    Raises:
        WeightsError: unreadable file, the other format, or another architecture than ``cfg``'s.
    """
    from swiftdet.weights.detectron2 import convert_detectron2_file

    converted = convert_detectron2_file(input_path, cfg.model, expected_format=source_format)
    return _save_converted(cfg, converted, input_path, output_path, source_format)


def _detectron2_config(args: argparse.Namespace):
    """The Config for a detectron2 / Detectron conversion (--d2-config or --config, then
    the overrides); a Detectron file's folded AffineChannel norms run exactly with FrozenBN eps 0."""
    from swiftdet.config.core import apply_overrides, load_config, validate_config
    from swiftdet.config.detectron2_yaml import config_from_detectron2_yaml
    from swiftdet.errors import ConfigError

    if (args.d2_config is None) == (args.config is None):
        raise ConfigError(f"swiftdet convert {args.source_format}: give exactly one of --d2-config CONFIG.yaml (the "
                          "detectron2 config of the file) and --config NAME (a swiftdet config).")
    if args.d2_config is not None:
        cfg = config_from_detectron2_yaml(args.d2_config)
    else:
        cfg = load_config(args.config)
        if cfg.model.convention != "detectron2":
            print(f"Note: config '{args.config}' has model.convention={cfg.model.convention}; detectron2's outputs "
                  "need model.convention=detectron2.")
    if args.source_format == "detectron" and not any(o.split("=", 1)[0] == "model.backbone.norm_eps" for o in args.overrides):
        cfg.model.backbone.norm_eps = 0.0  # x * s + b exactly, as Detectron's AffineChannel
    return validate_config(apply_overrides(cfg, args.overrides))


def run(args: argparse.Namespace) -> int:
    from swiftdet.config.core import load_config

    if args.source_format in ("detectron2", "detectron"):
        from swiftdet.config.core import config_to_yaml
        from swiftdet.errors import ConfigError

        if args.allow_pickle:
            raise ConfigError("--allow-pickle is for torchvision files; detectron2 / Detectron files are read as "
                              "numpy arrays and tensors only.")
        cfg = _detectron2_config(args)
        meta = convert_detectron2(args.input, args.output, cfg, args.source_format)
        if args.d2_config is not None:
            config_path = Path(args.output).with_suffix(".yaml")
            config_path.write_text(config_to_yaml(cfg))
            print(f"Wrote {config_path}: the swiftdet config made from {args.d2_config}.")
        classes = "COCO class names and ids" if "class_names" in meta else "no class names"
        print(f"Wrote {args.output}: {cfg.model.arch} weights converted from {args.source_format} '{args.input}', "
              f"with {classes}.")
        return 0
    if args.config is None or args.d2_config is not None:
        from swiftdet.errors import ConfigError

        raise ConfigError("swiftdet convert torchvision needs --config NAME (the config of the swiftdet model) and "
                          "takes no --d2-config.")
    cfg = load_config(args.config, args.overrides)
    # An eps given on the command line is the user's; otherwise torchvision's for the file.
    given = any(o.split("=", 1)[0] == "model.backbone.norm_eps" for o in args.overrides)
    meta = convert_torchvision(args.input, args.output, cfg, allow_pickle=args.allow_pickle, torchvision_eps=not given)
    classes = "COCO class names and ids" if "class_names" in meta else "no class names (num_classes != 80)"
    print(f"Wrote {args.output}: {cfg.model.arch} weights for config '{args.config}', with {classes}.")
    return 0
