"""`swiftdet predict --config NAME --weights W (--input PATH... | --images-from GT.json) --output DIR [KEY=VALUE ...]`.

Writes every input drawn with its detections (DIR/<name>.jpg or .png; not with ``--no-draw``) and
all detections in one COCO results file, DIR/predictions.json: ``image_id`` is the input's
position in the sorted input list (or its id in ``--coco-json`` when given), ``file_name`` the
input path, ``bbox`` [x, y, w, h] in original pixels, ``segmentation`` compressed RLE for masks,
``category_id`` from the checkpoint's meta (label + 1 when it has none). With ``--images-from
GT.json`` the inputs are exactly that file's images (under ``--image-root``), ``image_id`` and
``file_name`` as the json gives them, so that predictions.json evaluates against it directly.

The user's images are never written over or read back: DIR may not be a folder that holds an
input image (a drawn copy would replace it or mix with the originals), and when input folders are
listed, DIR and everything under it are left out (drawings of an earlier run). An image that
cannot be read is skipped, listed on stdout and in DIR/skipped_images.txt; ``--strict`` makes that
an error (exit code 2) once the other images are done, as it is when no input can be read at all.

Videos (``--input video.mp4 ...``) become DIR/<name>.mp4, drawn, and DIR/<name>.json, the detections
of every frame; a camera index (``--input 0``) is shown live in a window. Both are in
swiftdet/cli/video.py. Long runs show a bar with rate and ETA on a terminal (swiftdet/cli/progress.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath

from swiftdet.cli.options import add_compile_argument, add_precision_argument

NAME = "predict"
HELP = ("detect objects in image files or folders (drawn images and COCO-format predictions.json), in videos "
        "(drawn video and per-frame json) or live on a camera")

# Unreadable inputs of the last run, one "path<TAB>reason" line each (absent when there were none).
SKIPPED_FILE = "skipped_images.txt"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Predicted keypoints are drawn where their score (a heatmap logit) exceeds this (detectron2's value).
KEYPOINT_DRAW_THRESH = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. input.min_size_test=600")
    parser.add_argument("--config", default=None, metavar="NAME",
                        help="(required unless --model is given) "
                             "built-in config name, a .py config file or a run's config.yaml (OUTPUT/config.yaml "
                             "of swiftdet train); the model and input settings stored in a "
                             "swiftdet checkpoint take precedence (said when they differ), KEY=VALUE overrides win "
                             "over both")
    parser.add_argument("--weights", default=None, metavar="W",
                        help="checkpoint path or URL: a run's OUTPUT/model_final.pth, checkpoints/last.pth, "
                             "best.pth or model_*.pth, or converted weights (default: the config's model.weights)")
    # Not required by argparse: --images-from may stand in for it (run() says when neither is given).
    parser.add_argument("--input", default=None, nargs="+", metavar="PATH",
                        help="image files and/or folders (searched recursively for common image types); or video "
                             "files (.mp4, .mov, .avi, .mkv, .webm...: DIR/<name>.mp4 drawn and DIR/<name>.json per "
                             "frame; needs pip install -e \".[video]\"); or a camera index (0, 1...: a live window "
                             "with FPS, no --output); or give --images-from instead")
    parser.add_argument("--images-from", default=None, metavar="JSON",
                        help="predict exactly the images of this COCO annotation file (e.g. your val.json), with its "
                             "image ids and file names, so that predictions.json evaluates against it (swiftdet "
                             "coco-eval); instead of --input")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder the file names of --images-from (or --coco-json) are relative to, as "
                             "data.test.image_root (default for --images-from: the json's folder, or the folder above "
                             "it when the images are there, as in DATA/annotations/val.json)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="(required but for a camera) folder for drawn images and predictions.json, or drawn "
                             "videos and their json; it may not hold input images (their drawn "
                             "copies would replace them), and a folder inside an input folder is left out when that "
                             "folder is searched, e.g. --input photos --output photos/predictions")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="images (or video frames) per forward pass (default 1)")
    parser.add_argument("--score-thresh", type=float, default=None, metavar="T",
                        help="keep detections scoring at least T (default: the config's threshold)")
    parser.add_argument("--draw-thresh", type=float, default=0.5, metavar="T",
                        help="draw only detections scoring at least T (default 0.5); predictions.json keeps all")
    parser.add_argument("--plain", action="store_true",
                        help="run the model exactly as trained, without folding norms into convs (slower; same detections within float rounding)")
    parser.add_argument("--coco-json", default=None, metavar="JSON",
                        help="COCO annotation file whose image ids the predictions should use (matched by the json's "
                             "file_name, a path relative to its image root, else by base name where that is "
                             "unambiguous); needed to evaluate predictions.json against it (swiftdet coco-eval)")
    parser.add_argument("--no-draw", action="store_true",
                        help="do not draw and save the images (faster); predictions.json is still written")
    parser.add_argument("--backend", default="eager", choices=("eager", "onnxruntime", "openvino", "torchscript"),
                        help="what runs the model: eager PyTorch (default, with --config and --weights), or an "
                             "exported file given with --model (its config and classes are inside it)")
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="the exported model for --backend onnxruntime or openvino (model.onnx), or torchscript")
    parser.add_argument("--strict", action="store_true",
                        help="exit with an error (code 2) when an input image cannot be read, after predicting the "
                             "others; by default it is skipped and listed in DIR/skipped_images.txt (an error only "
                             "when no input can be read)")
    add_precision_argument(parser)
    add_compile_argument(parser)


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
                from swiftdet.inference.video import is_video_file

                where = f" outside the output folder '{exclude}'" if inner is not None else ""
                videos = [p for p in sorted(path.rglob("*")) if p.is_file() and is_video_file(p)]
                hint = (f" It holds videos, e.g. {videos[0]}: give them as --input FILE.mp4 ... (folders are searched "
                        "for images only).") if videos else ""
                raise InputError(f"Input folder '{text}' holds no images{where} ({', '.join(IMAGE_EXTENSIONS)}).{hint}")
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


def _read_coco_images(json_path: str) -> list[dict]:
    """The ``images`` list of a COCO annotation file, each with an int ``id`` and a str ``file_name``."""
    from swiftdet.errors import InputError

    try:
        with open(json_path) as f:
            images = json.load(f)["images"]
        return [{"id": int(img["id"]), "file_name": str(img.get("file_name", ""))} for img in images]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"Cannot read image ids from COCO file '{json_path}': {e}.") from None


def _name_parts(file_name: str) -> tuple[str, ...]:
    # COCO files written on Windows use backslashes; "./a.jpg" is "a.jpg".
    return tuple(part for part in PurePosixPath(file_name.replace("\\", "/")).parts if part not in (".", "/"))


def _coco_image_ids(json_path: str, paths: list[Path], image_root: str | None = None) -> list[int]:
    """The json's image id of each input, matched by the json's ``file_name`` (a path relative to
    the image root): the input's path relative to ``image_root`` when given, else the input path
    ending in that file_name; failing both, by base name when one image of the json has it.

    Base names alone are ambiguous in a json that lists train/0001.jpg and val/0001.jpg.
    """
    from swiftdet.errors import InputError

    images = _read_coco_images(json_path)
    by_base: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for img in images:
        parts = _name_parts(img["file_name"])
        if parts:
            by_base.setdefault(parts[-1], []).append((parts, img["id"]))
    root = Path(image_root).resolve() if image_root else None
    ids: list[int] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for p in paths:
        candidates = by_base.get(p.name, [])
        full = p.resolve().parts
        if root is not None and _is_under(p.resolve(), root):
            relative = p.resolve().relative_to(root).parts
            matched = [c for c in candidates if c[0] == relative]
        else:
            matched = [c for c in candidates if full[-len(c[0]):] == c[0]]
            if matched:  # the longest file_name that the path ends in is the most specific match
                longest = max(len(c[0]) for c in matched)
                matched = [c for c in matched if len(c[0]) == longest]
        if not matched and len(candidates) == 1:
            matched = candidates  # the file moved, but its base name is unique in the json
        if len({c[1] for c in matched}) == 1:
            ids.append(matched[0][1])
        elif matched or candidates:
            ambiguous.append(f"{p} ({', '.join('/'.join(c[0]) for c in (matched or candidates)[:3])})")
        else:
            missing.append(str(p))
    if ambiguous:
        raise InputError(f"{len(ambiguous)} inputs match several images of '{json_path}' by base name and none by "
                         f"their path relative to the image root, e.g. {ambiguous[0]}. Pass --image-root (the folder "
                         "the json's file names are relative to), or predict its images with --images-from.")
    if missing:
        raise InputError(f"{len(missing)} inputs are not images of '{json_path}' (matched by file name), e.g. "
                         f"{missing[:3]}. Predict only that dataset's images, or leave out --coco-json.")
    return ids


def images_from_json(json_path: str, image_root: str | None = None) -> tuple[list[Path], list[int], list[str], Path]:
    """(paths, image ids, file names as the json gives them, the image root used) of every image of a
    COCO annotation file, in its order.

    Without ``image_root`` the json's folder is used, or the folder above it when the first image is
    found there but not in the json's folder (the usual DATA/annotations/val.json layout).

    Raises:
        InputError: the json lists no images, or none of them is under the image root.
    """
    from swiftdet.errors import InputError

    images = _read_coco_images(json_path)
    if not images:
        raise InputError(f"COCO file '{json_path}' lists no images (its 'images' list is empty): nothing to predict.")
    if image_root is not None:
        root = Path(image_root)
    else:
        here = Path(json_path).resolve().parent
        first = images[0]["file_name"]
        root = here.parent if not (here / first).is_file() and (here.parent / first).is_file() else here
    paths = [root / img["file_name"] for img in images]
    if not any(p.is_file() for p in paths):
        raise InputError(f"None of the {len(paths)} images of '{json_path}' is under {root} (e.g. {paths[0]}). Pass "
                         "--image-root, the folder the json's file names are relative to (data.test.image_root).")
    return paths, [img["id"] for img in images], [img["file_name"] for img in images], root


def _inputs(args: argparse.Namespace) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(paths, image ids or None for positions, file names for predictions.json or None for the
    paths) of ``--input`` or ``--images-from``, the output folder checked against them."""
    from swiftdet.errors import InputError

    images_from = getattr(args, "images_from", None)  # Namespaces built by hand may lack the newer flags
    image_root = getattr(args, "image_root", None)
    if images_from is None and not args.input:
        raise InputError("Nothing to predict: give --input PATH... (image files or folders) or --images-from GT.json "
                         "(the images of a COCO annotation file).")
    if images_from is not None and args.input:
        raise InputError("Give either --input or --images-from, not both: --images-from GT.json predicts exactly the "
                         "images of GT.json; to give its ids to other inputs use --input ... --coco-json GT.json.")
    if images_from is not None:
        if args.coco_json and Path(args.coco_json).resolve() != Path(images_from).resolve():
            raise InputError(f"--images-from '{images_from}' already gives the image ids; --coco-json "
                             f"'{args.coco_json}' names another file. Leave out --coco-json.")
        paths, ids, names, root = images_from_json(images_from, image_root)
        check_output_folder(args.output, [], paths)
        print(f"{len(paths)} images of {images_from} under {root}")
        return paths, ids, names
    if image_root is not None and not args.coco_json:
        raise InputError("--image-root goes with --images-from GT.json or --coco-json GT.json: it is the folder the "
                         "json's file names are relative to.")
    left_out: list[Path] = []
    paths = collect_images(args.input, exclude=args.output, left_out=left_out)
    check_output_folder(args.output, args.input, paths)
    if left_out:
        print(f"left out {len(left_out)} images under the output folder {args.output} (drawings of an earlier run are "
              "not predicted on)")
    ids = _coco_image_ids(args.coco_json, paths, image_root) if args.coco_json else None
    return paths, ids, None


