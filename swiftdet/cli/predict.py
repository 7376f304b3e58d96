"""`swiftdet predict --config NAME --weights W --input PATH... --output DIR [KEY=VALUE ...]`.

Writes every input drawn with its detections (DIR/<name>.jpg or .png) and all detections in one
COCO results file, DIR/predictions.json: ``image_id`` is the input's position in the sorted input
list (or its id in ``--coco-json`` when given), ``file_name`` the input path, ``bbox`` [x, y, w, h]
in original pixels, ``segmentation`` compressed RLE for masks, ``category_id`` from the
checkpoint's meta (label + 1 when it has none).

The user's images are never written over or read back: DIR may not be a folder that holds an
input image (a drawn copy would replace it or mix with the originals), and when input folders are
listed, DIR and everything under it are left out (drawings of an earlier run). An image that
cannot be read is skipped, listed on stdout and in DIR/skipped_images.txt; ``--strict`` makes that
an error (exit code 2) once the other images are done, as it is when no input can be read at all.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NAME = "predict"
HELP = "detect objects in image files or folders; write drawn images and COCO-format predictions.json"

# Unreadable inputs of the last run, one "path<TAB>reason" line each (absent when there were none).
SKIPPED_FILE = "skipped_images.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=600")
    parser.add_argument("--config", required=True, metavar="NAME",
                        help="built-in config name or a .py config file; the model and input settings stored in a "
                             "swiftdet checkpoint take precedence (said when they differ), KEY=VALUE overrides win "
                             "over both")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="checkpoint path or URL (default: the config's model.weights)")
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH",
                        help="image files and/or folders (searched recursively for common image types)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="folder for drawn images and predictions.json; it may not hold input images (their drawn "
                             "copies would replace them), and a folder inside an input folder is left out when that "
                             "folder is searched, e.g. --input photos --output photos/predictions")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per forward pass (default 1)")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="T",
                        help="keep detections scoring at least T (default: the config's threshold)")
    parser.add_argument("--draw-thresh", type=float, default=0.5, metavar="T",
                        help="draw only detections scoring at least T (default 0.5); predictions.json keeps all")
    parser.add_argument("--plain", action="store_true",
                        help="run the model exactly as trained, without folding norms into convs (slower; same detections within float rounding)")
    parser.add_argument("--coco-json", default=None, metavar="JSON",
                        help="COCO annotation file whose image ids the predictions should use (matched by file name); "
                             "needed to evaluate predictions.json against it (swiftdet coco-eval)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with an error (code 2) when an input image cannot be read, after predicting the "
                             "others; by default it is skipped and listed in DIR/skipped_images.txt (an error only "
                             "when no input can be read)")


def collect_images(paths: list[str], exclude: str | os.PathLike | None = None,
                   left_out: list[Path] | None = None) -> list[Path]:
    """Image files named directly, then those found in folders (recursively, sorted); no duplicates.

    ``exclude`` (the output folder) and everything under it are left out of folder listings, so
    that drawings of an earlier run are not predicted on (appended to ``left_out`` when given);
    files named directly are always kept.
    """
    from swiftdet.errors import InputError

    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            # The output folder being this very folder is refused by check_output_folder, not hidden here.
            inner = skip if skip is not None and skip != path.resolve() and _is_under(skip, path.resolve()) else None
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if inner is not None:
                kept = [p for p in files if not _is_under(p.resolve(), inner)]
                if left_out is not None:
                    left_out.extend(p for p in files if _is_under(p.resolve(), inner))
                files = kept
            if not files:
                where = f" outside the output folder '{exclude}'" if inner is not None else ""
                raise InputError(f"Input folder '{text}' holds no images{where} ({', '.join(IMAGE_EXTENSIONS)}).")
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


def _is_under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(output: str | os.PathLike, inputs: list[str], paths: list[Path]) -> None:
    """Refuse an output folder that is an input folder or holds an input image: drawn copies would
    replace the user's images (same name) or sit among them and be read back as inputs next time.

    Raises:
        InputError: naming the input and a folder to use instead.
    """
    from swiftdet.errors import InputError

    out = Path(output).resolve()
    clash = next((f"the input folder '{text}'" for text in inputs if Path(text).is_dir() and Path(text).resolve() == out),
                 None)
    if clash is None:
        clash = next((f"the folder of the input '{p}'" for p in paths if p.resolve().parent == out), None)
    if clash is not None:
        raise InputError(
            f"--output '{output}' is {clash}: the drawn images would overwrite your images "
            f"or be mixed with them. Write them to another folder, e.g. --output {Path(output) / 'predictions'} (a "
            "folder inside an input folder is left out when the inputs are listed)."
        )


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
    from swiftdet.errors import InputError
    from swiftdet.evaluation.results import instances_to_coco_results
    from swiftdet.inference.predictor import Predictor
    from swiftdet.utils.io import atomic_write
    from swiftdet.visualization.draw import draw_instances, save_image
    from swiftdet.weights.checkpoint import config_for_weights

    cfg = load_config(args.config, args.overrides)
    left_out: list[Path] = []
    paths = collect_images(args.input, exclude=args.output, left_out=left_out)
    check_output_folder(args.output, args.input, paths)
    if left_out:
        print(f"left out {len(left_out)} images under the output folder {args.output} (drawings of an earlier run are "
              "not predicted on)")
    image_ids = _coco_image_ids(args.coco_json, paths) if args.coco_json else list(range(len(paths)))
    # A run's checkpoint is drawn with its own model and test settings (the overrides still apply).
    cfg, note = config_for_weights(cfg, args.weights, args.overrides)
    if note:
        print(note)
    names = output_names(paths)
    predictor = Predictor(cfg, args.weights, device=args.device, score_thresh=args.score_thresh,
                          batch_size=args.batch_size, fast=not args.plain)
    category_ids = predictor.category_ids
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    count = 0
    for start in range(0, len(paths), args.batch_size):
        batch, images = [], []
        for i in range(start, min(start + args.batch_size, len(paths))):
            try:
                images.append(read_image(paths[i]))
            except InputError as e:  # one unreadable file must not cost the predictions of all the others
                skipped.append((paths[i], " ".join(str(e).split())))
                print(f"skipped {paths[i]}: {skipped[-1][1]}")
                continue
            batch.append(i)
        if not batch:
            continue
        for i, image, instances in zip(batch, images, predictor(images)):
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
    skipped_file = out_dir / SKIPPED_FILE
    if skipped:
        atomic_write(skipped_file, lambda f: f.write("".join(f"{p}\t{why}\n" for p, why in skipped)), mode="w")
    elif skipped_file.is_file():
        skipped_file.unlink()  # an earlier run's list would describe files this run did read
    done = len(paths) - len(skipped)
    print(f"{done} images, {count} detections: drawn images and predictions.json in {out_dir}"
          + (f"; {len(skipped)} unreadable image(s) skipped (listed in {skipped_file})" if skipped else ""))
    strict = getattr(args, "strict", False)  # Namespaces built by hand before --strict existed lack it
    if skipped and (strict or done == 0):
        why = "--strict was given" if strict else "no input image could be read"
        raise InputError(f"{len(skipped)} of {len(paths)} input images could not be read ({why}), e.g. "
                         f"{skipped[0][0]}: {skipped[0][1]} They are listed in {skipped_file}.")
    return 0
