"""`swiftdet convert torchvision IN.pth OUT.pth --config NAME [KEY=VALUE ...]`."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

NAME = "convert"
HELP = "convert another toolbox's model file (torchvision) into a swiftdet checkpoint"

SOURCE_FORMATS = ("torchvision",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source_format", choices=SOURCE_FORMATS, help="toolbox the input file comes from")
    parser.add_argument("input", metavar="IN", help="the file to convert (a state_dict, a dict holding one under "
                        "'model'/'state_dict', or with --allow-pickle a whole pickled model); a path or URL")
    parser.add_argument("output", metavar="OUT", help="swiftdet checkpoint to write")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_classes=2")
    parser.add_argument("--config", required=True, metavar="NAME",
                        help="config of the swiftdet model the weights are for, e.g. mask_rcnn_R_50_FPN_1x")
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
    from swiftdet.config.core import config_to_dict
    from swiftdet.errors import WeightsError
    from swiftdet.model.build import build_model
    from swiftdet.utils.io import atomic_torch_save
    from swiftdet.weights.checkpoint import extract_state_dict, is_checkpoint, make_checkpoint, match_state_dict
    from swiftdet.weights.checkpoint import read_weights_file
    from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, COCO_PERSON_KEYPOINT_NAMES

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
    model = build_model(cfg.model)
    # Strict: every model tensor must come from the file and every converted tensor find its place.
    report = match_state_dict(model.state_dict(), converted, input_path, num_classes=None, strict_arch=True)
    if report.missing or report.unexpected:
        raise WeightsError(
            f"The converted '{input_path}' does not fill the model of this config: missing {report.missing[:4]}, "
            f"unexpected {report.unexpected[:4]}. Check that --config matches the file's architecture."
        )
    model.load_state_dict(converted, strict=True)
    meta: dict = {"converted_from": f"torchvision:{Path(input_path).name}"}
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


def run(args: argparse.Namespace) -> int:
    from swiftdet.config.core import load_config

    cfg = load_config(args.config, args.overrides)
    # An eps given on the command line is the user's; otherwise torchvision's for the file.
    given = any(o.split("=", 1)[0] == "model.backbone.norm_eps" for o in args.overrides)
    meta = convert_torchvision(args.input, args.output, cfg, allow_pickle=args.allow_pickle, torchvision_eps=not given)
    classes = "COCO class names and ids" if "class_names" in meta else "no class names (num_classes != 80)"
    print(f"Wrote {args.output}: {cfg.model.arch} weights for config '{args.config}', with {classes}.")
    return 0
