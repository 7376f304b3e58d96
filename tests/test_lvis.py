"""LVIS v1 (issue 14, part 2): the loader of federated annotations, repeat-factor sampling with exact
resume, the evaluator against the ``lvis`` package (lvis-api) and the recipe, trained and evaluated
end to end on a tiny LVIS file made here."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.config.schema import Config, DatasetSpec
from swiftdet.data import DatasetMeta, DetectionDataset, build_train_loader, load_dataset
from swiftdet.data.lvis import lvis_to_coco
from swiftdet.data.samplers import TrainBatchSampler, TrainingSampler, repeat_factors_from_categories
from swiftdet.errors import ConfigError, DatasetError
from swiftdet.evaluation import lvis as lvis_eval
from swiftdet.evaluation.lvis import evaluate_lvis, run_lvis_evaluation


# ------------------------------------------------------------------ repeat factors and the sampler
def _reference_factors(image_categories: list[list[int]], threshold: float) -> list[float]:
    """detectron2's repeat_factors_from_category_frequency (sqrt), written out over Python sets."""
    counts: dict[int, int] = {}
    for cats in image_categories:
        for c in set(cats):
            counts[c] = counts.get(c, 0) + 1
    rep = {c: max(1.0, math.sqrt(threshold / (n / len(image_categories)))) for c, n in counts.items()}
    return [max({rep[c] for c in cats}, default=1.0) for cats in image_categories]


def _factors(image_categories: list[list[int]], threshold: float) -> np.ndarray:
    offsets = np.r_[0, np.cumsum([len(c) for c in image_categories])].astype(np.int64)
    labels = np.array([c for cats in image_categories for c in cats], dtype=np.int64)
    return repeat_factors_from_categories(offsets, labels, threshold)


def test_repeat_factors_follow_the_lvis_rule():
    # Category 1 is in 1 of 10 images (f = 0.1): r = sqrt(0.5 / 0.1) = sqrt(5); category 0 is everywhere.
    cats = [[0, 1, 1]] + [[0]] * 8 + [[]]
    factors = _factors(cats, 0.5)
    assert factors[0] == pytest.approx(math.sqrt(5)) and list(factors[1:]) == [1.0] * 9
    rng = np.random.default_rng(0)
    cats = [list(rng.integers(0, 30, rng.integers(0, 6))) for _ in range(200)]
    for t in (0.001, 0.05, 0.3):
        np.testing.assert_allclose(_factors(cats, t), _reference_factors(cats, t), rtol=1e-12)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_repeat_factor_stream_rounds_stochastically_and_resumes_exactly():
    factors = np.array([1.0, 1.0, 2.5, 1.2, 3.0, 1.0, 1.7])
    stream = _take(iter(TrainingSampler(7, seed=3, repeat_factors=factors)), 4000)
    assert [g for g, _ in stream] == list(range(4000))
    # Epoch by epoch: image i appears floor(r_i) or ceil(r_i) times, then the next epoch starts.
    sampler = TrainingSampler(7, seed=3, repeat_factors=factors)
    sampler.index_at(3999)
    starts = sampler._epoch_starts
    for a, b in zip(starts[:-2], starts[1:-1]):
        counts = np.bincount([i for _, i in stream[a:b]], minlength=7)
        assert np.all((counts == np.floor(factors)) | (counts == np.ceil(factors)))
    assert len({b - a for a, b in zip(starts[:-2], starts[1:-1])}) > 1  # epochs differ in length
    # Over many epochs each image is drawn in proportion to its factor.
    counts = np.bincount([i for _, i in stream[: starts[-2]]], minlength=7) / (len(starts) - 2)
    np.testing.assert_allclose(counts, factors, atol=0.15)
    # The stream is a function of (seed, position): start=k, shards and a state dict continue it.
    assert _take(iter(TrainingSampler(7, seed=3, start=1234, repeat_factors=factors)), 50) == stream[1234:1284]
    for r in range(3):
        assert _take(iter(TrainingSampler(7, seed=3, rank=r, world_size=3, repeat_factors=factors)), 100) == stream[r::3][:100]
    s = TrainingSampler(7, seed=3, rank=1, world_size=2, repeat_factors=factors)
    _take(iter(s), 37)
    resumed = TrainingSampler(7, seed=3, rank=1, world_size=2, repeat_factors=factors)
    resumed.load_state_dict(s.state_dict())
    assert _take(iter(resumed), 20) == stream[1::2][37:57]
    with pytest.raises(ValueError, match="repeat factors"):
        TrainingSampler(7, seed=3).load_state_dict(s.state_dict() | {"rank": 1, "world_size": 1})
    # Another seed is another stream; without shuffling the epoch lists images in order.
    assert _take(iter(TrainingSampler(7, seed=4, repeat_factors=factors)), 50) != stream[:50]
    ordered = [i for _, i in _take(iter(TrainingSampler(7, seed=3, shuffle=False, repeat_factors=factors)), 9)]
    assert ordered == sorted(ordered)
    with pytest.raises(ValueError, match=">= 1"):
        TrainingSampler(3, seed=0, repeat_factors=np.array([1.0, 0.5, 2.0]))