def _check_backend_arguments(args: argparse.Namespace) -> bool:
    """Whether an exported model runs (--backend other than eager); refuses flags that do not
    apply to the chosen backend, so none is silently ignored."""
    from swiftdet.errors import InputError

    backend = getattr(args, "backend", "eager")
    model = getattr(args, "model", None)
    if backend == "eager":
        if model is not None:
            raise InputError(f"--model {model} is an exported model: give --backend onnxruntime (ONNX) or "
                             "--backend torchscript with it; eager predictions take --config and --weights.")
        if args.config is None:
            raise InputError("predict needs --config NAME (and --weights W), or an exported model: "
                             "--backend onnxruntime --model model.onnx.")
        return False
    if model is None:
        raise InputError(f"--backend {backend} runs an exported model: give it with --model FILE "
                         "(write one with swiftdet export CONFIG --weights W --output FILE).")
    given = [flag for flag, value in (("--config", args.config), ("--weights", args.weights),
                                      ("KEY=VALUE overrides", args.overrides), ("--plain", args.plain)) if value]
    if args.device != "cpu":
        given.append("--device")
    if given:
        raise InputError(f"--backend {backend} takes the config, weights and test size from the exported file; "
                         f"{', '.join(given)} do not apply (export again to change them). Remove them.")
    return True


