"""`swiftdet coco-eval` equals pycocotools' ``loadRes`` + ``COCOeval`` for every combination of result keys.

pycocotools' ``COCO.loadRes`` decides by the FIRST result what the results are, and with it the
detection areas of the small / medium / large ranges: a non-empty ``bbox`` -> box w*h (also for
``segm``!), else ``segmentation`` -> mask pixels, else ``keypoints`` -> their extent. It makes up
the box or mask a result lacks. The detections below come from tiny_coco's real ground truth,
perturbed, so that box and mask areas put many of them in different ranges: evaluating segm
results that carry boxes by their mask areas (swiftdet's behaviour before) fails these tests.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swiftdet.cli import main as cli_main
from swiftdet.engine.evaluator import evaluate_results, run_evaluations
from swiftdet.errors import EvaluationError
from swiftdet.evaluation import run_coco_evaluation
from swiftdet.evaluation.coco_inputs import load_detections, load_ground_truth, loadres_branch

# pycocotools' mask.decode trips a numpy 2 deprecation warning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

INSTANCES = "instances_val.json"
KEYPOINTS = "person_keypoints_val.json"


# ----------------------------------------------------------------------------------------------------
# Data: tiny_coco ground truth and detections made from it


@pytest.fixture(scope="module")
def gt_dicts(tiny_coco):
    return {name: json.loads((tiny_coco / "annotations" / name).read_text()) for name in (INSTANCES, KEYPOINTS)}


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, flat.size])
    return {"size": list(mask.shape), "counts": runs.tolist() if flat[0] == 0 else [0] + runs.tolist()}


def make_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Per-detection candidates of every field, from the gt: shifted masks and polygons, loose boxes
    (jittered and enlarged, so box area > mask area), jittered keypoints, wrong labels, duplicates,
    false positives with octagon masks; tied scores."""
    rng = np.random.default_rng(seed)
    coco = _coco(gt)
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for ann in gt["annotations"]:
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            img = coco.imgs[ann["image_id"]]
            h, w = img["height"], img["width"]
            dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
            mask = np.roll(coco.annToMask(ann), (dy, dx), (0, 1))
            x, y, bw, bh = ann["bbox"]
            grow = rng.uniform(1.0, 1.35, 2)
            j = rng.normal(0, 0.04, 4) * [bw, bh, bw, bh]
            box = [x + dx + j[0] - bw * (grow[0] - 1) / 2, y + dy + j[1] - bh * (grow[1] - 1) / 2,
                   max(bw * grow[0] + j[2], 1.0), max(bh * grow[1] + j[3], 1.0)]
            if isinstance(ann["segmentation"], list):
                polygon = [(np.array(p).reshape(-1, 2) + [dx, dy]).reshape(-1).tolist() for p in ann["segmentation"]]
            else:
                polygon = _octagon(box)
            det = {"image_id": ann["image_id"], "score": float(rng.integers(1, 20)) / 20,
                   "category_id": ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids)),
                   "box": box, "mask": mask, "polygon": polygon, "size": (h, w)}
            if "keypoints" in ann:
                k = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
                k[:, 0] = np.where(k[:, 2] > 0, k[:, 0], x + rng.random(len(k)) * bw) + rng.normal(0, 3, len(k))
                k[:, 1] = np.where(k[:, 2] > 0, k[:, 1], y + rng.random(len(k)) * bh) + rng.normal(0, 3, len(k))
                k[:, 2] = 1
                det["keypoints"] = k.reshape(-1).tolist()
            dets.append(det)
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        for _ in range(3):
            bw, bh = rng.uniform(8, w / 3), rng.uniform(8, h / 3)
            box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
            polygon = _octagon(box)
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w)))
            det = {"image_id": img["id"], "score": float(rng.integers(1, 20)) / 20,
                   "category_id": int(rng.choice(cat_ids)), "box": box, "mask": mask, "polygon": polygon,
                   "size": (h, w)}
            if "keypoints" in gt["annotations"][0]:
                n = len(gt["annotations"][0]["keypoints"]) // 3
                det["keypoints"] = np.c_[box[0] + rng.random(n) * bw, box[1] + rng.random(n) * bh,
                                         np.ones(n)].reshape(-1).tolist()
            dets.append(det)
    return [dets[i] for i in rng.permutation(len(dets))]


