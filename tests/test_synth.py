"""The synthetic shapes dataset: determinism, COCO validity, mask/box/keypoint agreement, CLI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from swiftdet.cli import synth as synth_cli
from swiftdet.demo.synth import (
    SYNTH_CATEGORIES,
    SYNTH_KEYPOINT_FLIP_MAP,
    SYNTH_KEYPOINT_NAMES,
    SYNTH_SHAPES,
    generate_synthetic_coco,
)
from swiftdet.errors import ConfigError, DatasetError

SIZE = (96, 128)  # height, width: non-square on purpose


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(out, num_train=40, num_val=6, image_size=SIZE, seed=7)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    first = _files(generate_synthetic_coco(tmp_path / "a", num_train=5, num_val=2, seed=3).image_root)
    second = _files(generate_synthetic_coco(tmp_path / "b", num_train=5, num_val=2, seed=3).image_root)
    other = _files(generate_synthetic_coco(tmp_path / "c", num_train=5, num_val=2, seed=4).image_root)
    assert first.keys() == second.keys() == other.keys()
    assert len(first) == 2 + 5 + 2
    assert first == second
    assert all(first[name] != other[name] for name in first if name.endswith(".jpg"))
    assert first["annotations/instances_train.json"] != other["annotations/instances_train.json"]


def test_masks_areas_and_boxes_agree_with_pycocotools(dataset):
    for split in ("train", "val"):
        coco = COCO(str(dataset / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == (40 if split == "train" else 6)
        for image in coco.dataset["images"]:
            assert (image["height"], image["width"]) == SIZE
            with Image.open(dataset / image["file_name"]) as picture:
                assert picture.size == (SIZE[1], SIZE[0]) and picture.mode == "RGB"
            assert 1 <= len(coco.getAnnIds(imgIds=image["id"])) <= 6
        for ann in coco.dataset["annotations"]:
            mask = coco.annToMask(ann)
            assert mask.shape == SIZE
            assert mask.sum() == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["bbox"] == [float(v) for v in tight], ann["id"]
            assert ann["iscrowd"] == 0


def test_occluded_objects_are_rle_of_their_visible_part(dataset):
    coco = COCO(str(dataset / "annotations" / "instances_train.json"))
    rle_annotations = [a for a in coco.dataset["annotations"] if isinstance(a["segmentation"], dict)]
    polygon_annotations = [a for a in coco.dataset["annotations"] if isinstance(a["segmentation"], list)]
    assert rle_annotations and polygon_annotations
    # Visible masks within an image never overlap: each pixel belongs to the top-most object.
    for image_id in coco.getImgIds():
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))]
        assert np.sum(masks, axis=0).max() <= 1


def test_keypoints_lie_on_their_object_with_coco_visibility(dataset):
    height, width = SIZE
    data = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    visibilities = []
    for ann in data["annotations"]:
        points = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
        assert points.shape == (len(SYNTH_KEYPOINT_NAMES), 3)
        assert ann["num_keypoints"] == int((points[:, 2] > 0).sum())
        visibilities += points[:, 2].tolist()
        x, y, w, h = ann["bbox"]
        for px, py, v in points:
            assert v in (0, 1, 2)
            if v == 0:
                assert (px, py) == (0, 0)
            else:
                assert 0 <= px < width and 0 <= py < height
            if v == 2:  # on the visible outline: within the visible mask's box up to rasterisation
                assert x - 2 <= px <= x + w + 2 and y - 2 <= py <= y + h + 2, ann["id"]
        shown = points[:, 2] > 0
        if shown.all():
            top, left, bottom, right = points[:, :2]
            # The names mean image directions, which is what makes the left/right flip map correct
            # (up to 0.5 px: vertices tied within 0.5 px of an extreme are averaged).
            tie = 0.5 + 1e-6
            assert top[1] <= min(left[1], right[1], bottom[1]) + tie and bottom[1] >= max(left[1], right[1]) - tie
            assert left[0] <= min(top[0], bottom[0], right[0]) + tie and right[0] >= max(top[0], bottom[0]) - tie
    assert visibilities.count(2) > 0.8 * len(visibilities)


def test_categories_and_flip_map_are_consistent(dataset):
    data = json.loads((dataset / "annotations" / "instances_val.json").read_text())
    assert data["categories"] == [dict(c) for c in SYNTH_CATEGORIES]
    assert [c["id"] for c in data["categories"]] == list(range(1, len(SYNTH_CATEGORIES) + 1))
    assert len({c["name"] for c in data["categories"]}) == len(SYNTH_CATEGORIES) >= 4
    for category in data["categories"]:
        assert category["keypoints"] == list(SYNTH_KEYPOINT_NAMES)
        for i, j in category["skeleton"]:  # COCO skeletons are 1-based
            assert 1 <= i <= len(SYNTH_KEYPOINT_NAMES) and 1 <= j <= len(SYNTH_KEYPOINT_NAMES)
    flipped = [name for pair in SYNTH_KEYPOINT_FLIP_MAP for name in pair]
    assert set(flipped) <= set(SYNTH_KEYPOINT_NAMES) and len(set(flipped)) == len(flipped)
    assert data["info"]["swiftdet_synth"]["image_size"] == list(SIZE)


def test_rerun_reuses_same_parameters_and_rebuilds_other(tmp_path):
    first = generate_synthetic_coco(tmp_path, num_train=6, num_val=2, seed=1)
    assert not first.reused
    stamp = first.train_json.stat().st_mtime_ns
    again = generate_synthetic_coco(tmp_path, num_train=6, num_val=2, seed=1)
    assert again.reused and again.train_json.stat().st_mtime_ns == stamp
    smaller = generate_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1)
    assert not smaller.reused
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    # A missing image makes the dataset incomplete, so it is rebuilt.
    (tmp_path / "val" / "000001.jpg").unlink()
    assert not generate_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1).reused
    assert (tmp_path / "val" / "000001.jpg").is_file()


def _cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_the_dataset(tmp_path, capsys):
    assert synth_cli.NAME == "synth"
    assert synth_cli.run(_cli_args(str(tmp_path), "--images", "5", "--size", "64", "80", "--seed", "2")) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "annotations" / "instances_train.json") in out
    train = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    val = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert len(train["images"]) == 5 and len(val["images"]) == 1  # default val: N // 5, at least 1
    assert (train["images"][0]["height"], train["images"][0]["width"]) == (64, 80)
    assert all((tmp_path / image["file_name"]).is_file() for image in train["images"] + val["images"])


@pytest.mark.parametrize(
    "argv",
    [("--images", "0"), ("--images", "3", "--val-images", "-1"), ("--images", "3", "--size", "64", "64", "64"),
     ("--images", "3", "--size", "8")],
)
def test_cli_bad_arguments_raise_config_error(tmp_path, argv):
    with pytest.raises(ConfigError):
        synth_cli.run(_cli_args(str(tmp_path), *argv))


def test_unwritable_output_raises_dataset_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="a_file"):
        generate_synthetic_coco(blocker / "out", num_train=2, num_val=1)


def test_synth_recipes_have_one_class_per_shape():
    from swiftdet.config.core import load_config
    from swiftdet.configs._synth import SYNTH_NUM_CLASSES

    assert SYNTH_NUM_CLASSES == len(SYNTH_SHAPES) == len(SYNTH_CATEGORIES)
    for recipe in ("demo_mask_rcnn", "synth_retinanet_R_18_FPN", "synth_fcos_R_18_FPN"):
        assert load_config(recipe).model.num_classes == len(SYNTH_SHAPES)