def test_repeat_factor_batches_resume_exactly_with_and_without_grouping():
    factors = np.array([1.0, 2.2, 1.0, 3.5, 1.0, 1.4, 1.0, 1.0, 2.0])
    group = np.array([0, 1, 1, 0, 0, 1, 0, 1, 0])
    for group_of in (None, group):
        full = _take(iter(TrainBatchSampler(9, 2, seed=5, group_of=group_of, repeat_factors=factors)), 60)
        assert _take(iter(TrainBatchSampler(9, 2, seed=5, group_of=group_of, start_iter=41, repeat_factors=factors)), 19) == full[41:]
        if group_of is not None:
            assert all(len({int(group[i]) for _, i in b}) == 1 for b in full)


@pytest.fixture(scope="module")
def rare_dataset(tmp_path_factory) -> DetectionDataset:
    """Eight tiny images: category 'rare' in image 0 only, 'common' in all."""
    root = tmp_path_factory.mktemp("rfs")
    rng = np.random.default_rng(0)
    records = []
    for k in range(8):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
        anns = [{"bbox": [2, 3, 12, 15], "category_id": 1}]
        if k == 0:
            anns.append({"bbox": [15, 5, 25, 15], "category_id": 2})
        records.append({"file_name": f"{k}.png", "height": 24, "width": 32, "image_id": 100 + k, "annotations": anns})
    meta = DatasetMeta(class_names=("common", "rare"), category_ids=(1, 2))
    return DetectionDataset.from_records(records, meta, image_root=str(root), training=True, verbose=False)


def _cfg(sampler: str, threshold: float = 0.001) -> Config:
    cfg = Config()
    cfg.seed = 11
    cfg.input.min_size_train, cfg.input.max_size_train = (24,), 32
    cfg.data.sampler = sampler
    cfg.data.repeat_threshold = threshold
    return cfg


def _ids(loader, n):
    out = []
    for batch in loader:
        out.append([(s.image_id, float(s.image.sum())) for s in batch])
        if len(out) == n:
            return out


def test_the_train_loader_repeats_rare_images_and_resumes_exactly(rare_dataset):
    # f(rare) = 1/8 and t = 0.5: the rare image has r = 2, every other image 1.
    cfg = _cfg("repeat_factor", 0.5)
    full = _ids(build_train_loader(cfg, rare_dataset, batch_size=3, num_workers=0), 30)
    seen = [i for b in full for i, _ in b]
    assert seen.count(100) / len(seen) == pytest.approx(2 / 9, abs=0.05)
    uniform = [i for b in _ids(build_train_loader(_cfg("uniform"), rare_dataset, batch_size=3, num_workers=0), 30) for i, _ in b]
    assert uniform.count(100) / len(uniform) == pytest.approx(1 / 8, abs=0.05)
    resumed = _ids(build_train_loader(cfg, rare_dataset, batch_size=3, num_workers=2, start_iter=17), 13)
    assert resumed == full[17:]


def test_sampler_fields_are_validated():
    cfg = load_config("mask_rcnn_R_50_FPN_1x", ["data.sampler=repeat_factor", "data.repeat_threshold=0.01"])
    assert (cfg.data.sampler, cfg.data.repeat_threshold) == ("repeat_factor", 0.01)
    with pytest.raises(ConfigError, match="repeat_threshold"):
        load_config("mask_rcnn_R_50_FPN_1x", ["data.repeat_threshold=0.01"])  # would be silently unused
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        load_config("mask_rcnn_R_50_FPN_1x", ["data.sampler=repeat_factor", "data.repeat_threshold=0"])
    with pytest.raises(ConfigError, match="uniform"):
        load_config("mask_rcnn_R_50_FPN_1x", ["data.sampler=rfs"])


