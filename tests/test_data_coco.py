"""COCO loading, validation, the load summary, packed storage and custom records."""
from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from swiftdet.config.schema import DatasetSpec
from swiftdet.data import DatasetMeta, DetectionDataset, load_coco, load_dataset
from swiftdet.data.rle import rle_counts_from_string
from swiftdet.errors import ConfigError, DatasetError


def _coco() -> dict:
    """Two images (40x60 and 30x20), categories 7 and 3 (so contiguous order is 3, 7)."""
    square = np.zeros((40, 60), dtype=np.uint8, order="F")
    square[10:20, 5:25] = 1
    rle = mask_utils.encode(square)
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 11, "file_name": "sub/b.png", "height": 30, "width": 20},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0,
             "segmentation": [[1, 2, 11, 2, 11, 22], [3, 3, 5, 3, 5, 5, 3, 5]]},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5, 10, 20, 10], "iscrowd": 1,
             "segmentation": {"size": [40, 60], "counts": rle["counts"].decode("ascii")}},
            {"id": 3, "image_id": 11, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 0,
             "segmentation": {"size": [30, 20], "counts": [0, 5, 595]}},
            {"id": 4, "image_id": 10, "category_id": 3, "bbox": [2, 2, 0, 4], "iscrowd": 0},
        ],
    }


def _write(tmp_path, data, name="ann.json", images=False):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    if images:
        for im in data["images"]:
            f = tmp_path / im["file_name"]
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((im["height"], im["width"], 3), np.uint8)).save(f)
    return path


def _load(tmp_path, data, **kw):
    kw.setdefault("check_images", False)
    kw.setdefault("verbose", False)
    return load_coco(_write(tmp_path, data), tmp_path, **kw)


def test_synthetic_coco_contents(tmp_path):
    ds = load_coco(_write(tmp_path, _coco(), images=True), tmp_path, verbose=False)
    assert len(ds) == 2 and len(ds.annotations) == 4
    assert ds.meta.class_names == ("three", "seven") and ds.meta.category_ids == (3, 7)
    r = ds.get(0)
    assert r.image_id == 10 and r.file_name == str(tmp_path / "a.png")
    assert r.annotation_ids.tolist() == [1, 2, 4]  # json order within an image
    np.testing.assert_allclose(r.boxes[0], [1, 2, 11, 22])  # xywh -> xyxy
    assert r.labels.tolist() == [1, 0, 0]  # category 7 -> 1, 3 -> 0
    assert r.iscrowd.tolist() == [False, True, False]
    assert [len(p) for p in r.segmentations[0]] == [6, 8]
    np.testing.assert_allclose(r.segmentations[0][1], [3, 3, 5, 3, 5, 5, 3, 5])
    assert r.segmentations[2] is None
    # Compressed RLE kept byte for byte; it decodes to the same square.
    decoded = mask_utils.decode(r.segmentations[1])
    assert decoded[10:20, 5:25].all() and decoded.sum() == 200
    # Uncompressed counts are stored compressed.
    r1 = ds.get(1)
    assert isinstance(r1.segmentations[0]["counts"], bytes)
    assert mask_utils.decode(r1.segmentations[0]).sum() == 5
    assert r.keypoints is None and not ds.has_keypoints and ds.has_masks


def test_contiguous_ids_round_trip(tmp_path):
    ds = _load(tmp_path, _coco())
    to_label = ds.meta.label_of_category()
    for label, cid in enumerate(ds.meta.category_ids):
        assert to_label[cid] == label
    assert DatasetMeta.from_dict(json.loads(json.dumps(ds.meta.to_dict()))) == ds.meta


