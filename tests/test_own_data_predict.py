"""Issue 13, "your own data, start to finish": a run's files (config.yaml, model_final.pth, any
checkpoint) predict and evaluate as they are, predict takes a COCO json's images with their ids,
--coco-json matches by the json's relative file names, and predict / eval say how fast they go."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from swiftdet.cli.main import build_parser, main
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.inference import Predictor
from swiftdet.weights import read_checkpoint
from test_config_fields import TINY_RCNN  # the Mask R-CNN that trains two iterations in seconds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(synthetic dataset root, folder of a finished two-iteration training run)."""
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=4, num_val=2, image_size=(64, 64), seed=0)
    out = tmp_path_factory.mktemp("run") / "train"
    data = [f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
            f"data.test.json={root / 'annotations' / 'instances_val.json'}", f"data.test.image_root={root}"]
    assert main(["train", "demo_mask_rcnn", *data, *TINY_RCNN, "solver.max_iter=2", "solver.ims_per_batch=2",
                 "solver.reference_batch_size=2", "solver.warmup_iters=1", "solver.checkpoint_period=2",
                 "test.eval_period=2", "test.ims_per_batch=2", "--output", str(out)]) == 0
    return root, out


def _val_json(root: Path) -> Path:
    return root / "annotations" / "instances_val.json"


def test_train_writes_model_final_with_the_model_only(run):
    _, out = run
    final = read_checkpoint(out / "model_final.pth")
    assert set(final) == {"format", "model", "config", "meta"}  # no optimizer, scheduler, RNG or loader state
    last = read_checkpoint(out / "checkpoints" / "last.pth")
    assert "optimizer" in last and "rng" in last
    assert final["model"].keys() == last["model"].keys()
    assert all(torch.equal(final["model"][k], last["model"][k]) for k in final["model"])
    assert final["meta"] == last["meta"] and final["config"] == last["config"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["model_final.pth", "checkpoints/last.pth", "checkpoints/model_0000002.pth"])
def test_a_runs_files_predict_and_evaluate(run, tmp_path, name, capsys):
    root, out = run
    weights, config = str(out / name), str(out / "config.yaml")
    assert main(["predict", "--config", config, "--weights", weights, "--input", str(root / "val"),
                 "--output", str(tmp_path / "pred"), "--score-thresh", "0"]) == 0
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert main(["eval", config, "--weights", weights]) == 0
    assert "bbox (2 images" in capsys.readouterr().out  # the AP table of the two val images
    [result] = Predictor.from_config(config, weights=weights, score_thresh=0.0)(str(root / "val" / "000001.jpg"))
    assert len(result) > 0


