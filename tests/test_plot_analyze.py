"""`swiftdet plot` (training curves from metrics.jsonl) and `swiftdet analyze` (the COCO error
analysis, confusion matrix and worst images), on small files made here."""
from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
from PIL import Image

from swiftdet.cli import plot as plot_cmd
from swiftdet.cli.main import main
from swiftdet.errors import SwiftdetError
from swiftdet.evaluation.analysis import ERROR_STEPS, analyze_errors, confusion_matrix
from swiftdet.evaluation.coco import evaluate_coco
from swiftdet.visualization import plots



# --------------------------------------------------------------------------------------------------
# Hand-made ground truth: categories A and B share the supercategory "animal", C is a "vehicle".


def _gt(annotations, supercategories=("animal", "animal", "vehicle"), num_images=3, size=100):
    cats = [{"id": i + 1, "name": name} for i, name in enumerate("ABC")]
    for cat, sup in zip(cats, supercategories):
        if sup is not None:
            cat["supercategory"] = sup
    anns = []
    for n, (image_id, cat, box, *crowd) in enumerate(annotations, start=1):
        anns.append({"id": n, "image_id": image_id, "category_id": cat, "bbox": list(box),
                     "area": float(box[2] * box[3]), "iscrowd": int(bool(crowd and crowd[0]))})
    images = [{"id": i, "width": size, "height": size, "file_name": f"img{i}.png"} for i in range(1, num_images + 1)]
    return {"images": images, "categories": cats, "annotations": anns}


def _det(image_id, cat, box, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(box), "score": score}


BOX = (10, 10, 40, 40)  # area 1600: a "medium" object


def _shifted(box, iou):
    """The box moved right so that its IoU with ``box`` is ``iou`` (same size)."""
    x, y, w, h = box
    # overlap width o: o*h / (2*w*h - o*h) = iou  ->  o = 2 w iou / (1 + iou)
    overlap = 2 * w * iou / (1 + iou)
    return (x + w - overlap, y, w, h)


def _ap(analysis, cat=None, area="all"):
    return {k: round(v, 4) for k, v in analysis.ap(cat, area).items()}


def test_wrong_class_of_the_same_supercategory_counts_under_sim():
    # Image 1: an A; a B-detection sits on it (score 0.9). Image 2: a B, found (score 0.5).
    gt = _gt([(1, 1, BOX), (2, 2, BOX)])
    results = [_det(1, 2, BOX, 0.9), _det(2, 2, BOX, 0.5)]
    analysis = analyze_errors(gt, results)
    # Category B: the wrong-class detection ranks first, so precision is 1/2 at full recall ...
    assert _ap(analysis, 2) == {"C75": 0.5, "C50": 0.5, "Loc": 0.5, "Sim": 1.0, "Oth": 1.0, "BG": 1.0, "FN": 1.0}
    # ... A has no detection at all: only FN reaches 1.
    assert _ap(analysis, 1) == {"C75": 0.0, "C50": 0.0, "Loc": 0.0, "Sim": 0.0, "Oth": 0.0, "BG": 0.0, "FN": 1.0}
    # Overall: the mean over the categories with objects (C has none and is left out).
    assert _ap(analysis) == {"C75": 0.25, "C50": 0.25, "Loc": 0.25, "Sim": 0.5, "Oth": 0.5, "BG": 0.5, "FN": 1.0}
    assert analysis.ap(3) == {step: -1.0 for step in ERROR_STEPS}
    assert analysis.notes == []


def test_wrong_class_of_another_supercategory_counts_under_oth():
    gt = _gt([(1, 3, BOX), (2, 2, BOX)])  # the B-detection sits on a C (a vehicle)
    analysis = analyze_errors(gt, [_det(1, 2, BOX, 0.9), _det(2, 2, BOX, 0.5)])
    assert _ap(analysis, 2) == {"C75": 0.5, "C50": 0.5, "Loc": 0.5, "Sim": 0.5, "Oth": 1.0, "BG": 1.0, "FN": 1.0}


