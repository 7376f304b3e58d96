"""`swiftdet predict --config NAME --weights W --input PATH... --output DIR [KEY=VALUE ...]`.

Writes every input drawn with its detections (DIR/<name>.jpg or .png) and all detections in one
COCO results file, DIR/predictions.json: ``image_id`` is the input's position in the sorted input
list (or its id in ``--coco-json`` when given), ``file_name`` the input path, ``bbox`` [x, y, w, h]
in original pixels, ``segmentation`` compressed RLE for masks, ``category_id`` from the
checkpoint's meta (label + 1 when it has none).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NAME = "predict"
HELP = "detect objects in image files or folders; write drawn images and COCO-format predictions.json"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=600")
    parser.add_argument("--config", required=True, metavar="NAME", help="built-in config name or a .py config file")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="checkpoint path or URL (default: the config's model.weights)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files and/or folders (searched recursively for common image types)")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for drawn images and predictions.json")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="T",
                        help="keep detections scoring at least T (default: the config's threshold)")
    parser.add_argument("--draw-thresh", type=float, default=0.5, metavar="T",
                        help="draw only detections scoring at least T (default 0.5); predictions.json keeps all")
    parser.add_argument("--plain", action="store_true",
                        help="run the model exactly as trained, without folding norms into convs (slower; same detections within float rounding)")
    parser.add_argument("--coco-json", default=None, metavar="JSON",
                        help="COCO annotation file whose image ids the predictions should use (matched by file name)")


def collect_images(paths: list[str]) -> list[Path]:
    """Image files named directly, then those found in folders (recursively, sorted); no duplicates."""
    from swiftdet.errors import InputError

    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise InputError(f"Input folder '{text}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
            found.extend(files)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"Input '{text}' does not exist. Give image files or folders of images.")
    unique, seen = [], set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(paths: list[Path]) -> list[str]:
    """A distinct output file name per input: its stem, '-2', '-3'... for repeated stems.

    JPEG inputs are drawn as .jpg, everything else as .png.
    """
    names, used = [], set()
    for p in paths:
        suffix = ".jpg" if p.suffix.lower() in (".jpg", ".jpeg") else ".png"
        name, n = p.stem + suffix, 1
        while name.lower() in used or name.lower() == "predictions.json":
            n += 1
            name = f"{p.stem}-{n}{suffix}"
        used.add(name.lower())
        names.append(name)
    return names


def _coco_image_ids(json_path: str, paths: list[Path]) -> list[int]:
    from swiftdet.errors import InputError

    try:
        with open(json_path) as f:
            images = json.load(f)["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"Cannot read image ids from COCO file '{json_path}': {e}.") from None
    by_name: dict[str, int] = {}
    for img in images:
        by_name.setdefault(os.path.basename(str(img.get("file_name", ""))), int(img["id"]))
    missing = [str(p) for p in paths if p.name not in by_name]
    if missing:
        raise InputError(f"{len(missing)} inputs are not images of '{json_path}' (matched by file name), e.g. "
                         f"{missing[:3]}. Predict only that dataset's images, or leave out --coco-json.")
    return [by_name[p.name] for p in paths]


def run(args: argparse.Namespace) -> int:
    from swiftdet.config.core import load_config
    from swiftdet.data.transforms import read_image
    from swiftdet.evaluation.results import instances_to_coco_results
    from swiftdet.inference.predictor import Predictor
    from swiftdet.utils.io import atomic_write
    from swiftdet.visualization.draw import draw_instances, save_image

    cfg = load_config(args.config, args.overrides)
    paths = collect_images(args.input)
    image_ids = _coco_image_ids(args.coco_json, paths) if args.coco_json else list(range(len(paths)))
    names = output_names(paths)
    predictor = Predictor(cfg, args.weights, device=args.device, score_thresh=args.score_thresh,
                          batch_size=args.batch_size, fast=not args.plain)
    category_ids = predictor.category_ids
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    count = 0
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        images = [read_image(p) for p in batch]
        for offset, (image, instances) in enumerate(zip(images, predictor(images))):
            i = start + offset
            results.extend(instances_to_coco_results(instances, image_ids[i], category_ids, file_name=str(paths[i])))
            shown = instances[instances.scores >= args.draw_thresh]
            drawn = draw_instances(
                image.permute(1, 2, 0).numpy(),
                boxes=shown.boxes.tensor.numpy(),
                labels=shown.labels.numpy(),
                scores=shown.scores.numpy(),
                masks=shown.masks.tensor.numpy() if shown.masks is not None else None,
                keypoints=shown.keypoints.tensor.numpy() if shown.keypoints is not None else None,
                class_names=predictor.class_names,
            )
            save_image(drawn, out_dir / names[i])
            count += len(instances)
    atomic_write(out_dir / "predictions.json", lambda f: f.write(json.dumps(results)), mode="w")
    print(f"{len(paths)} images, {count} detections: drawn images and predictions.json in {out_dir}")
    return 0