def test_images_from_predicts_the_jsons_images_with_its_ids(run, tmp_path, capsys):
    root, out = run
    gt = json.loads(_val_json(root).read_text())
    pred = tmp_path / "pred"
    # No --input and no --image-root: the images are under the folder above annotations/.
    assert main(["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                 "--images-from", str(_val_json(root)), "--output", str(pred), "--score-thresh", "0"]) == 0
    results = json.loads((pred / "predictions.json").read_text())
    by_id = {img["id"]: img["file_name"] for img in gt["images"]}
    assert {r["image_id"] for r in results} == set(by_id)
    assert all(r["file_name"] == by_id[r["image_id"]] for r in results)
    assert main(["coco-eval", str(_val_json(root)), str(pred / "predictions.json"), "--iou-type", "bbox"]) == 0
    # An explicit --image-root gives the same.
    again = tmp_path / "again"
    assert main(["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                 "--images-from", str(_val_json(root)), "--image-root", str(root), "--output", str(again),
                 "--score-thresh", "0"]) == 0
    assert json.loads((again / "predictions.json").read_text()) == results


def test_images_from_with_a_wrong_root_names_image_root(run, tmp_path, capsys):
    root, out = run
    code = main(["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                 "--images-from", str(_val_json(root)), "--image-root", str(tmp_path), "--output", str(tmp_path / "p")])
    assert code == 2 and "--image-root" in capsys.readouterr().err


def test_predict_needs_input_or_images_from(run, tmp_path, capsys):
    root, out = run
    base = ["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
            "--output", str(tmp_path / "p")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--input" in err and "--images-from" in err and "Traceback" not in err
    assert main([*base, "--input", str(root / "val"), "--images-from", str(_val_json(root))]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--input", str(root / "val"), "--image-root", str(root)]) == 2
    assert "--image-root goes with" in capsys.readouterr().err


def test_coco_json_matches_by_the_relative_file_name(run, tmp_path, capsys):
    root, out = run
    # Two images with one base name in two folders: by base name both would get the first id.
    data = tmp_path / "data"
    for sub in ("a", "b"):
        (data / sub).mkdir(parents=True)
    shutil.copy(root / "val" / "000001.jpg", data / "a" / "0001.jpg")
    shutil.copy(root / "val" / "000002.jpg", data / "b" / "0001.jpg")
    gt = {"images": [{"id": 10, "file_name": "a/0001.jpg", "width": 64, "height": 64},
                     {"id": 20, "file_name": "b/0001.jpg", "width": 64, "height": 64}],
          "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    base = ["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
            "--coco-json", str(gt_path), "--score-thresh", "0"]
    assert main([*base, "--input", str(data / "b" / "0001.jpg"), str(data / "a" / "0001.jpg"),
                 "--output", str(tmp_path / "p1")]) == 0
    results = json.loads((tmp_path / "p1" / "predictions.json").read_text())
    ids = {Path(r["file_name"]).parent.name: r["image_id"] for r in results}
    assert ids == {"a": 10, "b": 20}
    # With --image-root the input's path relative to it is the json's file_name.
    assert main([*base, "--image-root", str(data), "--input", str(data / "b" / "0001.jpg"),
                 "--output", str(tmp_path / "p4")]) == 0
    assert {r["image_id"] for r in json.loads((tmp_path / "p4" / "predictions.json").read_text())} == {20}
    # Copies outside the layout: the base name alone is ambiguous, and the error says what to do.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(data / "a" / "0001.jpg", elsewhere / "0001.jpg")
    capsys.readouterr()
    assert main([*base, "--input", str(elsewhere / "0001.jpg"), "--output", str(tmp_path / "p2")]) == 2
    assert "--image-root" in capsys.readouterr().err
    # A unique base name still matches wherever the file is.
    gt["images"] = gt["images"][:1]
    gt_path.write_text(json.dumps(gt))
    assert main([*base, "--input", str(elsewhere / "0001.jpg"), "--output", str(tmp_path / "p3")]) == 0
    assert {r["image_id"] for r in json.loads((tmp_path / "p3" / "predictions.json").read_text())} == {10}


def test_predict_no_draw_and_speed_summary(run, tmp_path, capsys):
    root, out = run
    pred = tmp_path / "pred"
    assert main(["predict", "--config", str(out / "config.yaml"), "--weights", str(out / "model_final.pth"),
                 "--input", str(root / "val"), "--output", str(pred), "--no-draw", "--score-thresh", "0"]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in pred.iterdir()) == ["predictions.json"]
    assert json.loads((pred / "predictions.json").read_text())
    assert "2 images in " in captured.err and "images/s)" in captured.err


def test_eval_prints_its_speed(run, capsys):
    _, out = run
    assert main(["eval", str(out / "config.yaml"), "--weights", str(out / "model_final.pth")]) == 0
    text = capsys.readouterr().out
    assert "inference: 2 images in " in text and "images/s)" in text


def test_help_says_a_runs_config_yaml_works():
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    for verb in ("predict", "eval"):
        assert "config.yaml" in " ".join(sub.choices[verb].format_help().split()), verb
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith(("swiftdet predict", "swiftdet eval"))
             and "--backend" not in line]  # an exported model carries its config
    assert lines and all("config.yaml" in line for line in lines)
