"""The thread count: chosen from the CPUs this process may use and the others' load, --threads and
OMP_NUM_THREADS obeyed, OpenMP's passive wait set before torch loads, and a resumed run continuing
on the count it was written with."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest
import torch

from swiftdet.cli.main import main
from swiftdet.engine.trainer import Trainer
from swiftdet.utils import threads
from swiftdet.utils.threads import ThreadChoice, busy_cores_of_others, choose_threads, parse_threads


def test_choice_follows_free_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 4)
    assert choose_threads(busy=0.0) == ThreadChoice(4, True, "4 CPU(s) available, other processes keep 0.0 busy")
    assert choose_threads(busy=1.1).threads == 3
    assert choose_threads(busy=2.6).threads == 1
    assert choose_threads(busy=9.0).threads == 1  # never zero
    assert choose_threads(2, busy=9.0) == ThreadChoice(2, False, "--threads 2")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(busy=9.0) == ThreadChoice(3, False, "OMP_NUM_THREADS=3")


def test_available_cpus_reads_affinity_and_cgroup_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    assert threads.available_cpus() == 4
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 1.5)  # cpu.max "150000 100000"
    assert threads.available_cpus() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert threads.available_cpus() == 1


def test_busy_cores_leave_out_this_process(monkeypatch):
    # 100 ticks/s: over 0.5 s the CPUs were busy 80 ticks (0.8 s), this process used 0.3 s of them.
    samples = iter([(1000, 10.0), (1080, 10.3)])
    monkeypatch.setattr(threads, "_busy_and_own_ticks", lambda cpus: next(samples))
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    clock = iter([0.0, 0.5])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert busy_cores_of_others(0.5) == pytest.approx(1.0)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the load sample reads Linux's /proc/stat")
def test_a_busy_process_is_seen():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores_of_others(0.5) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_option_values(capsys):
    assert parse_threads("auto") is None and parse_threads("3") == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            main(["predict", "--threads", bad, "--input", "x", "--output", "y"])
        assert "expected 'auto' or a positive number of threads" in capsys.readouterr().err


def test_benchmark_runs_on_the_threads_given(tmp_path):
    """The console command end to end: --threads sets PyTorch's thread count (the benchmark records it)."""
    out = tmp_path / "b.json"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([sys.executable, "-m", "swiftdet.cli.main", "benchmark", "synth_retinanet_R_18_FPN", "--num-images", "1",
                    "--warmup", "0", "--threads", "1", "--out", str(out)], check=True, capture_output=True, env=env,
                   timeout=300)
    assert json.loads(out.read_text())["torch_threads"] == 1


def test_openmp_wait_follows_the_load(monkeypatch):
    environ: dict[str, str] = {}
    monkeypatch.setattr(threads, "_sampled_busy", None)  # restored after the test
    monkeypatch.setattr(threads.os, "environ", environ)
    monkeypatch.setattr(threads, "sys", types.SimpleNamespace(modules={}))  # torch not loaded yet
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda interval=0.2: 1.2)
    assert threads.set_openmp_wait() == "OMP_WAIT_POLICY=PASSIVE" and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert choose_threads().reason.endswith("keep 1.2 busy")  # the same sample decides the threads
    environ.clear()
    monkeypatch.setattr(threads, "busy_cores_of_others", lambda interval=0.2: 0.1)
    assert threads.set_openmp_wait() == "GOMP_SPINCOUNT=10000" and environ == {"GOMP_SPINCOUNT": "10000"}
    environ.clear()
    environ["GOMP_SPINCOUNT"] = "300000"  # the user's choice stays
    assert threads.set_openmp_wait() is None and environ == {"GOMP_SPINCOUNT": "300000"}


def test_openmp_wait_is_set_before_torch_loads_or_not_at_all():
    # swiftdet/cli/__init__.py runs first when the console command imports swiftdet.cli.main.
    code = "import os, swiftdet.cli; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = lambda c, e: subprocess.run([sys.executable, "-c", c], env=e, capture_output=True, text=True,  # noqa: E731
                                      check=True).stdout.strip()
    assert run(code, env) in ("PASSIVE None", "None 10000")
    assert run(code, {**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE None"
    # Too late once torch is loaded: left alone rather than set without effect.
    assert run("import torch; " + code, env) == "None None"


def test_resume_continues_on_the_saved_thread_count(monkeypatch, caplog):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr("swiftdet.engine.trainer.current_choice", lambda: ThreadChoice(2, True, "auto"))
        Trainer._resume_thread_count(1, "run/checkpoints/model_0000004.pth")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setattr("swiftdet.engine.trainer.current_choice", lambda: ThreadChoice(2, False, "--threads 2"))
        with caplog.at_level("WARNING"):
            Trainer._resume_thread_count(1, "run/checkpoints/model_0000004.pth")
        assert torch.get_num_threads() == 2 and "written with 1 threads and --threads is 2" in caplog.text
    finally:
        torch.set_num_threads(before)