# ------------------------------------------------------------------ the loader
def _lvis_file(tmp_path: Path, *, size=(48, 64), write_images=True) -> Path:
    """A tiny LVIS v1 file (3 categories, 4 images under val2017/ and train2017/) and its images."""
    h, w = size
    rng = np.random.default_rng(1)
    images, anns = [], []
    for k in range(4):
        split = "val2017" if k % 2 == 0 else "train2017"
        image_id = 1000 + k
        if write_images:
            (tmp_path / split).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / split / f"{image_id:012d}.jpg")
        images.append({"id": image_id, "height": h, "width": w, "neg_category_ids": [3] if k < 2 else [],
                       "not_exhaustive_category_ids": [2] if k == 1 else [],
                       "coco_url": f"http://images.cocodataset.org/{split}/{image_id:012d}.jpg"})
        for j, (cat, x, y) in enumerate(((1, 4, 6), (2 if k % 2 else 1, 30, 20))):
            poly = [x, y, x + 20, y, x + 20, y + 18, x, y + 18]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": [x, y, 20, 18],
                         "area": 360.0, "segmentation": [poly]})
    data = {"info": {"description": "tiny"}, "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "apple", "frequency": "f", "synonyms": ["apple"]},
                           {"id": 2, "name": "bottle", "frequency": "c", "synonyms": ["bottle"]},
                           {"id": 3, "name": "crane", "frequency": "r", "synonyms": ["crane"]}]}
    path = tmp_path / "lvis_v1_tiny.json"
    path.write_text(json.dumps(data))
    return path


def test_lvis_to_coco_names_files_by_coco_url_and_keeps_the_federated_labels(tmp_path):
    path = _lvis_file(tmp_path)
    coco = lvis_to_coco(str(path))
    assert [im["file_name"] for im in coco["images"]] == [
        "val2017/000000001000.jpg", "train2017/000000001001.jpg", "val2017/000000001002.jpg", "train2017/000000001003.jpg"]
    assert coco["images"][1]["not_exhaustive_category_ids"] == [2] and coco["images"][0]["neg_category_ids"] == [3]
    assert [c["frequency"] for c in coco["categories"]] == ["f", "c", "r"] and coco["info"] == {"description": "tiny"}
    assert all(a["iscrowd"] == 0 for a in coco["annotations"])
    # A file_name that is given wins over the url.
    raw = json.loads(path.read_text())
    raw["images"][0]["file_name"] = "elsewhere/a.jpg"
    (tmp_path / "named.json").write_text(json.dumps(raw))
    assert lvis_to_coco(str(tmp_path / "named.json"))["images"][0]["file_name"] == "elsewhere/a.jpg"
    # Through the config's dataset: format lvis.
    ds = load_dataset(DatasetSpec(format="lvis", json=str(path), image_root=str(tmp_path)), training=True, verbose=False)
    assert len(ds) == 4 and ds.meta.class_names == ("apple", "bottle", "crane")
    assert ds.get(1).file_name == str(tmp_path / "train2017" / "000000001001.jpg")


def _broken(tmp_path: Path, edit) -> str:
    data = json.loads(_lvis_file(tmp_path, write_images=False).read_text())
    edit(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][2].pop("neg_category_ids"), r"broken.json \(image id 1002\) has no 'neg_category_ids'"),
    (lambda d: d["images"][3].pop("not_exhaustive_category_ids"), r"image id 1003\) has no 'not_exhaustive_category_ids'"),
    (lambda d: d["images"][0].update(neg_category_ids=[7]), r"image id 1000\): 'neg_category_ids' names category id 7"),
    (lambda d: d["images"][0].update(neg_category_ids="3"), r"image id 1000\): 'neg_category_ids' must be a list"),
    (lambda d: d["images"][1].pop("coco_url"), r"image id 1001\) has neither a 'file_name' nor a 'coco_url'"),
    (lambda d: d["categories"][1].update(frequency="x"), r"category id 2 \(bottle\) has frequency 'x'"),
    (lambda d: d["categories"][2].pop("frequency"), r"category id 3 \(crane\) has no 'frequency'"),
    (lambda d: d.pop("categories"), r"broken.json is not an LVIS annotation file: it has no 'categories' list"),
])
def test_bad_lvis_files_are_named(tmp_path, edit, message):
    with pytest.raises(DatasetError, match=message):
        lvis_to_coco(_broken(tmp_path, edit))