def test_evaluation_keeps_everything_and_training_drops_counted(tmp_path, capsys):
    data = _coco()
    data["images"].append({"id": 12, "file_name": "c.png", "height": 10, "width": 10})
    ds = load_coco(_write(tmp_path, data), tmp_path, check_images=False)
    out = capsys.readouterr().out
    assert "3 images, 4 annotations (1 crowd" in out and "kept 1 annotations with a zero-width" in out
    assert ds.load_summary.kept_degenerate_boxes == 1

    ds = load_coco(_write(tmp_path, data), tmp_path, check_images=False, training=True)
    out = capsys.readouterr().out
    s = ds.load_summary
    assert (s.dropped_degenerate_boxes, s.dropped_images_empty, s.num_images, s.num_annotations, s.num_crowd) == (1, 1, 2, 3, 1)
    assert "dropped 1 annotations with a zero-width or zero-height box" in out
    assert "dropped 1 images without a usable annotation" in out
    assert [ds.get(i).image_id for i in range(len(ds))] == [10, 11]
    # Crowd stays in the dataset; the degenerate box (annotation 4) is gone.
    assert ds.get(0).annotation_ids.tolist() == [1, 2]

    ds = _load(tmp_path, data, training=True, filter_empty=False)
    assert len(ds) == 3 and ds.load_summary.dropped_images_empty == 0


def test_only_crowd_image_is_empty_for_training(tmp_path):
    data = _coco()
    data["annotations"] = [a for a in data["annotations"] if a["id"] == 2]
    ds = _load(tmp_path, data, training=True)
    assert len(ds) == 0 and ds.load_summary.dropped_images_empty == 2


def test_packed_storage_has_no_per_record_objects(tmp_path):
    ds = _load(tmp_path, _coco())
    arrays, others = [], []

    def walk(obj):
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, DatasetMeta):
            for v in vars(obj).values():
                walk(v)
        elif isinstance(obj, (list, tuple, dict)):
            others.append(obj)

    walk(ds)
    assert 10 <= len(arrays) <= 25, len(arrays)
    assert all(a.dtype != object for a in arrays)
    assert others == []  # no Python containers besides the (small) meta
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.get(0).annotation_ids.tolist() == ds.get(0).annotation_ids.tolist()


def test_rle_string_decoder_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = np.asfortranarray(rng.random((37, 23)) > 0.6)
    rle = mask_utils.encode(mask.astype(np.uint8))
    runs = rle_counts_from_string(rle["counts"])
    assert sum(runs) == 37 * 23
    flat = np.concatenate([np.full(n, i % 2, dtype=np.uint8) for i, n in enumerate(runs)])
    np.testing.assert_array_equal(flat.reshape(23, 37).T, mask)


# ------------------------------------------------------------------ rejections, one test each
def _expect(tmp_path, data, *fragments, **kw):
    with pytest.raises(DatasetError) as e:
        _load(tmp_path, data, **kw)
    msg = str(e.value)
    for f in ("ann.json",) + fragments:
        assert f in msg, (f, msg)
    return msg


def test_missing_json(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_coco(tmp_path / "nope.json", tmp_path)


def test_not_json(tmp_path):
    p = tmp_path / "ann.json"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match=r"ann.json is not valid JSON.*line 1"):
        load_coco(p, tmp_path)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_not_coco_missing_key(tmp_path, key):
    data = _coco()
    del data[key]
    _expect(tmp_path, data, f"no '{key}' list")


def test_not_coco_wrong_type(tmp_path):
    data = _coco()
    data["annotations"] = {"1": {}}
    _expect(tmp_path, data, "'annotations' is a dict, not a list")


def test_duplicate_image_id(tmp_path):
    data = _coco()
    data["images"][1]["id"] = 10
    _expect(tmp_path, data, "image id 10 appears more than once")


def test_duplicate_annotation_id(tmp_path):
    data = _coco()
    data["annotations"][2]["id"] = 1
    _expect(tmp_path, data, "image id 11", "annotation id 1", "appears more than once")


def test_unknown_image_id(tmp_path):
    data = _coco()
    data["annotations"][0]["image_id"] = 99
    _expect(tmp_path, data, "image id 99", "annotation id 1", "not in the images list")


def test_unknown_category_id(tmp_path):
    data = _coco()
    data["annotations"][2]["category_id"] = 5
    _expect(tmp_path, data, "image id 11", "annotation id 3", "category id 5")


def test_odd_polygon(tmp_path):
    data = _coco()
    data["annotations"][0]["segmentation"] = [[1, 2, 11, 2, 11, 22, 5]]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "odd number of coordinates")


def test_polygon_with_two_points(tmp_path):
    data = _coco()
    data["annotations"][0]["segmentation"][1] = [3, 3, 5, 3]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "polygon 1", "only 2 points")


