"""Two CPU processes (gloo) with the toy detector: distributed evaluation gives exactly the numbers
of a single process, and a user error in a process reaches the parent as itself. ``--nproc 2`` with
the real Mask R-CNN through the CLI (one set of outputs, different images per process) is in
test_resume_real."""
from __future__ import annotations

import json

import pytest

from swiftdet.engine.distributed import launch
from swiftdet.engine.evaluator import evaluate_model
from swiftdet.weights import read_checkpoint
from swiftdet.errors import ConfigError

from test_engine_toy import TOY_META, ToyDetector, toy_coco, toy_config, toy_test_loader, train_toy_main

OVERRIDES = ["solver.max_iter=4", "solver.steps=[3]", "model.backbone.norm=BN", "solver.checkpoint_period=4"]


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path):
    out = tmp_path / "ddp"
    launch(train_toy_main, 2, (str(out), False, OVERRIDES))

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes
    [ddp_eval] = [r for r in records if "bbox/AP" in r]
    assert "BatchNorm statistics stay per process" in (out / "log.txt").read_text()  # CPU: no SyncBN in DDP
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pth", "last.pth", "model_0000004.pth"]

    cfg = toy_config(*OVERRIDES)
    model = ToyDetector(cfg.model)
    model.load_state_dict(read_checkpoint(out / "checkpoints" / "last.pth")["model"])
    single = evaluate_model(model, toy_test_loader(12, 1, 0, 1), toy_coco(12), TOY_META["category_ids"], mask_on=True)
    assert single["bbox/AP"] > 0 or single["bbox/AR100"] > 0  # a meaningful comparison, not two zeros
    assert {k: ddp_eval[k] for k in single} == single


@pytest.mark.slow
def test_user_error_in_a_process_reaches_the_parent_as_itself(tmp_path):
    with pytest.raises(ConfigError, match="test.best_metric 'bbox/mAP'"):
        launch(train_toy_main, 2, (str(tmp_path / "bad"), False, ["test.best_metric=bbox/mAP"]))