def _octagon(box) -> list:
    x, y, bw, bh = box
    a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    return [np.stack([x + bw / 2 + np.cos(a) * bw / 2, y + bh / 2 + np.sin(a) * bh / 2], 1).reshape(-1).tolist()]


def results_with(dets: list[dict], keys: str) -> list[dict]:
    """COCO results carrying ``keys``: '+'-joined of bbox, rle, polygon, uncompressed, keypoints, emptybbox."""
    out = []
    for d in dets:
        r = {"image_id": d["image_id"], "category_id": d["category_id"], "score": d["score"]}
        for key in keys.split("+"):
            if key == "bbox":
                r["bbox"] = list(d["box"])
            elif key == "emptybbox":
                r["bbox"] = []
            elif key == "rle":
                rle = mask_utils.encode(np.asfortranarray(d["mask"]))
                r["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            elif key == "polygon":
                r["segmentation"] = d["polygon"]
            elif key == "uncompressed":
                r["segmentation"] = _uncompressed(d["mask"])
            elif key == "keypoints":
                r["keypoints"] = d["keypoints"]
            else:
                raise ValueError(key)
        out.append(r)
    return out


# ----------------------------------------------------------------------------------------------------
# pycocotools reference


def reference(gt: dict, results: list[dict], iou_type: str):
    """(COCOeval after summarize, its printout, loadRes' result COCO)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = _coco(gt)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev, out.getvalue(), coco_dt


def summary_lines(printout: str) -> list[str]:
    return [line for line in printout.splitlines() if line.startswith(" Average")]


def assert_same(ours, ev: COCOeval) -> None:
    assert np.array_equal(ours.precision, ev.eval["precision"])
    assert np.array_equal(ours.recall, ev.eval["recall"])
    assert list(ours.metrics.values()) == ev.stats.tolist()


def _range_of(area: np.ndarray) -> np.ndarray:
    """0 small, 1 medium, 2 large (pycocotools' bounds are inclusive at both ends; ties are rare)."""
    return np.digitize(area, [32 ** 2, 96 ** 2])


def _mask_areas(results: list[dict]) -> np.ndarray:
    return np.array([float(mask_utils.area(r["segmentation"])) for r in results])


# (gt file, result keys, iou type, the loadRes branch)
CASES = [
    (INSTANCES, "bbox", "bbox", "bbox"),
    (INSTANCES, "bbox", "segm", "bbox"),  # masks are the boxes' polygons
    (INSTANCES, "rle", "segm", "segmentation"),
    (INSTANCES, "rle", "bbox", "segmentation"),  # boxes are the masks' bounding boxes
    (INSTANCES, "bbox+rle", "segm", "bbox"),  # areas from the BOXES
    (INSTANCES, "bbox+rle", "bbox", "bbox"),
    (INSTANCES, "rle+bbox", "segm", "bbox"),  # key order does not matter
    (INSTANCES, "bbox+polygon", "segm", "bbox"),  # polygons rasterised as annToRLE does
    (INSTANCES, "bbox+uncompressed", "segm", "bbox"),
    (INSTANCES, "emptybbox+rle", "segm", "segmentation"),  # an empty bbox counts as none: mask areas
    (KEYPOINTS, "keypoints", "keypoints", "keypoints"),  # areas from the keypoints' extent
    (KEYPOINTS, "keypoints", "bbox", "keypoints"),  # boxes are the keypoints' extent
    (KEYPOINTS, "keypoints+bbox", "keypoints", "bbox"),  # areas from the boxes
    (KEYPOINTS, "bbox+keypoints", "bbox", "bbox"),
    (KEYPOINTS, "keypoints+rle", "keypoints", "segmentation"),  # areas from the masks
    (KEYPOINTS, "bbox+rle+keypoints", "segm", "bbox"),
]


@pytest.mark.parametrize("gt_name,keys,iou_type,branch", CASES,
                         ids=[f"{g.split('_')[0]}-{k}-{t}" for g, k, t, _ in CASES])
def test_every_key_combination_equals_pycocotools(gt_dicts, tiny_coco, gt_name, keys, iou_type, branch):
    gt = gt_dicts[gt_name]
    results = results_with(make_detections(gt), keys)
    assert loadres_branch(results) == branch
    ev, printout, coco_dt = reference(gt, results, iou_type)

    # The areas (and boxes) loadRes gives the detections, one by one.
    dets = load_detections(results, load_ground_truth(gt, iou_type), iou_type)
    loaded = coco_dt.dataset["annotations"]
    assert dets.area.tolist() == [float(a["area"]) for a in loaded]
    if iou_type == "bbox":
        assert dets.boxes.tolist() == [[float(v) for v in a["bbox"]] for a in loaded]

    ours = run_coco_evaluation(tiny_coco / "annotations" / gt_name, results, iou_type)
    assert_same(ours, ev)
    assert len(ours.metrics) == (10 if iou_type == "keypoints" else 12)
    assert ours.metrics["AP"] > 0.02  # a meaningful comparison (box polygons as masks score low)
    assert ours.area_source == {"bbox": "box", "segmentation": "mask", "keypoints": "keypoints"}[branch]


def test_box_and_mask_areas_put_detections_in_different_ranges(gt_dicts):
    """The case the old behaviour (mask areas for segm results with boxes) got wrong."""
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "bbox+rle")
    box_area = np.array([r["bbox"][2] * r["bbox"][3] for r in results])
    differ = _range_of(box_area) != _range_of(_mask_areas(results))
    assert differ.sum() >= 20, "the data must tell the two conventions apart"

    ev, _, _ = reference(gt, results, "segm")
    loadres = run_coco_evaluation(gt, results, "segm")
    mask = run_coco_evaluation(gt, results, "segm", area_from="mask")
    assert list(loadres.metrics.values()) == ev.stats.tolist()
    # The old behaviour: at least one of APs/APm/APl/ARs/ARm/ARl differs from pycocotools.
    assert list(mask.metrics.values()) != ev.stats.tolist()
    assert [mask.metrics[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")] == \
        [ev.stats[i] for i in (0, 1, 2, 6, 7, 8)]  # only the area-range numbers differ
    # area_from="mask" is what pycocotools gives once the boxes are dropped (detectron2's way).
    ev_nobox, _, _ = reference(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in results], "segm")
    assert_same(mask, ev_nobox)
    assert mask.area_source == "mask" and "detectron2" in mask.area_note()
    assert loadres.area_source == "box" and "from the boxes" in loadres.area_note()


def test_first_result_decides(gt_dicts):
    """Only the first result's keys choose the branch: boxes on later results do not matter."""
    gt = gt_dicts[INSTANCES]
    dets = make_detections(gt)
    results = results_with(dets, "bbox+rle")
    del results[0]["bbox"]  # first without a box: mask areas for all; boxes from the mask where absent
    for iou_type in ("segm", "bbox"):
        ev, _, _ = reference(gt, results, iou_type)
        ours = run_coco_evaluation(gt, results, iou_type)
        assert_same(ours, ev)
        assert ours.area_source == "mask"
    results = results_with(dets, "rle")
    results[0]["bbox"] = list(dets[0]["box"])  # a box on the first alone: box areas, the others fail
    with pytest.raises(EvaluationError, match=r"result #1 lacks \['bbox'\].*result #0 has 'bbox' and 'segmentation'"):
        run_coco_evaluation(gt, results, "segm")
    with pytest.raises(KeyError):
        reference(gt, results, "segm")
    results = results_with(dets, "emptybbox+rle")
    results[1]["bbox"] = list(dets[1]["box"])
    ev, _, _ = reference(gt, results, "segm")
    assert_same(run_coco_evaluation(gt, results, "segm"), ev)


@pytest.mark.parametrize("keys", ["polygon", "uncompressed"])
def test_segmentation_only_polygons_fail_as_in_pycocotools(gt_dicts, keys):
    """loadRes measures segmentation-only results with maskUtils.area, which takes compressed RLE only."""
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), keys)
    with pytest.raises(TypeError):
        reference(gt, results, "segm")
    with pytest.raises(EvaluationError, match="not a compressed RLE.*non-empty bbox"):
        run_coco_evaluation(gt, results, "segm")