def test_polygon_far_outside_image(tmp_path):
    # A point at 1e12 (a wrong format, or a fuzzed file) would make rasterising it exhaust the memory.
    data = _coco()
    data["annotations"][0]["segmentation"][1] = [3, 3, 1e12, 3, 5, 5]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "polygon has a point outside the 60x40")


def test_polygon_slightly_outside_is_accepted(tmp_path):
    data = _coco()
    data["annotations"][0]["segmentation"][1] = [3, 3, 61.5, 3, 5, -1.5]  # within the 2 px tolerance
    assert len(_load(tmp_path, data)) == 2


def test_flat_polygon_instead_of_list_of_polygons(tmp_path):
    data = _coco()
    data["annotations"][0]["segmentation"] = [1, 2, 11, 2, 11, 22]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "not a list of numbers")


def test_malformed_rle_counts(tmp_path):
    data = _coco()
    data["annotations"][2]["segmentation"]["counts"] = [0, 5, 500]
    _expect(tmp_path, data, "image id 11", "annotation id 3", "malformed RLE", "sum to 505")


def test_malformed_rle_size(tmp_path):
    data = _coco()
    data["annotations"][1]["segmentation"]["size"] = [60, 40]
    _expect(tmp_path, data, "image id 10", "annotation id 2", "RLE size [60, 40] differs")


def test_malformed_rle_string(tmp_path):
    data = _coco()
    data["annotations"][1]["segmentation"]["counts"] = "\x01\x02"
    _expect(tmp_path, data, "image id 10", "annotation id 2", "cannot be decoded")


def test_box_far_outside_image(tmp_path):
    data = _coco()
    data["annotations"][2]["bbox"] = [10, 0, 15, 5]  # ends at x = 25 in a 20 px wide image
    _expect(tmp_path, data, "image id 11", "annotation id 3", "outside the 20x30")


def test_box_slightly_outside_is_accepted(tmp_path):
    data = _coco()
    data["annotations"][2]["bbox"] = [10, 0, 11.5, 5]  # 1.5 px beyond: within the 2 px tolerance
    assert len(_load(tmp_path, data)) == 2


def test_negative_box_size(tmp_path):
    data = _coco()
    data["annotations"][0]["bbox"] = [10, 2, -3, 20]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "negative width or height")


def test_missing_bbox_key(tmp_path):
    data = _coco()
    del data["annotations"][2]["bbox"]
    _expect(tmp_path, data, "image id 11", "annotation id 3", "no 'bbox'")


def test_missing_image_file(tmp_path):
    data = _coco()
    path = _write(tmp_path, data, images=True)
    (tmp_path / "sub" / "b.png").unlink()
    with pytest.raises(DatasetError) as e:
        load_coco(path, tmp_path, verbose=False)
    assert "ann.json" in str(e.value) and "1 of 2 image files are missing" in str(e.value) and "image id 11" in str(e.value)
    assert len(load_coco(path, tmp_path, check_images=False, verbose=False)) == 2


def test_wrong_keypoint_length(tmp_path):
    data = _coco()
    data["categories"][0]["keypoints"] = ["left_eye", "right_eye"]
    data["annotations"][0]["keypoints"] = [1, 2, 2, 3, 4, 2, 5]
    _expect(tmp_path, data, "image id 10", "annotation id 1", "keypoints has 7 values", "6 values")


# ------------------------------------------------------------------ keypoints, records, specs
def test_keypoint_dataset_and_training_filter(tmp_path):
    data = _coco()
    data["categories"][0].update(keypoints=["nose", "left_eye", "right_eye"], skeleton=[[1, 2], [1, 3]])
    data["annotations"][0]["keypoints"] = [4, 5, 2, 6, 7, 1, 0, 0, 0]
    data["annotations"][2]["category_id"] = 7
    data["annotations"][2]["keypoints"] = [0] * 9
    ds = _load(tmp_path, data)
    assert ds.meta.keypoint_names == ("nose", "left_eye", "right_eye") and ds.meta.skeleton == ((0, 1), (0, 2))
    np.testing.assert_array_equal(ds.get(0).keypoints[0], [[4, 5, 2], [6, 7, 1], [0, 0, 0]])
    assert ds.get(0).keypoints.shape == (3, 3, 3)  # annotations without keypoints: all zeros
    ds = _load(tmp_path, data, training=True)
    assert [ds.get(i).image_id for i in range(len(ds))] == [10]
    assert ds.load_summary.dropped_images_without_keypoints == 1


