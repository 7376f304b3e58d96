"""Training engine: optimizer/schedule, EMA, outputs of a run, checkpoints that survive kills, full
disks, divergence and misuse. Uses the toy detector of test_engine_toy (seconds, CPU); a real
Mask R-CNN killed with SIGKILL and resumed through the CLI is in test_resume_real."""
from __future__ import annotations

import errno
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from swiftdet.config.schema import SolverConfig
from swiftdet.engine.checkpoint import CheckpointWriteError
from swiftdet.weights import read_checkpoint
from swiftdet.engine.ema import ModelEMA
from swiftdet.engine.optim import build_optimizer, lr_factor, scaled_base_lr
from swiftdet.engine.trainer import TrainingDivergedError, per_process_batch_size, prepare_output_dir
from swiftdet.errors import ConfigError, WeightsError

from test_engine_toy import ToyDetector, ToyTrainLoader, build_toy_trainer, toy_config


def _losses(path: Path) -> dict[int, dict[str, float]]:
    out = {}
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # a line a SIGKILL cut short
        record = json.loads(line)
        if "loss" in record:
            out[record["iter"]] = {k: v for k, v in record.items() if k.startswith("loss") or k == "lr"}
    return out


# ----------------------------------------------------------------------------------------------
# Optimizer, schedule, EMA
# ----------------------------------------------------------------------------------------------
def test_param_groups_separate_norm_and_bias_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1, bias=False))
    model[2].weight.requires_grad_(False)  # frozen parameters are left out
    solver = SolverConfig(weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=2e-4, base_lr=0.02,
                          ims_per_batch=4, reference_batch_size=16)
    optimizer = build_optimizer(model, solver)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert [p.shape for p in groups["weight"]["params"]] == [model[0].weight.shape]
    assert len(groups["norm"]["params"]) == 2 and groups["norm"]["weight_decay"] == 0.0
    assert groups["bias"]["params"][0] is model[0].bias and groups["bias"]["weight_decay"] == 2e-4
    assert groups["weight"]["lr"] == pytest.approx(0.005) == scaled_base_lr(solver)
    adamw = build_optimizer(model, SolverConfig(optimizer="AdamW", base_lr=1e-4))
    assert isinstance(adamw, torch.optim.AdamW)


def test_warmup_then_multistep_and_cosine():
    s = SolverConfig(max_iter=100, steps=(50, 80), gamma=0.1, warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(s, 0) == pytest.approx(0.001)
    assert lr_factor(s, 5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(s, 10) == 1.0 and lr_factor(s, 49) == 1.0
    assert lr_factor(s, 50) == pytest.approx(0.1) and lr_factor(s, 99) == pytest.approx(0.01)
    c = SolverConfig(max_iter=100, schedule="cosine", warmup_iters=0)
    assert lr_factor(c, 0) == 1.0 and lr_factor(c, 50) == pytest.approx(0.5) and lr_factor(c, 100) == pytest.approx(0.0)


def test_ema_tracks_weights_with_ramped_decay():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.99, 1/10) = 0.1
    assert ema.model.weight.flatten().tolist() == pytest.approx([0.9, 0.9])
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_batch_must_split_over_processes_and_accumulation():
    assert per_process_batch_size(16, 2, 2) == 4
    with pytest.raises(ConfigError, match="ims_per_batch=6"):
        per_process_batch_size(6, 2, 2)


# ----------------------------------------------------------------------------------------------
# A run's outputs
# ----------------------------------------------------------------------------------------------
def test_run_writes_config_metrics_tensorboard_checkpoints(tmp_path):
    cfg = toy_config("test.eval_period=6", "solver.ema_decay=0.9", "solver.accumulate_steps=2",
                     "solver.clip_grad_norm=1.0", "test.best_metric=segm/AP")
    metrics = build_toy_trainer(cfg, tmp_path, resume=False).train()
    assert 0.0 <= metrics["bbox/AP"] <= 1.0 and "segm/AP" in metrics and "ema/bbox/AP" in metrics

    assert "solver:" in (tmp_path / "config.yaml").read_text()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train] == list(range(1, 13))
    assert {"iter", "lr", "loss", "loss_cls", "loss_box", "loss_mask", "time", "data_time"} <= set(train[0])
    # The images of both accumulation steps (2 x 2), as one process's list.
    loader = iter(ToyTrainLoader(64, 2, 0, 0, 1, cfg.seed))
    assert train[0]["image_ids"] == [[s.image_id for s in next(loader) + next(loader)]]
    evals = [r for r in records if "bbox/AP" in r]
    assert [r["iter"] for r in evals] == [6, 12] and "ema/segm/AP" in evals[0]
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert "12/12" in (tmp_path / "log.txt").read_text()

    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.pth", "last.pth", "model_0000008.pth", "model_0000012.pth"]
    last = read_checkpoint(ckpt_dir / "last.pth")
    assert last["iteration"] == 12 and last["format"] == "swiftdet-checkpoint/1"
    assert {"optimizer", "scheduler", "ema", "rng", "loader", "meta", "config"} <= set(last)
    assert last["loader"]["batches"] == 24  # accumulate_steps batches per iteration
    best = read_checkpoint(ckpt_dir / "best.pth")
    assert best["best_metric"] == "segm/AP"
    assert best["metrics"]["segm/AP"] == max(r["segm/AP"] for r in evals)


