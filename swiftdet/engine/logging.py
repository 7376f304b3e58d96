"""What a training run reports: console/log.txt lines with a progress bar, metrics.jsonl and TensorBoard.

Only rank 0 writes files; other ranks log warnings and errors to the console only.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsWriter", "format_progress", "memory_text", "setup_logger"]

LOGGER_NAME = "swiftdet"


def setup_logger(output_dir: str | Path | None, rank: int) -> logging.Logger:
    """The ``swiftdet`` logger: INFO to stdout and ``output_dir/log.txt`` on rank 0, WARNING elsewhere.

    Calling it again (e.g. a second run in one process) replaces the handlers of the previous call.
    """
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    console.setFormatter(logging.Formatter(prefix + "%(message)s"))
    logger.addHandler(console)
    if output_dir is not None and rank == 0:
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt", mode="a", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(file_handler)
    return logger


def memory_text(device: torch.device) -> str:
    """Peak memory of this process: CUDA allocations on a GPU, the resident set size on the CPU."""
    if device.type == "cuda":
        return f"mem {torch.cuda.max_memory_allocated(device) / 2**30:.2f}G"
    # Linux reports ru_maxrss in KiB.
    return f"rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}G"


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def format_progress(
    iteration: int,
    max_iter: int,
    losses: dict[str, float],
    lr: float,
    iter_time: float,
    data_time: float,
    memory: str,
) -> str:
    """One self-contained progress line (no carriage returns, so it reads the same in a log file).

    ``iteration`` counts finished iterations; the ETA assumes the recent ``iter_time`` per iteration.
    """
    width = 20
    done = int(width * iteration / max_iter)
    bar = "#" * done + "." * (width - done)
    eta = _duration((max_iter - iteration) * iter_time)
    total = losses.get("loss", math.nan)
    terms = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "loss")
    return (
        f"[{bar}] {iteration}/{max_iter} ({100.0 * iteration / max_iter:.0f}%) eta {eta}  "
        f"loss {total:.4f} ({terms})  lr {lr:.3g}  time {iter_time:.3f}s data {data_time:.3f}s  {memory}"
    )


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and scalars to TensorBoard event files in ``output_dir``."""

    def __init__(self, output_dir: str | Path, tensorboard: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(output_dir))

    def truncate_after(self, iteration: int) -> int:
        """Drop records of iterations after ``iteration`` (logged by a run killed after its last
        checkpoint, and about to be logged again by the resumed run). Returns how many were dropped."""
        if not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1  # a half-written last line of a killed run
                continue
            if int(record.get("iter", 0)) > iteration:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        return dropped

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (must hold ``iter``); numeric fields also go to TensorBoard at that step."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        if self._tb is not None:
            step = int(record["iter"])
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
