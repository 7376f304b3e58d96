"""Exact resume and several processes with the real Mask R-CNN (the ``demo_mask_rcnn`` config: RPN and
RoI samplers drawing from torch's global generator, BatchNorm, AdamW, cosine schedule), trained through
the ``swiftdet train`` CLI on ``swiftdet synth`` data. Made tiny by overrides only (64-pixel images,
narrow FPN and heads, no evaluation): CPU, each test well under a minute."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftdet.weights import read_checkpoint

SWIFTDET = [sys.executable, "-m", "swiftdet.cli.main"]
MAX_ITER = 14
PERIOD = 4


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    subprocess.run([*SWIFTDET, "synth", str(root), "--images", "32", "--val-images", "2", "--size", "64"],
                   env=_env(), check=True, capture_output=True, timeout=120)
    return root


def _overrides(data: Path, *extra: str) -> list[str]:
    return [
        f"data.train.json={data / 'annotations' / 'instances_train.json'}", f"data.train.image_root={data}",
        "data.test.json=", "data.test.image_root=",
        "input.min_size_train=[64]", "input.max_size_train=128", "input.min_size_test=64", "input.max_size_test=128",
        "model.fpn.out_channels=32", "model.box_head.fc_dim=64", "model.mask_head.conv_dim=32",
        "solver.ims_per_batch=2", "solver.warmup_iters=2", "solver.log_period=1", "solver.keep_last=5",
        f"solver.max_iter={MAX_ITER}", f"solver.checkpoint_period={PERIOD}",
        *extra,
    ]


def _train(output: Path, overrides: list[str], *options: str) -> list[str]:
    return [*SWIFTDET, "train", "--output", str(output), *options, "demo_mask_rcnn", *overrides]


def _records(output: Path) -> list[dict]:
    """The iteration records of metrics.jsonl as logged (a line a SIGKILL cut short is skipped)."""
    out = []
    for line in (output / "metrics.jsonl").read_text().splitlines(keepends=True):
        if line.endswith("\n") and '"loss"' in line:
            out.append(json.loads(line))
    return out


def _logged(record: dict) -> dict:
    """Everything a record holds but the timings."""
    return {k: v for k, v in record.items() if k not in ("time", "data_time", "max_mem_mb")}


@pytest.mark.slow
def test_mask_rcnn_killed_after_a_checkpoint_resumes_with_identical_losses(tmp_path, synth_data):
    overrides = _overrides(synth_data)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train(ref, overrides), env=_env(), check=True, capture_output=True, timeout=180)
    expected = [_logged(r) for r in _records(ref)]
    assert [r["iter"] for r in expected] == list(range(1, MAX_ITER + 1))

    proc = subprocess.Popen(_train(killed, overrides), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / f"model_{2 * PERIOD:07d}.pth"
    deadline = time.time() + 180
    try:
        # Kill once the second checkpoint is on disk (atomic rename: complete when it exists) and
        # the log shows its iteration.
        while not (checkpoint.exists() and f"] {2 * PERIOD}/{MAX_ITER} " in (killed / "log.txt").read_text()):
            assert proc.poll() is None, "the run ended before the kill"
            assert time.time() < deadline, "no checkpoint after 180 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(p.stem.split("_")[1]) for p in (killed / "checkpoints").glob("model_*.pth"))
    # Normally [4, 8]; on a very busy machine the run may have reached the next checkpoint before the kill.
    assert saved[:2] == [PERIOD, 2 * PERIOD] and saved[-1] < MAX_ITER, saved

    resumed = subprocess.run(_train(killed, overrides, "--resume"), env=_env(), capture_output=True, text=True,
                             timeout=180)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"at iteration {saved[-1]}" in resumed.stdout
    got = [_logged(r) for r in _records(killed)]
    assert [r["iter"] for r in got] == list(range(1, MAX_ITER + 1))  # the killed run's extra records dropped
    # Exactly as logged: every loss term, the lr and the images of every iteration, after the resume too.
    for mine, theirs in zip(got, expected):
        assert mine == theirs, f"iteration {mine['iter']} differs from the uninterrupted run"


@pytest.mark.slow
def test_two_processes_write_one_run_and_train_on_different_images(tmp_path, synth_data):
    overrides = _overrides(synth_data, "solver.ims_per_batch=4", "solver.max_iter=4", "solver.checkpoint_period=2")
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run = subprocess.run(_train(ddp, overrides, "--nproc", "2"), env=_env(), capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # One run's outputs, written by rank 0 alone.
    files = sorted(str(p.relative_to(ddp)) for p in ddp.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1
    assert sorted(set(files) - set(events)) == [
        "checkpoints/last.pth", "checkpoints/model_0000002.pth", "checkpoints/model_0000004.pth",
        "config.yaml", "log.txt", "metrics.jsonl", "model_final.pth",
    ]
    log = (ddp / "log.txt").read_text()
    assert log.count("2 process(es), 2 images per process") == 1
    records = _records(ddp)
    assert [r["iter"] for r in records] == [1, 2, 3, 4]
    state = read_checkpoint(ddp / "checkpoints" / "last.pth")
    assert len(state["rng"]) == 2 and state["loader"] == {"batches": 4, "world_size": 2}
    assert state["torch_threads"] == 1  # OMP_NUM_THREADS=1 split over 2 processes: at least one each

    # Each iteration the two processes train on two images each, and never on the same image: they
    # take alternate positions of one shuffled stream (32 images, 16 positions: no epoch wraps).
    per_rank = [r["image_ids"] for r in records]
    assert all(len(ids) == 2 and all(len(i) == 2 for i in ids) for ids in per_rank)
    rank0 = [i for ids in per_rank for i in ids[0]]
    rank1 = [i for ids in per_rank for i in ids[1]]
    assert len(set(rank0 + rank1)) == 16
    # Together they train on exactly the images one process with the same total batch trains on.
    subprocess.run(_train(single, overrides), env=_env(), check=True, capture_output=True, timeout=180)
    alone = [r["image_ids"] for r in _records(single)]
    assert all(len(ids) == 1 for ids in alone)
    assert [sorted(ids[0] + ids[1]) for ids in per_rank] == [sorted(ids[0]) for ids in alone]
