"""Pascal VOC annotations (``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/``) as a COCO dict.

Training and evaluating on VOC
------------------------------
A VOC "year folder" (``VOCdevkit/VOC2007``) holds ``Annotations/<id>.xml``, the image lists
``ImageSets/Main/<split>.txt`` (one image id a line) and ``JPEGImages/<id>.jpg``. In a config::

    cfg.data.train.format = "voc"
    cfg.data.train.roots = ("datasets/VOC2007", "datasets/VOC2012")
    cfg.data.train.split = "trainval"

:func:`voc_to_coco` turns them into the COCO dict the loader reads; ``swiftdet convert-data voc``
writes the same dict as a json.

The conversion
--------------
* **Boxes.** VOC boxes are 1-based inclusive pixel indices: ``xmin=1, xmax=W`` covers the whole
  image. As detectron2's ``pascal_voc.py``, the box in continuous coordinates is
  ``(xmin - 1, ymin - 1, xmax, ymax)``, written as COCO ``[xmin - 1, ymin - 1, xmax - xmin + 1,
  ymax - ymin + 1]``; the VOC evaluator (:mod:`swiftdet.evaluation.voc`) maps it back exactly.
  ``xmin = 0`` (or ``ymin = 0``), which tools that count from 0 write, is read as the first pixel.
* **Categories.** When every object name is one of the 20 VOC classes, the categories are those 20
  in VOC's order with ids 1..20 (also when some class never occurs, so that ``trainval`` and
  ``test`` agree); otherwise the sorted names found, ids 1..C.
* **Difficult** objects are kept, each annotation carrying ``"difficult": 0|1`` (and
  ``"truncated"`` where the xml gives it): training uses them (detectron2's choice), the VOC
  evaluator neither rewards nor penalises detections of them.
* **Several roots** (VOC2007 + VOC2012) make one dataset: images are numbered 1..N in the order of
  the roots and of their image lists, and ``file_name`` is relative to the folder the roots' image
  folders have in common (``VOC2007/JPEGImages/000005.jpg``).

Every problem a file can have raises a :class:`DatasetError` naming the file and line: an xml that
is truncated or not XML, an image list naming an id without an xml or image, an object without a
name or box, a box outside its image or with ``xmax < xmin``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from xml.parsers import expat

from swiftdet.errors import DatasetError

__all__ = ["VOC_CLASSES", "voc_to_coco"]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# Image files tried, in this order, for an xml whose <filename> does not name an existing image.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class _Node:
    """One xml element: its tag, the line it starts on, its stripped text and its child elements."""

    tag: str
    line: int
    text: str = ""
    children: list = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def find_all(self, tag: str) -> list:
        return [c for c in self.children if c.tag == tag]


def _parse_xml(path: Path) -> _Node:
    """The element tree of ``path`` with line numbers (ElementTree does not keep them)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"Cannot read the VOC annotation file {path}: {e.strerror or e}.") from None
    parser = expat.ParserCreate()
    stack: list[_Node] = []
    texts: list[list[str]] = []
    top: list[_Node] = []

    def start(tag: str, _attrs: dict) -> None:
        node = _Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else top).append(node)
        stack.append(node)
        texts.append([])

    def end(_tag: str) -> None:
        stack.pop().text = "".join(texts.pop()).strip()

    def chars(data: str) -> None:
        if texts:
            texts[-1].append(data)

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise DatasetError(f"{path} is not a valid XML file: {expat.ErrorString(e.code)} at line {e.lineno}, column "
                           f"{e.offset} (a truncated or damaged file?). Restore it from the dataset's archive or "
                           f"fix it in your labelling tool.") from None
    return top[0]


def _number(node: _Node | None, what: str, xml: Path, owner: _Node, owner_name: str, *, integer: bool = False) -> float:
    """The number in ``node`` (<xmin>, <width>, ...), a child of ``owner`` (named in messages)."""
    if node is None or not node.text:
        raise DatasetError(f"{xml} line {owner.line}: {owner_name} has no <{what}>.")
    try:
        value = float(node.text)
    except ValueError:
        raise DatasetError(f"{xml} line {node.line}: <{what}> is {node.text!r}, not a number.") from None
    if integer and not value.is_integer():
        raise DatasetError(f"{xml} line {node.line}: <{what}> is {node.text!r}, not an integer.")
    return value


def _image_size(tree: _Node, xml: Path, image: Path) -> tuple[int, int]:
    """(height, width) from <size>; from the image file itself when <size> is absent or 0 (some tools write 0)."""
    size = tree.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w = _number(size.find("width"), "width", xml, size, "<size>", integer=True)
        h = _number(size.find("height"), "height", xml, size, "<size>", integer=True)
        if w > 0 and h > 0:
            return int(h), int(w)
    from PIL import Image, UnidentifiedImageError  # only the header is read

    try:
        with Image.open(image) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{xml} gives no image size (<size><width>/<height> missing or 0) and its image {image} "
                           f"cannot be read to find it ({e}).") from None
    return h, w


