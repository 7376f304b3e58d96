"""Annotation files of labelling tools as COCO dicts: YOLO txt, labelme json, CVAT for images 1.1 xml.

Each reader returns a COCO dict (``images``, ``annotations``, ``categories``) whose file names
are relative to the image folder it was given, ready for :func:`swiftdet.data.load_coco` (and
``swiftdet convert-data``, which writes it). Pascal VOC xml is read by :mod:`swiftdet.data.voc`.

What is read
------------
- **YOLO** (:func:`yolo_to_coco`): one ``.txt`` per image under ``labels_dir``, at the image's path
  relative to ``images_dir`` (``images/train/a/b.jpg`` <-> ``labels/train/a/b.txt``, the Ultralytics
  layout); each line ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 ...`` (a polygon, three
  points or more: YOLO segmentation), coordinates normalised to [0, 1] by the image's width and
  height. Class ``i`` is the ``i``-th name of the classes file (``classes.txt``: one name per line,
  or a ``data.yaml`` with ``names:``) and becomes COCO category id ``i + 1``. A box whose centre and
  size are in [0, 1] but whose edges leave the image is clipped to it (as Ultralytics does). Images
  without a label file, or with an empty one, are kept as images without objects.
- **labelme** (:func:`labelme_to_coco`): one json per image; ``rectangle`` (two corners) and
  ``polygon`` shapes (``shape_type`` null in old files means polygon). Shapes sharing a label and a
  non-null ``group_id`` are one instance (its polygons together), as labelme's own converter does.
  ``imagePath`` is relative to the json (Windows ``\\`` separators are accepted); when that file is
  missing, the image of the same name in ``images_dir`` is used. Categories: the sorted label
  names, or the order of ``classes`` (labelme's ``labels.txt`` entries ``__ignore__`` and
  ``_background_`` are skipped).
- **CVAT for images 1.1** (:func:`cvat_to_coco`): ``<image name width height>`` elements with
  ``<box xtl ytl xbr ybr>`` (not rotated) and ``<polygon points="x,y;x,y;...">`` shapes; ``<tag>``
  (image-level labels) is skipped. Categories: the task's (or project's) label list in its order,
  or the order of ``classes``, or the sorted names found when the file has no label list.

Images are numbered 1..N (YOLO and labelme in sorted file order, CVAT in the file's order),
annotations 1..M. When any instance of a dataset has a polygon, box-only instances get their
rectangle as polygon too, so that mask training sees every instance; otherwise no ``segmentation``
is written. ``area`` is the polygons' area (shoelace), or the box's. Image sizes come from the image
headers (Pillow, no pixels decoded), with the EXIF orientation applied as
:func:`swiftdet.data.read_image` applies it.

Refused with a :class:`~swiftdet.errors.DatasetError` naming the file (and line, shape or
element): a YOLO line with a number of values other than 5 or an odd number from 7 on, a class id
that is not an integer in range, values that are not numbers or lie outside [0, 1]; a labelme
rectangle without two points or a polygon with fewer than three, a shape type other than those
above, an unknown label; xml that is not well formed (truncated) or not CVAT for images (tracks of
CVAT for video, other shape types); a missing image file, or one whose size differs from the size
the annotation file states.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from swiftdet.data.validation import BOX_TOLERANCE_FRACTION, BOX_TOLERANCE_PIXELS
from swiftdet.errors import DatasetError

__all__ = [
    "IMAGE_SUFFIXES",
    "cvat_to_coco",
    "image_size",
    "labelme_to_coco",
    "order_categories",
    "read_class_names",
    "yolo_to_coco",
]

# What swiftdet.data.read_image decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# labelme's labels.txt starts with these two pseudo-classes; they are not object classes.
_LABELME_PSEUDO_CLASSES = ("__ignore__", "_background_")

# EXIF orientations that swap width and height (transposed, rotated 90 or 270 degrees).
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`swiftdet.data.read_image` decodes it, from the header only.

    Raises:
        DatasetError: the file does not exist or is not an image Pillow can open.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise DatasetError(f"Image file '{os.fspath(path)}' does not exist.") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise DatasetError(f"Cannot read the header of image file '{os.fspath(path)}' ({e}); the file is not an image "
                           f"or is damaged.") from None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names of a classes file: one name per line (``classes.txt``, labelme's ``labels.txt``), or a
    YOLO ``data.yaml`` whose ``names`` is a list or a {index: name} mapping. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Classes file '{path}' does not exist. Give a text file with one class name per line "
                           f"(or a YOLO data.yaml with 'names').")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read classes file '{path}': {e}.") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        names = _yaml_names(path, text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"Classes file '{path}' names no class. Write one class name per line.")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DatasetError(f"Classes file '{path}' names class '{name}' twice; class names must be unique.")
        seen.add(name)
    return names


def _yaml_names(path: Path, text: str) -> list[str]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DatasetError(f"Classes file '{path}' is not valid YAML: {' '.join(str(e).split())}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' must map the class indices 0..{len(names) - 1} to names, got keys "
                               f"{sorted(names, key=str)[:10]}.")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise DatasetError(f"{path}: a YOLO data.yaml needs 'names', a list of class names (or a mapping index: name).")
    return [str(n).strip() for n in names]


def order_categories(coco: dict, classes: Sequence[str], source: str) -> dict:
    """``coco`` with its categories renumbered 1..C in the order of ``classes`` (matched by name).

    Classes named but absent from the data are kept (a category without instances), categories
    without instances that ``classes`` does not name are left out; a class of an instance that
    ``classes`` does not name is refused.
    """
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    used = {name_of[a["category_id"]] for a in coco["annotations"]}
    missing = sorted(used - set(classes))
    if missing:
        raise DatasetError(f"{source} has objects of class(es) {missing} that the classes file does not name; add "
                           f"them to it, or leave the classes file out to take the names found.")
    new_id = {name: i + 1 for i, name in enumerate(classes)}
    remap = {cid: new_id[name] for cid, name in name_of.items() if name in new_id}
    annotations = [{**a, "category_id": remap[a["category_id"]]} for a in coco["annotations"]]
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(classes)]
    return {**coco, "annotations": annotations, "categories": categories}


class _CocoBuilder:
    """Collects images and instances, and writes them as a COCO dict."""

    def __init__(self) -> None:
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, width: int, height: int) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def add_instance(self, image_id: int, category_id: int, box_xyxy: Sequence[float],
                     polygons: list[list[float]] | None = None) -> None:
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        ann: dict[str, Any] = {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": category_id,
                               "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
        if polygons:
            ann["segmentation"] = polygons
            ann["area"] = sum(_polygon_area(p) for p in polygons)
        else:
            ann["area"] = (x1 - x0) * (y1 - y0)
        self.annotations.append(ann)

    def to_coco(self, class_names: Sequence[str]) -> dict:
        if any("segmentation" in a for a in self.annotations):
            for a in self.annotations:
                if "segmentation" not in a:
                    x, y, w, h = a["bbox"]
                    a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(class_names)]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}


def _polygon_area(flat: Sequence[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def _polygon_box(polygons: list[list[float]]) -> list[float]:
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    return [min(xs), min(ys), max(xs), max(ys)]


def _relative_name(path: Path, root: Path, source: str, hint: str) -> str:
    try:
        # Lexically (abspath, not resolve): an image folder of symbolic links stays the image folder.
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise DatasetError(f"{source}: image '{path}' is not inside the image folder '{root}'. {hint}") from None


def _image_files(images_dir: Path) -> list[Path]:
    return sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        kind = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"The {what} '{path}' {kind}.")


# ---------------------------------------------------------------------------------------------- YOLO


def yolo_to_coco(labels_dir: str | os.PathLike, images_dir: str | os.PathLike,
                 classes_file: str | os.PathLike) -> dict:
    """COCO dict of a YOLO dataset: every image under ``images_dir``, its objects from the ``.txt`` of the
    same relative path under ``labels_dir`` (module docstring: what is read, what is refused)."""
    labels_dir, images_dir = Path(labels_dir), Path(images_dir)
    _require_dir(labels_dir, "YOLO labels folder")
    _require_dir(images_dir, "image folder")
    names = read_class_names(classes_file)
    images = _image_files(images_dir)
    if not images:
        raise DatasetError(f"No image ({'/'.join(IMAGE_SUFFIXES)}) under the image folder '{images_dir}'; give the "
                           f"folder of the images the labels in '{labels_dir}' belong to.")
    by_stem: dict[Path, Path] = {}
    for image in images:
        stem = image.relative_to(images_dir).with_suffix("")
        if stem in by_stem:
            raise DatasetError(f"Images '{by_stem[stem]}' and '{image}' would share the label file "
                               f"'{labels_dir / stem}.txt'; rename one of them.")
        by_stem[stem] = image
    classes_path = Path(classes_file).resolve()
    for label in sorted(labels_dir.rglob("*.txt")):
        stem = label.relative_to(labels_dir).with_suffix("")
        if stem not in by_stem and label.resolve() != classes_path and label.name != "classes.txt":
            raise DatasetError(f"YOLO label file '{label}' has no image: no '{stem}' with suffix "
                               f"{'/'.join(IMAGE_SUFFIXES)} under the image folder '{images_dir}'. Add the image, "
                               f"remove the label file, or give the right --images folder.")
    builder = _CocoBuilder()
    for stem, image in sorted(by_stem.items()):
        width, height = image_size(image)
        image_id = builder.add_image(image.relative_to(images_dir).as_posix(), width, height)
        label = labels_dir / stem.parent / (stem.name + ".txt")
        if label.is_file():
            for category_id, box, polygon in _read_yolo_file(label, len(names), width, height):
                builder.add_instance(image_id, category_id, box, [polygon] if polygon else None)
    return builder.to_coco(names)


def _read_yolo_file(path: Path, num_classes: int, width: int, height: int):
    """Yield (category id, xyxy box in pixels, flat polygon in pixels or None) of each line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read YOLO label file '{path}': {e}.") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {number}"
        n = len(fields)
        if n != 5 and (n < 7 or n % 2 == 0):
            extra = " (6 values: a predictions file with a confidence column?)" if n == 6 else ""
            raise DatasetError(f"{where}: {n} values{extra}. A YOLO label line is 'class cx cy w h' (5 values) or "
                               f"'class x1 y1 x2 y2 x3 y3 ...' (a polygon of 3 points or more), got '{line.strip()}'.")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            bad = next(v for v in fields if not _is_number(v))
            raise DatasetError(f"{where}: '{bad}' is not a number, in '{line.strip()}'.") from None
        cls = values[0]
        if not cls.is_integer() or not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class id {fields[0]} is not one of the {num_classes} classes of the classes "
                               f"file (integers 0..{num_classes - 1}).")
        coords = values[1:]
        bad = [fields[1 + i] for i, v in enumerate(coords) if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
        if bad:
            raise DatasetError(f"{where}: coordinates must be normalised to [0, 1] by the image size "
                               f"({width}x{height}), got {', '.join(bad[:4])}. Pixel coordinates? Divide x and w by "
                               f"the width, y and h by the height.")
        if n == 5:
            cx, cy, w, h = coords
            box = [max(0.0, (cx - w / 2) * width), max(0.0, (cy - h / 2) * height),
                   min(float(width), (cx + w / 2) * width), min(float(height), (cy + h / 2) * height)]
            yield int(cls) + 1, box, None
        else:
            polygon = [v * (width if i % 2 == 0 else height) for i, v in enumerate(coords)]
            yield int(cls) + 1, _polygon_box([polygon]), polygon


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -------------------------------------------------------------------------------------------- labelme


def labelme_to_coco(src: str | os.PathLike, images_dir: str | os.PathLike | None = None, *,
                    classes: Sequence[str] | None = None) -> dict:
    """COCO dict of labelme files: ``src`` is one labelme json or a folder searched for them (recursively).

    ``images_dir``: the folder the COCO file names are relative to (default: ``src``, or its folder
    for a single file); every image must be inside it. ``classes``: the category order (default: the
    sorted label names found).
    """
    src = Path(src)
    if src.is_file():
        files = [src]
        root = Path(images_dir) if images_dir is not None else src.parent
    elif src.is_dir():
        files = sorted(src.rglob("*.json"))
        root = Path(images_dir) if images_dir is not None else src
        if not files:
            raise DatasetError(f"No labelme .json file under '{src}'.")
    else:
        raise DatasetError(f"labelme source '{src}' does not exist; give a labelme .json file or a folder of them.")
    _require_dir(root, "image folder")
    parsed = []  # (file name, width, height, [(label, box, polygons or None, where)])
    seen: dict[str, Path] = {}
    for path in files:
        data = _read_json(path)
        if not isinstance(data, dict) or "shapes" not in data or "imagePath" not in data:
            if src.is_dir():
                continue  # another json in the folder (a COCO file, a config): not a labelme file
            raise DatasetError(f"{path} is not a labelme file: it needs 'shapes' and 'imagePath'.")
        image = _labelme_image(path, data, root)
        file_name = _relative_name(image, root, str(path), "Give --images a folder that holds all the images.")
        if file_name in seen:
            raise DatasetError(f"{path} and {seen[file_name]} both annotate image '{file_name}'; keep one of them.")
        seen[file_name] = path
        width, height = image_size(image)
        stated = (data.get("imageWidth"), data.get("imageHeight"))
        if None not in stated and tuple(stated) != (width, height):
            raise DatasetError(f"{path} states image size {stated[0]}x{stated[1]}, but '{image}' is {width}x{height} "
                               f"(as decoded, EXIF orientation applied); the annotation belongs to another image or the "
                               f"image was rotated after labelling.")
        parsed.append((file_name, width, height, _labelme_instances(path, data)))
    if not parsed:
        raise DatasetError(f"No labelme file under '{src}' (a labelme json has 'shapes' and 'imagePath').")
    found = sorted({inst[0] for *_, instances in parsed for inst in instances})
    names = _category_order(found, classes, str(src))
    ids = {name: i + 1 for i, name in enumerate(names)}
    builder = _CocoBuilder()
    for file_name, width, height, instances in sorted(parsed):
        image_id = builder.add_image(file_name, width, height)
        for label, box, polygons, where in instances:
            _check_inside(box, width, height, where)
            builder.add_instance(image_id, ids[label], box, polygons)
    return builder.to_coco(names)


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (a truncated "
                           f"file?).") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read {path}: {e}.") from None


def _labelme_image(path: Path, data: dict, root: Path) -> Path:
    image_path = data.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise DatasetError(f"{path}: 'imagePath' must name the image file, got {image_path!r}.")
    relative = image_path.replace("\\", "/")
    for candidate in (path.parent / relative, root / Path(relative).name):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{path}: image '{image_path}' does not exist (looked for '{path.parent / relative}' and "
                       f"'{root / Path(relative).name}'). Images embedded as imageData are not extracted: save them "
                       f"as files, or give --images the folder that holds them.")


def _labelme_instances(path: Path, data: dict) -> list[tuple[str, list[float], list[list[float]] | None, str]]:
    shapes = data["shapes"]
    if not isinstance(shapes, list):
        raise DatasetError(f"{path}: 'shapes' must be a list, got {type(shapes).__name__}.")
    instances: list[tuple[str, list[float], list[list[float]] | None, str]] = []
    groups: dict[tuple[str, Any], int] = {}  # (label, group_id) -> index in instances
    for k, shape in enumerate(shapes):
        where = f"{path}, shapes[{k}]"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or "points" not in shape:
            raise DatasetError(f"{where}: a labelme shape needs 'label' (a string), 'points' and 'shape_type'.")
        label, kind = shape["label"], shape.get("shape_type") or "polygon"
        where = f"{where} ('{label}', {kind})"
        points = _labelme_points(shape["points"], where)
        if kind == "rectangle":
            if len(points) != 2:
                raise DatasetError(f"{where}: a rectangle has 2 points (two opposite corners), got {len(points)}.")
            (xa, ya), (xb, yb) = points
            box, polygons = [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)], None
        elif kind == "polygon":
            if len(points) < 3:
                raise DatasetError(f"{where}: a polygon needs at least 3 points, got {len(points)}. Delete the shape "
                                   f"or draw it again.")
            polygons = [[v for p in points for v in p]]
            box = _polygon_box(polygons)
        else:
            raise DatasetError(f"{where}: shape type '{kind}' cannot be converted; rectangle and polygon shapes are "
                               f"read. Delete the shape, or draw it as a polygon.")
        group = shape.get("group_id")
        key = (label, group)
        if group is not None and key in groups:
            # One instance drawn in several parts (labelme's group_id).
            i = groups[key]
            old_label, old_box, old_polygons, old_where = instances[i]
            merged = (old_polygons or [_box_polygon(old_box)]) + (polygons or [_box_polygon(box)])
            instances[i] = (label, _polygon_box(merged), merged, old_where)
            continue
        if group is not None:
            groups[key] = len(instances)
        instances.append((label, box, polygons, where))
    return instances