def test_empty_bbox_cannot_be_evaluated_as_boxes(gt_dicts):
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "emptybbox+rle")
    with pytest.raises(Exception):
        reference(gt, results, "bbox")
    with pytest.raises(EvaluationError, match=r"result #0 .*has bbox \[\]"):
        run_coco_evaluation(gt, results, "bbox")


def test_results_of_other_images_are_rejected(gt_dicts):
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "bbox")
    results[5]["image_id"] = 123456789
    with pytest.raises(AssertionError, match="do not correspond"):
        reference(gt, results, "bbox")
    with pytest.raises(EvaluationError, match="123456789"):
        run_coco_evaluation(gt, results, "bbox")


def test_area_from_mask_is_for_segm_only(gt_dicts):
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "bbox+rle")
    with pytest.raises(EvaluationError, match="segm"):
        run_coco_evaluation(gt, results, "bbox", area_from="mask")
    with pytest.raises(EvaluationError, match="area_from"):
        run_coco_evaluation(gt, results, "segm", area_from="boxes")
    # Mask areas of box-only results are the box polygons' pixel counts.
    boxes_only = results_with(make_detections(gt), "bbox")
    ours = run_coco_evaluation(gt, boxes_only, "segm", area_from="mask")
    assert ours.area_source == "mask"
    ev_masks, _, _ = reference(gt, [{k: v for k, v in r.items() if k != "bbox"}
                                    for r in _with_rles(boxes_only, gt)], "segm")
    assert_same(ours, ev_masks)


