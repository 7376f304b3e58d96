"""`swiftdet train` never destroys a user's files, never mixes two runs and never ends in a raw
traceback: one run per output folder (a lock), a dead run's leftovers moved aside, a refused resume that
changes nothing, a full disk or Ctrl-C during a write and a killed DDP worker reported as what they are.

Each test trains the real (tiny) Mask R-CNN of ``demo_mask_rcnn`` on ``generate_synthetic_coco`` data
through the CLI, for a few iterations."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import swiftdet.engine.logging as engine_logging
from swiftdet.cli.main import main
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine import trainer as trainer_module
from swiftdet.weights import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SWIFTDET = [sys.executable, "-m", "swiftdet.cli.main"]
TINY = [
    "model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.box_head.fc_dim=16",
    "model.box_head.batch_size_per_image=16", "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1",
    "input.min_size_train=[64]", "input.max_size_train=64", "input.min_size_test=64", "input.max_size_test=64",
    "solver.ims_per_batch=2", "solver.reference_batch_size=2", "solver.warmup_iters=1", "solver.log_period=1",
    "data.num_workers=0", "data.test.json=", "data.test.image_root=",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=8, num_val=2, image_size=(64, 64), seed=0)
    return root


def _args(data: Path, output: Path, *extra: str, max_iter: int = 4, period: int = 2) -> list[str]:
    return ["train", "demo_mask_rcnn", f"data.train.json={data / 'annotations' / 'instances_train.json'}",
            f"data.train.image_root={data}", *TINY, f"solver.max_iter={max_iter}",
            f"solver.checkpoint_period={period}", *extra, "--output", str(output)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _iters(output: Path) -> list[int]:
    return [json.loads(line)["iter"] for line in (output / "metrics.jsonl").read_text().splitlines()]


def _flat(text: str) -> str:
    """The CLI's message as one line (it wraps at 100 columns)."""
    return " ".join(text.split())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# 2. One run per output folder
# ----------------------------------------------------------------------------------------------
def test_second_run_into_a_running_runs_folder_refuses_and_names_it(synth, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "swiftdet.cli.main", *_args(synth, out, max_iter=6, period=6)],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "log.txt").is_file() and "starting training" in (out / "log.txt").read_text(), first)
        first.send_signal(signal.SIGSTOP)  # holds its lock, mid-run, while the second starts
        before = _snapshot(out)
        assert main(_args(synth, out, max_iter=6, period=6)) == 2
        err = _flat(capsys.readouterr().err)
        assert "is in use by another training run" in err and f"process {first.pid} on host" in err
        assert "train.lock" in err and "Traceback" not in err
        assert _snapshot(out) == before  # nothing written: no config, log line or metrics of the second run
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()[-3000:]
    finally:
        first.kill()
        first.wait()
    assert _iters(out) == [1, 2, 3, 4, 5, 6]  # one run's metrics
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert not (out / "train.lock").exists()  # released at the end