def test_a_missing_or_invalid_lvis_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        lvis_to_coco(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{\"images\": [")
    with pytest.raises(DatasetError, match=r"bad.json is not valid JSON"):
        lvis_to_coco(str(tmp_path / "bad.json"))


# ------------------------------------------------------------------ the evaluator against lvis-api
_CATS = [(1, "r"), (2, "r"), (3, "c"), (5, "c"), (8, "f"), (13, "f"), (21, "f"), (34, "c")]


def _quad(rng, x, y, w, h) -> list[float]:
    j = lambda: float(rng.uniform(0, 0.25))  # noqa: E731
    return [x + w * j(), y + h * j(), x + w * (1 - j()), y + h * j(), x + w * (1 - j()), y + h * (1 - j()),
            x + w * j(), y + h * (1 - j())]


def _random_lvis(seed: int) -> tuple[dict, list[dict]]:
    """Six images of LVIS ground truth (polygons, all three frequencies, negative and not-exhaustive
    lists, one area-0 annotation) and detections with boxes and RLE masks: jittered ground truth of
    the right or a wrong category, false alarms, rounded scores (ties), and one image with 340
    detections whose 40 weakest are hits that only an evaluation without the 300 cap would count."""
    rng = np.random.default_rng(seed)
    cat_ids = [c for c, _ in _CATS]
    images, anns, results = [], [], []
    for i in range(6):
        h, w = int(rng.integers(120, 256)), int(rng.integers(120, 256))
        image_id = 10 + 7 * i
        present = []
        for k in range(int(rng.integers(0, 7))):
            c = int(rng.choice(cat_ids))
            bw, bh = float(rng.uniform(4, w * 0.9)), float(rng.uniform(4, h * 0.9))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            poly = _quad(rng, x, y, bw, bh)
            rle = mask_utils.frPyObjects([poly], h, w)[0]
            area = 0.0 if k == 5 else float(mask_utils.area(rle))
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c, "area": area,
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)], "segmentation": [poly]})
            present.append(c)
        absent = [c for c in cat_ids if c not in present]
        neg = [int(c) for c in rng.choice(absent, size=min(len(absent), int(rng.integers(0, 4))), replace=False)]
        images.append({"id": image_id, "height": h, "width": w, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": sorted({int(c) for c in present if rng.random() < 0.3}),
                       "coco_url": f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg"})
        image_anns = [a for a in anns if a["image_id"] == image_id]
        n = 340 if i == 1 else int(rng.integers(0, 25))
        for d in range(n):
            weak_hit = n > 300 and d >= 300
            if image_anns and (weak_hit or (n <= 300 and rng.random() < 0.6)):
                g = image_anns[int(rng.integers(len(image_anns)))]
                x, y, bw, bh = g["bbox"]
                s = rng.uniform(-0.3, 0.3, 4) * [bw, bh, bw, bh] * (0.1 if weak_hit else 1.0)
                box = [x + s[0], y + s[1], max(1.0, bw + s[2]), max(1.0, bh + s[3])]
                c = g["category_id"] if weak_hit or rng.random() < 0.8 else int(rng.choice(cat_ids))
            else:
                bw, bh = float(rng.uniform(2, w * 0.6)), float(rng.uniform(2, h * 0.6))
                box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]
                c = int(rng.choice(cat_ids))
            box = [float(v) for v in box]
            mask = mask_utils.frPyObjects([_quad(rng, *box)], h, w)[0]
            mask["counts"] = mask["counts"].decode()
            low, high = (0.01, 0.4) if weak_hit else (0.5, 1.0) if n > 300 else (0.01, 1.0)
            results.append({"image_id": image_id, "category_id": c, "bbox": box, "segmentation": mask,
                            "score": float(np.round(rng.uniform(low, high), 2))})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"cat{c}", "frequency": f, "synonyms": [f"cat{c}"]} for c, f in _CATS]}
    return gt, results


