"""Pascal VOC (issue 14, part 1): the loader (``swiftdet.data.voc.voc_to_coco``), the evaluator
(``swiftdet.evaluation.voc.evaluate_voc``) against the reference ``voc_eval``, ``swiftdet voc-eval``,
the two VOC configs, and a tiny VOC folder trained and evaluated through ``swiftdet train`` / ``eval``.

The reference is written below from its published definition (py-faster-rcnn's ``voc_eval``, the
Python port of the devkit's ``VOCevaldet.m`` that detectron2's PascalVOCDetectionEvaluator calls): a
loop over detections in score order on VOC's 1-based pixel boxes with the ``+ 1`` areas, taking the
reference's own xml reading (integer boxes) and detectron2's mapping of results (xmin + 1, ymin + 1).
One deliberate difference from the published code: its ``np.argsort(-confidence)`` leaves the order
of equal scores unspecified (numpy's quicksort, SIMD on this CPU), so the reference here sorts
stably, as MATLAB's ``sort`` in the devkit does.
"""
from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.config.schema import DatasetSpec
from swiftdet.data.coco import coco_dict_to_dataset
from swiftdet.data.voc import VOC_CLASSES, voc_to_coco
from swiftdet.errors import DatasetError, EvaluationError
from swiftdet.evaluation.voc import evaluate_voc


# ----------------------------------------------------------------------------------------------
# A VOC folder made in the test
# ----------------------------------------------------------------------------------------------
def _xml(width: int, height: int, objects: list) -> str:
    """objects: (name, (xmin, ymin, xmax, ymax), difficult) in VOC's 1-based pixels."""
    body = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
        f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>\n"
        for name, box, difficult in objects)
    return (f"<annotation>\n<folder>VOC</folder><filename>x.jpg</filename>\n<size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>\n{body}</annotation>\n")


