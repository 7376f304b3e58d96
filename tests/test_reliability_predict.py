"""Issue 16 on the predict / eval / coco-eval / convert paths: a user's images are never written over
or read back as inputs, results numbered by file position are not evaluated against other ids, a
checkpoint is run with its own classes and test sizes, one unreadable image does not cost the rest,
and no error message suggests a flag that its verb lacks."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from swiftdet.cli.main import build_parser, main
from swiftdet.config.core import config_to_dict, load_config
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.errors import WeightsError
from swiftdet.inference import Predictor
from swiftdet.model.build import build_model
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights import make_checkpoint

CONFIG = "mask_rcnn_R_50_FPN_1x"
MODEL = [
    "model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=32", "model.box_head.fc_dim=64",
    "model.mask_head.conv_dim=16", "model.box_head.detections_per_image=5", "model.rpn.post_nms_topk_test=50",
]
SIZES = ["input.min_size_test=64", "input.max_size_test=96"]
SMALL = MODEL + SIZES  # as tests/test_predictor.py


def _save(cfg, path, meta=None, bare=False):
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if bare:
        torch.save(model.state_dict(), path)
    else:
        atomic_torch_save(make_checkpoint(model, config_to_dict(cfg), meta or {}), path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A run's model file: SMALL's model and test sizes stored in it, three classes with ids."""
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    return _save(load_config(CONFIG, SMALL), path, {"class_names": ["a", "b", "c"], "category_ids": [5, 7, 9]})