def _with_rles(results: list[dict], gt: dict) -> list[dict]:
    """``results`` with the segmentation loadRes makes from each box, as a compressed RLE."""
    sizes = {i["id"]: (i["height"], i["width"]) for i in gt["images"]}
    out = []
    for r in results:
        x, y, w, h = r["bbox"]
        rle = mask_utils.merge(mask_utils.frPyObjects([[x, y, x, y + h, x + w, y + h, x + w, y]], *sizes[r["image_id"]]))
        out.append({**r, "segmentation": rle})
    return out


# ----------------------------------------------------------------------------------------------------
# The CLI


@pytest.mark.parametrize("gt_name,keys,iou_type", [(INSTANCES, "bbox+rle", "segm"), (INSTANCES, "rle", "bbox"),
                                                   (KEYPOINTS, "keypoints", "keypoints"),
                                                   (KEYPOINTS, "keypoints+bbox", "keypoints")])
def test_cli_prints_pycocotools_lines(gt_dicts, tiny_coco, tmp_path, capsys, gt_name, keys, iou_type):
    gt = gt_dicts[gt_name]
    results = results_with(make_detections(gt), keys)
    (tmp_path / "res.json").write_text(json.dumps(results))
    ev, printout, _ = reference(gt, results, iou_type)
    argv = ["coco-eval", str(tiny_coco / "annotations" / gt_name), str(tmp_path / "res.json"), "--iou-type", iou_type,
            "--out", str(tmp_path / "m.json")]
    assert cli_main.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == summary_lines(printout)
    assert "detection areas: from the" in captured.err
    assert list(json.loads((tmp_path / "m.json").read_text()).values()) == ev.stats.tolist()