def _lvis_api(gt_path: Path, results: list[dict], iou_type: str, monkeypatch) -> dict[str, float]:
    import lvis  # the reference, from the test extra (pip install -e ".[test]")

    # lvis 0.5.3 (its last release) still calls np.float, which numpy 1.24 removed.
    monkeypatch.setattr(np, "float", float, raising=False)
    results = copy.deepcopy(results)  # LVISResults writes into the dicts
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")  # as detectron2's LVISEvaluator: mask results are ranged by their mask areas
    evaluation = lvis.LVISEval(lvis.LVIS(str(gt_path)), results, iou_type)
    evaluation.run()
    return dict(evaluation.get_results())


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_lvis_evaluation_equals_lvis_api(tmp_path, monkeypatch, seed):
    gt, results = _random_lvis(seed)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    for iou_type in ("bbox", "segm"):
        expected = _lvis_api(path, results, iou_type, monkeypatch)
        assert evaluate_lvis(str(path), results, iou_type) == expected, iou_type
        assert evaluate_lvis(gt, copy.deepcopy(results), iou_type) == expected  # the dict, as lvis_to_coco gives it
        (tmp_path / "results.json").write_text(json.dumps(results))
        assert evaluate_lvis(str(path), str(tmp_path / "results.json"), iou_type) == expected
        assert expected["AP"] > 0
        if seed != 0:  # every range and frequency group has ground truth
            assert all(v > -1 for v in expected.values()), expected


def test_every_federated_rule_changes_the_numbers(monkeypatch):
    """The random cases exercise each rule: leaving one out would change some result."""
    changed = {"not_exhaustive": False, "negatives": False, "area_0_gt": False, "cap_300": False}
    for seed in (0, 1, 2):
        gt, results = _random_lvis(seed)
        for iou_type in ("bbox", "segm"):
            base = list(evaluate_lvis(gt, results, iou_type).values())
            for rule, edit in (("not_exhaustive", lambda im: im.update(not_exhaustive_category_ids=[])),
                               ("negatives", lambda im: im.update(neg_category_ids=[]))):
                other = copy.deepcopy(gt)
                for im in other["images"]:
                    edit(im)
                changed[rule] |= list(evaluate_lvis(other, results, iou_type).values()) != base
            other = copy.deepcopy(gt)
            for a in other["annotations"]:
                a["area"] = max(a["area"], 1.0)
            changed["area_0_gt"] |= list(evaluate_lvis(other, results, iou_type).values()) != base
            with monkeypatch.context() as m:
                m.setattr(lvis_eval, "MAX_DETS", 1000)
                changed["cap_300"] |= list(evaluate_lvis(gt, results, iou_type).values()) != base
    assert all(changed.values()), changed


def _box_case(not_exhaustive=(), negatives=()) -> dict:
    """Image 1 holds an 'a' (frequent), image 2 a 'b' (rare), both at [10, 10, 40, 40]; image 1's
    federated lists as given."""
    box, polygon = [10, 10, 40, 40], [[10, 10, 50, 10, 50, 50, 10, 50]]
    return {"images": [{"id": 1, "height": 100, "width": 100, "neg_category_ids": list(negatives),
                        "not_exhaustive_category_ids": list(not_exhaustive)},
                       {"id": 2, "height": 100, "width": 100, "neg_category_ids": [], "not_exhaustive_category_ids": []}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1600.0, "segmentation": polygon},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": box, "area": 1600.0, "segmentation": polygon}],
            "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}]}


def test_federated_rules_on_hand_made_cases():
    hits = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5},
            {"image_id": 2, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.5}]
    stray_a = {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9}
    stray_b = dict(stray_a, category_id=2)
    assert evaluate_lvis(_box_case(), hits, "bbox")["AP"] == pytest.approx(1.0)
    # A confident false alarm above the hit: precision 1/2 at full recall ...
    assert evaluate_lvis(_box_case(), [stray_a, *hits], "bbox")["APf"] == pytest.approx(0.5, abs=0.01)
    # ... unless its category is not exhaustively annotated in the image: then it is ignored.
    assert evaluate_lvis(_box_case(not_exhaustive=[1]), [stray_a, *hits], "bbox")["APf"] == pytest.approx(1.0)
    # A category the image neither holds nor lists as verified absent is not judged there ...
    assert evaluate_lvis(_box_case(), [stray_b, *hits], "bbox")["APr"] == pytest.approx(1.0)
    # ... a verified-absent one is.
    assert evaluate_lvis(_box_case(negatives=[2]), [stray_b, *hits], "bbox")["APr"] == pytest.approx(0.5, abs=0.01)
    evaluation = run_lvis_evaluation(_box_case(), hits, "bbox")
    assert evaluation.frequency_groups == [[1], [], [0]] and evaluation.metrics["APc"] == -1
    assert evaluation.summary_lines()[0] == (
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=300 catIds=all] = 1.000")


