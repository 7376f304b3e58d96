"""Cityscapes: gtFine conversion to a COCO dataset, and instance AP through cityscapesscripts.

Every test builds a tiny Cityscapes folder (2 cities, 3 images of 64x128) whose instanceIds PNGs
and polygons files describe the same rectangles, painted in order as cityscapesscripts paints them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swiftdet.data.cityscapes import cityscapes_to_coco
from swiftdet.errors import DatasetError, InputError

H, W = 64, 128
LABEL_IDS = {"unlabeled": 0, "ego vehicle": 1, "road": 7, "sky": 23, "person": 24, "rider": 25, "car": 26,
             "truck": 27, "bus": 28, "caravan": 29, "train": 31, "motorcycle": 32, "bicycle": 33}
INSTANCE_IDS = {24, 25, 26, 27, 28, 29, 30, 31, 32, 33}  # labels.py hasInstances (29, 30 ignored in evaluation)

# (label, x0, y0, x1, y1) inclusive pixel rectangles, in painting order: later ones cover earlier ones.
SCENES = {
    ("aachen", "aachen_000000_000019"): [
        ("road", 0, 0, W - 1, H - 1), ("sky", 0, 0, W - 1, 9),
        ("car", 4, 20, 33, 39),             # car 26000
        ("person", 40, 12, 51, 59),         # person 24000, split in two by the car below
        ("car", 30, 30, 69, 45),            # car 26001: covers part of car 26000 and the person's middle
        ("cargroup", 80, 30, 119, 50),      # crowd region (label id 26)
        ("caravan", 100, 52, 123, 63),      # an instance class ignored in evaluation: not in the dataset
        ("ego vehicle", 0, 60, 63, 63),     # void
    ],
    ("aachen", "aachen_000001_000019"): [
        ("road", 0, 0, W - 1, H - 1),
        ("rider", 10, 10, 25, 40), ("bicycle", 8, 30, 30, 55), ("truck", 60, 5, 110, 50),
    ],
    ("bochum", "bochum_000000_000313"): [
        ("road", 0, 0, W - 1, H - 1),
        ("bus", 5, 5, 60, 45), ("persongroup", 70, 20, 100, 50), ("person", 102, 20, 115, 55),
    ],
}


def _paint(objects):
    """(instance ids image, [(instance id, label, own visible mask)]), ids numbered as json2instanceImg does."""
    ids = np.zeros((H, W), np.int32)
    counts: dict[str, int] = {}
    drawn = []
    for label, x0, y0, x1, y1 in objects:
        group = label.endswith("group")
        name = label[: -len("group")] if group else label
        value = LABEL_IDS[name]
        if value in INSTANCE_IDS and not group:
            value = value * 1000 + counts.get(name, 0)
            counts[name] = counts.get(name, 0) + 1
        rect = np.zeros((H, W), bool)
        rect[y0:y1 + 1, x0:x1 + 1] = True
        for _, _, earlier in drawn:
            earlier &= ~rect  # what a later object covers is no longer the earlier one's
        drawn.append((value, name, rect))
        ids[rect] = value
    return ids, drawn


def _make_cityscapes(root: Path, split: str = "val") -> dict:
    """Write the scenes; returns {(city, name): [(instance id, label, visible mask)]}."""
    rng = np.random.default_rng(0)
    truth = {}
    for (city, name), objects in SCENES.items():
        ids, drawn = _paint(objects)
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        Image.fromarray(ids.astype(np.uint16)).save(root / "gtFine" / split / city / f"{name}_gtFine_instanceIds.png")
        polygons = {"imgHeight": H, "imgWidth": W, "objects": [
            {"label": label, "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]} for label, x0, y0, x1, y1 in objects]}
        (root / "gtFine" / split / city / f"{name}_gtFine_polygons.json").write_text(json.dumps(polygons))
        truth[(city, name)] = drawn
    return truth


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    return root, _make_cityscapes(root)


def _decode(segm) -> np.ndarray:
    import pycocotools.mask as mask_utils

    return mask_utils.decode({"size": segm["size"], "counts": segm["counts"].encode("ascii")}).astype(bool)


def test_conversion_gives_the_drawn_masks_boxes_and_crowds(cityscapes):
    root, truth = cityscapes
    data, image_root = cityscapes_to_coco(root, "val")
    assert image_root == str(root / "leftImg8bit" / "val")
    assert [(c["id"], c["name"]) for c in data["categories"]] == [
        (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"),
        (33, "bicycle")]
    assert [im["file_name"] for im in data["images"]] == [f"{c}/{n}_leftImg8bit.png" for c, n in SCENES]
    assert all((im["height"], im["width"]) == (H, W) for im in data["images"])
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    for image, key in zip(data["images"], SCENES):
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        expected = [(v, name, mask) for v, name, mask in truth[key] if LABEL_IDS[name] in (24, 25, 26, 27, 28, 31, 32, 33)]
        assert len(anns) == len(expected)
        for ann, (value, name, mask) in zip(anns, sorted(expected, key=lambda e: e[0])):
            assert ann["category_id"] == LABEL_IDS[name]
            assert ann["iscrowd"] == int(value < 1000)
            assert np.array_equal(_decode(ann["segmentation"]), mask)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum()
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    # The person split by a car keeps both pieces and the box over both; the crowd is the car group.
    person = next(a for a in first if a["category_id"] == 24)
    assert person["bbox"] == [40, 12, 12, 48] and person["area"] == 12 * 48 - 12 * 16
    assert [a["category_id"] for a in first if a["iscrowd"]] == [26]
    assert not any(a["category_id"] == 29 for a in data["annotations"])  # caravan: not an evaluated class


def test_the_polygons_reader_gives_the_same_dataset(cityscapes):
    pytest.importorskip("cityscapesscripts", reason="source='json' draws the polygons with cityscapesscripts")
    root, _ = cityscapes
    assert cityscapes_to_coco(root, "val", source="json") == cityscapes_to_coco(root, "val")
    polygons = root / "gtFine" / "val" / "bochum" / "bochum_000000_000313_gtFine_polygons.json"
    data = json.loads(polygons.read_text())
    data["objects"][1]["label"] = "spaceship"
    polygons.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"bochum_000000_000313_gtFine_polygons.json: objects\[1\] has the label 'spaceship'"):
        cityscapes_to_coco(root, "val", source="json")


def test_the_dataset_loads_through_the_config(cityscapes):
    from swiftdet.config.core import load_config
    from swiftdet.data import load_dataset

    root, _ = cityscapes
    cfg = load_config("mask_rcnn_R_50_FPN_cityscapes", [f"data.test.roots=[{root}]", "data.test.split=val"])
    dataset = load_dataset(cfg.data.test, training=False, field="data.test", verbose=False)
    assert len(dataset) == 3 and dataset.meta.category_ids == (24, 25, 26, 27, 28, 31, 32, 33)
    assert dataset.meta.num_classes == cfg.model.num_classes == 8
    # detectron2's Cityscapes/mask_rcnn_R_50_FPN.yaml
    assert cfg.input.min_size_train == (800, 832, 864, 896, 928, 960, 992, 1024) and cfg.input.max_size_train == 2048
    assert (cfg.input.min_size_test, cfg.input.max_size_test) == (1024, 2048)
    assert (cfg.solver.max_iter, cfg.solver.steps, cfg.solver.ims_per_batch) == (24000, (18000,), 8)
    assert cfg.solver.base_lr * cfg.solver.ims_per_batch / cfg.solver.reference_batch_size == 0.01


def test_bad_folders_are_named(tmp_path, cityscapes):
    root, _ = cityscapes
    with pytest.raises(DatasetError, match="leftImg8bit/train"):
        cityscapes_to_coco(root, "train")
    (root / "gtFine" / "val" / "bochum" / "bochum_000000_000313_gtFine_instanceIds.png").unlink()
    with pytest.raises(DatasetError, match="bochum_000000_000313_gtFine_instanceIds.png"):
        cityscapes_to_coco(root, "val")
    Image.new("RGB", (W, H)).save(root / "gtFine" / "val" / "bochum" / "bochum_000000_000313_gtFine_instanceIds.png")
    with pytest.raises(DatasetError, match="is not an instance ids image"):
        cityscapes_to_coco(root, "val")


# ---- evaluation ---------------------------------------------------------------------------------

def _perfect_results(data: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 0.5 + 0.01 * a["id"], "bbox": a["bbox"]} for a in data["annotations"] if not a["iscrowd"]]


def _rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _perturbed_results(data: dict) -> list[dict]:
    """Shifted, dropped, duplicated and false predictions, over crowd and void regions too."""
    out = []
    for r in _perfect_results(data):
        mask = _decode(r["segmentation"])
        if r["category_id"] == 27:
            continue  # the truck is missed
        if r["category_id"] == 26:
            mask = np.roll(mask, 4, axis=1)  # shifted cars (still over IoU 0.5, under the higher overlaps)
        out.append({**r, "segmentation": _rle(mask)})
        if r["category_id"] == 24:
            out.append({**r, "score": 0.95})  # a duplicate scoring higher: the lower one becomes a false positive
    box = np.zeros((H, W), bool)
    box[30:50, 80:119] = True  # inside the car group: ignored
    out.append({"image_id": 1, "category_id": 26, "segmentation": _rle(box), "score": 0.99})
    box = np.zeros((H, W), bool)
    box[0:20, 60:100] = True  # on the sky of image 2: a false positive rider
    out.append({"image_id": 2, "category_id": 25, "segmentation": _rle(box), "score": 0.97})
    box = np.zeros((H, W), bool)
    box[58:64, 0:40] = True  # mostly on the void ego vehicle: ignored
    out.append({"image_id": 1, "category_id": 32, "segmentation": _rle(box), "score": 0.3})
    return out


def _script_run(root: Path, predictions: Path, cwd: Path) -> dict:
    """cityscapesscripts' own main() on gtFine/val of ``root`` and the predictions folder, its defaults
    otherwise (the gt cache file moved out of the installed package)."""
    code = ("import sys, numpy as np\n"
            "if not hasattr(np, 'in1d'):\n"  # numpy >= 2.4 removed in1d, which cityscapesscripts 2.3.0 calls
            "    np.in1d = lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel()\n"
            "from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as m\n"
            "import json\n"
            # numpy >= 2.3's count_nonzero gives numpy integers, which the script's json writer refuses
            "def write(d, name):\n"
            "    with open(name, 'w') as f:\n"
            "        json.dump(d, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__)\n"
            "m.writeDict2JSON = write\n"
            "m.args.gtInstancesFile = sys.argv[1]\n"
            "sys.argv = sys.argv[:1]\n"
            "m.main()\n")
    env = dict(os.environ, CITYSCAPES_DATASET=str(root), CITYSCAPES_RESULTS=str(predictions))
    child = subprocess.run([sys.executable, "-c", code, str(cwd / "gt_cache.json")], cwd=cwd, env=env,
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stdout + child.stderr
    return json.loads((root / "evaluationResults" / "resultInstanceLevelSemanticLabeling.json").read_text())["averages"]


def _expected(averages: dict) -> dict[str, float]:
    out = {"AP": averages["allAp"], "AP50": averages["allAp50%"]}
    for name, v in averages["classes"].items():
        out[f"AP-{name}"], out[f"AP50-{name}"] = v["ap"], v["ap50%"]
    return {k: -1.0 if np.isnan(v) else v for k, v in out.items()}


@pytest.fixture
def cityscapesscripts():
    return pytest.importorskip("cityscapesscripts", reason='Cityscapes evaluation needs pip install -e ".[cityscapes]"')


def test_perfect_predictions_score_one(cityscapes, cityscapesscripts, tmp_path):
    from swiftdet.evaluation.cityscapes import evaluate_cityscapes

    root, _ = cityscapes
    data, _ = cityscapes_to_coco(root, "val")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    metrics = evaluate_cityscapes(root, "val", _perfect_results(data), files, work_dir=tmp_path / "work")
    assert metrics["AP"] == metrics["AP50"] == 1.0
    for name in ("person", "rider", "car", "truck", "bus", "bicycle"):
        assert metrics[f"AP-{name}"] == metrics[f"AP50-{name}"] == 1.0
    # No ground truth and no prediction: undefined, and left out of the means (the script's NaN).
    assert metrics["AP-train"] == metrics["AP-motorcycle"] == -1.0
    assert metrics == _expected(_script_run(root, tmp_path / "work" / "predictions", tmp_path))
    # The format of the Cityscapes benchmark: one txt per image (an empty one without predictions).
    txt = (tmp_path / "work" / "predictions" / "aachen_000000_000019_pred.txt").read_text().splitlines()
    png, label, score = txt[0].split(" ")
    assert label == "24" and float(score) > 0.5 and Image.open(tmp_path / "work" / "predictions" / png).mode == "1"
    metrics = evaluate_cityscapes(root, "val", [], files)
    assert metrics["AP"] == 0.0 and metrics["AP-car"] == 0.0 and metrics["AP-train"] == -1.0


def test_perturbed_predictions_equal_the_scripts_own_run(cityscapes, cityscapesscripts, tmp_path):
    from swiftdet.evaluation.cityscapes import evaluate_cityscapes

    root, _ = cityscapes
    data, _ = cityscapes_to_coco(root, "val")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    metrics = evaluate_cityscapes(root, "val", _perturbed_results(data), files, work_dir=tmp_path / "work")
    assert metrics == _expected(_script_run(root, tmp_path / "work" / "predictions", tmp_path))
    assert 0 < metrics["AP"] < metrics["AP50"] < 1
    assert metrics["AP-truck"] == 0.0  # missed
    assert metrics["AP50-car"] == 1.0 > metrics["AP-car"]  # shifted: matched at 0.5 only
    assert metrics["AP-bus"] == 1.0
    assert metrics["AP-rider"] < 1.0  # the false rider on the sky outscores the true one
    assert metrics["AP-motorcycle"] == -1.0  # its one prediction lies on void: ignored, and there is no ground truth


def test_bad_results_are_named(cityscapes, cityscapesscripts):
    from swiftdet.evaluation.cityscapes import evaluate_cityscapes

    root, _ = cityscapes
    data, _ = cityscapes_to_coco(root, "val")
    files = {im["id"]: im["file_name"] for im in data["images"]}
    good = _perfect_results(data)[0]
    with pytest.raises(InputError, match="category_id 1;"):
        evaluate_cityscapes(root, "val", [{**good, "category_id": 1}], files)
    with pytest.raises(InputError, match="image_id 7"):
        evaluate_cityscapes(root, "val", [{**good, "image_id": 7}], files)
    with pytest.raises(InputError, match="model.mask_on=true"):
        evaluate_cityscapes(root, "val", [{k: v for k, v in good.items() if k != "segmentation"}], files)
    with pytest.raises(InputError, match=r"size \[32, 32\]"):
        evaluate_cityscapes(root, "val", [{**good, "segmentation": _rle(np.ones((32, 32), bool))}], files)
    with pytest.raises(DatasetError, match="has no ground truth"):
        evaluate_cityscapes(root, "train", good and [], {1: "aachen/aachen_000000_000019_leftImg8bit.png"})


def test_a_missing_cityscapesscripts_names_the_extra(cityscapes, monkeypatch):
    from swiftdet.errors import EvaluationError
    from swiftdet.evaluation.cityscapes import evaluate_cityscapes

    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)  # import fails as if not installed
    with pytest.raises(EvaluationError, match=r'pip install -e "\.\[cityscapes\]"'):
        evaluate_cityscapes(cityscapes[0], "val", [], {1: "aachen/aachen_000000_000019_leftImg8bit.png"})


TINY = ["model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.pre_nms_topk_test=50",
        "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.conv_dim=16",
        "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1", "model.box_head.detections_per_image=10",
        "input.min_size_test=64", "input.max_size_test=128"]


def test_swiftdet_eval_on_a_cityscapes_test_set(cityscapes, cityscapesscripts, tmp_path, monkeypatch):
    import torch

    import swiftdet.evaluation.cityscapes as cityscapes_eval
    from swiftdet.cli.main import main
    from swiftdet.config.core import config_to_dict, load_config
    from swiftdet.model.build import build_model
    from swiftdet.utils.io import atomic_torch_save
    from swiftdet.weights import make_checkpoint

    root, _ = cityscapes
    data = [f"data.test.roots=[{root}]", "data.test.split=val"]
    cfg = load_config("mask_rcnn_R_50_FPN_cityscapes", [*TINY, *data])
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), {}), weights)
    calls = []
    real = cityscapes_eval.evaluate_cityscapes

    def recording(*args, **kwargs):
        calls.append((args, real(*args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(cityscapes_eval, "evaluate_cityscapes", recording)
    assert main(["eval", "mask_rcnn_R_50_FPN_cityscapes", *TINY, *data, "--weights", str(weights),
                 "--output", str(tmp_path / "eval")]) == 0
    (call_root, split, results, files), metrics = calls[0]
    assert (call_root, split) == (str(root), "val")
    assert files == {1: "aachen/aachen_000000_000019_leftImg8bit.png", 2: "aachen/aachen_000001_000019_leftImg8bit.png",
                     3: "bochum/bochum_000000_000313_leftImg8bit.png"}
    assert results and {r["category_id"] for r in results} <= {24, 25, 26, 27, 28, 31, 32, 33}
    record = json.loads((tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k: v for k, v in record.items() if k.startswith("segm/")} == {f"segm/{k}": v for k, v in metrics.items()}
    # The numbers are the script's own on the model's predictions.
    cityscapes_eval.write_cityscapes_predictions(results, files, tmp_path / "predictions")
    assert metrics == _expected(_script_run(root, tmp_path / "predictions", tmp_path))