def test_cli_area_from_mask(gt_dicts, tiny_coco, tmp_path, capsys):
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "bbox+rle")
    (tmp_path / "res.json").write_text(json.dumps(results))
    _, printout, _ = reference(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in results], "segm")
    gt_path = str(tiny_coco / "annotations" / INSTANCES)
    assert cli_main.main(["coco-eval", gt_path, str(tmp_path / "res.json"), "--iou-type", "segm",
                          "--area-from", "mask"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == summary_lines(printout)
    assert "from the masks" in captured.err
    assert cli_main.main(["coco-eval", gt_path, str(tmp_path / "res.json"), "--area-from", "mask"]) == 2
    assert "--area-from mask is for --iou-type segm only" in capsys.readouterr().err


def test_cli_subprocess_segm_with_boxes(gt_dicts, tiny_coco, tmp_path):
    """The installed entry point as a user runs it, on results whose box and mask areas disagree."""
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt, seed=1), "bbox+rle")
    (tmp_path / "res.json").write_text(json.dumps(results))
    _, printout, _ = reference(gt, results, "segm")
    proc = subprocess.run([sys.executable, "-m", "swiftdet.cli.main", "coco-eval",
                           str(tiny_coco / "annotations" / INSTANCES), str(tmp_path / "res.json"), "--iou-type", "segm"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == summary_lines(printout)
    assert len(proc.stdout.splitlines()) == 12
    assert "detection areas: from the boxes (w*h) (pycocotools loadRes)" in proc.stderr


# ----------------------------------------------------------------------------------------------------
# The trainer's evaluation


def test_trainer_evaluation_uses_and_names_mask_areas(gt_dicts):
    """The evaluator's results carry boxes and masks; it ranges masks by mask area and says so."""
    gt = gt_dicts[INSTANCES]
    results = results_with(make_detections(gt), "bbox+rle")
    evaluations = run_evaluations(gt, results, ["bbox", "segm"])
    assert {t: e.area_source for t, e in evaluations.items()} == {"bbox": "box", "segm": "mask"}
    ev_nobox, _, _ = reference(gt, [{k: v for k, v in r.items() if k != "bbox"} for r in results], "segm")
    assert_same(evaluations["segm"], ev_nobox)
    ev_box, _, _ = reference(gt, results, "bbox")
    assert_same(evaluations["bbox"], ev_box)
    loadres = evaluate_results(gt, results, ["segm"], segm_area_from="loadres")["segm"]
    assert list(loadres.values()) == reference(gt, results, "segm")[0].stats.tolist()


def test_evaluate_model_logs_and_writes_its_area_convention(caplog):
    """Untrained toy detector: the metrics name each type's area source and the log says it."""
    import logging

    from swiftdet.engine.evaluator import evaluate_model, run_inference
    from test_engine_toy import TOY_META, ToyDetector, toy_coco, toy_config, toy_test_loader

    model = ToyDetector(toy_config().model)
    gt = toy_coco(6)
    with caplog.at_level(logging.INFO, logger="swiftdet"):
        metrics = evaluate_model(model, toy_test_loader(6, 2, 0, 1), gt, TOY_META["category_ids"], mask_on=True,
                                 prefix="ema/")
    assert metrics["ema/bbox/area_from"] == "box" and metrics["ema/segm/area_from"] == "mask"
    assert "ema/segm detection areas: from the masks (pixel count) (area_from=mask" in caplog.text
    assert "ema/bbox detection areas: from the boxes (w*h) (pycocotools loadRes)" in caplog.text
    # The numbers are those of `swiftdet coco-eval --area-from mask` on the same results.
    local = run_inference(model, toy_test_loader(6, 2, 0, 1), TOY_META["category_ids"])
    results = [d for image_id in sorted(local) for d in local[image_id]]
    assert loadres_branch(results) == "bbox"
    mask = run_coco_evaluation(gt, results, "segm", area_from="mask").metrics
    assert {k: metrics[f"ema/segm/{k}"] for k in mask} == mask