def _labelme_points(points: Any, where: str) -> list[tuple[float, float]]:
    try:
        out = [(float(x), float(y)) for x, y in points]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: 'points' must be a list of [x, y] pairs of numbers.") from None
    if not all(math.isfinite(v) for p in out for v in p):
        raise DatasetError(f"{where}: 'points' holds a non-finite coordinate.")
    return out


def _check_inside(box: Sequence[float], width: int, height: int, where: str) -> None:
    """Refuse, naming the annotation file, what the dataset loader would refuse naming only the COCO ids."""
    x0, y0, x1, y1 = box
    mx = max(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * width)
    my = max(BOX_TOLERANCE_PIXELS, BOX_TOLERANCE_FRACTION * height)
    if x0 < -mx or y0 < -my or x1 > width + mx or y1 > height + my:
        raise DatasetError(f"{where}: the shape spans x {x0:g}..{x1:g}, y {y0:g}..{y1:g}, outside its "
                           f"{width}x{height} image; it belongs to another image, or its points were moved off it.")


def _box_polygon(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = box
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _category_order(found: Sequence[str], classes: Sequence[str] | None, source: str) -> list[str]:
    if classes is None:
        return sorted(found)
    names = [c for c in classes if c not in _LABELME_PSEUDO_CLASSES]
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"{source} has objects of class(es) {unknown} that the classes file does not name; add "
                           f"them to it, or leave --classes out to take the names found.")
    return names