def _video_inputs(args: argparse.Namespace) -> tuple[list[Path], int | None]:
    """(video files, camera index) that ``--input`` names; ([], None) for images.

    Videos and images go in separate runs (their outputs differ), a camera alone; flags that do not
    apply to them are refused rather than ignored.
    """
    from swiftdet.errors import InputError
    from swiftdet.inference.video import camera_index, is_video_file, open_video

    inputs = args.input or []
    cameras = [text for text in inputs if camera_index(text) is not None]
    videos = [Path(text) for text in inputs if camera_index(text) is None and is_video_file(text)]
    if not cameras and not videos:
        return [], None
    if cameras and len(inputs) > 1:
        raise InputError(f"--input {cameras[0]} is a camera, shown live on its own: give it alone (one camera per "
                         "run), or give files and folders.")
    if videos and len(videos) < len(inputs):
        other = next(text for text in inputs if not is_video_file(text))
        raise InputError(f"--input mixes videos ({videos[0]}) with other inputs ({other}): predict videos and "
                         "images in separate runs (a video gives a drawn .mp4 and a per-frame json, images a "
                         "predictions.json).")
    kind = "a camera" if cameras else "videos"
    given = [flag for flag in ("images_from", "coco_json", "image_root") if getattr(args, flag, None)]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} names image ids of a COCO file; it does not apply to {kind}. "
                         "Remove it.")
    if cameras:
        index = camera_index(cameras[0])
        refused = [flag for flag, on in (("--output", args.output is not None),
                                         ("--no-draw", getattr(args, "no_draw", False)),
                                         ("--batch-size", args.batch_size != 1)) if on]
        if refused:
            raise InputError(f"--input {index} shows camera {index} live and writes nothing, one frame at a time "
                             f"(the newest): {', '.join(refused)} does not apply. Remove it; to keep the results, "
                             "record a video and predict it with --input video.mp4 --output DIR.")
        return [], index
    for path in videos:  # each opened once before the model loads: a bad file is named at once
        if not path.is_file():
            raise InputError(f"Input '{path}' does not exist. Give video files, image files or folders.")
        open_video(path).close()
    if args.output is not None:  # run() says when it is missing
        check_output_folder(args.output, [], videos)
    return videos, None


