"""How many threads PyTorch runs on, chosen from the CPUs this process may use and the load of the others.

On a CPU that other processes keep busy, a PyTorch that runs one thread per core waits at every
parallel operation for the thread that has no core, and OpenMP's (libgomp's) threads spin for
300,000 rounds while they wait, taking the cores the others need. A ResNet-18 forward on a 2-core
machine next to one busy process (benchmarks/busy_machine.py, its policy comparison): 4.0x its quiet time
with 2 threads and libgomp's default, 2.0x with passive waits, 1.8x with 1 thread; passive waits
cost 12% on the quiet machine, a spin of 10,000 rounds nothing (3.0x when busy). So the command
line, before torch is imported (:func:`set_openmp_wait`, leaving alone what the user set), makes
waiting threads sleep at once on a busy machine (OMP_WAIT_POLICY=PASSIVE) and shortens the spin to
10,000 rounds on a quiet one (GOMP_SPINCOUNT, in case a busy process comes later),
and uses as many threads as cores are free (:func:`choose_threads`): the CPUs of the process's
affinity mask and cgroup quota, less the cores other processes kept busy over a short sample
(``--threads N`` or OMP_NUM_THREADS decide instead).

A training run keeps the count it started with (the sums of different thread counts differ in the
last bits; an exact resume needs the same): see :func:`swiftdet.engine.trainer.Trainer`.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

__all__ = ["ThreadChoice", "available_cpus", "busy_cores_of_others", "choose_threads", "configure_threads",
           "current_choice", "parse_threads", "set_openmp_wait"]

#: Cores that other processes must keep busy for the machine to count as busy.
BUSY = 0.5
_sampled_busy: float | None = None  # the load sample set_openmp_wait took, reused by choose_threads


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(count, math.ceil(quota)) if quota is not None else count)


def _cgroup_cpu_quota() -> float | None:
    """CPUs the cgroup allows (cgroup v2 cpu.max or v1 cfs quota / period); None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _busy_and_own_ticks(cpus: set[int]) -> tuple[int, float] | None:
    """(busy clock ticks summed over ``cpus`` from /proc/stat, this process's CPU seconds)."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return busy, own.user + own.system


def busy_cores_of_others(interval: float = 0.2) -> float:
    """Cores that other processes kept busy over ``interval`` seconds, on the CPUs this process may
    use (0 where /proc/stat cannot be read: not Linux)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return 0.0
    first = _busy_and_own_ticks(cpus)
    if first is None:
        return 0.0
    start = time.perf_counter()
    time.sleep(interval)
    second = _busy_and_own_ticks(cpus)
    elapsed = time.perf_counter() - start
    if second is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (second[0] - first[0]) / tick - (second[1] - first[1])
    return max(0.0, busy / elapsed)


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count in use, whether it was chosen here (``automatic``) or given, and why."""

    threads: int
    automatic: bool
    reason: str


_choice: ThreadChoice | None = None


def choose_threads(requested: int | None = None, *, busy: float | None = None) -> ThreadChoice:
    """``requested`` threads, or (None) one per core that other processes leave free, at least one.
    ``busy``: the cores the others use (default: measured over 0.2 s)."""
    if requested is not None:
        return ThreadChoice(requested, False, f"--threads {requested}")
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:  # PyTorch's own convention: the user's choice
        return ThreadChoice(int(env), False, f"OMP_NUM_THREADS={env}")
    cpus = available_cpus()
    if busy is None:
        busy = _sampled_busy if _sampled_busy is not None else busy_cores_of_others()
    others = busy
    threads = max(1, min(cpus, round(cpus - others)))
    return ThreadChoice(threads, True, f"{cpus} CPU(s) available, other processes keep {others:.1f} busy")


def parse_threads(text: str) -> int | None:
    """``--threads`` value: 'auto' -> None, or a positive integer (argparse ``type``)."""
    import argparse

    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number of threads, got {text!r}")
    return value


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count (:func:`choose_threads`), set it in torch and remember it
    (:func:`current_choice`)."""
    import torch

    global _choice
    _choice = choose_threads(requested)
    torch.set_num_threads(_choice.threads)
    return _choice


def current_choice() -> ThreadChoice | None:
    """What :func:`configure_threads` chose in this process; None if it never ran (a library user)."""
    return _choice


def set_openmp_wait() -> str | None:
    """Before torch is imported: OMP_WAIT_POLICY=PASSIVE on a busy machine, else GOMP_SPINCOUNT=10000
    (see the module docstring), unless the user set either or torch is already loaded (OpenMP read
    its settings then). Returns the setting made, or None."""
    global _sampled_busy
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    _sampled_busy = busy_cores_of_others(0.1)
    if _sampled_busy >= BUSY:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        return "OMP_WAIT_POLICY=PASSIVE"
    os.environ["GOMP_SPINCOUNT"] = "10000"
    return "GOMP_SPINCOUNT=10000"