# ----------------------------------------------------------------------------------------------- CVAT


def cvat_to_coco(xml_path: str | os.PathLike, images_dir: str | os.PathLike, *,
                 classes: Sequence[str] | None = None) -> dict:
    """COCO dict of a CVAT for images 1.1 ``annotations.xml``; file names are the ``<image name>`` entries,
    relative to ``images_dir`` (module docstring: what is read, what is refused)."""
    import xml.etree.ElementTree as ET

    xml_path, images_dir = Path(xml_path), Path(images_dir)
    if not xml_path.is_file():
        raise DatasetError(f"CVAT annotation file '{xml_path}' does not exist.")
    _require_dir(images_dir, "image folder")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        line, column = e.position
        raise DatasetError(f"{xml_path} is not well-formed XML (line {line}, column {column}: "
                           f"{str(e).split(':')[0]}); the file may be truncated. Export it again from CVAT.") from None
    except OSError as e:
        raise DatasetError(f"Cannot read {xml_path}: {e}.") from None
    if root.tag != "annotations":
        raise DatasetError(f"{xml_path} is not a CVAT annotation file: its root element is <{root.tag}>, not "
                           f"<annotations>.")
    if root.find("track") is not None:
        raise DatasetError(f"{xml_path} holds <track> elements: it is 'CVAT for video'. Export the task as 'CVAT for "
                           f"images 1.1'.")
    # The task's (or project's, job's) label list, in CVAT's order.
    label_list = list(dict.fromkeys(el.text.strip() for el in root.iterfind("meta/*/labels/label/name")
                                    if el.text and el.text.strip()))
    parsed = []
    for k, image in enumerate(root.iterfind("image")):
        name = image.get("name")
        where = f"{xml_path}, <image> {k} ('{name}')"
        if not name:
            raise DatasetError(f"{where}: the image has no 'name'.")
        width, height = (_xml_number(image, key, where) for key in ("width", "height"))
        path = images_dir / name
        if not path.is_file():
            raise DatasetError(f"{where}: image file '{path}' does not exist. Give --images the folder CVAT's image "
                               f"names are relative to.")
        actual = image_size(path)
        if actual != (width, height):
            raise DatasetError(f"{where}: the xml states {width:g}x{height:g}, but '{path}' is {actual[0]}x{actual[1]} "
                               f"(as decoded, EXIF orientation applied); it is another image, or it was rotated.")
        parsed.append((Path(name).as_posix(), actual, _cvat_shapes(image, where)))
    if not parsed:
        raise DatasetError(f"{xml_path} has no <image> element: export the task as 'CVAT for images 1.1'.")
    found = sorted({label for *_, shapes in parsed for label, *_ in shapes})
    if classes is not None:
        names = _category_order(found, classes, str(xml_path))
    else:
        names = label_list + [n for n in found if n not in label_list]
    ids = {name: i + 1 for i, name in enumerate(names)}
    builder = _CocoBuilder()
    for file_name, (width, height), shapes in parsed:
        image_id = builder.add_image(file_name, width, height)
        for label, box, polygons, where in shapes:
            _check_inside(box, width, height, where)
            builder.add_instance(image_id, ids[label], box, polygons)
    return builder.to_coco(names)


