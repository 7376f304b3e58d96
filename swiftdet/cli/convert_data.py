"""`swiftdet convert-data FORMAT SRC OUT.json [--images DIR] [--classes FILE] [--split NAME]`: annotations of
a labelling tool into a COCO json whose file names are relative to the image folder.

- ``voc SRC``: SRC a VOC year folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``): every
  ``Annotations/*.xml`` (an own VOC-format dataset often has no image sets), or with ``--split NAME``
  the images of ``ImageSets/Main/NAME.txt`` (``trainval``, ``test``); file names relative to
  ``SRC/JPEGImages``. Or ``voc SRC --images DIR``: every ``.xml`` of the plain folder SRC, images in DIR.
  Read by :func:`swiftdet.data.voc.voc_to_coco` (difficult flags kept for ``voc-eval``).
- ``yolo SRC``: SRC the labels folder (``.txt`` per image); ``--images`` the image folder (default: SRC with
  its ``labels`` part replaced by ``images``, the Ultralytics layout); ``--classes`` the class names
  (default ``SRC/classes.txt``).
- ``labelme SRC``: a labelme json or a folder of them; ``--images`` the folder the file names are relative
  to (default SRC).
- ``cvat SRC``: a CVAT for images 1.1 ``annotations.xml``; ``--images`` the image folder (default the
  ``images`` folder beside the xml, as CVAT exports it, else the xml's folder).

``--classes FILE`` (one name per line) fixes the category order (ids 1..C in the file's order) for every
format. What each reader takes and refuses: :mod:`swiftdet.data.formats`. The result is validated as
``swiftdet.data.load_coco`` validates it before it is written (atomically), so a file that was written
loads, trains and shows in ``swiftdet browse OUT.json IMAGE_ROOT``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from swiftdet.data.coco import coco_dict_to_dataset
from swiftdet.data.formats import cvat_to_coco, labelme_to_coco, order_categories, read_class_names, yolo_to_coco
from swiftdet.errors import DatasetError, InputError
from swiftdet.utils.io import atomic_write

NAME = "convert-data"
HELP = "convert voc, yolo, labelme or cvat annotations into a COCO json (file names relative to the image folder)"
FORMATS = ("voc", "yolo", "labelme", "cvat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=FORMATS, metavar="FORMAT", help="|".join(FORMATS))
    parser.add_argument("src", metavar="SRC", help="voc: a VOC year folder, or a folder of xml files with --images; "
                                                   "yolo: the labels folder; labelme: a json or a folder of them; "
                                                   "cvat: annotations.xml")
    parser.add_argument("out", metavar="OUT.json", help="the COCO json to write")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="the image folder the written file names are relative to (defaults: see the docs)")
    parser.add_argument("--classes", metavar="FILE", default=None,
                        help="class names, one per line, in category order (yolo: the class ids' names; default "
                             "SRC/classes.txt)")
    parser.add_argument("--split", metavar="NAME", default=None,
                        help="voc with a VOC year folder: convert the images of ImageSets/Main/<NAME>.txt "
                             "(e.g. trainval, test) instead of every Annotations/*.xml")


def convert(args: argparse.Namespace) -> tuple[dict, Path]:
    """(COCO dict, image folder its file names are relative to) of ``args``."""
    src = Path(args.src)
    if args.split is not None and args.format != "voc":
        raise InputError(f"--split is for voc (an image list of a VOC year folder), not {args.format}.")
    classes = read_class_names(args.classes) if args.classes else None
    if args.format == "voc":
        from swiftdet.data.voc import voc_to_coco

        if args.images is None and not (src / "Annotations").is_dir():
            raise InputError(f"'{src}' is not a VOC year folder (no Annotations/ in it). Give a folder like "
                             f"VOCdevkit/VOC2007, or a folder of xml files with --images naming their image folder.")
        if args.images is not None and args.split is not None:
            raise InputError("--split names an image list of a VOC year folder; --images is for a plain folder of "
                             "xml files. Give one of them.")
        coco, image_root = voc_to_coco([str(src)], args.split, images=args.images)
        if classes is not None:
            coco = order_categories(coco, classes, str(src))
        return coco, Path(image_root)
    if args.format == "yolo":
        images = Path(args.images) if args.images else _yolo_images_folder(src)
        classes_file = Path(args.classes) if args.classes else src / "classes.txt"
        if not args.classes and not classes_file.is_file():
            raise InputError(f"No classes file: '{classes_file}' does not exist. Give --classes FILE, one class name "
                             f"per line in class-id order (or a YOLO data.yaml).")
        return yolo_to_coco(src, images, classes_file), images
    if args.format == "labelme":
        images = Path(args.images) if args.images else (src if src.is_dir() else src.parent)
        return labelme_to_coco(src, images, classes=classes), images
    images = Path(args.images) if args.images else (src.parent / "images" if (src.parent / "images").is_dir()
                                                     else src.parent)
    return cvat_to_coco(src, images, classes=classes), images


def _yolo_images_folder(labels: Path) -> Path:
    parts = labels.parts
    if "labels" in parts:
        i = len(parts) - 1 - parts[::-1].index("labels")
        images = Path(*parts[:i], "images", *parts[i + 1:])
        if images.is_dir():
            return images
    raise InputError(f"Give --images: the image folder of the YOLO labels '{labels}' (found none by replacing "
                     f"'labels' with 'images' in its path).")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise InputError(f"OUT.json '{out}' should end in .json (it is written as a COCO json).")
    if out.is_dir():
        raise InputError(f"OUT.json '{out}' is a folder; give a file name, e.g. '{out / 'train.json'}'.")
    coco, image_root = convert(args)
    # Validate exactly as training and browse load it, before anything is written.
    dataset = coco_dict_to_dataset(coco, f"the {args.format} annotations of '{args.src}'", str(image_root),
                                   training=False, verbose=False)
    try:
        atomic_write(out, lambda f: f.write(json.dumps(coco)), mode="w")
    except OSError as e:
        raise DatasetError(f"Cannot write '{out}' ({e.strerror or e}); choose a writable path.") from None
    annotations = coco["annotations"]
    empty = len(coco["images"]) - len({a["image_id"] for a in annotations})
    names = [c["name"] for c in coco["categories"]]
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    kind = "with polygons" if any("segmentation" in a for a in annotations) else "boxes only"
    print(f"Wrote {out}: {len(dataset)} images ({empty} without objects), {len(annotations)} annotations ({kind}), "
          f"{len(names)} categories: {shown}.")
    # One plain string (not an f-string), so that the command and its flag read as one in messages' checks.
    print("File names are relative to {root}; check the result with:\n  swiftdet browse {json} {root} --out {dir}"
          .format(root=image_root, json=out, dir=f"{out.with_suffix('')}_browse"))
    return 0