def test_lock_of_a_dead_process_is_taken_over_with_a_line(synth, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is no longer running
    (out / "train.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}) + "\n")
    assert main(_args(synth, out, max_iter=2, period=2)) == 0
    captured = capsys.readouterr()
    assert f"took over the lock {out / 'train.lock'} of process {dead.pid}" in captured.out
    assert not (out / "train.lock").exists()


def test_lock_of_another_host_is_never_taken_over(synth, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.lock").write_text(json.dumps({"pid": 1, "host": "some-other-node"}) + "\n")
    assert main(_args(synth, out, max_iter=2, period=2)) == 2
    err = _flat(capsys.readouterr().err)
    assert "locked by process 1 on host some-other-node" in err and "delete that file" in err
    assert sorted(p.name for p in out.iterdir()) == ["train.lock"]


# ----------------------------------------------------------------------------------------------
# 3. A fresh start never appends to a dead run's files
# ----------------------------------------------------------------------------------------------
def test_fresh_start_moves_the_files_of_a_run_that_died_before_its_first_checkpoint(synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"

    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C just before the first checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "save_checkpoint", interrupted)
        assert main(_args(synth, out, max_iter=4, period=2)) == 130
    dead_files = _snapshot(out)
    assert _iters(out) == [1, 2] and "checkpoints/last.pth" not in dead_files
    capsys.readouterr()

    assert main(_args(synth, out, max_iter=4, period=2)) == 0
    stdout = capsys.readouterr().out
    [previous] = list(out.glob("previous-*"))
    assert f"moved them to {previous} (nothing was deleted)" in stdout
    assert _snapshot(previous) == dead_files  # every file of the dead run, unchanged
    assert _iters(out) == [1, 2, 3, 4]
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert "1/4" in (out / "log.txt").read_text() and (out / "log.txt").read_text().count("starting training") == 1


# ----------------------------------------------------------------------------------------------
# 4. A refused resume changes nothing; changed solver settings are refused or named
# ----------------------------------------------------------------------------------------------
def test_resume_refused_for_another_model_leaves_the_runs_config(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(synth, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*_args(synth, out, "model.box_head.fc_dim=32"), "--resume"]) == 2
    err = _flat(capsys.readouterr().err)
    assert "model.box_head.fc_dim: checkpoint 16, config 32" in err and "config.yaml" in err
    assert _snapshot(out) == before  # config.yaml still the run's own, as the message says


def test_resume_refuses_a_changed_batch_and_names_a_longer_schedule(synth, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(synth, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert main([*_args(synth, out, "solver.ims_per_batch=4"), "--resume"]) == 2
    err = _flat(capsys.readouterr().err)
    assert "changed training settings (solver.ims_per_batch: checkpoint 2, config 4)" in err
    assert "Traceback" not in err and _snapshot(out) == before
    # The sampler decides the order of the data stream too.
    assert main([*_args(synth, out, "data.sampler=repeat_factor"), "--resume"]) == 2
    assert "data.sampler: checkpoint 'uniform', config 'repeat_factor'" in _flat(capsys.readouterr().err)
    assert _snapshot(out) == before

    assert main([*_args(synth, out, max_iter=6), "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert "--resume with changed training settings: solver.max_iter: checkpoint 4, config 6" in stdout
    assert "resume is no longer exact" in stdout
    assert _iters(out) == [1, 2, 3, 4, 5, 6]
    assert "max_iter: 6" in (out / "config.yaml").read_text()


# ----------------------------------------------------------------------------------------------
# 8. A full disk or Ctrl-C while writing: the designed message, no temp file, the last checkpoint kept
# ----------------------------------------------------------------------------------------------
class _FailingFile(io.RawIOBase):
    """Passes writes through to ``f`` until ``limit`` bytes, then raises ``error`` (a full disk, a Ctrl-C)."""

    def __init__(self, f, limit: int, error: BaseException):
        self.f, self.limit, self.error, self.written = f, limit, error, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            raise self.error
        self.written += len(data)
        return self.f.write(data)


def _fail_second_checkpoint(monkeypatch, error: BaseException) -> None:
    """torch.save of the second checkpoint writes into a file that fails part way, as on a full disk:
    torch's zip writer then raises its own RuntimeError ("unexpected pos")."""
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            f = io.BufferedWriter(_FailingFile(f, 4096, error), buffer_size=1024)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("name", ["disk_full", "ctrl_c"])
def test_full_disk_or_ctrl_c_while_saving_a_checkpoint(synth, tmp_path, capsys, monkeypatch, name):
    out = tmp_path / "run"
    error = OSError(errno.ENOSPC, "No space left on device") if name == "disk_full" else KeyboardInterrupt()
    _fail_second_checkpoint(monkeypatch, error)
    code = main(_args(synth, out, max_iter=4, period=2))
    err = _flat(capsys.readouterr().err)
    assert "Traceback" not in err and "enforce fail" not in err
    if name == "disk_full":
        assert code == 2
        assert "Could not write checkpoint" in err and "No space left on device" in err
        assert "model_0000002.pth is intact" in err and "free some disk space" in err
    else:
        assert code == 130 and "interrupted" in err and "intact (newest: model_0000002.pth)" in err
    # No temp file left; the previous checkpoint whole.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pth", "model_0000002.pth"]
    assert read_checkpoint(out / "checkpoints" / "last.pth")["iteration"] == 2


def test_full_disk_while_appending_metrics(synth, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_open = open

    class FullDisk:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode and Path(path).is_file() and len(_iters(out)) >= 3:
            return FullDisk()
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(engine_logging, "open", fake_open, raising=False)
    assert main(_args(synth, out, max_iter=6, period=2)) == 2
    err = _flat(capsys.readouterr().err)
    assert "Traceback" not in err and "metrics.jsonl at iteration 4: No space left on device" in err
    assert "model_0000002.pth is intact" in err and "free some disk space" in err


# ----------------------------------------------------------------------------------------------
# 10. A killed DDP worker
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_ddp_worker_names_its_rank_and_how_to_resume(synth, tmp_path):
    out = tmp_path / "ddp"
    args = _args(synth, out, "solver.ims_per_batch=4", "solver.reference_batch_size=4", max_iter=500, period=1)
    proc = subprocess.Popen([*SWIFTDET, *args, "--nproc", "2"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "checkpoints" / "model_0000001.pth").is_file() and (out / "train.lock").is_file(),
                  proc, seconds=240)
        holder = json.loads((out / "train.lock").read_text())
        assert holder["pid"] != proc.pid  # rank 0 holds the lock, not the launcher
        os.kill(holder["pid"], signal.SIGKILL)
        code = proc.wait(timeout=120)
        err = _flat(proc.stderr.read())
    finally:
        proc.kill()
        proc.wait()
    assert code == 2, err[-3000:]
    assert "process rank 0 of 2" in err and "killed by signal SIGKILL" in err
    assert "--resume" in err and "Traceback" not in err and "ProcessExitedException" not in err