def test_without_supercategories_sim_equals_loc_and_a_note_says_so():
    gt = _gt([(1, 1, BOX), (2, 2, BOX)], supercategories=(None, None, None))
    analysis = analyze_errors(gt, [_det(1, 2, BOX, 0.9), _det(2, 2, BOX, 0.5)])
    assert _ap(analysis, 2)["Sim"] == _ap(analysis, 2)["Loc"] == 0.5
    assert _ap(analysis, 2)["Oth"] == 1.0
    assert len(analysis.notes) == 1 and "no supercategory" in analysis.notes[0] and "Oth" in analysis.notes[0]
    assert analysis.supercategories == {1: None, 2: None, 3: None}


def test_an_ignored_object_of_another_class_absorbs_one_detection_only():
    # Two B-detections on the same A: the first is ignored under Sim, the second stays a false positive
    # (the COCO site's rule: ignored objects that are not crowds match once).
    gt = _gt([(1, 1, BOX), (2, 2, BOX)])
    analysis = analyze_errors(gt, [_det(1, 2, BOX, 0.9), _det(1, 2, BOX, 0.8), _det(2, 2, BOX, 0.5)])
    ap = _ap(analysis, 2)
    assert ap["Loc"] == round(1 / 3, 4) and ap["Sim"] == 0.5 and ap["Oth"] == 0.5 and ap["BG"] == 1.0


@pytest.mark.parametrize("iou, expected", [
    (0.6, {"C75": 0.0, "C50": 1.0, "Loc": 1.0}),  # between 0.5 and 0.75
    (0.3, {"C75": 0.0, "C50": 0.0, "Loc": 1.0}),  # a poor box: a localisation error
    (0.05, {"C75": 0.0, "C50": 0.0, "Loc": 0.0}),  # below 0.1: background
])
def test_localisation_errors_are_told_apart_by_iou(iou, expected):
    gt = _gt([(1, 1, BOX)])
    analysis = analyze_errors(gt, [_det(1, 1, _shifted(BOX, iou), 0.9)])
    ap = _ap(analysis, 1)
    assert {k: ap[k] for k in expected} == expected
    assert ap["BG"] == (1.0 if iou >= 0.1 else 0.0) and ap["FN"] == 1.0


def test_background_and_missed_objects():
    # Two A objects; one found (score 0.5), a detection on empty background scores 0.9.
    gt = _gt([(1, 1, BOX), (2, 1, BOX)])
    analysis = analyze_errors(gt, [_det(3, 1, BOX, 0.9), _det(1, 1, BOX, 0.5)])
    ap = analysis.ap(1)
    # Recall stops at 1/2: 51 of the 101 recall points are reached, at precision 1/2 (C50 ... Oth) or 1 (BG).
    for step in ("C75", "C50", "Loc", "Sim", "Oth"):
        assert ap[step] == pytest.approx(0.5 * 51 / 101, abs=1e-6)
    assert ap["BG"] == pytest.approx(51 / 101) and ap["FN"] == 1.0
    curves = analysis.curves(1)
    assert np.all(np.diff(curves, axis=0) >= -1e-12)  # each step at or above the one before


def test_area_ranges_and_crowd_regions():
    small = (0, 0, 10, 10)
    gt = _gt([(1, 1, small), (2, 1, BOX), (3, 1, (50, 50, 40, 40), 1)])  # the third is a crowd region
    results = [_det(1, 1, small, 0.8), _det(3, 1, (55, 55, 20, 20), 0.95)]  # inside the crowd: ignored
    analysis = analyze_errors(gt, results)
    assert analysis.num_gt[0].tolist() == [2, 1, 1, 0]  # all, small, medium, large (the crowd does not count)
    assert analysis.ap(1, "small")["C75"] == pytest.approx(1.0)
    assert analysis.ap(1, "medium")["C75"] == 0.0
    assert analysis.ap(1, "large") == {step: -1.0 for step in ERROR_STEPS}
    assert analysis.ap(1, "all")["C75"] == pytest.approx(51 / 101)


