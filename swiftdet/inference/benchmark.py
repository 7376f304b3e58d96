"""Timing and peak memory of a detector's inference, as mmdetection's benchmark reports them.

mmdetection's ``tools/analysis_tools/benchmark.py`` times ``model(...)`` on one image per step
(network and post-processing, the data loader outside the timer), synchronising CUDA before and
after, skips the first 5 steps as warm-up and reports the overall images/s and ms per image over
the rest. :func:`time_inference` measures the same on already decoded and resized images, for
any batch size, and :class:`PeakMemory` adds the peak memory of the timed steps.
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["InferenceTiming", "PeakMemory", "time_inference"]


def _status_kib(key: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at entry (tensors
    only, not the allocator's cache: what mmdetection reports). CPU: the process's peak resident
    set size (VmHWM of /proc/self/status, reset at entry by writing 5 to /proc/self/clear_refs);
    where that reset is not possible (not Linux, or refused) the lifetime peak ``ru_maxrss``, which
    may come from before the block (:attr:`method` says which).

    Attributes (after the block):
        peak_bytes: the peak (CUDA: allocated tensors, model included; CPU: whole-process RSS).
        increase_bytes: the peak minus the memory in use at entry: what the block needed on top
            of the loaded model and inputs.
        method: one sentence saying how it was measured.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.increase_bytes = 0
        self.method = ""
        self._start = 0
        self._reset = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            rss = _status_kib("VmRSS")
            self._start = rss * 1024 if rss is not None else 0
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
                self._reset = _status_kib("VmHWM") is not None
            except OSError:
                self._reset = False
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.method = ("torch.cuda.max_memory_allocated over the timed steps (tensors, model included); increase = "
                           "that peak minus the memory allocated before them")
        elif self._reset:
            self.peak_bytes = (_status_kib("VmHWM") or 0) * 1024
            self.method = ("peak resident set size of the process over the timed steps (VmHWM in /proc/self/status, "
                           "reset before them); increase = that peak minus the RSS before them")
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            self.method = ("lifetime peak resident set size of the process (ru_maxrss; the peak could not be reset, so it "
                           "may predate the timed steps); increase = that peak minus the RSS before them")
        self.increase_bytes = max(self.peak_bytes - self._start, 0)


@dataclass
class InferenceTiming:
    """What :func:`time_inference` measured over the timed batches (warm-up excluded).

    Attributes:
        batch_seconds: wall time of each timed batch.
        batch_sizes: images in each timed batch.
        detections: detections returned per timed image.
    """

    batch_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(self.batch_sizes)

    @property
    def total_seconds(self) -> float:
        return sum(self.batch_seconds)

    @property
    def images_per_second(self) -> float:
        return self.images / self.total_seconds if self.total_seconds > 0 else float("inf")

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.total_seconds / max(self.images, 1)

    @property
    def median_ms_per_batch(self) -> float:
        return 1000.0 * statistics.median(self.batch_seconds) if self.batch_seconds else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_inference(model, batches: Sequence[tuple[list[Tensor], list[tuple[int, int]]]], *, num_images: int,
                   warmup: int, device: torch.device, progress=None,
                   memory: PeakMemory | None = None) -> InferenceTiming:
    """Time ``model.predict`` on ``batches`` (cycled) for ``num_images`` images after ``warmup`` batches.

    Each step is ``model.predict(images, original_sizes)`` -- normalisation and padding, the
    network, post-processing to the original sizes (mask pasting included) -- and the results'
    move to the CPU (what :class:`~swiftdet.inference.Predictor` returns), between two CUDA
    synchronisations. The images are already decoded, resized and on ``device``; reading them is
    not timed.

    Args:
        batches: (resized (3, H, W) float images on ``device``, their original (H, W)) per batch.
        num_images: timed images; the last batch is cut short to reach exactly this many.
        progress: an object with ``update(n)`` (e.g. tqdm), told the images of each timed batch.
        memory: a :class:`PeakMemory`, entered after the warm-up: the peak of the timed steps.
    """
    model.eval()
    for step in range(warmup):
        images, sizes = batches[step % len(batches)]
        [r.to("cpu") for r in model.predict(images, sizes)]
        _sync(device)
    timing = InferenceTiming()
    with memory if memory is not None else contextlib.nullcontext():
        _timed_steps(model, batches, num_images, warmup, device, progress, timing)
    return timing


def _timed_steps(model, batches, num_images: int, warmup: int, device: torch.device, progress,
                 timing: InferenceTiming) -> None:
    step = 0
    while timing.images < num_images:
        images, sizes = batches[(warmup + step) % len(batches)]
        step += 1
        take = min(len(images), num_images - timing.images)
        images, sizes = images[:take], sizes[:take]
        _sync(device)
        start = time.perf_counter()
        results = [r.to("cpu") for r in model.predict(images, sizes)]
        _sync(device)
        timing.batch_seconds.append(time.perf_counter() - start)
        timing.batch_sizes.append(take)
        timing.detections.extend(len(r) for r in results)
        if progress is not None:
            progress.update(take)
