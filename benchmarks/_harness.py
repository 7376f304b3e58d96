"""What the inference benchmarks share: flags, alternating timing, per-subprocess peak memory, report.

A benchmark script provides ``build_models(model, seed=0, fast=True) -> (torchvision_model, ours)``,
``make_image()``, ``run_tv(tv, image)`` and ``run_ours(ours, image)``; :func:`compare` times both
models alternately after a warm-up, prints medians and the ratio, the script's agreement verdict, and
(unless ``--no-memory``) the peak memory one inference needs above the loaded model, each measured in
a fresh process so neither model's allocations colour the other's, and (unless ``--no-flops``) the
GFLOP/s each achieves against this machine's measured matmul and convolution peaks. The timed runs
also record the time inside each stage (:data:`STAGES`, by forward hooks on those modules).
"""
from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import resource
import statistics
import time
from typing import Callable

import torch

from swiftdet.inference.benchmark import PeakMemory

NAMES = ("torchvision", "swiftdet")

# (stage, attribute names of the modules it runs in, on either model): torchvision's ``backbone``
# holds its FPN, swiftdet's is beside it. What no stage holds (resize and normalisation, padding,
# box decoding of dense detectors, mask pasting, rescaling) is printed as "pre/post-processing".
STAGES = (("backbone+FPN", ("backbone", "fpn")), ("RPN", ("rpn",)), ("RoI heads", ("roi_heads",)),
          ("dense head", ("head",)))


class StageTimes:
    """Wall time spent in each of :data:`STAGES` during each run of ``net`` (forward hooks)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.runs: list[dict[str, float]] = []
        self._started: dict[str, float] = {}
        self._handles = []
        for stage, names in STAGES:
            for name in names:
                module = getattr(net, name, None)
                if isinstance(module, torch.nn.Module):
                    self._handles.append(module.register_forward_pre_hook(self._start(stage)))
                    self._handles.append(module.register_forward_hook(self._stop(stage)))

    def _start(self, stage: str):
        def hook(module, args):
            self._started[stage] = time.perf_counter()
        return hook

    def _stop(self, stage: str):
        def hook(module, args, output):
            run = self.runs[-1]
            run[stage] = run.get(stage, 0.0) + time.perf_counter() - self._started.pop(stage)
        return hook

    def new_run(self) -> None:
        self.runs.append({})

    def end_run(self, seconds: float) -> None:
        self.runs[-1]["pre/post-processing"] = seconds - sum(self.runs[-1].values())

    def medians(self) -> dict[str, float]:
        stages = [stage for stage, _ in STAGES if any(stage in run for run in self.runs)] + ["pre/post-processing"]
        return {stage: statistics.median(run.get(stage, 0.0) for run in self.runs) for stage in stages}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iters", type=int, default=5, help="timed runs per model (alternating)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--plain", action="store_true", help="run swiftdet without fuse_for_inference")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count and this machine's peak")
    parser.add_argument("--direct", action="store_true",
                        help="run every convolution of swiftdet's fast path in oneDNN (no NNPACK Winograd for the large 3x3 ones)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="swiftdet's inference precision (torchvision stays float32); bf16 detections differ from "
                             "float32's by rounding, so the agreement line then reads as a difference report")


def _direct_convolutions() -> None:
    from swiftdet.model import layers

    layers._nnpack_ready = lambda: False


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_peaks(threads: int, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 GFLOP/s on ``threads`` threads: a 2048^3 matrix product and a 3x3
    convolution of 256 channels on a 200x304 channels-last map (an FPN level of an 800x1216 image)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last).eval()
    x = torch.randn(1, 256, 200, 304).to(memory_format=torch.channels_last)
    figures = {}
    with torch.no_grad():
        for name, fn, flops in (("matmul", lambda: a @ b, 2 * 2048**3),
                                ("conv3x3", lambda: conv(x), 2 * 256 * 256 * 9 * 200 * 304)):
            figures[name] = flops / median_time(fn, repeats) / 1e9
    return figures


def print_compute(flops: int, med: dict[str, float], threads: int) -> None:
    """Achieved GFLOP/s of each model (FlopCounterMode's count of torchvision's model: 2 per
    multiply-add) against this machine's measured peaks, so that everyone sees how close to the
    limit the models run. The FLOPs are the direct convolutions'; where swiftdet's fast path runs a
    large 3x3 convolution through NNPACK's Winograd kernels, which multiply less, its rate may pass
    the direct convolution's peak."""
    peaks = machine_peaks(threads)
    print(f"  compute: {flops / 1e9:.1f} GFLOP per inference (FlopCounterMode, torchvision's model); this machine: "
          f"matmul {peaks['matmul']:.0f} GFLOP/s, 3x3 conv channels-last {peaks['conv3x3']:.0f} GFLOP/s")
    for name in NAMES:
        achieved = flops / med[name] / 1e9
        print(f"  {name:12s} {achieved:6.1f} GFLOP/s = {achieved / peaks['matmul']:.2f} of the matmul peak, "
              f"{achieved / peaks['conv3x3']:.2f} of the conv peak")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _memory_worker(script: str, which: str, model: str, threads: int, fast: bool, precision: str, direct: bool,
                   queue) -> None:
    bench = importlib.import_module(script)
    torch.set_num_threads(threads)
    if direct:
        _direct_convolutions()
    tv, ours = bench.build_models(model, fast=fast)
    ours.set_precision(precision)
    net, fn = (tv, bench.run_tv) if which == "torchvision" else (ours, bench.run_ours)
    del tv, ours
    image = bench.make_image()
    fn(net, image)
    # The peak of this inference alone (VmHWM reset before it): the lifetime peak would be the
    # build's, with both models and the converted state dict in memory.
    with PeakMemory(torch.device("cpu")) as memory:
        fn(net, image)
    queue.put(memory.increase_bytes)