def test_the_300_detection_cap_keeps_the_top_scores_of_each_image():
    # 300 confident false alarms of a category image 1 lists as absent, then a weak hit of 'a'.
    misses = [{"image_id": 1, "category_id": 2, "bbox": [60, 60, 30, 30], "score": 0.9} for _ in range(300)]
    hit = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.1}
    gt = _box_case(negatives=[2])
    assert evaluate_lvis(gt, misses + [hit], "bbox")["APf"] == 0.0  # the hit is the 301st
    assert evaluate_lvis(gt, misses[1:] + [hit], "bbox")["APf"] == pytest.approx(1.0)
    assert lvis_eval.MAX_DETS == 300


def test_no_detections_score_zero_where_there_is_ground_truth():
    with pytest.warns(UserWarning, match="No detections"):
        metrics = evaluate_lvis(_box_case(), [], "segm")
    assert metrics["AP"] == 0.0 and metrics["APr"] == 0.0 and metrics["APc"] == -1 and metrics["APl"] == -1


def test_lvis_ground_truth_without_federated_labels_is_refused():
    gt = _box_case()
    del gt["images"][0]["neg_category_ids"]
    with pytest.raises(DatasetError, match=r"image id 1\): no 'neg_category_ids'"):
        evaluate_lvis(gt, [], "bbox")
    gt = _box_case()
    gt["categories"][0]["frequency"] = "frequent"
    with pytest.raises(DatasetError, match="category id 1 has frequency 'frequent'"):
        evaluate_lvis(gt, [], "bbox")


# ------------------------------------------------------------------ the recipe, end to end
def test_the_lvis_recipe_has_detectron2s_settings():
    cfg = load_config("mask_rcnn_R_50_FPN_lvis_1x")
    assert cfg.model.num_classes == 1203 and cfg.model.mask_on and cfg.model.arch == "rcnn"
    assert (cfg.data.sampler, cfg.data.repeat_threshold) == ("repeat_factor", 0.001)
    assert cfg.data.train.format == cfg.data.test.format == "lvis"
    assert cfg.model.box_head.score_thresh == 0.0001 and cfg.model.box_head.detections_per_image == 300
    assert cfg.input.min_size_train == (640, 672, 704, 736, 768, 800)
    assert (cfg.solver.max_iter, cfg.solver.steps) == (180000, (120000, 160000))  # the yaml's numbers


TINY = [
    "model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.batch_size_per_image=16",
    "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1", "input.min_size_train=[48]",
    "input.max_size_train=64", "input.min_size_test=48", "input.max_size_test=64", "solver.ims_per_batch=2",
    "solver.reference_batch_size=2", "solver.log_period=1", "data.num_workers=0", "test.ims_per_batch=2",
    "model.num_classes=3", "solver.steps=[]", "solver.warmup_iters=1", "solver.max_iter=2",
    "solver.checkpoint_period=2", "model.backbone.norm=BN", "model.backbone.freeze_at=0",  # no weights: train all
]


@pytest.mark.slow
def test_a_tiny_lvis_file_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    path = _lvis_file(tmp_path)
    train = [f"data.train.json={path}", f"data.train.image_root={tmp_path}"]
    test = [f"data.test.json={path}", f"data.test.image_root={tmp_path}"]
    out = tmp_path / "run"
    # Trained through the repeat-factor sampler (the recipe's) without evaluation, then evaluated by `swiftdet eval`.
    assert main(["train", "mask_rcnn_R_50_FPN_lvis_1x", *train, "data.test.json=", "data.test.image_root=", *TINY,
                 "--output", str(out)]) == 0
    assert (out / "checkpoints" / "last.pth").exists()
    capsys.readouterr()
    assert main(["eval", "mask_rcnn_R_50_FPN_lvis_1x", *train, *test, *TINY, "--weights",
                 str(out / "checkpoints" / "last.pth"), "--output", str(tmp_path / "eval")]) == 0
    records = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    metrics = records[-1]
    for iou_type in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            values = [v for key, v in metrics.items() if key.endswith(f"{iou_type}/{name}")]
            assert len(values) == 1 and -1 <= values[0] <= 1, (iou_type, name, sorted(metrics))