class _DivergingToy(ToyDetector):
    """Returns a NaN box loss from its 7th training forward on."""

    calls = 0

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if self.training:
            _DivergingToy.calls += 1
            if _DivergingToy.calls >= 7:
                out["loss_box"] = out["loss_box"] * float("nan")
        return out


def test_nan_loss_stops_with_iteration_and_term_and_keeps_checkpoint(tmp_path):
    cfg = toy_config()
    _DivergingToy.calls = 0
    trainer = build_toy_trainer(cfg, tmp_path, resume=False, model=_DivergingToy(cfg.model))
    with pytest.raises(TrainingDivergedError, match=r"iteration 7: loss term loss_box") as info:
        trainer.train()
    assert "model_0000004.pth" in str(info.value)
    seventh = next(iter(ToyTrainLoader(64, 4, 6, 0, 1, cfg.seed)))  # the batch of iteration 7
    assert f"image ids): {[s.image_id for s in seventh]}" in str(info.value)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.pth", "model_0000004.pth"]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pth")["iteration"] == 4


def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = toy_config()
    trainer = build_toy_trainer(cfg, tmp_path, resume=False)
    real_save = torch.save
    saves = []

    def save_until_disk_full(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) >= 2:
            f.write(b"partial")  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    with pytest.raises(CheckpointWriteError, match="No space left on device") as info:
        trainer.train()
    assert "model_0000004.pth is intact" in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pth", "model_0000004.pth"]  # no temp file left
    assert read_checkpoint(ckpt_dir / "last.pth")["iteration"] == 4


# ----------------------------------------------------------------------------------------------
# Misuse: clear errors, nothing lost
# ----------------------------------------------------------------------------------------------
def test_output_folder_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable") as info:
        prepare_output_dir(blocker / "run", resume=False)
    assert "a_file/run" in str(info.value)
    assert blocker.read_text() == "x"


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(WeightsError, match="--resume was given but"):
        prepare_output_dir(tmp_path, resume=True)


def test_fresh_run_refuses_folder_with_checkpoints_and_resume_refuses_other_model(tmp_path):
    build_toy_trainer(toy_config("solver.max_iter=4", "solver.steps=[2]"), tmp_path, resume=False).train()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        build_toy_trainer(toy_config(), tmp_path, resume=False)
    other = toy_config("model.num_classes=5")
    trainer = build_toy_trainer(other, tmp_path, resume=True)
    with pytest.raises(WeightsError, match=r"model\.num_classes: checkpoint 3, config 5"):
        trainer.train(resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_unknown_best_metric_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="test.best_metric 'bbox/mAP'"):
        build_toy_trainer(toy_config("test.best_metric=bbox/mAP"), tmp_path, resume=False)


def test_corrupt_checkpoint_is_a_weights_error(tmp_path):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be read"):
        read_checkpoint(bad)


def test_bf16_autocast_on_cpu_trains_and_fp16_needs_cuda(tmp_path):
    cfg = toy_config("solver.amp=bf16", "solver.max_iter=2", "solver.steps=[1]", "solver.checkpoint_period=2")
    build_toy_trainer(cfg, tmp_path / "bf16", resume=False).train()
    losses = _losses(tmp_path / "bf16" / "metrics.jsonl")
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for r in losses.values() for v in r.values())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="solver.amp=fp16 needs a CUDA GPU"):
            build_toy_trainer(toy_config("solver.amp=fp16"), tmp_path / "fp16", resume=False)


def test_a_checkpoint_from_before_a_new_model_field_still_resumes():
    """A run started before an upgrade added a model field: its checkpoint's config lacks the key,
    which stands for the field's default (what that model trained with), not a change."""
    import copy

    from swiftdet.config.core import config_to_dict, load_config
    from swiftdet.engine.checkpoint import check_same_model_config

    now = config_to_dict(load_config("demo_mask_rcnn"))
    older = copy.deepcopy(now)
    del older["model"]["box_head"]["cls_loss"]
    check_same_model_config(now, {"config": older}, "run/checkpoints/last.pth")
    changed = copy.deepcopy(now)
    changed["model"]["box_head"]["cls_loss"] = "sigmoid"
    with pytest.raises(WeightsError, match="box_head.cls_loss: checkpoint 'softmax', config 'sigmoid'"):
        check_same_model_config(changed, {"config": older}, "run/checkpoints/last.pth")
    changed = copy.deepcopy(now)
    changed["model"]["box_head"]["fc_dim"] = 7
    with pytest.raises(WeightsError, match="fc_dim"):
        check_same_model_config(changed, {"config": older}, "run/checkpoints/last.pth")