def _random_case(seed, num_images=6, num_cats=3):
    rng = np.random.default_rng(seed)
    anns, results = [], []
    for image_id in range(1, num_images + 1):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(4, 100, 2)
            cat = int(rng.integers(1, num_cats + 1))
            anns.append((image_id, cat, (round(x, 1), round(y, 1), round(w, 1), round(h, 1)), rng.random() < 0.1))
            for _ in range(rng.integers(0, 3)):  # jittered detections, sometimes of another class
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                det_cat = cat if rng.random() < 0.7 else int(rng.integers(1, num_cats + 1))
                results.append(_det(image_id, det_cat, tuple(np.round(np.array([x, y, w, h]) + jitter, 2)),
                                     round(float(rng.random()), 3)))
        for _ in range(rng.integers(0, 3)):  # background detections
            results.append(_det(image_id, int(rng.integers(1, num_cats + 1)),
                                tuple(np.round(rng.uniform(5, 80, 4), 2)), round(float(rng.random()), 3)))
    return _gt(anns, num_images=num_images, size=256), results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c75_c50_equal_coco_ap75_ap50_and_pycocotools_at_iou_0_1(seed):
    gt, results = _random_case(seed)
    analysis = analyze_errors(gt, results)
    metrics = evaluate_coco(gt, results)
    ap = analysis.ap()
    assert ap["C75"] == pytest.approx(metrics["AP75"], abs=1e-12)
    assert ap["C50"] == pytest.approx(metrics["AP50"], abs=1e-12)
    # C75 / C50 / Loc per category and area equal pycocotools' precision at IoU (0.75, 0.5, 0.1).
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.params.iouThrs = np.array([0.75, 0.5, 0.1])
        ev.params.maxDets = [100]
        ev.evaluate()
        ev.accumulate()
    expected = ev.eval["precision"][:, :, :, :, 0]  # (3, R, K, A)
    np.testing.assert_allclose(analysis.precision[:3], expected, atol=1e-12)
    # Every step at or above the one before, where defined.
    defined = analysis.precision[0] >= 0
    assert np.all((np.diff(analysis.precision, axis=0) >= -1e-12) | ~defined[None])


def _square_rle(box, size=100):
    from pycocotools import mask as mask_utils

    mask = np.zeros((size, size), dtype=np.uint8, order="F")
    x, y, w, h = box
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def test_segm_analysis_uses_the_masks():
    gt = _gt([(1, 1, BOX), (2, 2, BOX)])
    for ann in gt["annotations"]:
        ann["segmentation"] = _square_rle(tuple(int(v) for v in ann["bbox"]))
    results = [{"image_id": 1, "category_id": 2, "segmentation": _square_rle(BOX), "score": 0.9},
               {"image_id": 2, "category_id": 2, "segmentation": _square_rle((30, 10, 40, 40)), "score": 0.5}]
    analysis = analyze_errors(gt, results, "segm")
    ap = _ap(analysis, 2)
    # The found B has mask IoU 20*40 / (2*1600 - 800) = 1/3: a localisation error; the other detection
    # sits on an A of the same supercategory.
    assert ap["C50"] == 0.0 and ap["Loc"] == 0.5 and ap["Sim"] == 1.0


def test_confusion_matrix_counts_classes_background_misses_and_crowds():
    gt = _gt([(1, 1, BOX), (1, 2, (60, 60, 30, 30)), (2, 3, BOX), (3, 1, (50, 50, 40, 40), 1)])
    results = [
        _det(1, 1, BOX, 0.9),  # A on A: correct
        _det(1, 1, (60, 60, 30, 30), 0.8),  # A on B: confusion
        _det(2, 2, (0, 0, 5, 5), 0.7),  # B on nothing: background
        _det(2, 3, BOX, 0.1),  # C on C below the score threshold: not counted, so C is missed
        _det(3, 1, (55, 55, 20, 20), 0.9),  # inside a crowd of A: counted nowhere
    ]
    result = confusion_matrix(gt, results, score_thresh=0.3)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1  # A detected as A
    expected[1, 0] = 1  # B detected as A
    expected[3, 1] = 1  # background detected as B
    expected[2, 3] = 1  # C missed
    np.testing.assert_array_equal(result.matrix, expected)
    per_image = {img.image_id: (img.num_fp, img.num_fn) for img in result.images}
    assert per_image == {1: (1, 1), 2: (1, 1), 3: (0, 0)}
    assert [img.image_id for img in result.worst("fp", 5)] == [1, 2]
    assert [img.image_id for img in result.worst("fn", 1)] == [1]
    js = result.to_json()
    assert js["rows"][-1] == "background" and js["columns"][-1] == "missed" and js["matrix"] == expected.tolist()
    # A lower threshold lets the C detection find its object.
    assert confusion_matrix(gt, results, score_thresh=0.05).matrix[2, 2] == 1


