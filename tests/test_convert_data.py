"""`swiftdet convert-data` (issue 14, formats in): YOLO, labelme, CVAT and VOC annotations made here
(images drawn with PIL) are converted, loaded with load_coco and compared with what was written;
bad files are refused naming the file (and line, shape or element)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swiftdet.cli.main import main
from swiftdet.data import load_coco
from swiftdet.data.formats import cvat_to_coco, image_size, labelme_to_coco, yolo_to_coco
from swiftdet.errors import DatasetError


def _image(path: Path, width: int, height: int, exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 1000 + height)
    im = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    if exif_orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif)
    return path


def _convert(capsys, *argv: str) -> str:
    code = main(["convert-data", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _error(capsys, *argv: str) -> str:
    """The one-paragraph message of a refused conversion (exit code 2, no traceback)."""
    assert main(["convert-data", *map(str, argv)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    return err


def _by_file(dataset) -> dict[str, object]:
    """The dataset's records by file path (image_root joined with the json's file_name)."""
    return {record.file_name: record for record in map(dataset.get, range(len(dataset)))}


# ---------------------------------------------------------------------------------------------- YOLO


def _yolo_dataset(root: Path) -> tuple[Path, Path]:
    """Ultralytics layout: images/train/{a.jpg, sub/b.png, c.jpg (no label file)}, labels/train/*.txt."""
    images, labels = root / "images" / "train", root / "labels" / "train"
    _image(images / "a.jpg", 200, 100)
    _image(images / "sub" / "b.png", 64, 128)
    _image(images / "c.jpg", 50, 50)
    labels.mkdir(parents=True)
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n2 0.25 0.75 0.1 0.2\n")
    (labels / "sub").mkdir()
    # A polygon line (YOLO segmentation) and a box whose edge leaves the image (clipped).
    (labels / "sub" / "b.txt").write_text("1 0.1 0.1 0.9 0.1 0.5 0.8\n0 0.95 0.5 0.2 0.5\n")
    (labels / "classes.txt").write_text("cat\ndog\nbird\n")
    return labels, images


def test_yolo_round_trip_boxes_polygons_and_background_images(tmp_path, capsys):
    labels, images = _yolo_dataset(tmp_path)
    out = tmp_path / "coco" / "train.json"
    # --images defaults to the labels path with 'labels' replaced by 'images'; classes to labels/classes.txt.
    printed = _convert(capsys, "yolo", labels, out)
    assert "3 images (1 without objects), 4 annotations" in printed and "cat, dog, bird" in printed
    assert f"swiftdet browse {out} {images}" in printed
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "c.jpg", "sub/b.png"]
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog"), (3, "bird")]
    dataset = load_coco(out, images, training=False, verbose=False)
    assert list(dataset.meta.class_names) == ["cat", "dog", "bird"]
    records = _by_file(dataset)
    a, b, c = records[str(images / "a.jpg")], records[str(images / "sub" / "b.png")], records[str(images / "c.jpg")]
    assert (a.width, a.height, b.width, b.height) == (200, 100, 64, 128)
    np.testing.assert_allclose(a.boxes, [[80, 30, 120, 70], [40, 65, 60, 85]], atol=1e-4)
    assert a.labels.tolist() == [0, 2] and len(c.boxes) == 0
    np.testing.assert_allclose(b.boxes, [[6.4, 12.8, 57.6, 102.4], [54.4, 32, 64, 96]], atol=1e-4)
    assert b.labels.tolist() == [1, 0]
    np.testing.assert_allclose(b.segmentations[0][0], [6.4, 12.8, 57.6, 12.8, 32, 102.4], atol=1e-4)
    # A box-only instance of a dataset with polygons gets its rectangle as polygon (mask training sees it).
    np.testing.assert_allclose(b.segmentations[1][0], [54.4, 32, 64, 32, 64, 96, 54.4, 96], atol=1e-4)
    # What was written shows in browse.
    assert main(["browse", str(out), str(images), "--out", str(tmp_path / "browse"), "--limit", "0"]) == 0
    assert len(list((tmp_path / "browse").glob("*.png"))) == 3


def test_yolo_boxes_only_has_no_segmentation_and_reads_data_yaml(tmp_path):
    images, labels = tmp_path / "img", tmp_path / "lab"
    _image(images / "x.png", 40, 30)
    labels.mkdir()
    (labels / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: person\n  1: car\n")
    coco = yolo_to_coco(labels, images, tmp_path / "data.yaml")
    assert [c["name"] for c in coco["categories"]] == ["person", "car"]
    [ann] = coco["annotations"]
    assert ann["category_id"] == 2 and ann["bbox"] == [10.0, 7.5, 20.0, 15.0] and "segmentation" not in ann
    # labelImg's YOLO mode: the txt files and classes.txt beside the images.
    (images / "x.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (images / "classes.txt").write_text("person\ncar\n")
    coco = yolo_to_coco(images, images, images / "classes.txt")
    assert [a["bbox"] for a in coco["annotations"]] == [[15.0, 7.5, 10.0, 15.0]]
    with pytest.raises(DatasetError, match="No image .* under the image folder"):
        yolo_to_coco(labels, labels, tmp_path / "data.yaml")


@pytest.mark.parametrize("line, expected", [
    ("0 0.5 0.5 0.2", "4 values"),
    ("0 0.5 0.5 0.2 0.2 0.9", "6 values (6 values: a predictions file with a confidence column?)"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "8 values"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 is not one of the 3 classes"),
    ("-1 0.5 0.5 0.2 0.2", "class id -1 is not one of the 3 classes"),
    ("1.5 0.5 0.5 0.2 0.2", "class id 1.5"),
    ("0 0.5 abc 0.2 0.2", "'abc' is not a number"),
    ("0 0.5 0.5 1.2 0.2", "normalised to [0, 1] by the image size (200x100), got 1.2"),
    ("0 120 40 30 20", "got 120, 40, 30, 20"),
    ("1 0.1 0.1 0.9 -0.1 0.5 0.8", "got -0.1"),
])
def test_yolo_bad_lines_name_the_file_and_line(tmp_path, capsys, line, expected):
    labels, images = _yolo_dataset(tmp_path)
    (labels / "a.txt").write_text(f"0 0.5 0.5 0.2 0.4\n{line}\n")
    out = tmp_path / "out.json"
    err = _error(capsys, "yolo", labels, out, "--images", images, "--classes", labels / "classes.txt")
    assert f"{labels / 'a.txt'}, line 2" in err and expected in err, err
    assert not out.exists()  # nothing written


def test_yolo_label_without_image_and_missing_classes(tmp_path, capsys):
    labels, images = _yolo_dataset(tmp_path)
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    err = _error(capsys, "yolo", labels, tmp_path / "o.json")
    assert f"YOLO label file '{labels / 'orphan.txt'}' has no image" in err
    (labels / "orphan.txt").unlink()
    (labels / "classes.txt").unlink()
    assert f"No classes file: '{labels / 'classes.txt'}' does not exist" in _error(capsys, "yolo", labels, tmp_path / "o.json")
    (tmp_path / "few.txt").write_text("cat\n")
    err = _error(capsys, "yolo", labels, tmp_path / "o.json", "--classes", tmp_path / "few.txt")
    assert "class id 2 is not one of the 1 classes" in err  # a.txt's second line names class 2
    assert "Give --images" in _error(capsys, "yolo", tmp_path / "elsewhere", tmp_path / "o.json")


def test_image_sizes_follow_the_exif_orientation_as_the_decoder_does(tmp_path, capsys):
    """A phone photo stored 60x40 with orientation 6 (rotate 90) decodes as 40x60: the converted size
    and the boxes must be those of the decoded image, or browse and training refuse it."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    _image(images / "phone.jpg", 60, 40, exif_orientation=6)
    assert image_size(images / "phone.jpg") == (40, 60)
    labels.mkdir()
    (labels / "phone.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels / "classes.txt").write_text("thing\n")
    out = tmp_path / "phone.json"
    _convert(capsys, "yolo", labels, out, "--images", images)
    [im] = json.loads(out.read_text())["images"]
    assert (im["width"], im["height"]) == (40, 60)
    assert main(["browse", str(out), str(images), "--out", str(tmp_path / "b")]) == 0, capsys.readouterr().err


# -------------------------------------------------------------------------------------------- labelme


def _labelme(path: Path, image_path: str, size: tuple[int, int], shapes: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": None, "imageWidth": size[0], "imageHeight": size[1]}))
    return path


def _shape(label: str, points: list, kind: str | None = "polygon", group_id=None) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind, "flags": {}}


def test_labelme_round_trip_rectangles_polygons_groups_and_class_order(tmp_path, capsys):
    images, ann = tmp_path / "data" / "images", tmp_path / "data" / "json"
    _image(images / "one.jpg", 120, 80)
    _image(images / "two.png", 60, 60)
    tri = [[10, 10], [50, 12], [30, 60]]
    _labelme(ann / "one.json", "..\\images\\one.jpg", (120, 80), [
        _shape("dog", tri),
        _shape("cat", [[100, 70], [80, 20]], "rectangle"),  # corners in any order
        # Two parts of one instance (labelme's group_id).
        _shape("cat", [[0, 0], [10, 0], [10, 10]], group_id=1),
        _shape("cat", [[20, 20], [30, 20], [30, 30], [20, 30]], group_id=1),
    ])
    _labelme(ann / "two.json", "../images/two.png", (60, 60), [_shape("bird", [[5, 5], [20, 5], [20, 25]], None)])
    (ann / "not_labelme.json").write_text(json.dumps({"some": "config"}))  # skipped in a folder
    classes = tmp_path / "labels.txt"
    classes.write_text("__ignore__\n_background_\nbird\ncat\ndog\nhorse\n")  # labelme's labels.txt
    out = tmp_path / "lm.json"
    printed = _convert(capsys, "labelme", ann, out, "--images", tmp_path / "data", "--classes", classes)
    assert "2 images (0 without objects), 4 annotations (with polygons), 4 categories: bird, cat, dog, horse" in printed
    coco = json.loads(out.read_text())
    assert [im["file_name"] for im in coco["images"]] == ["images/one.jpg", "images/two.png"]
    dataset = load_coco(out, tmp_path / "data", training=False, verbose=False)
    assert list(dataset.meta.class_names) == ["bird", "cat", "dog", "horse"]
    one = _by_file(dataset)[str(tmp_path / "data" / "images" / "one.jpg")]
    assert one.labels.tolist() == [2, 1, 1]
    np.testing.assert_allclose(one.boxes, [[10, 10, 50, 60], [80, 20, 100, 70], [0, 0, 30, 30]])
    np.testing.assert_allclose(one.segmentations[0][0], [10, 10, 50, 12, 30, 60])
    assert len(one.segmentations[2]) == 2  # the grouped instance keeps both polygons
    np.testing.assert_allclose(one.segmentations[2][1], [20, 20, 30, 20, 30, 30, 20, 30])
    assert coco["annotations"][0]["area"] == pytest.approx(abs(40 * 50 - 2 * 20) / 2)  # shoelace
    assert main(["browse", str(out), str(tmp_path / "data"), "--out", str(tmp_path / "b")]) == 0
    # Without --classes: the sorted names found, and the image folder defaults to SRC (refused: outside it).
    assert [c["name"] for c in labelme_to_coco(ann, images_dir=tmp_path / "data")["categories"]] == ["bird", "cat", "dog"]
    err = _error(capsys, "labelme", ann, tmp_path / "x.json")
    assert "is not inside the image folder" in err and "Give --images" in err


@pytest.mark.parametrize("shape, expected", [
    (_shape("dog", [[10, 10], [50, 12]]), "shapes[1] ('dog', polygon): a polygon needs at least 3 points, got 2"),
    (_shape("dog", [[10, 10]], "rectangle"), "a rectangle has 2 points"),
    (_shape("dog", [[10, 10], [20, 20]], "circle"), "shape type 'circle' cannot be converted"),
    (_shape("dog", [[10, 10], [20, 20]], "linestrip"), "shape type 'linestrip' cannot be converted"),
    (_shape("dog", [["a", 1], [2, 3], [4, 5]]), "'points' must be a list of [x, y] pairs"),
    (_shape("dog", [[10, 10], [500, 12], [30, 60]]), "outside its 120x80 image"),
])
def test_labelme_bad_shapes_name_the_file_and_shape(tmp_path, capsys, shape, expected):
    _image(tmp_path / "one.jpg", 120, 80)
    path = _labelme(tmp_path / "one.json", "one.jpg", (120, 80), [_shape("cat", [[1, 1], [9, 1], [5, 9]]), shape])
    err = _error(capsys, "labelme", tmp_path, tmp_path / "out" / "o.json")
    assert f"{path}, shapes[1]" in err and expected in err, err


def test_labelme_bad_files(tmp_path, capsys):
    _image(tmp_path / "one.jpg", 120, 80)
    path = _labelme(tmp_path / "one.json", "missing.jpg", (120, 80), [])
    assert f"{path}: image 'missing.jpg' does not exist" in _error(capsys, "labelme", path, tmp_path / "o.json")
    _labelme(path, "one.jpg", (80, 120), [])
    assert "states image size 80x120, but" in _error(capsys, "labelme", path, tmp_path / "o.json")
    path.write_text(path.read_text()[:40])
    assert f"{path} is not valid JSON" in _error(capsys, "labelme", path, tmp_path / "o.json")
    _labelme(path, "one.jpg", (120, 80), [_shape("zebra", [[1, 1], [9, 1], [5, 9]])])
    (tmp_path / "c.txt").write_text("cat\n")
    err = _error(capsys, "labelme", path, tmp_path / "o.json", "--classes", tmp_path / "c.txt")
    assert "class(es) ['zebra'] that the classes file does not name" in err


# ----------------------------------------------------------------------------------------------- CVAT


def _cvat(images: dict[str, tuple[int, int, str]], labels=("car", "person")) -> str:
    meta = "".join(f"<label><name>{n}</name><color>#ff0000</color><attributes /></label>" for n in labels)
    body = "".join(f'  <image id="{i}" name="{name}" width="{w}" height="{h}">{shapes}</image>\n'
                   for i, (name, (w, h, shapes)) in enumerate(images.items()))
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
            f'  <meta><task><id>1</id><name>t</name><labels>{meta}</labels></task></meta>\n{body}</annotations>\n')


def test_cvat_round_trip_boxes_polygons_and_label_order(tmp_path, capsys):
    _image(tmp_path / "images" / "f1.jpg", 100, 80)
    _image(tmp_path / "images" / "sub" / "f2.png", 64, 48)
    xml = tmp_path / "annotations.xml"
    xml.write_text(_cvat({
        "f1.jpg": (100, 80, '<box label="person" occluded="0" source="manual" xtl="10.5" ytl="20" xbr="40" ybr="70" '
                            'z_order="0"><attribute name="pose">standing</attribute></box>'
                            '<tag label="car" source="manual"></tag>'
                            '<polygon label="car" occluded="0" source="manual" points="50,10;90,12.5;70,60" z_order="0"/>'),
        "sub/f2.png": (64, 48, ""),
    }))
    out = tmp_path / "cvat.json"
    # --images defaults to the images/ folder beside the xml, as CVAT exports with images.
    printed = _convert(capsys, "cvat", xml, out)
    assert "2 images (1 without objects), 2 annotations (with polygons), 2 categories: car, person" in printed
    dataset = load_coco(out, tmp_path / "images", training=False, verbose=False)
    assert list(dataset.meta.class_names) == ["car", "person"]  # the task's label order
    f1 = _by_file(dataset)[str(tmp_path / "images" / "f1.jpg")]
    assert f1.labels.tolist() == [1, 0]
    np.testing.assert_allclose(f1.boxes, [[10.5, 20, 40, 70], [50, 10, 90, 60]])
    np.testing.assert_allclose(f1.segmentations[1][0], [50, 10, 90, 12.5, 70, 60])
    assert json.loads(out.read_text())["images"][1]["file_name"] == "sub/f2.png"
    assert main(["browse", str(out), str(tmp_path / "images"), "--out", str(tmp_path / "b")]) == 0
    # --classes reorders; without a label list the sorted names found.
    (tmp_path / "c.txt").write_text("person\ncar\n")
    assert [c["name"] for c in cvat_to_coco(xml, tmp_path / "images", classes=["person", "car"])["categories"]] == \
        ["person", "car"]
    xml.write_text(_cvat({"f1.jpg": (100, 80, '<box label="zeta" xtl="1" ytl="1" xbr="5" ybr="5"/>'
                                              '<box label="alpha" xtl="1" ytl="1" xbr="5" ybr="5"/>')}, labels=()))
    assert [c["name"] for c in cvat_to_coco(xml, tmp_path / "images")["categories"]] == ["alpha", "zeta"]


def test_cvat_bad_files_name_the_file_and_element(tmp_path, capsys):
    _image(tmp_path / "images" / "f1.jpg", 100, 80)
    xml = tmp_path / "annotations.xml"
    good = _cvat({"f1.jpg": (100, 80, '<box label="car" xtl="1" ytl="1" xbr="5" ybr="5"/>')})
    xml.write_text(good[: len(good) // 2 + 40])
    err = _error(capsys, "cvat", xml, tmp_path / "o.json")
    assert f"{xml} is not well-formed XML (line" in err and "truncated" in err
    cases = [
        ('<polyline label="car" points="1,1;5,5"/>', "element 0 <polyline>: <polyline> shapes cannot be converted"),
        ('<points label="car" points="1,1"/>', "<points> shapes cannot be converted"),
        ('<polygon label="car" points="1,1;5,5"/>', "a polygon needs at least 3 points, got 2"),
        ('<polygon label="car" points="1,1;5;7,7"/>', "is not 'x,y;x,y;...' of numbers"),
        ('<box label="car" xtl="1" ytl="a" xbr="5" ybr="5"/>', "attribute ytl='a' is not a number"),
        ('<box label="car" xtl="1" ytl="1" xbr="5" ybr="5" rotation="30"/>', "a rotated box (rotation=30)"),
        ('<box label="car" xtl="1" ytl="1" xbr="500" ybr="5"/>', "outside its 100x80 image"),
    ]
    for shape, expected in cases:
        xml.write_text(_cvat({"f1.jpg": (100, 80, shape)}))
        err = _error(capsys, "cvat", xml, tmp_path / "o.json")
        assert f"{xml}, <image> 0 ('f1.jpg')" in err and expected in err, (shape, err)
    xml.write_text(_cvat({"f1.jpg": (80, 100, "")}))
    assert "the xml states 80x100, but" in _error(capsys, "cvat", xml, tmp_path / "o.json")
    xml.write_text(_cvat({"gone.jpg": (100, 80, "")}))
    assert f"image file '{tmp_path / 'images' / 'gone.jpg'}' does not exist" in _error(capsys, "cvat", xml, tmp_path / "o.json")
    xml.write_text('<annotations><version>1.1</version><track id="0" label="car"></track></annotations>')
    assert "it is 'CVAT for video'" in _error(capsys, "cvat", xml, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()


# ------------------------------------------------------------------------------------------------ VOC


def _voc_xml(path: Path, filename: str, size: tuple[int, int], objects: list[tuple[str, tuple, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_root_and_plain_xml_folder(tmp_path, capsys):
    root = tmp_path / "VOC2007"
    _image(root / "JPEGImages" / "000001.jpg", 100, 80)
    _image(root / "JPEGImages" / "000002.jpg", 60, 50)
    _voc_xml(root / "Annotations" / "000001.xml", "000001.jpg", (100, 80), [("dog", (11, 21, 50, 60), 0),
                                                                           ("cat", (1, 1, 100, 80), 1)])
    _voc_xml(root / "Annotations" / "000002.xml", "000002.jpg", (60, 50), [("cat", (5, 5, 20, 20), 0)])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("000002\n")
    out = tmp_path / "voc.json"
    printed = _convert(capsys, "voc", root, out)  # every Annotations/*.xml
    assert "2 images (0 without objects), 3 annotations (boxes only)" in printed
    coco = json.loads(out.read_text())
    image_root = printed.split("File names are relative to ", 1)[1].split(";")[0]
    dataset = load_coco(out, image_root, training=False, verbose=False)
    assert len(dataset) == 2 and "difficult" in coco["annotations"][0]
    record = _by_file(dataset)[str(Path(image_root) / coco["images"][0]["file_name"])]
    np.testing.assert_allclose(record.boxes[0], [10, 20, 50, 60])  # detectron2's x0 - 1, y0 - 1
    _convert(capsys, "voc", root, out, "--split", "val")
    assert [im["file_name"] for im in json.loads(out.read_text())["images"]] == ["000002.jpg"]
    # A plain folder of xml files with --images, and --classes fixing the order.
    (tmp_path / "c.txt").write_text("dog\ncat\n")
    _convert(capsys, "voc", root / "Annotations", out, "--images", root / "JPEGImages", "--classes", tmp_path / "c.txt")
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat"]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2, 2]
    load_coco(out, root / "JPEGImages", training=False, verbose=False)
    assert "is not a VOC year folder" in _error(capsys, "voc", tmp_path, out)
    assert "--split is for voc" in _error(capsys, "yolo", tmp_path, out, "--split", "val")


# ------------------------------------------------------------------------------- the README's recipe


README = Path(__file__).resolve().parents[1] / "README.md"
# A tiny Faster R-CNN at 64 pixels, two iterations: the train command's only extra overrides.
TINY_FASTER = [
    "model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.batch_size_per_image=16",
    "input.min_size_train=[64]", "input.max_size_train=64", "input.min_size_test=64", "input.max_size_test=64",
]
QUICK = ["solver.max_iter=2", "solver.ims_per_batch=2", "solver.reference_batch_size=2", "solver.warmup_iters=1",
         "solver.checkpoint_period=2", "test.eval_period=2", "test.ims_per_batch=2", "data.num_workers=0"]


def _small_dataset_commands() -> list[list[str]]:
    section = README.read_text(encoding="utf-8").split("### Train on your own small dataset", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _made_up_yolo_dataset(root: Path, tmp: Path) -> None:
    """my_yolo/{images,labels}/{train,val} and classes.txt, from the synthetic shapes dataset's boxes."""
    from swiftdet.demo.synth import generate_synthetic_coco

    synth = tmp / "synth"
    generate_synthetic_coco(synth, num_train=4, num_val=2, image_size=(64, 64), seed=3)
    for split in ("train", "val"):
        coco = json.loads((synth / "annotations" / f"instances_{split}.json").read_text())
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        index = {c["id"]: names.index(c["name"]) for c in coco["categories"]}
        for im in coco["images"]:
            stem = Path(im["file_name"]).stem
            image = root / "images" / split / Path(im["file_name"]).name
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes((synth / im["file_name"]).read_bytes())
            W, H = im["width"], im["height"]
            lines = [f"{index[a['category_id']]} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}"
                     for a in coco["annotations"] if a["image_id"] == im["id"] for x, y, w, h in [a["bbox"]]]
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")


@pytest.mark.slow
def test_the_readme_small_dataset_path_runs_as_written(tmp_path, monkeypatch, capsys):
    import torch

    from swiftdet.config import load_config
    from swiftdet.model import build_model
    from swiftdet.weights import make_checkpoint

    monkeypatch.chdir(tmp_path)
    _made_up_yolo_dataset(tmp_path / "my_yolo", tmp_path)
    # "COCO weights": a tiny model of the recipe with 80 classes (the run has fewer: the class layers start fresh).
    coco_cfg = load_config("finetune_boxes_folder", [*TINY_FASTER, "model.num_classes=80"])
    torch.manual_seed(0)
    torch.save(make_checkpoint(build_model(coco_cfg.model), coco_cfg), tmp_path / "faster_rcnn_coco.pth")
    commands = _small_dataset_commands()
    assert [c[:2] for c in commands] == [["swiftdet", "convert-data"]] * 2 + [
        ["swiftdet", v] for v in ("browse", "train", "eval", "predict")]
    outputs: dict[str, str] = {}
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":
            at = args.index("--output")
            args = args[:at] + TINY_FASTER + QUICK + args[at:]
        assert main(args) == 0, f"{' '.join(argv)}\n{capsys.readouterr().err[-2000:]}"
        outputs[args[0]] = outputs.get(args[0], "") + capsys.readouterr().out
    run = tmp_path / "runs" / "small"
    assert "Wrote my_yolo/val.json: 2 images" in outputs["convert-data"]
    assert len(list((run / "check").glob("*.png"))) == 4
    assert (run / "model_final.pth").is_file()
    # eval's COCO box AP table.
    table = r"^bbox \(\d+ images with detections\)\nmetric +value\n-+\nAP +[-0-9.]+$"
    assert re.search(table, outputs["eval"], re.M), outputs["eval"]
    predictions = json.loads((run / "predictions" / "predictions.json").read_text())
    assert isinstance(predictions, list)
    assert len(list((run / "predictions").glob("*.png")) + list((run / "predictions").glob("*.jpg"))) == 2
    # The run trained the dataset's classes, from the "COCO weights" (all but the class-dependent layers).
    cfg = load_config(str(run / "config.yaml"))
    num_classes = len((tmp_path / "my_yolo" / "classes.txt").read_text().split())
    assert cfg.model.num_classes == num_classes < 80 and not cfg.model.mask_on


def test_damaged_annotation_files_end_in_a_named_error_not_a_traceback(tmp_path, capsys):
    """Seeded: each format's good sample, cut short or with bytes replaced at random, either converts or
    is refused with a DatasetError/InputError (exit code 2) naming the file; never another exception."""
    import random

    rng = random.Random(14)
    labels, images = _yolo_dataset(tmp_path / "yolo")
    _image(tmp_path / "lm" / "one.jpg", 120, 80)
    labelme = _labelme(tmp_path / "lm" / "one.json", "one.jpg", (120, 80), [
        _shape("dog", [[10, 10], [50, 12], [30, 60]]), _shape("cat", [[100, 70], [80, 20]], "rectangle", group_id=2)])
    _image(tmp_path / "cvat" / "images" / "f1.jpg", 100, 80)
    cvat = tmp_path / "cvat" / "annotations.xml"
    cvat.write_text(_cvat({"f1.jpg": (100, 80, '<box label="car" xtl="1" ytl="2" xbr="50" ybr="60"/>'
                                               '<polygon label="person" points="5,5;40,8;20,30"/>')}))
    targets = [(labels / "a.txt", ["yolo", labels]), (labelme, ["labelme", labelme]), (cvat, ["cvat", cvat])]
    alphabet = ' 0123456789.,;:-e"[]{}<>/=\n\tabcxyz'
    refused = 0
    for case in range(60):
        path, argv = targets[case % 3]
        good = path.read_text()
        text = good[: rng.randrange(len(good))] if rng.random() < 0.3 else "".join(
            rng.choice(alphabet) if rng.random() < 0.03 else ch for ch in good)
        path.write_text(text)
        try:
            code = main(["convert-data", *map(str, argv), str(tmp_path / "out.json")])
        finally:
            path.write_text(good)
        err = " ".join(capsys.readouterr().err.split())
        assert code in (0, 2), (case, text, err)
        if code == 2:
            refused += 1
            # The damaged file, or (what the COCO check finds) the conversion of it.
            assert str(path) in err or f"annotations of '{argv[1]}'" in err, (case, text, err)
    assert refused >= 20  # the damage is mostly refused, not silently converted
