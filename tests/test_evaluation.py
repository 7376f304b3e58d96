"""COCO evaluation: every number must equal pycocotools' COCOeval run on the same inputs."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swiftdet.cli import coco_eval as coco_eval_cli
from swiftdet.errors import DatasetError, EvaluationError
from swiftdet.evaluation import evaluate_coco, evaluate_proposals, format_metrics, run_coco_evaluation

NUM_KPTS = 17

# pycocotools' mask.decode (used by COCO.annToMask below) trips a numpy 2 deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ----------------------------------------------------------------------------------------------------
# Synthetic data


def _rectangle_rle(h: int, w: int, box, compressed: bool) -> dict:
    x, y, bw, bh = (int(round(v)) for v in box)
    mask = np.zeros((h, w), dtype=np.uint8, order="F")
    mask[max(y, 0):max(y + bh, 0), max(x, 0):max(x + bw, 0)] = 1
    rle = mask_utils.encode(mask)
    if compressed:
        return rle
    # COCO's crowd regions are uncompressed RLE: run lengths as a list, column-major.
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size])
    counts = runs.tolist() if flat[0] == 0 else [0] + runs.tolist()
    return {"size": [h, w], "counts": counts}


def make_gt(seed: int, keypoints: bool = False) -> dict:
    """A small COCO dict: several categories with id gaps, polygons, crowd RLE regions, empty images.

    Box sizes span the small / medium / large ranges; a few areas sit exactly on a range boundary.
    """
    rng = np.random.default_rng(seed)
    cats = [{"id": 1, "name": "person"}] if keypoints else [{"id": i, "name": f"c{i}"} for i in (1, 3, 7)]
    images, anns = [], []
    ann_id = 1
    for n in range(10):
        h, w = int(rng.integers(160, 260)), int(rng.integers(160, 300))
        image_id = 1000 - 7 * n  # not sorted in the json
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        if n in (3, 7):
            continue  # images without annotations
        for _ in range(int(rng.integers(1, 9))):
            side = float(rng.choice([6, 20, 40, 80, 110]))
            bw, bh = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            crowd = rng.random() < 0.1
            ann = {"id": ann_id, "image_id": image_id, "category_id": int(rng.choice([c["id"] for c in cats])),
                   "iscrowd": int(crowd), "bbox": [x, y, bw, bh]}
            if crowd:
                ann["segmentation"] = _rectangle_rle(h, w, ann["bbox"], compressed=False)
            else:
                # A jittered octagon inside the box.
                angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
                r = rng.uniform(0.7, 1.0, 8)
                px = x + bw / 2 + np.cos(angles) * r * bw / 2
                py = y + bh / 2 + np.sin(angles) * r * bh / 2
                ann["segmentation"] = [np.stack([px, py], 1).reshape(-1).tolist()]
            ann["area"] = float(rng.choice([1024.0, 9216.0])) if rng.random() < 0.1 else bw * bh * 0.8
            if keypoints:
                visible = rng.random(NUM_KPTS) < rng.choice([0.0, 0.5, 1.0])
                kx, ky = x + rng.random(NUM_KPTS) * bw, y + rng.random(NUM_KPTS) * bh
                v = np.where(visible, rng.choice([1, 2], NUM_KPTS), 0)
                kpts = np.stack([np.where(visible, np.round(kx), 0), np.where(visible, np.round(ky), 0), v], 1)
                ann["keypoints"] = kpts.astype(int).reshape(-1).tolist()
                ann["num_keypoints"] = int(visible.sum())
            anns.append(ann)
            ann_id += 1
    rng.shuffle(anns)
    return {"images": images, "annotations": anns, "categories": cats}


def make_results(gt: dict, iou_type: str, seed: int, *, per_image_extra: int = 4, bytes_counts: bool = False,
                 keypoint_boxes: bool = False) -> list[dict]:
    """Results derived from the gt: jittered, dropped, duplicated, mislabelled, false positives; tied scores."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    boxes = []
    for ann in gt["annotations"]:
        for _ in range(int(rng.choice([0, 1, 1, 1, 2, 3]))):
            x, y, bw, bh = ann["bbox"]
            jitter = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
            boxes.append((ann["image_id"], cat, [x + jitter[0], y + jitter[1], max(bw + jitter[2], 1.0),
                                                 max(bh + jitter[3], 1.0)], ann))
    for img in gt["images"]:
        for _ in range(per_image_extra):
            h, w = sizes[img["id"]]
            bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
            boxes.append((img["id"], int(rng.choice(cat_ids)), [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh],
                          None))
    order = rng.permutation(len(boxes))
    results = []
    for i in order:
        image_id, cat, box, ann = boxes[i]
        r = {"image_id": image_id, "category_id": cat, "score": float(rng.integers(0, 10)) / 10}  # many ties
        if iou_type == "bbox":
            r["bbox"] = box
        elif iou_type == "segm":
            rle = _rectangle_rle(*sizes[image_id], box, compressed=True)
            if not bytes_counts:
                rle["counts"] = rle["counts"].decode("ascii")
            r["segmentation"] = rle
        else:
            if ann is not None and ann["num_keypoints"] > 0:
                k = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
                k[:, :2] += rng.normal(0, 2.5, (NUM_KPTS, 2))
            else:
                k = np.c_[box[0] + rng.random(NUM_KPTS) * box[2], box[1] + rng.random(NUM_KPTS) * box[3],
                          np.zeros(NUM_KPTS)]
            k[:, 2] = 1
            r["keypoints"] = k.reshape(-1).tolist()
            if keypoint_boxes:
                r["bbox"] = box
        results.append(r)
    return results