def test_confusion_matrix_prefers_an_object_of_the_detections_own_class():
    # A B-detection overlaps an A (IoU 1) and a B (IoU about 0.67): it takes the B.
    gt = _gt([(1, 1, BOX), (1, 2, _shifted(BOX, 0.67))])
    result = confusion_matrix(gt, [_det(1, 2, BOX, 0.9)])
    assert result.matrix[1, 1] == 1 and result.matrix[0, 3] == 1 and result.matrix.sum() == 2


# --------------------------------------------------------------------------------------------------
# swiftdet analyze


def _write_images(root, gt, size=100):
    for img in gt["images"]:
        pixels = np.full((size, size, 3), 90, dtype=np.uint8)
        Image.fromarray(pixels).save(root / img["file_name"])


def test_analyze_command_writes_plots_json_confusion_and_worst_images(tmp_path, capsys):
    gt = _gt([(1, 1, BOX), (1, 2, (60, 60, 30, 30)), (2, 3, BOX), (3, 2, BOX)])
    results = [_det(1, 1, BOX, 0.9), _det(1, 1, (60, 60, 30, 30), 0.8), _det(2, 2, (0, 0, 5, 5), 0.7),
               _det(3, 2, BOX, 0.95)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    images = tmp_path / "images"
    images.mkdir()
    _write_images(images, gt)
    out = tmp_path / "analysis"
    code = main(["analyze", str(tmp_path / "gt.json"), str(tmp_path / "res.json"), "--out", str(out),
                 "--image-root", str(images), "--num-images", "2"])
    assert code == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["steps"] == list(ERROR_STEPS)
    assert report["overall"]["all"] == analyze_errors(gt, results).ap()
    assert set(report["per_category"]) == {"A", "B", "C"}
    assert report["per_category"]["B"]["supercategory"] == "animal"
    assert (out / "overall-all.png").is_file() and (out / "overall-medium.png").is_file()
    assert not (out / "overall-large.png").exists()  # no large objects
    assert sorted(p.name for p in (out / "per_category").iterdir()) == ["A.png", "B.png", "C.png"]
    assert (out / "confusion_matrix.png").is_file()
    confusion = json.loads((out / "confusion_matrix.json").read_text())
    assert confusion["matrix"][1][0] == 1 and confusion["score_thresh"] == 0.3
    worst_fp = sorted(p.name for p in (out / "worst_fp").iterdir())
    worst_fn = sorted(p.name for p in (out / "worst_fn").iterdir())
    assert worst_fp == ["00_1.png", "01_2.png"] and worst_fn == ["00_1.png", "01_2.png"]
    drawn = np.asarray(Image.open(out / "worst_fp" / "00_1.png").convert("RGB"))
    assert drawn.shape == (500, 500, 3)  # 100 pixels enlarged 5 times
    colors = {tuple(c) for c in drawn.reshape(-1, 3)}
    assert plots.GT_COLOR in colors and plots.DETECTION_COLOR in colors
    printed = capsys.readouterr().out
    assert "C75" in printed and "FN 1.000" in printed


def test_analyze_command_names_a_missing_image(tmp_path, capsys):
    gt = _gt([(1, 1, BOX)])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([_det(1, 2, BOX, 0.9)]))
    code = main(["analyze", str(tmp_path / "gt.json"), str(tmp_path / "res.json"), "--out", str(tmp_path / "o"),
                 "--image-root", str(tmp_path)])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "img1.png" in err and "--image-root" in err