def _image(path, h=30, w=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _predict(weights, inputs, output, *extra):
    return main(["predict", *SMALL, "--config", CONFIG, "--weights", str(weights), "--input", *map(str, inputs),
                 "--output", str(output), "--score-thresh", "0", *extra])


def _flags_of(verb: str) -> set[str]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    return {flag for action in sub.choices[verb]._actions for flag in action.option_strings}


def _suggests_only_existing_flags(verb: str, message: str) -> None:
    suggested = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", message))
    assert suggested <= _flags_of(verb), f"{verb} suggests {suggested - _flags_of(verb)}: {message}"


# ------------------------------------------------------------------------------------------------
# 1. Never write over an input, never read our own drawings back
# ------------------------------------------------------------------------------------------------
def test_output_folder_equal_to_the_input_folder_is_refused_and_the_images_stay(weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    originals = {p.name: p.read_bytes() for p in (_image(photos / "a.jpg"), _image(photos / "b.png", seed=1))}
    assert _predict(weights, [photos], photos) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "overwrite your images" in err and "predictions" in err
    _suggests_only_existing_flags("predict", err)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == originals  # nothing written, nothing replaced
    # The same for an image named directly whose folder is the output folder.
    assert _predict(weights, [photos / "a.jpg"], photos) == 2
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == originals


def test_output_folder_inside_the_input_folder_is_not_read_back(weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    _image(photos / "a.jpg")
    _image(photos / "sub" / "b.jpg", seed=1)
    out = photos / "predictions"
    for run in range(2):  # the second run must not predict on the first run's drawings
        assert _predict(weights, [photos], out) == 0
        results = json.loads((out / "predictions.json").read_text())
        assert sorted({r["file_name"] for r in results}) == [str(photos / "a.jpg"), str(photos / "sub" / "b.jpg")]
        assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg", "predictions.json"]
        assert ("left out 2 images under the output folder" in capsys.readouterr().out) == (run == 1)


# ------------------------------------------------------------------------------------------------
# 5. Results numbered by file position are not evaluated against a ground truth with other ids
# ------------------------------------------------------------------------------------------------
def _ground_truth(tmp_path, names):
    gt = {"images": [{"id": 100 + 10 * i, "file_name": f"val/{n}", "height": 30, "width": 40} for i, n in enumerate(names)],
          "annotations": [{"id": i + 1, "image_id": 100 + 10 * i, "category_id": 5, "bbox": [2, 2, 10, 10], "area": 100,
                           "iscrowd": 0} for i in range(len(names))],
          "categories": [{"id": c, "name": str(c)} for c in (5, 7, 9)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_coco_eval_refuses_results_whose_file_names_are_other_images(weights, tmp_path, capsys):
    # The ground truth lists b.jpg first: predict's positions (a.jpg = 0 ...) are not its ids.
    gt = _ground_truth(tmp_path, ["b.jpg", "a.jpg"])
    images = [_image(tmp_path / "in" / "a.jpg"), _image(tmp_path / "in" / "b.jpg", seed=1)]
    assert _predict(weights, images, tmp_path / "out") == 0
    # Ids 0 and 1 are no ids of the ground truth: already refused. Renumber them as a user might.
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    for r in results:
        r["image_id"] = 100 + 10 * r["image_id"]
    (tmp_path / "renumbered.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert main(["coco-eval", str(gt), str(tmp_path / "renumbered.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "image id 100 is 'val/b.jpg'" in err and "a.jpg" in err and f"--coco-json {gt}" in err
    # Predicted with --coco-json, the ids are the ground truth's and the file names agree.
    assert _predict(weights, images, tmp_path / "out2", "--coco-json", str(gt)) == 0
    assert main(["coco-eval", str(gt), str(tmp_path / "out2" / "predictions.json")]) == 0
    # Results without file names are evaluated as before (pycocotools' format has none).
    plain = [{k: v for k, v in r.items() if k != "file_name"} for r in results]
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    assert main(["coco-eval", str(gt), str(tmp_path / "plain.json")]) == 0


# ------------------------------------------------------------------------------------------------
# 7. A checkpoint runs with its own classes and test sizes
# ------------------------------------------------------------------------------------------------
def test_predict_refuses_a_checkpoint_of_another_class_count_naming_both(tmp_path, capsys):
    two = _save(load_config(CONFIG, [*SMALL, "model.num_classes=2"]), tmp_path / "two.pth",
                {"class_names": ["a", "b"], "category_ids": [1, 2]})
    image = _image(tmp_path / "in" / "a.jpg")
    # The command line asks for 3 classes explicitly (SMALL): the file has 2.
    assert _predict(two, [image], tmp_path / "out") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "trained for 2 classes" in err and "model.num_classes=3" in err
    assert not (tmp_path / "out" / "predictions.json").exists()
    # A bare state_dict (no config to take the classes from) the same, also from Python.
    bare = _save(load_config(CONFIG, [*SMALL, "model.num_classes=2"]), tmp_path / "bare.pth", bare=True)
    with pytest.raises(WeightsError, match=r"trained for 2 classes, but this model has 3"):
        Predictor(load_config(CONFIG, SMALL), str(bare))


def test_predict_with_a_built_in_name_uses_the_checkpoint_config_and_says_so(weights, tmp_path, capsys):
    image = _image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "out"
    # Only the built-in name: R-50, 80 classes, 800-pixel tests; the file is SMALL's R-18 at 64 pixels.
    assert main(["predict", "--config", CONFIG, "--weights", str(weights), "--input", str(image), "--output", str(out),
                 "--score-thresh", "0"]) == 0
    printed = capsys.readouterr().out
    [note] = [line for line in printed.splitlines() if line.startswith("Using the model and input settings")]
    assert "input.min_size_test 800 -> 64" in note and str(weights) in note
    assert {r["category_id"] for r in json.loads((out / "predictions.json").read_text())} <= {5, 7, 9}
    # Python: the same config; an explicit override still wins; the run's own config says nothing.
    predictor = Predictor.from_config(CONFIG, str(weights))
    assert (predictor.cfg.input.min_size_test, predictor.cfg.model.backbone.depth) == (64, 18)
    assert Predictor.from_config(CONFIG, str(weights), ["input.min_size_test=80"]).cfg.input.min_size_test == 80
    assert main(["predict", *SMALL, "--config", CONFIG, "--weights", str(weights), "--input", str(image),
                 "--output", str(out)]) == 0
    assert "Using the model and input settings" not in capsys.readouterr().out


TINY_MODEL = [
    "model.backbone.norm=FrozenBN", "model.fpn.out_channels=16", "model.fpn.norm=", "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.mask_head.conv_dim=8",
    "model.mask_head.num_convs=1", "model.mask_head.norm=", "model.box_head.score_thresh=0",
]
TINY_SIZES = ["input.min_size_test=64", "input.max_size_test=64"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=2, num_val=2, image_size=(64, 64), seed=0)
    val = root / "annotations" / "instances_val.json"
    classes = len(json.loads(val.read_text())["categories"])
    return root, [f"data.test.json={val}", f"data.test.image_root={root}", f"model.num_classes={classes}"], classes


def test_eval_uses_the_checkpoint_test_sizes_and_says_so(synth, tmp_path, capsys):
    root, data, _ = synth
    run_file = _save(load_config("demo_mask_rcnn", [*TINY_MODEL, *TINY_SIZES, *data]), tmp_path / "best.pth")
    # The built-in config at its own test size, as `swiftdet eval demo_mask_rcnn --weights run/best.pth` gives it.
    assert main(["eval", "demo_mask_rcnn", *TINY_MODEL, *data, "--weights", str(run_file),
                 "--output", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    [note] = [line for line in printed.splitlines() if line.startswith("Using the model and input settings")]
    assert "input.min_size_test" in note and "-> 64" in note
    assert "bbox/AP" in json.loads((tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()[0])


def test_eval_refuses_a_checkpoint_of_another_class_count_naming_both(synth, tmp_path, capsys):
    root, data, classes = synth
    other = _save(load_config("demo_mask_rcnn", [*TINY_MODEL, *TINY_SIZES, *data, f"model.num_classes={classes + 2}"]),
                  tmp_path / "other.pth", bare=True)
    assert main(["eval", "demo_mask_rcnn", *TINY_MODEL, *TINY_SIZES, *data, "--weights", str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"trained for {classes + 2} classes" in err and f"model.num_classes={classes}" in err
    _suggests_only_existing_flags("eval", err)


# ------------------------------------------------------------------------------------------------
# One unreadable image does not cost the others
# ------------------------------------------------------------------------------------------------
def test_unreadable_image_is_skipped_listed_and_strict_makes_it_an_error(weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    _image(photos / "a.jpg")
    _image(photos / "c.jpg", seed=2)
    (photos / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    assert _predict(weights, [photos], out, "--batch-size", "2") == 0
    printed = capsys.readouterr().out
    assert f"skipped {photos / 'b.jpg'}" in printed and "1 unreadable image(s) skipped" in printed
    results = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in results} == {str(photos / "a.jpg"), str(photos / "c.jpg")}
    # Positions in the sorted list: c.jpg stays image 2.
    assert {r["image_id"] for r in results} == {0, 2}
    assert (out / "skipped_images.txt").read_text().startswith(f"{photos / 'b.jpg'}\t")
    # --strict: the same files written, then exit code 2 naming the file.
    assert _predict(weights, [photos], out, "--strict") == 2
    assert "b.jpg" in capsys.readouterr().err and (out / "predictions.json").is_file()
    # Nothing readable at all is an error also without --strict.
    assert _predict(weights, [photos / "b.jpg"], tmp_path / "none") == 2
    assert "no input image could be read" in " ".join(capsys.readouterr().err.split())
    # A later clean run leaves no stale list behind.
    (photos / "b.jpg").unlink()
    assert _predict(weights, [photos], out) == 0
    assert not (out / "skipped_images.txt").exists()


# ------------------------------------------------------------------------------------------------
# Hints point at flags and files that exist
# ------------------------------------------------------------------------------------------------
def test_pickled_file_hints_name_only_flags_of_the_verb(synth, tmp_path, capsys):
    root, data, _ = synth
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pth")
    image = _image(tmp_path / "in" / "a.jpg")
    for verb, argv in [
        ("predict", ["predict", "--config", CONFIG, "--weights", str(tmp_path / "pickled.pth"), "--input", str(image),
                     "--output", str(tmp_path / "out")]),
        ("eval", ["eval", "demo_mask_rcnn", *data, "--weights", str(tmp_path / "pickled.pth")]),
        ("convert", ["convert", "torchvision", str(tmp_path / "pickled.pth"), str(tmp_path / "c.pth"), "--config", CONFIG]),
    ]:
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "pickled Python objects" in err, verb
        _suggests_only_existing_flags(verb, err)
    assert "--allow-pickle" in err  # convert has the flag, so it says so
    # convert given a swiftdet checkpoint points at the verbs that take --weights.
    assert main(["convert", "torchvision", str(tmp_path / "c.pth"), str(tmp_path / "d.pth"), "--config", CONFIG]) == 2
    _save(load_config(CONFIG, SMALL), tmp_path / "ours.pth")
    assert main(["convert", "torchvision", str(tmp_path / "ours.pth"), str(tmp_path / "d.pth"), "--config", CONFIG]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "swiftdet predict / swiftdet eval --weights" in err


def test_eval_of_another_architecture_does_not_suggest_a_missing_flag(synth, tmp_path, capsys):
    root, data, _ = synth
    wide = _save(load_config("demo_mask_rcnn", [*TINY_MODEL, *data, "model.fpn.out_channels=32"]), tmp_path / "wide.pth",
                 bare=True)
    assert main(["eval", "demo_mask_rcnn", *TINY_MODEL, *data, "--weights", str(wide)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "another architecture or backbone" in err
    _suggests_only_existing_flags("eval", err)


def test_truncated_file_points_at_checkpoints_that_exist(tmp_path, capsys):
    (tmp_path / "download.pth").write_bytes(b"PK\x03\x04 not all there")
    image = _image(tmp_path / "in" / "a.jpg")
    argv = ["predict", *SMALL, "--config", CONFIG, "--input", str(image), "--output", str(tmp_path / "out"), "--weights"]
    assert main([*argv, str(tmp_path / "download.pth")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "truncated" in err and "model_" not in err  # no run folder, so no older checkpoint to point at
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    _save(load_config(CONFIG, SMALL), run / "model_0000010.pth")
    (run / "model_0000020.pth").write_bytes(b"PK\x03\x04 not all there")
    assert main([*argv, str(run / "model_0000020.pth")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert str(run / "model_0000010.pth") in err
