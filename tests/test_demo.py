"""The demo path end to end (data -> train -> evaluate -> draw) on a handful of images and iterations.

The AP target of the full demo (box >= 0.5, mask >= 0.4 in 10 minutes) takes minutes to check and is
not tested here; this checks that every stage runs and leaves its outputs.
"""
from __future__ import annotations

import argparse
import functools
import json

import numpy as np
import pytest
from PIL import Image

from swiftdet.cli import demo as demo_cli
from swiftdet.demo import app as demo_app
from swiftdet.demo.app import DEMO_IMAGE_SIZE, DRAW_SCALE, demo_config, run_demo

TINY = ["solver.max_iter=3", "solver.warmup_iters=1", "solver.log_period=1", "solver.ims_per_batch=2"]


def test_demo_config_trains_at_the_generated_size(tmp_path):
    cfg = demo_config(tmp_path)
    # The demo makes images of DEMO_IMAGE_SIZE: training and testing at that size means no resizing.
    assert cfg.input.min_size_train == (DEMO_IMAGE_SIZE[0],)
    assert cfg.input.min_size_test == DEMO_IMAGE_SIZE[0]
    assert cfg.model.mask_on and cfg.model.weights == "" and cfg.model.backbone.weights == ""
    assert cfg.data.train.json == str(tmp_path / "data" / "annotations" / "instances_train.json")
    assert cfg.output_dir == str(tmp_path / "train")


def test_demo_runs_end_to_end(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", TINY, num_train=6, num_val=3)
    out = capsys.readouterr().out

    assert set(result.metrics) >= {"bbox/AP", "segm/AP"}
    assert "bbox (" in out and "segm (" in out and "AP50" in out  # the AP tables were printed

    lines = [json.loads(line) for line in (tmp_path / "demo" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iter"] for line in lines if "loss" in line] == [1, 2, 3]
    evals = [line for line in lines if "segm/AP" in line]
    assert len(evals) == 1 and evals[0]["iter"] == 3 and evals[0]["bbox/AP"] == result.metrics["bbox/AP"]

    assert [p.name for p in result.prediction_images] == ["000001.png", "000002.png", "000003.png"]
    for path in result.prediction_images:
        assert path.parent == tmp_path / "demo" / "predictions"
        with Image.open(path) as picture:
            assert picture.size == (DEMO_IMAGE_SIZE[1] * DRAW_SCALE, DEMO_IMAGE_SIZE[0] * DRAW_SCALE)

    # A second run finds the finished training and only evaluates and draws again, with the same numbers.
    again = run_demo(tmp_path / "demo", TINY, num_train=6, num_val=3)
    assert again.metrics == result.metrics
    assert "continuing the run" in capsys.readouterr().out


def test_demo_cli_prints_the_result(tmp_path, capsys, monkeypatch):
    # The real run_demo, on a dataset of a few images rather than the full demo's.
    monkeypatch.setattr(demo_app, "run_demo", functools.partial(run_demo, num_train=4, num_val=2))
    parser = argparse.ArgumentParser()
    demo_cli.add_arguments(parser)
    args = parser.parse_args(["--output", str(tmp_path / "cli"), *TINY, "solver.max_iter=1"])
    assert demo_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "Demo done in" in out and "Box AP" in out and "mask AP" in out
    drawn = sorted((tmp_path / "cli" / "predictions").glob("*.png"))
    assert len(drawn) == 2
    assert np.asarray(Image.open(drawn[0])).shape == (DEMO_IMAGE_SIZE[0] * DRAW_SCALE, DEMO_IMAGE_SIZE[1] * DRAW_SCALE, 3)


@pytest.mark.parametrize("override", ["solver.max_iter=0", "no_such_key=1"])
def test_demo_refuses_bad_overrides(tmp_path, override):
    from swiftdet.errors import ConfigError

    with pytest.raises(ConfigError):
        demo_config(tmp_path, [override])