def test_analyze_command_refuses_keypoints_and_bad_results(tmp_path, capsys):
    gt = _gt([(1, 1, BOX)])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([_det(7, 1, BOX, 0.9)]))  # image 7 is not in the gt
    code = main(["analyze", str(tmp_path / "gt.json"), str(tmp_path / "res.json"), "--out", str(tmp_path / "o")])
    assert code == 2 and "image id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", str(tmp_path / "gt.json"), str(tmp_path / "res.json"), "--out", "o", "--iou-type",
              "keypoints"])


# --------------------------------------------------------------------------------------------------
# swiftdet plot


def _train_line(it, loss, lr, **more):
    return {"iter": it, "lr": lr, "loss": loss, "loss_cls": loss / 2, "loss_box": loss / 4, "time": 0.1,
            "data_time": 0.01, "image_ids": [[1, 2]], **more}


def _write_run(folder, records, tail=""):
    folder.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_read_metrics_last_line_wins_and_mixed_lines(tmp_path):
    run = _write_run(tmp_path / "run", [
        _train_line(10, 3.0, 0.01), _train_line(20, 2.0, 0.02),
        {"iter": 20, "bbox/AP": 0.1, "bbox/APl": -1.0, "bbox/area_from": "box"},  # an evaluation line
        _train_line(20, 1.5, 0.02),  # logged again after a resume: this one wins
        _train_line(30, 1.0, 0.02),
        {"iter": 30, "weights": "model_final.pth", "bbox/AP": 0.3},  # swiftdet eval's line
    ], tail='{"iter": 40, "loss": 0.')  # half-written by a killed run
    series, notes = plot_cmd.read_metrics(run / "metrics.jsonl")
    assert series["loss"] == {10: 3.0, 20: 1.5, 30: 1.0}
    assert series["bbox/AP"] == {20: 0.1, 30: 0.3}
    assert "bbox/APl" not in series and "bbox/area_from" not in series and "weights" not in series
    assert "time" not in series and "data_time" not in series  # bookkeeping, not curves
    assert len(notes) == 1 and "last line" in notes[0]
    curves, _ = plot_cmd.collect_curves([str(run)])
    assert list(curves) == ["loss", "loss_box", "loss_cls", "lr", "bbox/AP"]
    iters, values = curves["loss"]["run"]
    assert iters.tolist() == [10, 20, 30] and values.tolist() == [3.0, 1.5, 1.0]


def test_plot_command_overlays_runs_and_writes_png_and_svg(tmp_path, capsys):
    a = _write_run(tmp_path / "exp1" / "out", [_train_line(i, 3.0 / i, 0.01) for i in (1, 2, 3)]
                   + [{"iter": 3, "segm/AP": 0.2, "bbox/AP": 0.25}])
    b = _write_run(tmp_path / "exp2" / "out", [_train_line(i, 2.0 / i, 0.02) for i in (1, 2, 3, 4)])
    curves, notes = plot_cmd.collect_curves([str(a), str(b / "metrics.jsonl")], "loss,lr,*/AP")
    assert list(curves) == ["loss", "lr", "bbox/AP", "segm/AP"]
    assert set(curves["loss"]) == {"exp1/out", "exp2/out"}  # folder names, made distinct
    assert set(curves["bbox/AP"]) == {"exp1/out"}
    assert any("exp2/out has no 'bbox/AP'" in n for n in notes)
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--keys", "loss,lr,bbox/AP"]) == 0
    png, svg = out, out.with_suffix(".svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 300
    assert svg.read_text()[:200].lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    assert "Plotted 3 quantities of 2 run(s)" in capsys.readouterr().out


def test_plot_command_errors_name_what_is_missing(tmp_path, capsys):
    run = _write_run(tmp_path / "run", [_train_line(1, 1.0, 0.01)])
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png"), "--keys", "loss,segm/AP"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'segm/AP'" in err and "loss_cls" in err
    assert main(["plot", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.png")]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
    assert main(["plot", str(run), "--out", str(tmp_path / "c.jpg")]) == 2


def test_plots_say_which_extra_to_install_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(SwiftdetError, match=r"\.\[plot\]"):
        plots.plot_error_breakdown(np.linspace(0, 1, 101), np.ones((7, 101)), ERROR_STEPS, "t", "x.png")