# ----------------------------------------------------------------------------------------------------
# pycocotools reference


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def reference(gt: dict, results: list[dict], iou_type: str, use_cats: bool = True, max_dets=None):
    """(COCOeval after summarize, its printout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = _coco(gt)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results)) if results else _coco({**gt, "annotations": []})
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = int(use_cats)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev, out.getvalue()


def assert_same(ours, ev: COCOeval) -> None:
    assert np.array_equal(ours.precision, ev.eval["precision"])
    assert np.array_equal(ours.recall, ev.eval["recall"])
    assert list(ours.metrics.values()) == ev.stats.tolist()


# ----------------------------------------------------------------------------------------------------
# Equality with pycocotools


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_synthetic_equals_pycocotools(iou_type, seed):
    gt = make_gt(seed, keypoints=iou_type == "keypoints")
    results = make_results(gt, iou_type, seed + 100, bytes_counts=seed == 1, keypoint_boxes=seed == 2)
    ours = run_coco_evaluation(gt, results, iou_type)
    ev, _ = reference(gt, results, iou_type)
    assert_same(ours, ev)
    assert 0 < ours.metrics["AP"] < 1  # a non-trivial case
    assert evaluate_coco(gt, results, iou_type) == ours.metrics


def test_max_dets_cap_with_ties_equals_pycocotools():
    """More than 100 detections of one image and category, many with equal scores."""
    gt = make_gt(5)
    results = make_results(gt, "bbox", 6, per_image_extra=150)
    assert max(np.unique([r["image_id"] for r in results], return_counts=True)[1]) > 100
    ev, _ = reference(gt, results, "bbox")
    assert_same(run_coco_evaluation(gt, results, "bbox"), ev)


def test_class_agnostic_equals_pycocotools():
    gt = make_gt(3)
    results = make_results(gt, "bbox", 4)
    ev, _ = reference(gt, results, "bbox", use_cats=False)
    assert_same(run_coco_evaluation(gt, results, "bbox", use_cats=False), ev)


def test_proposals_equal_pycocotools():
    gt = make_gt(8)
    proposals = make_results(gt, "bbox", 9, per_image_extra=130)
    for p in proposals:
        p["category_id"] = 1  # pycocotools needs one; ours ignores it
    # maxDets (1, 100, 1000) puts AR@100, AR@1000 and ARs/ARm/ARl@1000 in pycocotools' stats[7:12].
    ev, _ = reference(gt, proposals, "bbox", use_cats=False, max_dets=[1, 100, 1000])
    ours = evaluate_proposals(gt, [{k: v for k, v in p.items() if k != "category_id"} for p in proposals])
    assert list(ours) == ["AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000"]
    assert list(ours.values()) == ev.stats[7:12].tolist()
    assert ours["AR@1000"] > ours["AR@100"]


def test_gt_id_zero_behaves_like_pycocotools():
    gt = make_gt(0)
    gt["annotations"][0]["id"] = 0
    results = make_results(gt, "bbox", 1)
    ev, _ = reference(gt, results, "bbox")
    with pytest.warns(UserWarning, match="id 0"):
        ours = run_coco_evaluation(gt, results, "bbox")
    assert_same(ours, ev)


def test_empty_results_score_zero_where_gt_exists():
    gt = make_gt(0)
    ev, _ = reference(gt, [], "bbox")  # pycocotools cannot load [], so it gets an empty result set
    with pytest.warns(UserWarning, match="No detections"):
        ours = run_coco_evaluation(gt, [], "bbox")
    assert_same(ours, ev)
    assert ours.metrics["AP"] == 0.0 and ours.metrics["AR100"] == 0.0


def test_gt_from_pycocotools_object_and_paths(tmp_path):
    gt = make_gt(1)
    results = make_results(gt, "bbox", 2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    expected = evaluate_coco(gt, results)
    assert evaluate_coco(_coco(gt), results) == expected
    assert evaluate_coco(str(tmp_path / "gt.json"), tmp_path / "res.json") == expected


def test_per_category_ap_and_format_metrics():
    gt = make_gt(2)
    results = make_results(gt, "bbox", 3)
    ours = run_coco_evaluation(gt, results, "bbox")
    ev, _ = reference(gt, results, "bbox")
    per_cat = ours.per_category_ap()
    assert list(per_cat) == ["c1", "c3", "c7"]
    for k, value in enumerate(per_cat.values()):
        s = ev.eval["precision"][:, :, k, 0, -1]
        assert value == np.mean(s[s > -1])
    table = format_metrics({"AP": 0.51234, "APs": -1.0}, title="bbox")
    assert table.splitlines()[0] == "bbox"
    assert "0.5123" in table and table.splitlines()[-1].split() == ["APs", "-"]


# ----------------------------------------------------------------------------------------------------
# Real data


def _perturbed_real(gt: dict, iou_type: str) -> list[dict]:
    rng = np.random.default_rng(0)
    coco = _coco(gt)
    results = []
    for ann in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        r = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": float(rng.integers(1, 20)) / 20}
        if iou_type == "bbox":
            j = rng.normal(0, 0.07, 4) * [w, h, w, h]
            r["bbox"] = [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)]
        elif iou_type == "segm":
            mask = np.roll(coco.annToMask(ann), tuple(rng.integers(-4, 5, 2)), (0, 1))
            rle = mask_utils.encode(np.asfortranarray(mask))
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            k = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
            k[:, 0] = np.where(k[:, 2] > 0, k[:, 0], x + w / 2) + rng.normal(0, 3, len(k))
            k[:, 1] = np.where(k[:, 2] > 0, k[:, 1], y + h / 2) + rng.normal(0, 3, len(k))
            k[:, 2] = 1
            r["keypoints"] = k.reshape(-1).tolist()
        results.append(r)
    return results


@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_tiny_coco_equals_pycocotools(tiny_coco, iou_type):
    name = "person_keypoints_val.json" if iou_type == "keypoints" else "instances_val.json"
    gt = json.loads((tiny_coco / "annotations" / name).read_text())
    results = _perturbed_real(gt, iou_type)
    ev, _ = reference(gt, results, iou_type)
    ours = run_coco_evaluation(tiny_coco / "annotations" / name, results, iou_type)
    assert_same(ours, ev)
    assert ours.metrics["AP"] > 0.3


# ----------------------------------------------------------------------------------------------------
# CLI


def _summary_lines(printout: str) -> list[str]:
    return [line for line in printout.splitlines() if line.startswith(" Average")]


@pytest.mark.parametrize("iou_type", ["bbox", "keypoints"])
def test_cli_prints_pycocotools_lines(tmp_path, capsys, iou_type):
    gt = make_gt(4, keypoints=iou_type == "keypoints")
    results = make_results(gt, iou_type, 5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    _, printout = reference(gt, results, iou_type)
    args = _cli_args(tmp_path / "gt.json", tmp_path / "res.json", iou_type, tmp_path / "out" / "metrics.json")
    assert coco_eval_cli.run(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == _summary_lines(printout)
    assert len(printed) == (10 if iou_type == "keypoints" else 12)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == evaluate_coco(gt, results, iou_type)


def test_cli_tiny_coco_segm_lines(tiny_coco, tmp_path, capsys):
    gt_path = tiny_coco / "annotations" / "instances_val.json"
    gt = json.loads(gt_path.read_text())
    results = _perturbed_real(gt, "segm")
    (tmp_path / "res.json").write_text(json.dumps(results))
    _, printout = reference(gt, results, "segm")
    assert coco_eval_cli.run(_cli_args(gt_path, tmp_path / "res.json", "segm", None)) == 0
    assert capsys.readouterr().out.splitlines() == _summary_lines(printout)


def test_cli_proposals(tmp_path, capsys):
    gt = make_gt(6)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(make_results(gt, "bbox", 7)))
    assert coco_eval_cli.run(_cli_args(tmp_path / "gt.json", tmp_path / "res.json", "proposals", None)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = ")
    assert "maxDets=1000" in lines[1] and len(lines) == 5


def _cli_args(gt, results, iou_type, out):
    import argparse

    parser = argparse.ArgumentParser()
    coco_eval_cli.add_arguments(parser)
    argv = [str(gt), str(results), "--iou-type", iou_type] + (["--out", str(out)] if out else [])
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_missing_gt_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate_coco(tmp_path / "nope.json", [])


def test_gt_not_json(tmp_path):
    (tmp_path / "gt.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid json"):
        evaluate_coco(tmp_path / "gt.json", [])


def test_gt_not_coco(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DatasetError, match=r"gt\.json.*categories"):
        evaluate_coco(tmp_path / "gt.json", [])
    with pytest.raises(DatasetError, match="'annotations' is a dict"):
        evaluate_coco({"images": [], "annotations": {}, "categories": []}, [])
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DatasetError, match=r"list\.json.*top level is a list"):
        evaluate_coco(tmp_path / "list.json", [])


def test_gt_annotation_problems():
    gt = make_gt(0)
    bad = copy.deepcopy(gt)
    del bad["annotations"][2]["area"]
    with pytest.raises(DatasetError, match=rf"annotation id {bad['annotations'][2]['id']} lacks \['area'\]"):
        evaluate_coco(bad, [])
    bad = copy.deepcopy(gt)
    bad["annotations"][1]["id"] = bad["annotations"][0]["id"]
    with pytest.raises(DatasetError, match="more than once"):
        evaluate_coco(bad, [])
    bad = copy.deepcopy(gt)
    bad["annotations"][0]["category_id"] = 99
    with pytest.raises(DatasetError, match="category_id that is not in 'categories'"):
        evaluate_coco(bad, [])
    with pytest.raises(DatasetError, match="keypoints"):
        evaluate_coco(gt, [], "keypoints")


def test_results_with_unknown_image_ids():
    gt = make_gt(0)
    results = make_results(gt, "bbox", 1)
    for n, r in enumerate(results[:7]):
        r["image_id"] = 5000 + n
    with pytest.raises(EvaluationError, match=r"7 image id\(s\) are not in the ground truth.*5000, 5001.*and 2 more"):
        evaluate_coco(gt, results)


def test_results_with_unknown_category():
    gt = make_gt(0)
    results = make_results(gt, "bbox", 1)
    results[3]["category_id"] = 42
    with pytest.raises(EvaluationError, match=r"category id\(s\) 42 are not categories"):
        evaluate_coco(gt, results)


def test_results_missing_field(tmp_path):
    gt = make_gt(0)
    results = make_results(gt, "bbox", 1)
    # Box results evaluated as masks are their boxes' polygons, as in pycocotools (see
    # test_coco_eval_parity.py); as keypoints they lack the keypoints.
    kpt_gt = make_gt(0, keypoints=True)
    with pytest.raises(EvaluationError, match=r"result #0 lacks \['keypoints'\]"):
        evaluate_coco(kpt_gt, make_results(kpt_gt, "bbox", 1), "keypoints")
    del results[3]["bbox"]
    with pytest.raises(EvaluationError, match=r"result #3 lacks \['bbox'\].*result #0 has 'bbox'"):
        evaluate_coco(gt, results)
    del results[2]["score"]
    with pytest.raises(EvaluationError, match=r"result #2 lacks \['score'\]"):
        evaluate_coco(gt, results)
    (tmp_path / "res.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(EvaluationError, match="must be a list"):
        evaluate_coco(gt, tmp_path / "res.json")


def test_results_bad_values():
    gt = make_gt(0)
    results = make_results(gt, "bbox", 1)
    results[0]["bbox"] = [1, 2, 3]
    with pytest.raises(EvaluationError, match="result #0"):
        evaluate_coco(gt, results)
    results = make_results(gt, "segm", 1)
    results[1]["segmentation"] = [[1, 2, 3, 4, 5, 6]]
    with pytest.raises(EvaluationError, match="compressed RLE"):
        evaluate_coco(gt, results, "segm")
    results = make_results(gt, "bbox", 1)
    results[0]["score"] = float("nan")
    with pytest.raises(EvaluationError, match="finite"):
        evaluate_coco(gt, results)


def test_bad_options():
    gt = make_gt(0, keypoints=True)
    results = make_results(gt, "keypoints", 1)
    with pytest.raises(EvaluationError, match="kpt_sigmas"):
        evaluate_coco(gt, results, "keypoints", kpt_sigmas=[0.1] * 5)
    with pytest.raises(EvaluationError, match="use_cats=False"):
        evaluate_coco(gt, results, "keypoints", use_cats=False)
    with pytest.raises(EvaluationError, match="iou_type"):
        evaluate_coco(gt, results, "boxes")
    with pytest.raises(EvaluationError, match="max_dets"):
        evaluate_coco(gt, make_results(gt, "bbox", 1), "bbox", max_dets=[1, 10])


def test_inputs_are_not_modified():
    gt = make_gt(0)
    results = make_results(gt, "bbox", 1)
    gt_copy, results_copy = copy.deepcopy(gt), copy.deepcopy(results)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_coco(gt, results)
    assert gt == gt_copy and results == results_copy