def _flag(obj: _Node, tag: str, xml: Path) -> int | None:
    """0/1 of an optional <difficult>/<truncated> (None when absent)."""
    node = obj.find(tag)
    if node is None or node.text == "":
        return None
    if node.text not in ("0", "1"):
        raise DatasetError(f"{xml} line {node.line}: <{tag}> is {node.text!r}; it must be 0 or 1.")
    return int(node.text)


def _objects(tree: _Node, xml: Path, height: int, width: int) -> list[dict]:
    """The <object>s of one annotation file: name, COCO xywh box, difficult (and truncated)."""
    objects = []
    for obj in tree.find_all("object"):
        name_node = obj.find("name")
        name = name_node.text if name_node is not None else ""
        if not name:
            raise DatasetError(f"{xml} line {obj.line}: the <object> has no <name>. Give each object its class name.")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{xml} line {obj.line}: object {name!r} has no <bndbox>. Give each object a box "
                               f"(<xmin>, <ymin>, <xmax>, <ymax>) or delete it.")
        x0, y0, x1, y1 = (_number(box.find(k), k, xml, box, f"object {name!r}'s <bndbox>")
                          for k in ("xmin", "ymin", "xmax", "ymax"))
        where = f"{xml} line {box.line}: object {name!r}'s <bndbox>"
        if x1 < x0 or y1 < y0:
            raise DatasetError(f"{where} has xmax < xmin or ymax < ymin ({x0:g}, {y0:g}, {x1:g}, {y1:g}). Swap the "
                               f"corners or fix the box.")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise DatasetError(f"{where} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image "
                               f"(VOC boxes are 1-based pixels: 1 <= xmin <= xmax <= width). Fix the box or the "
                               f"image size in <size>.")
        # 1-based inclusive pixels to continuous coordinates (detectron2's pascal_voc.py); 0 is the first pixel.
        x0, y0 = max(x0 - 1.0, 0.0), max(y0 - 1.0, 0.0)
        entry = {"name": name, "bbox": [x0, y0, x1 - x0, y1 - y0], "difficult": _flag(obj, "difficult", xml) or 0}
        truncated = _flag(obj, "truncated", xml)
        if truncated is not None:
            entry["truncated"] = truncated
        objects.append(entry)
    return objects