def in_fresh_process(target: Callable, *args):
    """What ``target(*args, queue)`` puts on its queue, run in a fresh (spawned) process, so that
    memory figures see neither this process's allocations nor another model's."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    value = queue.get(timeout=1800)
    proc.join()
    return value


def peak_inference_memory(script: str, which: str, model: str, threads: int, fast: bool, precision: str = "fp32",
                          direct: bool = False) -> int:
    """Bytes one inference of ``which`` needs above its loaded model, in a fresh process."""
    return in_fresh_process(_memory_worker, script, which, model, threads, fast, precision, direct)


def compare(script: str, args: argparse.Namespace, title: str, agreement: Callable[[object, object], str]) -> None:
    """Run the benchmark of module ``script`` for ``args.model`` and print its report."""
    bench = importlib.import_module(script)
    torch.set_num_threads(args.threads)
    if args.direct:
        _direct_convolutions()
    tv, ours = bench.build_models(args.model, fast=not args.plain)
    ours.set_precision(args.precision)
    image = bench.make_image()
    tv_out, ours_out = bench.run_tv(tv, image), bench.run_ours(ours, image)  # warm-up and agreement check
    times: dict[str, list[float]] = {name: [] for name in NAMES}
    stages = {"torchvision": StageTimes(tv), "swiftdet": StageTimes(ours)}
    for _ in range(args.iters):
        for name, fn, net in (("torchvision", bench.run_tv, tv), ("swiftdet", bench.run_ours, ours)):
            stages[name].new_run()
            start = time.perf_counter()
            fn(net, image)
            times[name].append(time.perf_counter() - start)
            stages[name].end_run(times[name][-1])
    for timer in stages.values():
        timer.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    path = (("plain" if args.plain else "fast (fuse_for_inference)") + (", bf16" if args.precision == "bf16" else "")
            + (", direct convolutions only" if args.direct else ""))
    print(f"{title}, 3x{image.shape[-2]}x{image.shape[-1]}, {args.threads} threads, {args.iters} runs each "
          f"(alternating), swiftdet {path}, load average {os.getloadavg()[0]:.2f}")
    for name in NAMES:
        print(f"  {name:12s} median {med[name] * 1000:8.1f} ms   (all: {', '.join(f'{t * 1000:.0f}' for t in times[name])})")
    print(f"  latency ratio swiftdet/torchvision: {med['swiftdet'] / med['torchvision']:.3f}")
    tv_stages, our_stages = stages["torchvision"].medians(), stages["swiftdet"].medians()
    print("  stages (medians): " + "; ".join(
        f"{stage} {tv_stages[stage] * 1000:.0f} vs {our_stages[stage] * 1000:.0f} ms ({our_stages[stage] / tv_stages[stage]:.2f})"
        for stage in tv_stages if stage in our_stages and tv_stages[stage] > 0))
    print(f"  detections agree: {agreement(tv_out, ours_out)}")
    if not args.no_flops:
        from swiftdet.inference.flops import count_flops

        print_compute(count_flops(tv, lambda: bench.run_tv(tv, image)).total_flops, med, args.threads)
    if not args.no_memory:
        del tv, ours
        mem = {name: peak_inference_memory(script, name, args.model, args.threads, not args.plain, args.precision, args.direct)
               for name in NAMES}
        for name, value in mem.items():
            print(f"  {name:12s} peak inference memory above the loaded model: {value / 2**20:8.1f} MiB")
        if mem["torchvision"] > 0:
            print(f"  memory ratio swiftdet/torchvision: {mem['swiftdet'] / mem['torchvision']:.3f}")
        else:  # a small model's second inference fits in the pages the allocator kept from the warm-up
            print("  memory ratio swiftdet/torchvision: none (torchvision's inference needed no RSS above its warm-up)")