def _write_voc(root: Path, images: dict, split: str = "test", *, pixels: bool = False) -> Path:
    """A VOC year folder: images {voc id: (width, height, objects)}, all in ImageSets/Main/<split>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for voc_id, (w, h, objects) in images.items():
        (root / "Annotations" / f"{voc_id}.xml").write_text(_xml(w, h, objects))
        image = root / "JPEGImages" / f"{voc_id}.jpg"
        if pixels:
            rng = np.random.default_rng(len(voc_id))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image)
        else:
            image.write_bytes(b"")  # only its existence is checked when the xml gives the size
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


# ----------------------------------------------------------------------------------------------
# The reference voc_eval, from its published definition
# ----------------------------------------------------------------------------------------------
def _reference_parse_rec(path: Path) -> list[dict]:
    tree = ET.parse(path)
    objects = []
    for obj in tree.findall("object"):
        bbox = obj.find("bndbox")
        objects.append({"name": obj.find("name").text, "difficult": int(obj.find("difficult").text),
                        "bbox": [int(bbox.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]})
    return objects


def _reference_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _reference_voc_eval(recs: dict, detections: list, classname: str, ovthresh: float, use_07_metric: bool):
    """recs: {image: parse_rec objects}; detections: (image, score, xmin, ymin, xmax, ymax) of the class."""
    class_recs, npos = {}, 0
    for image, objects in recs.items():
        R = [o for o in objects if o["name"] == classname]
        difficult = np.array([o["difficult"] for o in R]).astype(bool)
        npos += sum(~difficult)
        class_recs[image] = {"bbox": np.array([o["bbox"] for o in R]), "difficult": difficult, "det": [False] * len(R)}
    image_ids = [d[0] for d in detections]
    confidence = np.array([d[1] for d in detections], dtype=np.float64)
    BB = np.array([d[2:] for d in detections], dtype=np.float64).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")  # MATLAB's stable sort (see the module docstring)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _reference_voc_ap(rec, prec, use_07_metric)


def _evaluate_both(root: Path, detections: list, *, metric: str = "area", iou_thresh: float = 0.5):
    """Ours on (voc_to_coco, COCO results) and the reference on (the xml files, detectron2's VOC lines).

    detections: (voc id, class name, score, [x, y, w, h]) COCO boxes as a model writes them.
    Returns (our VocEvaluation, {class: reference AP} for the classes with ground truth).
    """
    gt, _ = voc_to_coco([str(root)], "test")
    image_id = {Path(im["file_name"]).stem: im["id"] for im in gt["images"]}
    category_id = {c["name"]: c["id"] for c in gt["categories"]}
    results = [{"image_id": image_id[i], "category_id": category_id[c], "score": s, "bbox": list(b)}
               for i, c, s, b in detections]
    ours = evaluate_voc(gt, results, metric=metric, iou_thresh=iou_thresh)
    recs = {i: _reference_parse_rec(root / "Annotations" / f"{i}.xml") for i in image_id}
    reference = {}
    for name in category_id:
        if not any(o["name"] == name and not o["difficult"] for objs in recs.values() for o in objs):
            continue  # voc_eval divides by zero: no reference value
        # detectron2's mapping back to VOC pixels: xmin + 1, ymin + 1 (COCO results: xmax = x + w).
        lines = [(i, s, b[0] + 1.0, b[1] + 1.0, b[0] + b[2], b[1] + b[3]) for i, c, s, b in detections if c == name]
        reference[name] = _reference_voc_eval(recs, lines, name, iou_thresh, metric == "voc07")
    return ours, reference


def _ap(evaluation, name: str) -> float:
    return float(evaluation.ap[evaluation.class_names.index(name)])


def _check_against_reference(ours, reference: dict) -> None:
    for name, value in reference.items():
        assert _ap(ours, name) == value, name  # the same float64 operations: equal, not approximately
        assert ours.metrics[f"AP-{name}"] == value * 100
    assert ours.metrics["mAP"] == pytest.approx(np.mean([v * 100 for v in reference.values()]), abs=1e-12)
    for name in set(ours.class_names) - set(reference):
        assert np.isnan(_ap(ours, name)) and ours.metrics[f"AP-{name}"] == -1.0


def _voc_box(box) -> list:
    """VOC (xmin, ymin, xmax, ymax) -> the COCO xywh a perfect detector writes for it."""
    return [box[0] - 1.0, box[1] - 1.0, box[2] - box[0] + 1.0, box[3] - box[1] + 1.0]


# ----------------------------------------------------------------------------------------------
# The evaluator on hand-made cases
# ----------------------------------------------------------------------------------------------
A, B, C = (1, 1, 50, 50), (60, 60, 100, 100), (1, 1, 40, 40)


@pytest.mark.parametrize("metric", ["area", "voc07"])
def test_true_and_false_positives_duplicates_and_several_images(tmp_path, metric):
    root = _write_voc(tmp_path / "VOC", {"a": (120, 110, [("dog", A, 0), ("dog", B, 0)]), "b": (64, 64, [("dog", C, 0)])})
    dets = [("a", "dog", 0.9, _voc_box(A)), ("a", "dog", 0.8, _voc_box(A)),  # a duplicate: false positive
            ("b", "dog", 0.7, [45.0, 45.0, 10.0, 10.0]), ("b", "dog", 0.6, _voc_box(C))]
    ours, reference = _evaluate_both(root, dets, metric=metric)
    _check_against_reference(ours, reference)
    # tp [1, 0, 0, 1] of 3 objects: both metrics give 0.5 here (worked out by hand).
    assert _ap(ours, "dog") == pytest.approx(0.5)
    k = ours.class_names.index("dog")
    assert (ours.num_ground_truth[k], ours.num_detections[k], ours.num_true_positives[k]) == (3, 4, 2)


def test_a_detection_takes_only_its_best_object_even_when_taken(tmp_path):
    # Both detections overlap A most (IoU 1); B overlaps the second by 0.68 but VOC's greedy rule never
    # looks further than the best object: the second is a false positive (an optimal assignment would
    # give AP 1).
    a, b = (1, 1, 20, 20), (3, 3, 22, 22)
    root = _write_voc(tmp_path / "VOC", {"x": (40, 40, [("cat", a, 0), ("cat", b, 0)])})
    ours, reference = _evaluate_both(root, [("x", "cat", 0.9, _voc_box(a)), ("x", "cat", 0.8, _voc_box(a))])
    _check_against_reference(ours, reference)
    assert _ap(ours, "cat") == pytest.approx(0.5)


def test_difficult_objects_are_neither_true_nor_false_positives(tmp_path):
    root = _write_voc(tmp_path / "VOC", {"x": (120, 110, [("dog", A, 0), ("dog", B, 1)])})
    # Two detections of the difficult B (ignored, the first ahead of every true positive) and one of A.
    dets = [("x", "dog", 0.95, _voc_box(B)), ("x", "dog", 0.9, _voc_box(B)), ("x", "dog", 0.5, _voc_box(A))]
    ours, reference = _evaluate_both(root, dets)
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == 1.0
    k = ours.class_names.index("dog")
    assert (ours.num_ground_truth[k], ours.num_difficult[k], ours.num_true_positives[k]) == (1, 1, 1)
    # Only difficult objects: the AP is undefined (-1) and the class is left out of mAP.
    root = _write_voc(tmp_path / "VOC2", {"x": (120, 110, [("dog", B, 1), ("cat", A, 0)])})
    ours, reference = _evaluate_both(root, dets + [("x", "cat", 0.3, _voc_box(A))])
    assert ours.metrics["AP-dog"] == -1.0 and ours.metrics["mAP"] == 100.0 and set(reference) == {"cat"}


def test_ground_truth_without_voc_fields_and_crowd_regions(tmp_path):
    root = _write_voc(tmp_path / "VOC", {"x": (120, 110, [("dog", A, 0), ("dog", B, 0)])})
    gt, _ = voc_to_coco([str(root)], "test")
    results = [{"image_id": 1, "category_id": 12, "bbox": _voc_box(B), "score": 0.9},
               {"image_id": 1, "category_id": 12, "bbox": _voc_box(A), "score": 0.8}]
    # A COCO json from elsewhere: no difficult, area or iscrowd fields (voc_eval reads none of them).
    plain = dict(gt, annotations=[{k: v for k, v in a.items() if k in ("id", "image_id", "category_id", "bbox")}
                                  for a in gt["annotations"]])
    assert evaluate_voc(plain, results).metrics["AP-dog"] == pytest.approx(100.0)
    # A crowd region is ignored as a difficult object is.
    gt["annotations"][1]["iscrowd"] = 1
    crowd = evaluate_voc(gt, results)
    k = crowd.class_names.index("dog")
    assert crowd.metrics["AP-dog"] == 100.0 and (crowd.num_ground_truth[k], crowd.num_difficult[k]) == (1, 1)


def test_classes_without_detections_score_0_and_without_ground_truth_minus_1(tmp_path):
    root = _write_voc(tmp_path / "VOC", {"x": (120, 110, [("dog", A, 0), ("cat", B, 0)])})
    dets = [("x", "dog", 0.9, _voc_box(A)), ("x", "bird", 0.8, _voc_box(B))]  # no cat found; no bird exists
    for metric in ("area", "voc07"):
        ours, reference = _evaluate_both(root, dets, metric=metric)
        _check_against_reference(ours, reference)
        m = ours.metrics
        assert m["AP-dog"] == pytest.approx(100.0) and m["AP-cat"] == 0.0 and m["AP-bird"] == -1.0
        assert m["mAP"] == pytest.approx(50.0)  # over dog and cat only
        assert set(m) == {"mAP"} | {f"AP-{n}" for n in VOC_CLASSES}
    # No detections at all: every class with objects scores 0.
    ours, _ = _evaluate_both(root, [])
    assert ours.metrics["mAP"] == 0.0 and ours.metrics["AP-dog"] == 0.0


def test_an_overlap_of_exactly_the_threshold_is_not_a_match(tmp_path):
    # gt 10x10 pixels, detection its upper half: IoU 50 / 100 = 0.5 exactly. voc_eval matches on
    # ovmax > 0.5 (the MATLAB devkit on >=): not a match; below the threshold it is.
    root = _write_voc(tmp_path / "VOC", {"x": (20, 20, [("dog", (1, 1, 10, 10), 0)])})
    dets = [("x", "dog", 0.9, [0.0, 0.0, 10.0, 5.0])]
    ours, reference = _evaluate_both(root, dets)
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == 0.0
    ours, reference = _evaluate_both(root, dets, iou_thresh=0.49)
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == 1.0


def test_11_point_thresholds_are_numpy_arange_values(tmp_path):
    # 3 of 10 objects found, precision 1: recall 3/10 = 0.3 is below arange's third threshold
    # 0.30000000000000004, so voc07 counts only t = 0, 0.1, 0.2 (3/11); the area AP is 0.3.
    boxes = [(1 + 12 * i, 1, 10 + 12 * i, 10) for i in range(10)]
    root = _write_voc(tmp_path / "VOC", {"x": (130, 20, [("dog", b, 0) for b in boxes])})
    dets = [("x", "dog", 0.9 - 0.1 * i, _voc_box(b)) for i, b in enumerate(boxes[:3])]
    ours, reference = _evaluate_both(root, dets, metric="voc07")
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == pytest.approx(3 / 11)
    ours, reference = _evaluate_both(root, dets, metric="area")
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == pytest.approx(0.3)


def test_equal_scores_keep_the_results_order(tmp_path):
    root = _write_voc(tmp_path / "VOC", {"x": (120, 110, [("dog", A, 0)])})
    miss, hit = ("x", "dog", 0.5, _voc_box(B)), ("x", "dog", 0.5, _voc_box(A))
    ours, reference = _evaluate_both(root, [miss, hit])
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == 0.5  # the false positive first: precision 1/2 at full recall
    ours, reference = _evaluate_both(root, [hit, miss])
    _check_against_reference(ours, reference)
    assert _ap(ours, "dog") == 1.0


@pytest.mark.parametrize("metric,iou_thresh", [("area", 0.5), ("voc07", 0.5), ("area", 0.7)])
def test_many_random_boxes_equal_the_reference(tmp_path, metric, iou_thresh):
    rng = np.random.default_rng(14)
    names = ("person", "car", "dog", "chair", "bottle", "sheep")
    images, dets = {}, []
    for n in range(40):
        w, h = int(rng.integers(80, 220)), int(rng.integers(80, 220))
        objects = []
        for _ in range(int(rng.integers(0, 7))):
            x0, y0 = int(rng.integers(1, w - 10)), int(rng.integers(1, h - 10))
            box = (x0, y0, int(rng.integers(x0, w + 1)), int(rng.integers(y0, h + 1)))
            objects.append((str(rng.choice(names)), box, int(rng.random() < 0.15)))
        voc_id = f"{2007 + n % 2}_{n:06d}"
        images[voc_id] = (w, h, objects)
        for name, box, _ in objects:
            for _ in range(int(rng.integers(0, 3))):  # misses, hits and duplicates, jittered
                jitter = rng.normal(0, 0.08 * max(box[2] - box[0], 4), 4)
                x0, y0, x1, y1 = np.array(_voc_box(box)[:2] + [box[2], box[3]], dtype=float) + jitter
                dets.append((voc_id, name, round(float(rng.random()), 2), [x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)]))
        for _ in range(int(rng.integers(0, 4))):  # background detections
            x0, y0 = float(rng.uniform(0, w - 5)), float(rng.uniform(0, h - 5))
            dets.append((voc_id, str(rng.choice(names)), round(float(rng.random()), 2),
                         [x0, y0, float(rng.uniform(2, w - x0)), float(rng.uniform(2, h - y0))]))
    root = _write_voc(tmp_path / "VOC", images)
    ours, reference = _evaluate_both(root, dets, metric=metric, iou_thresh=iou_thresh)
    assert len(dets) > 150 and len(reference) == len(names)  # scores rounded to 0.01: many ties
    _check_against_reference(ours, reference)
    assert 0.05 < ours.metrics["mAP"] / 100 < 0.95  # neither trivial end


def test_evaluation_refuses_results_that_do_not_fit_the_ground_truth(tmp_path):
    gt, _ = voc_to_coco([str(_write_voc(tmp_path / "VOC", {"x": (20, 20, [("dog", (1, 1, 10, 10), 0)])}))], "test")
    with pytest.raises(EvaluationError, match="image id.*not in the ground truth"):
        evaluate_voc(gt, [{"image_id": 7, "category_id": 12, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(EvaluationError, match="category id.*not categories"):
        evaluate_voc(gt, [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(EvaluationError, match="VOC metric 'voc12'"):
        evaluate_voc(gt, [], metric="voc12")
    gt["annotations"][0]["difficult"] = 2
    with pytest.raises(DatasetError, match="'difficult' 2"):
        evaluate_voc(gt, [])


# ----------------------------------------------------------------------------------------------
# swiftdet voc-eval
# ----------------------------------------------------------------------------------------------
def test_voc_eval_cli_prints_the_table_and_writes_flat_metrics(tmp_path, capsys):
    root = _write_voc(tmp_path / "VOC", {"a": (120, 110, [("dog", A, 0), ("cat", B, 1)]), "b": (64, 64, [("dog", C, 0)])})
    gt, _ = voc_to_coco([str(root)], "test")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = [{"image_id": 1, "category_id": 12, "bbox": _voc_box(A), "score": 0.9},
               {"image_id": 2, "category_id": 12, "bbox": [30.0, 30.0, 9.0, 9.0], "score": 0.8}]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "out" / "metrics.json"
    assert main(["voc-eval", str(tmp_path / "gt.json"), str(tmp_path / "results.json"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "VOC2010+ area AP (percent) at IoU > 0.5" in printed
    assert [line.split()[:5] for line in printed.splitlines() if line.startswith(("dog", "cat"))] == \
        [["cat", "-", "0", "1", "0"], ["dog", "50.00", "2", "0", "2"]]
    metrics = json.loads(out.read_text())
    assert metrics["mAP"] == pytest.approx(50.0) and metrics["AP-dog"] == pytest.approx(50.0)
    assert metrics["AP-cat"] == -1.0 and len(metrics) == 21
    assert main(["voc-eval", str(tmp_path / "gt.json"), str(tmp_path / "results.json"), "--metric", "voc07",
                 "--out", str(out)]) == 0
    assert "VOC2007 11-point AP" in capsys.readouterr().out
    assert json.loads(out.read_text())["mAP"] == pytest.approx(100 * 6 / 11)  # recall 1/2 reached at t <= 0.5
    (tmp_path / "bad.json").write_text(json.dumps([dict(results[0], image_id=5)]))
    assert main(["voc-eval", str(tmp_path / "gt.json"), str(tmp_path / "bad.json")]) == 2
    assert "image id(s) are not in the ground truth" in " ".join(capsys.readouterr().err.split())


# ----------------------------------------------------------------------------------------------
# The loader
# ----------------------------------------------------------------------------------------------
def test_voc_to_coco_boxes_categories_flags_and_file_names(tmp_path):
    root = _write_voc(tmp_path / "VOC2007", {"000005": (64, 48, [("dog", (1, 2, 30, 40), 0), ("cat", (10, 12, 64, 48), 1)]),
                                            "000007": (32, 32, [])})
    (root / "Annotations" / "000005.xml").write_text(
        (root / "Annotations" / "000005.xml").read_text().replace("<truncated>0</truncated>", "<truncated>1</truncated>", 1))
    coco, image_root = voc_to_coco([str(root)], "test")
    assert Path(image_root) == root / "JPEGImages"
    assert coco["images"] == [{"id": 1, "file_name": "000005.jpg", "height": 48, "width": 64},
                              {"id": 2, "file_name": "000007.jpg", "height": 32, "width": 32}]
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
    dog, cat = coco["annotations"]
    # 1-based inclusive pixels (1, 2, 30, 40) -> continuous (0, 1, 30, 40), as detectron2's pascal_voc.py.
    assert dog == {"id": 1, "image_id": 1, "category_id": 12, "bbox": [0.0, 1.0, 30.0, 39.0], "area": 1170.0,
                   "iscrowd": 0, "difficult": 0, "truncated": 1}
    assert cat["category_id"] == 8 and cat["difficult"] == 1 and cat["bbox"] == [9.0, 11.0, 55.0, 37.0]
    # Difficult objects are kept for training; the dataset loads.
    ds = coco_dict_to_dataset(coco, "voc", image_root, check_images=False, training=True, verbose=False)
    assert len(ds) == 1 and ds.meta.class_names == VOC_CLASSES
    assert ds.get(0).boxes.tolist() == [[0.0, 1.0, 30.0, 40.0], [9.0, 11.0, 64.0, 48.0]]
    # Names outside VOC's 20: the sorted names found.
    (root / "Annotations" / "000007.xml").write_text(_xml(32, 32, [("zebra", (1, 1, 5, 5), 0)]))
    coco, _ = voc_to_coco([str(root)], "test")
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog"), (3, "zebra")]


def test_two_roots_merge_with_unique_ids_and_file_names_under_a_common_root(tmp_path):
    v07 = _write_voc(tmp_path / "VOCdevkit" / "VOC2007", {"000001": (20, 20, [("dog", (1, 1, 9, 9), 0)])}, "trainval")
    v12 = _write_voc(tmp_path / "VOCdevkit" / "VOC2012", {"2008_000001": (20, 20, [("cat", (2, 2, 9, 9), 0)]),
                                                          "2008_000002": (20, 20, [("dog", (3, 3, 9, 9), 0)])}, "trainval")
    coco, image_root = voc_to_coco([str(v07), str(v12)], "trainval")
    assert Path(image_root) == tmp_path / "VOCdevkit"
    assert [(im["id"], im["file_name"]) for im in coco["images"]] == [
        (1, "VOC2007/JPEGImages/000001.jpg"), (2, "VOC2012/JPEGImages/2008_000001.jpg"),
        (3, "VOC2012/JPEGImages/2008_000002.jpg")]
    assert [(a["id"], a["image_id"]) for a in coco["annotations"]] == [(1, 1), (2, 2), (3, 3)]
    assert all((Path(image_root) / im["file_name"]).is_file() for im in coco["images"])
    # Through the config's dataset spec (the data layer's format dispatch).
    from swiftdet.data import load_dataset

    ds = load_dataset(DatasetSpec(format="voc", roots=(str(v07), str(v12)), split="trainval"), training=True,
                      verbose=False)
    assert len(ds) == 3 and ds.file_path(2) == str(v12 / "JPEGImages" / "2008_000002.jpg")
    with pytest.raises(DatasetError, match="is given twice"):
        voc_to_coco([str(v07), str(v07)], "trainval")


def test_plain_xml_folders_and_every_annotation_of_a_year_folder(tmp_path):
    xmls, images = tmp_path / "labels", tmp_path / "pictures"
    xmls.mkdir()
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    Image.new("RGB", (40, 30)).save(images / "b.jpg")
    (xmls / "a.xml").write_text(_xml(40, 30, [("dog", (1, 1, 5, 5), 0)]).replace("x.jpg", "a.png"))
    # No <size> (some tools leave it out): read from the image; the image found by the xml's stem.
    (xmls / "b.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
                                "<xmax>8</xmax><ymax>9</ymax></bndbox></object></annotation>")
    coco, image_root = voc_to_coco([str(xmls)], images=str(images))
    assert Path(image_root) == images
    assert [(im["file_name"], im["height"], im["width"]) for im in coco["images"]] == [("a.png", 30, 40), ("b.jpg", 30, 40)]
    assert "truncated" not in coco["annotations"][1] and coco["annotations"][1]["difficult"] == 0
    # split None on a year folder: every Annotations/*.xml, in name order.
    root = _write_voc(tmp_path / "VOC", {"2": (20, 20, []), "1": (20, 20, [("dog", (1, 1, 9, 9), 0)])})
    coco, _ = voc_to_coco([str(root)])
    assert [im["file_name"] for im in coco["images"]] == ["1.jpg", "2.jpg"]


def _bad_object(text: str) -> str:
    return f"<annotation><size><width>50</width><height>40</height></size>\n<object>{text}</object>\n</annotation>"


@pytest.mark.parametrize("xml,message", [
    ("<annotation><size><width>50</width>", r"000001\.xml is not a valid XML file: .* at line 1"),
    ("<annotation>\n<size><width>50</width><height>40</height></size>\n<object><name>dog</name>\n<bndbox><xmin>1",
     r"000001\.xml is not a valid XML file: .* at line 4"),
    (_bad_object("<name>dog</name>"), r"000001\.xml line 2: object 'dog' has no <bndbox>"),
    (_bad_object("<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"),
     r"000001\.xml line 2: the <object> has no <name>"),
    (_bad_object("<name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>51</xmax><ymax>5</ymax></bndbox>"),
     r"000001\.xml line 2: object 'dog'\'s <bndbox> \(1, 1, 51, 5\) lies outside the 50x40 image"),
    (_bad_object("<name>dog</name><bndbox><xmin>-2</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"),
     r"lies outside the 50x40 image"),
    (_bad_object("<name>dog</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"),
     r"000001\.xml line 2: object 'dog'\'s <bndbox> has xmax < xmin"),
    (_bad_object("<name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox>"),
     r"000001\.xml line 2: object 'dog'\'s <bndbox> has no <ymax>"),
    (_bad_object("<name>dog</name><bndbox><xmin>1</xmin><ymin>one</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"),
     r"000001\.xml line 2: <ymin> is 'one', not a number"),
    (_bad_object("<name>dog</name><difficult>yes</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
                 "<ymax>5</ymax></bndbox>"), r"<difficult> is 'yes'; it must be 0 or 1"),
    ("<html><body/></html>", r"not a VOC annotation file: its top element is <html>"),
])
def test_bad_annotation_files_are_named_with_their_line(tmp_path, xml, message):
    root = _write_voc(tmp_path / "VOC", {"000001": (50, 40, [])})
    (root / "Annotations" / "000001.xml").write_text(xml)
    with pytest.raises(DatasetError, match=message):
        voc_to_coco([str(root)], "test")


def test_bad_image_lists_are_named_with_their_line(tmp_path):
    root = _write_voc(tmp_path / "VOC", {"000001": (50, 40, []), "000002": (50, 40, [])})
    image_list = root / "ImageSets" / "Main" / "test.txt"
    image_list.write_text("000001\n\n000009\n")
    with pytest.raises(DatasetError, match=r"test\.txt line 3: image '000009' has no annotation file .*000009\.xml"):
        voc_to_coco([str(root)], "test")
    image_list.write_text("000001\n000002\n")
    (root / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"test\.txt line 2: image '000002' has no image file .*000002\.jpg"):
        voc_to_coco([str(root)], "test")
    image_list.write_text("000001  1\n")
    with pytest.raises(DatasetError, match=r"test\.txt line 1: '000001  1' holds 2 fields"):
        voc_to_coco([str(root)], "test")
    image_list.write_text("000001\n000001\n")
    with pytest.raises(DatasetError, match=r"test\.txt line 2: image id '000001' is listed again \(first on line 1\)"):
        voc_to_coco([str(root)], "test")
    with pytest.raises(DatasetError, match=r"VOC image list .*val\.txt does not exist .* The image lists there: \['test'\]"):
        voc_to_coco([str(root)], "val")
    with pytest.raises(DatasetError, match="has no Annotations/ folder"):
        voc_to_coco([str(tmp_path)], "test")


# ----------------------------------------------------------------------------------------------
# Configs, and a tiny VOC run through the CLI
# ----------------------------------------------------------------------------------------------
def test_voc_configs_follow_detectron2s_pascal_voc_recipe():
    for name, lr in (("faster_rcnn_R_50_FPN_voc0712", 0.02), ("retinanet_R_50_FPN_voc0712", 0.01)):
        cfg = load_config(name)
        cfg.validate()
        assert cfg.model.num_classes == 20 and cfg.solver.base_lr == lr
        assert cfg.input.min_size_train == tuple(range(480, 801, 32)) and cfg.input.max_size_train == 1333
        assert cfg.input.min_size_test == 800
        assert (cfg.solver.ims_per_batch, cfg.solver.max_iter, cfg.solver.steps) == (16, 18000, (12000, 16000))
        assert cfg.data.train == DatasetSpec(format="voc", roots=("datasets/VOC2007", "datasets/VOC2012"),
                                             split="trainval")
        assert cfg.data.test == DatasetSpec(format="voc", roots=("datasets/VOC2007",), split="test")
        assert cfg.test.voc_metric == "voc07" and cfg.test.best_metric == "bbox/mAP"
    assert load_config("faster_rcnn_R_50_FPN_voc0712").model.arch == "rcnn"
    assert load_config("retinanet_R_50_FPN_voc0712").model.arch == "retinanet"


TINY = [
    "model.backbone.depth=18", "model.backbone.norm=BN", "model.backbone.freeze_at=0", "model.fpn.out_channels=32",
    "model.rpn.batch_size_per_image=32", "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20",
    "model.rpn.pre_nms_topk_test=50", "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16",
    "model.box_head.batch_size_per_image=16", "input.min_size_train=[64]", "input.max_size_train=64",
    "input.min_size_test=64", "input.max_size_test=64", "solver.ims_per_batch=2", "solver.reference_batch_size=2",
    "solver.max_iter=2", "solver.steps=[1]", "solver.warmup_iters=1", "solver.log_period=1",
    "solver.checkpoint_period=2", "data.num_workers=0", "test.ims_per_batch=2",
    "model.box_head.score_thresh=0.0",  # a model trained 2 iterations scores low: keep its detections
]


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_voc_commands() -> list[list[str]]:
    section = README.read_text(encoding="utf-8").split("### Pascal VOC", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("  #")[0]) for line in lines if line.strip()]


@pytest.mark.slow
def test_the_readme_voc_commands_train_evaluate_and_agree_with_voc_eval(tmp_path, monkeypatch, capsys):
    """A tiny VOC2007 + VOC2012 made in the test, the README's commands as written, the train command with
    a tiny model instead of the backbone weights: eval's bbox/mAP equals voc-eval's on predict's results."""
    monkeypatch.chdir(tmp_path)
    for year, ids in (("VOC2007", range(4)), ("VOC2012", range(4, 6))):
        voc = {f"{year[3:]}_{i:06d}": (64, 48, [("dog", (3 + i, 4, 40, 44), 0), ("cat", (30, 2, 62, 30), i % 2)])
               for i in ids}
        root = _write_voc(Path("VOCdevkit") / year, voc, "trainval", pixels=True)
        (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in list(voc)[:3]))
    commands = _readme_voc_commands()
    assert [c[1] for c in commands] == ["train", "eval", "convert-data", "predict", "voc-eval"]
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":
            args = [a for a in args if not a.startswith("model.backbone.weights=")]
            at = args.index("--output")
            args = args[:at] + TINY + args[at:]
        assert main(args) == 0, f"{' '.join(argv)}\n{capsys.readouterr().err[-2000:]}"
    out = Path("runs/voc")
    train_records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    [final] = [r for r in train_records if "bbox/mAP" in r]
    assert {"bbox/AP-dog", "bbox/AP-cat", "bbox/AP-aeroplane"} <= final.keys() and final["bbox/AP-aeroplane"] == -1.0
    assert "VOC2007 11-point AP" in (out / "log.txt").read_text()
    [evaluated] = [json.loads(line) for line in (out / "eval" / "metrics.jsonl").read_text().splitlines()
                   if "bbox/mAP" in line]
    voc_eval = json.loads((out / "voc07.json").read_text())
    assert len(json.loads((out / "test" / "predictions.json").read_text())) > 20  # something to score
    assert set(voc_eval) == {"mAP"} | {f"AP-{n}" for n in VOC_CLASSES}
    assert voc_eval["mAP"] == pytest.approx(evaluated["bbox/mAP"], abs=1e-6)
    assert voc_eval["AP-dog"] == pytest.approx(evaluated["bbox/AP-dog"], abs=1e-6)
    # The same model evaluated at training's end and by eval: the same numbers.
    assert evaluated["bbox/mAP"] == pytest.approx(final["bbox/mAP"], abs=1e-6)