def _drawer(predictor, cfg, draw_thresh: float):
    """draw(image (H, W, 3) uint8 RGB, Instances) -> the image with the detections scoring at least
    ``draw_thresh`` drawn (boxes, class names and scores, masks, keypoints and their skeleton)."""
    from swiftdet.visualization.draw import COCO_PERSON_SKELETON, draw_instances

    # The limbs: the training data's skeleton (in a run's checkpoint), else COCO's for a 17-keypoint model.
    skeleton = predictor.meta.get("skeleton") or (
        COCO_PERSON_SKELETON if cfg.model.keypoint_on and cfg.model.keypoint_head.num_keypoints == 17 else None)

    def draw(image, instances):
        shown = instances[instances.scores >= draw_thresh]
        return draw_instances(
            image,
            boxes=shown.boxes.tensor.numpy(),
            labels=shown.labels.numpy(),
            scores=shown.scores.numpy(),
            masks=shown.masks,  # CroppedMasks: drawn crop by crop, never at full size
            keypoints=shown.keypoints.tensor.numpy() if shown.keypoints is not None else None,
            skeleton=skeleton,
            keypoint_threshold=KEYPOINT_DRAW_THRESH,
            class_names=predictor.class_names,
        )

    return draw


def run(args: argparse.Namespace) -> int:
    from swiftdet.cli.progress import Progress
    from swiftdet.config.core import load_config
    from swiftdet.data.transforms import read_image
    from swiftdet.errors import ConfigError, InputError
    from swiftdet.evaluation.results import instances_to_coco_results
    from swiftdet.inference.predictor import Predictor
    from swiftdet.utils.io import atomic_write
    from swiftdet.visualization.draw import save_image
    from swiftdet.weights.checkpoint import config_for_weights

    exported = _check_backend_arguments(args)
    if exported and args.precision != "fp32":
        raise ConfigError(f"--precision {args.precision} applies to swiftdet's own models; an exported file runs in "
                          f"the precision it was exported with (--backend {args.backend}).")
    if exported and args.compile:
        raise ConfigError(f"--compile applies to swiftdet's own models (torch.compile); an exported file is run by its "
                          f"runtime as it is (--backend {args.backend}).")
    cfg = load_config(args.config, args.overrides) if not exported else None
    if cfg is not None and cfg.model.proposal_generator == "precomputed":
        raise ConfigError("predict cannot run a Fast R-CNN (model.proposal_generator=precomputed): it needs each image's "
                          "precomputed proposals, which arbitrary images do not have; use swiftdet eval with "
                          "data.test.proposals, or a Faster R-CNN (model.proposal_generator=rpn).")
    videos, camera = _video_inputs(args)
    if camera is None and args.output is None:
        raise InputError("predict needs --output DIR, the folder for the drawn images (or videos) and the "
                         "predictions; only a camera (--input 0) is shown without one.")
    if camera is None and not videos:
        paths, ids, file_names = _inputs(args)
    if camera is not None:  # before the model loads: say at once when there is nowhere to show it or nothing to film
        from swiftdet.cli.video import check_display
        from swiftdet.inference.video import camera_device

        check_display()
        camera_device(camera)
    if exported:
        from swiftdet.export.runtime import load_exported_predictor

        predictor = load_exported_predictor(args.model, args.backend, batch_size=args.batch_size,
                                            score_thresh=args.score_thresh)
        cfg = predictor.cfg
    else:
        # A run's checkpoint is drawn with its own model and test settings (the overrides still apply).
        cfg, note = config_for_weights(cfg, args.weights, args.overrides)
        if note:
            print(note)
        predictor = Predictor(cfg, args.weights, device=args.device, score_thresh=args.score_thresh,
                              batch_size=args.batch_size, fast=not args.plain, precision=args.precision,
                              compile=args.compile)
    draw_detections = _drawer(predictor, cfg, args.draw_thresh)
    draw = not getattr(args, "no_draw", False)
    if camera is not None:
        from swiftdet.cli.video import run_camera

        run_camera(predictor, camera, draw_detections)
        return 0
    if videos:
        from swiftdet.cli.video import predict_videos

        predict_videos(predictor, videos, Path(args.output), draw=draw_detections if draw else None)
        return 0

    image_ids = ids if ids is not None else list(range(len(paths)))
    file_names = file_names if file_names is not None else [str(p) for p in paths]
    names = output_names(paths)
    category_ids = predictor.category_ids
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    count = 0
    # A bar on a terminal, a line every 30 s elsewhere (a log would fill with redraws); the summary below always.
    progress = Progress(len(paths), "img", "predict")
    for start in range(0, len(paths), args.batch_size):
        batch, images = [], []
        stop = min(start + args.batch_size, len(paths))
        for i in range(start, stop):
            try:
                images.append(read_image(paths[i]))
            except InputError as e:  # one unreadable file must not cost the predictions of all the others
                skipped.append((paths[i], " ".join(str(e).split())))
                progress.write(f"skipped {paths[i]}: {skipped[-1][1]}")
                continue
            batch.append(i)
        if not batch:
            progress.update(stop - start)
            continue
        for i, image, instances in zip(batch, images, predictor(images)):
            results.extend(instances_to_coco_results(instances, image_ids[i], category_ids, file_name=file_names[i]))
            count += len(instances)
            if draw:
                save_image(draw_detections(image.permute(1, 2, 0).numpy(), instances), out_dir / names[i])
        progress.update(stop - start)
    seconds = progress.close()
    done = len(paths) - len(skipped)
    print(f"{done} images in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} images/s)", file=sys.stderr)
    atomic_write(out_dir / "predictions.json", lambda f: f.write(json.dumps(results)), mode="w")
    skipped_file = out_dir / SKIPPED_FILE
    if skipped:
        atomic_write(skipped_file, lambda f: f.write("".join(f"{p}\t{why}\n" for p, why in skipped)), mode="w")
    elif skipped_file.is_file():
        skipped_file.unlink()  # an earlier run's list would describe files this run did read
    print(f"{done} images, {count} detections: {'drawn images and ' if draw else ''}predictions.json in {out_dir}"
          + (f"; {len(skipped)} unreadable image(s) skipped (listed in {skipped_file})" if skipped else ""))
    strict = getattr(args, "strict", False)  # Namespaces built by hand before --strict existed lack it
    if skipped and (strict or done == 0):
        why = "--strict was given" if strict else "no input image could be read"
        raise InputError(f"{len(skipped)} of {len(paths)} input images could not be read ({why}), e.g. "
                         f"{skipped[0][0]}: {skipped[0][1]} They are listed in {skipped_file}.")
    return 0
