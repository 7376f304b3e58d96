"""Your own data, start to finish, without friction (issue 13, points 5-7): a schedule that follows a
changed ``solver.max_iter``, a warm-up longer than a short run, a time budget that ends a run cleanly,
a pretrained-weights recipe started without weights refused at once, and the from-scratch recipe.

Each test trains a tiny Mask R-CNN through ``swiftdet train`` on ``generate_synthetic_coco`` data for
a few iterations."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.config.schema import SolverConfig
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine.optim import lr_factor, schedule_steps, warmup_length
from swiftdet.engine.trainer import check_initial_weights
from swiftdet.errors import ConfigError
from swiftdet.weights import read_checkpoint

# Small widths (GroupNorm needs multiples of 32 channels) and 64-pixel images: seconds per run on a CPU.
TINY = [
    "model.backbone.depth=18", "model.fpn.out_channels=32", "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.batch_size_per_image=16",
    "model.mask_head.conv_dim=32", "model.mask_head.num_convs=1", "input.min_size_train=[64]",
    "input.max_size_train=64", "input.min_size_test=64", "input.max_size_test=64", "solver.ims_per_batch=2",
    "solver.reference_batch_size=2", "solver.log_period=1", "data.num_workers=0", "test.ims_per_batch=2",
]
TRAINABLE = ["model.backbone.norm=BN", "model.backbone.freeze_at=0"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=4, num_val=2, image_size=(64, 64), seed=0)
    return root


def _data(root: Path, *, classes: bool = True, val: Path | None = None) -> list[str]:
    val = val or root / "annotations" / "instances_val.json"
    return [f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
            f"data.test.json={val}", f"data.test.image_root={root}", *(["model.num_classes=5"] if classes else [])]


def _records(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_changing_max_iter_of_the_finetune_recipe_rescales_its_steps_and_cuts_the_warmup(synth, tmp_path):
    out = tmp_path / "run"
    # The recipe's 3000 iterations with a 200-iteration warm-up, run for 4: steps at round(4 * (2/3, 0.9)).
    assert main(["train", "finetune_coco_folder", *_data(synth), *TINY, *TRAINABLE, "solver.max_iter=4",
                 "solver.checkpoint_period=4", "--output", str(out)]) == 0
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.solver.steps == () and schedule_steps(cfg.solver) == (3, 4) and warmup_length(cfg.solver) == 4
    lrs = {r["iter"]: r["lr"] for r in _records(out) if "lr" in r}
    base = lrs[1] / cfg.solver.warmup_factor  # iteration 0: warmup_factor x the scaled base rate
    assert [lrs[i] / base for i in (1, 2, 3, 4)] == pytest.approx([lr_factor(cfg.solver, i) for i in range(4)])
    assert lrs[4] / base == pytest.approx(0.1 * (0.001 * 0.25 + 0.75))  # one step down, 3/4 through the warm-up
    log = _flat((out / "log.txt").read_text())
    assert "solver.warmup_iters=200 is longer than solver.max_iter=4: the warm-up is cut to 4 iterations" in log
    assert "the rate drops at iterations [3, 4]" in log


def test_steps_and_fractions_are_checked_and_warmup_is_cut_only_when_longer_than_the_run():
    with pytest.raises(ConfigError, match=r"solver\.steps=\[10, 20\] and solver\.steps_fraction=.* are both set"):
        load_config("finetune_coco_folder", ["solver.steps=[10, 20]"])
    with pytest.raises(ConfigError, match="must be increasing"):
        load_config("finetune_coco_folder", ["solver.steps_fraction=[0.9, 0.5]"])
    with pytest.raises(ConfigError, match=r"solver\.steps_fraction"):
        load_config("finetune_coco_folder", ["solver.steps_fraction=[1.0]"])
    # Absolute steps still work once the fractions are cleared; the COCO recipes keep theirs.
    cfg = load_config("finetune_coco_folder", ["solver.steps_fraction=[]", "solver.steps=[100, 200]"])
    assert schedule_steps(cfg.solver) == (100, 200)
    assert schedule_steps(load_config("mask_rcnn_R_50_FPN_1x").solver) == (60000, 80000)
    long = SolverConfig(max_iter=10, steps=(), warmup_iters=1000, warmup_factor=0.001)
    assert lr_factor(long, 5) == pytest.approx(0.001 * 0.5 + 0.5) and lr_factor(long, 9) < 1.0
    short = SolverConfig(max_iter=100, steps=(), warmup_iters=10, warmup_factor=0.001)
    assert warmup_length(short) == 10 and lr_factor(short, 10) == 1.0


def test_a_time_budget_ends_the_run_cleanly_with_a_checkpoint_and_the_final_evaluation(synth, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "scratch_coco_folder", *_data(synth), *TINY, "solver.warmup_iters=1", "solver.max_iter=1000",
            "solver.checkpoint_period=1000", "test.eval_period=0"]
    # 0.0001 minutes: spent after the first iteration.
    assert main([*argv, "solver.max_minutes=0.0001", "--output", str(out)]) == 0
    records = _records(out)
    assert [r["iter"] for r in records if "lr" in r] == [1]
    [final] = [r for r in records if "bbox/AP" in r]
    assert final["iter"] == 1 and "segm/AP" in final
    assert (out / "checkpoints" / "model_0000001.pth").exists()
    log = _flat((out / "log.txt").read_text())
    assert "stopped at iteration 1 of 1000 on the time budget (solver.max_minutes=0.0001)" in log
    assert "--resume" in log
    # The run continues from there with --resume (here without a budget, to a shorter end).
    assert main([*argv[:-3], "solver.max_iter=3", "solver.checkpoint_period=3", "test.eval_period=0",
                 "--output", str(out), "--resume"]) == 0
    assert [r["iter"] for r in _records(out) if "lr" in r] == [1, 2, 3]


def test_the_finetune_recipe_without_weights_is_refused_before_anything_is_written(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "finetune_coco_folder", *_data(synth), *TINY, "solver.max_iter=2", "--output", str(out)]) == 2
    err = _flat(capsys.readouterr().err)
    assert "model.backbone.norm=FrozenBN" in err and "model.backbone.freeze_at=2" in err
    assert "model.weights=..." in err and "model.backbone.weights=..." in err and "scratch_coco_folder" in err
    assert "Traceback" not in err and not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    # Decided by the config alone: any one pretrained-only setting without weights is refused, weights lift it.
    for extra in (["model.backbone.freeze_at=0"], ["model.backbone.norm=BN"]):
        with pytest.raises(ConfigError, match="neither model.weights nor model.backbone.weights"):
            check_initial_weights(load_config("finetune_coco_folder", extra))
    check_initial_weights(load_config("finetune_coco_folder", ["model.backbone.weights=resnet50.pth"]))
    check_initial_weights(load_config("finetune_coco_folder", ["model.weights=model.pth"]))
    check_initial_weights(load_config("finetune_coco_folder", TRAINABLE))


def test_the_scratch_recipe_trains_every_layer_with_group_norm(synth, tmp_path):
    cfg = load_config("scratch_coco_folder")
    m = cfg.model
    assert (m.backbone.norm, m.backbone.freeze_at, m.backbone.depth, m.weights, m.backbone.weights) == ("GN", 0, 18, "", "")
    assert cfg.data.train.json == cfg.data.test.json == "" and cfg.solver.steps == ()
    check_initial_weights(cfg)
    out = tmp_path / "run"
    assert main(["train", "scratch_coco_folder", *_data(synth), *TINY, "solver.max_iter=2", "solver.warmup_iters=1",
                 "solver.checkpoint_period=2", "--output", str(out)]) == 0
    records = _records(out)
    assert [r["iter"] for r in records if "lr" in r] == [1, 2]
    assert any("bbox/AP" in r for r in records) and (out / "checkpoints" / "last.pth").exists()


def test_the_number_of_classes_comes_from_the_training_json_and_reaches_eval_and_resume(synth, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "finetune_coco_folder", *_data(synth, classes=False), *TINY, *TRAINABLE, "solver.warmup_iters=1"]
    assert load_config("finetune_coco_folder").model.num_classes == 0  # not given
    assert main([*argv, "solver.max_iter=1", "solver.checkpoint_period=1", "--output", str(out)]) == 0
    assert "model.num_classes=5, from the categories of data.train" in _flat((out / "log.txt").read_text())
    # The run's config and checkpoints hold the number it took, for eval, predict and convert.
    assert load_config(str(out / "config.yaml")).model.num_classes == 5
    assert read_checkpoint(out / "checkpoints" / "last.pth")["config"]["model"]["num_classes"] == 5
    capsys.readouterr()
    assert main(["eval", "finetune_coco_folder", *_data(synth, classes=False), *TINY, "--weights",
                 str(out / "checkpoints" / "last.pth")]) == 0
    # A resume of the same command (still without model.num_classes) continues with the checkpoint's number.
    assert main([*argv, "solver.max_iter=2", "solver.checkpoint_period=1", "--output", str(out), "--resume"]) == 0
    assert [r["iter"] for r in _records(out) if "lr" in r] == [1, 2]


def test_a_stated_number_of_classes_that_differs_from_the_data_names_both(synth, tmp_path, capsys):
    assert main(["train", "finetune_coco_folder", *_data(synth, classes=False), *TINY, *TRAINABLE,
                 "model.num_classes=3", "solver.max_iter=1", "--output", str(tmp_path / "a")]) == 2
    err = _flat(capsys.readouterr().err)
    assert "model.num_classes=3" in err and "has 5 categories" in err and "Set model.num_classes=5" in err
    # Taken from data.train, a test set with other categories is refused naming both counts.
    val = json.loads((synth / "annotations" / "instances_val.json").read_text())
    val["categories"].append({"id": 99, "name": "extra"})
    other = tmp_path / "val_other.json"
    other.write_text(json.dumps(val))
    assert main(["train", "finetune_coco_folder", *_data(synth, classes=False, val=other), *TINY, *TRAINABLE,
                 "solver.max_iter=1", "--output", str(tmp_path / "b")]) == 2
    err = _flat(capsys.readouterr().err)
    assert "has 5 categories but data.test" in err and "has 6" in err
    assert not (tmp_path / "b" / "config.yaml").exists()


def _train_toy_with_a_budget_on_rank_0_only(output_dir: str, overrides: list[str]) -> None:
    """Rank 0's budget is spent after one iteration, rank 1's lasts for hours: only if rank 0's clock decides
    for both do they stop together (otherwise rank 1 trains on alone and waits forever in a collective)."""
    from test_engine_toy import train_toy_main

    budget = "0.0001" if os.environ.get("RANK") == "0" else "600"
    train_toy_main(output_dir, False, [*overrides, f"solver.max_minutes={budget}"])


def test_processes_of_a_run_stop_on_the_time_budget_at_the_same_iteration(tmp_path):
    from swiftdet.engine.distributed import launch

    out = tmp_path / "ddp"
    launch(_train_toy_with_a_budget_on_rank_0_only, 2, (str(out), ["solver.max_iter=1000", "solver.steps=[]",
           "model.backbone.norm=BN", "solver.checkpoint_period=1000"]))
    assert [r["iter"] for r in _records(out) if "loss" in r] == [1]
    assert (out / "checkpoints" / "model_0000001.pth").exists()
    assert "on the time budget" in (out / "log.txt").read_text()


def test_a_model_without_a_class_count_is_refused_outside_training():
    """num_classes=0 means "from the training data"; eval/predict/convert with a bare state_dict
    have none to take it from, and must say so rather than build a 0-class head."""
    from swiftdet.errors import ConfigError
    from swiftdet.model.build import build_model

    cfg = load_config("finetune_coco_folder")
    assert cfg.model.num_classes == 0
    with pytest.raises(ConfigError, match="model.num_classes=N"):
        build_model(cfg.model)