def test_from_records_validated_like_coco(tmp_path):
    meta = DatasetMeta(class_names=("cat", "dog"))
    records = [
        {"file_name": "x.png", "height": 40, "width": 60, "image_id": 5, "annotations": [
            {"bbox": [1, 2, 11, 22], "category_id": 0},
            {"bbox": [1, 2, 10, 20], "bbox_mode": "xywh", "category_id": 1, "segmentation": [[1, 2, 11, 2, 11, 22]]},
        ]},
        {"file_name": "y.png", "height": 30, "width": 20, "image_id": 6, "annotations": []},
    ]
    ds = DetectionDataset.from_records(records, meta, check_images=False, verbose=False)
    r = ds.get(0)
    np.testing.assert_allclose(r.boxes, [[1, 2, 11, 22], [1, 2, 11, 22]])
    assert r.labels.tolist() == [0, 1] and r.annotation_ids.tolist() == [1, 2]
    bad = copy.deepcopy(records)
    bad[0]["annotations"][0]["category_id"] = 4
    with pytest.raises(DatasetError, match=r"records.*image id 5.*annotation id 1.*category id 4"):
        DetectionDataset.from_records(bad, meta, check_images=False, verbose=False)
    bad = copy.deepcopy(records)
    bad[1]["annotations"] = [{"bbox": [0, 0, 50, 5], "category_id": 0}]
    with pytest.raises(DatasetError, match=r"image id 6.*annotation id 3.*outside"):
        DetectionDataset.from_records(bad, meta, check_images=False, verbose=False)
    assert len(DetectionDataset.from_records(records, meta, check_images=False, training=True, verbose=False)) == 1


def test_load_dataset_spec_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train\.json is empty"):
        load_dataset(DatasetSpec(), training=True)
    with pytest.raises(ConfigError, match=r"data\.test\.image_root is empty"):
        load_dataset(DatasetSpec(json="x.json"), training=False, field="data.test")
    with pytest.raises(DatasetError, match="is not an existing folder"):
        load_dataset(DatasetSpec(json="x.json", image_root=str(tmp_path / "none")), training=False)
    path = _write(tmp_path, _coco(), images=True)
    ds = load_dataset(DatasetSpec(json=str(path), image_root=str(tmp_path)), training=True, verbose=False)
    assert len(ds) == 2


# ------------------------------------------------------------------ the real COCO subset
def test_tiny_coco_counts(tiny_coco):
    ann = tiny_coco / "annotations"
    val = load_coco(ann / "instances_val.json", tiny_coco, verbose=False)
    assert (len(val), len(val.annotations), int(val.annotations.iscrowd.sum())) == (50, 382, 5)
    assert val.meta.num_classes == 80 and val.meta.category_ids[0] == 1 and val.meta.category_ids[-1] == 90
    assert len(set(val.annotations.labels.tolist())) == 48
    train = load_coco(ann / "instances_train.json", tiny_coco, verbose=False)
    assert (len(train), len(train.annotations), int(train.annotations.iscrowd.sum())) == (50, 470, 5)
    kp = load_coco(ann / "person_keypoints_val.json", tiny_coco, verbose=False)
    assert kp.meta.num_keypoints == 17 and len(kp.annotations) == 127 and len(kp.meta.skeleton) == 19
    with_kp = (kp.annotations.keypoints[:, :, 2] > 0).any(axis=1).sum()
    assert with_kp == 46
    # Cross-check every box and label against the raw json.
    raw = json.loads((ann / "instances_val.json").read_text())
    by_id = {a["id"]: a for a in raw["annotations"]}
    for i in range(len(val)):
        r = val.get(i)
        for aid, box, label in zip(r.annotation_ids, r.boxes, r.labels):
            a = by_id[int(aid)]
            x, y, w, h = a["bbox"]
            np.testing.assert_allclose(box, [x, y, x + w, y + h], rtol=1e-6)
            assert val.meta.category_ids[label] == a["category_id"] and a["image_id"] == r.image_id