def _xml_number(element: Any, key: str, where: str) -> float:
    text = element.get(key)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: attribute {key}={text!r} is not a number.") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: attribute {key}={text!r} is not finite.")
    return value


def _cvat_shapes(image: Any, image_where: str) -> list[tuple[str, list[float], list[list[float]] | None, str]]:
    shapes = []
    for j, el in enumerate(image):
        where = f"{image_where}, element {j} <{el.tag}>"
        if el.tag == "tag":
            continue  # an image-level label, not an object
        label = el.get("label")
        if el.tag not in ("box", "polygon"):
            raise DatasetError(f"{where}: <{el.tag}> shapes cannot be converted; <box> and <polygon> are read. "
                               f"Delete them in CVAT, or draw them as polygons.")
        if not label:
            raise DatasetError(f"{where}: the shape has no 'label'.")
        if el.tag == "box":
            if float(el.get("rotation", "0") or 0) != 0:
                raise DatasetError(f"{where}: a rotated box (rotation={el.get('rotation')}) has no COCO box; draw it "
                                   f"as a polygon.")
            box = [_xml_number(el, key, where) for key in ("xtl", "ytl", "xbr", "ybr")]
            if box[2] < box[0] or box[3] < box[1]:
                raise DatasetError(f"{where}: xbr < xtl or ybr < ytl in box {box}.")
            shapes.append((label, box, None, where))
        else:
            try:
                points = [tuple(float(v) for v in p.split(",")) for p in (el.get("points") or "").split(";") if p]
            except ValueError:
                points = [()]
            if any(len(p) != 2 or not all(math.isfinite(v) for v in p) for p in points):
                raise DatasetError(f"{where}: points={el.get('points')!r} is not 'x,y;x,y;...' of numbers.")
            if len(points) < 3:
                raise DatasetError(f"{where}: a polygon needs at least 3 points, got {len(points)}.")
            polygons = [[v for p in points for v in p]]
            shapes.append((label, _polygon_box(polygons), polygons, where))
    return shapes