def _read_image_set(root: Path, split: str) -> list[tuple[str, int]]:
    """(image id, line number) of ``root/ImageSets/Main/<split>.txt``."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        main = root / "ImageSets" / "Main"
        have = sorted(p.stem for p in main.glob("*.txt") if "_" not in p.stem) if main.is_dir() else []
        hint = f" The image lists there: {have}." if have else \
            f" {root} should be a VOC year folder (VOCdevkit/VOC2007) with Annotations/, ImageSets/Main/ and JPEGImages/."
        raise DatasetError(f"VOC image list {path} does not exist (split {split!r}).{hint}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read the VOC image list {path}: {e}.") from None
    ids, seen = [], {}
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            raise DatasetError(f"{path} line {number}: {line.strip()!r} holds {len(parts)} fields; a split's image "
                               f"list has one image id a line (the <class>_<split>.txt files hold per-class flags: "
                               f"name the plain split, e.g. 'trainval').")
        if parts[0] in seen:
            raise DatasetError(f"{path} line {number}: image id {parts[0]!r} is listed again (first on line "
                               f"{seen[parts[0]]}). List each image once.")
        seen[parts[0]] = number
        ids.append((parts[0], number))
    return ids


def _find_image(folder: Path, xml: Path, tree: _Node) -> Path:
    """The image of a plain folder's xml: its <filename> in ``folder``, else the xml's stem with an image suffix."""
    node = tree.find("filename")
    names = [node.text] if node is not None and node.text else []
    names += [xml.stem + s for s in _IMAGE_SUFFIXES]
    if names[0] != xml.stem and Path(names[0]).suffix == "":
        names[1:1] = [names[0] + s for s in _IMAGE_SUFFIXES]  # a <filename> written without its suffix
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{xml}: its image is not in {folder} (tried {', '.join(names[:4])}, ...). Pass the folder "
                       f"that holds the images (--images), or fix <filename>.")


def _common_folder(folders: list[Path]) -> str:
    """The folder all ``folders`` lie in, kept relative when they all are (so a written json's root stays portable)."""
    names = sorted({os.path.normpath(f) for f in folders})
    try:
        return os.path.commonpath(names)
    except ValueError:  # relative and absolute folders mixed
        return os.path.commonpath([os.path.abspath(n) for n in names])


def voc_to_coco(roots: Sequence[str], split: str | None = None, *, images: str | None = None) -> tuple[dict, str]:
    """Pascal VOC annotations as a COCO dict, and the folder its ``file_name`` entries are relative to.

    Args:
        roots: VOC year folders (each with ``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``),
            merged in this order; with ``images``, folders of plain xml files.
        split: the image list ``ImageSets/Main/<split>.txt`` of each root ("trainval", "test"). None:
            every ``Annotations/*.xml`` of each root (images in its ``JPEGImages/``), or with ``images``
            every ``*.xml`` of each root.
        images: with ``split`` None, the folder of the images of plain xml folders (an xml's
            ``<filename>`` there, else its stem with .jpg, .png, ...).

    Returns:
        (COCO dict with "images", "annotations" (bbox, area, iscrowd 0, difficult, truncated when
        given) and "categories", image_root).
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    if not roots:
        raise DatasetError("No VOC folder given: name at least one VOC year folder (e.g. datasets/VOC2007).")
    if split is not None and images is not None:
        raise DatasetError(f"A VOC split ({split!r}) reads each root's JPEGImages/; an image folder ({images}) is for "
                           f"plain folders of xml files. Give one of them.")
    paths = [Path(r) for r in roots]
    resolved = [p.resolve() for p in paths]
    twice = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
    if twice is not None:
        raise DatasetError(f"VOC folder {twice} is given twice; its images would be counted twice.")
    for p in paths:
        if not p.is_dir():
            raise DatasetError(f"VOC folder {p} does not exist or is not a folder.")
    if images is not None and not Path(images).is_dir():
        raise DatasetError(f"Image folder {images} does not exist or is not a folder.")

    # (xml, image or None: to be found from the xml) for every image, in order.
    entries: list[tuple[Path, Path | None]] = []
    for root in paths:
        if images is not None:
            xmls = sorted(root.glob("*.xml"))
            if not xmls:
                raise DatasetError(f"{root} holds no .xml files. Name the folder of the VOC xml files.")
            entries += [(x, None) for x in xmls]
            continue
        if not (root / "Annotations").is_dir():
            raise DatasetError(f"{root} has no Annotations/ folder, so it is not a VOC year folder (VOCdevkit/VOC2007). "
                               f"For a plain folder of xml files give the image folder too (--images DIR).")
        if split is None:
            xmls = sorted((root / "Annotations").glob("*.xml"))
            if not xmls:
                raise DatasetError(f"{root / 'Annotations'} holds no .xml files.")
            listed = [(x.stem, x, str(x)) for x in xmls]
        else:
            image_list = root / "ImageSets" / "Main" / f"{split}.txt"
            listed = [(i, root / "Annotations" / f"{i}.xml", f"{image_list} line {n}")
                      for i, n in _read_image_set(root, split)]
            if not listed:
                raise DatasetError(f"{image_list} lists no images.")
        for image_id, xml, where in listed:
            image = root / "JPEGImages" / f"{image_id}.jpg"
            if not xml.is_file():
                raise DatasetError(f"{where}: image {image_id!r} has no annotation file {xml}.")
            if not image.is_file():
                raise DatasetError(f"{where}: image {image_id!r} has no image file {image}.")
            entries.append((xml, image))

    records = []
    for xml, image in entries:
        tree = _parse_xml(xml)
        if tree.tag != "annotation":
            raise DatasetError(f"{xml} is not a VOC annotation file: its top element is <{tree.tag}>, not <annotation>.")
        if image is None:
            image = _find_image(Path(images), xml, tree)
        height, width = _image_size(tree, xml, image)
        records.append((image, height, width, _objects(tree, xml, height, width)))

    names = sorted({o["name"] for *_, objs in records for o in objs})
    class_names = VOC_CLASSES if set(names) <= set(VOC_CLASSES) else tuple(names)
    category_id = {n: i + 1 for i, n in enumerate(class_names)}
    image_root = _common_folder([image.parent for image, *_ in records])
    coco_images, annotations = [], []
    for image_id, (image, height, width, objs) in enumerate(records, 1):
        file_name = Path(os.path.relpath(image, image_root)).as_posix()
        coco_images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for o in objs:
            w, h = o["bbox"][2], o["bbox"][3]
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[o["name"]],
                   "bbox": o["bbox"], "area": w * h, "iscrowd": 0, "difficult": o["difficult"]}
            if "truncated" in o:
                ann["truncated"] = o["truncated"]
            annotations.append(ann)
    categories = [{"id": category_id[n], "name": n, "supercategory": "none"} for n in class_names]
    return {"images": coco_images, "annotations": annotations, "categories": categories}, image_root
