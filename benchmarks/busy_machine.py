"""The demo's training iterations and inference on a quiet CPU and next to one busy process.

Each measurement is a fresh ``swiftdet benchmark demo_mask_rcnn --train`` process (the demo's model,
images and batch), run two ways:

* before: PyTorch's defaults (one thread per CPU, OpenMP's spinning wait): torch is imported before
  swiftdet.cli and the verb is called as a library call (no thread choice),
* after: the console command as users run it (threads chosen from the free cores, passive wait).

"Busy" starts one CPU-bound process (a Python loop) first and stops it after. The report gives each
median and the busy / quiet ratio (issue target: at most 2x), and the CPU the figures came from.

``--policies`` instead times the choice behind it: a ResNet-18 forward (1x3x320x320) in a fresh
process per OpenMP wait setting and thread count, quiet and busy, as a ratio to the quiet default.

    python benchmarks/busy_machine.py [--iters 8] [--repeat 2] [--policies]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from swiftdet.utils.cpu import cpu_description

BEFORE = "import sys, torch; from swiftdet.cli.main import main; sys.exit(main(sys.argv[1:]))"
AFTER = "import sys; from swiftdet.cli.main import main; sys.exit(main())"
# Settings the measurements choose themselves (the user's would colour them).
_OWN = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
FORWARD = """
import sys, time, torch, torchvision
torch.set_num_threads(int(sys.argv[1]))
model, x = torchvision.models.resnet18().eval(), torch.randn(1, 3, 320, 320)
with torch.no_grad():
    for _ in range(3):
        model(x)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
print(sorted(times)[len(times) // 2])
"""
# (name, environment, threads) of the wait settings --policies compares.
POLICIES = (("libgomp default, 2 threads", {}, 2), ("GOMP_SPINCOUNT=10000, 2 threads", {"GOMP_SPINCOUNT": "10000"}, 2),
            ("OMP_WAIT_POLICY=PASSIVE, 2 threads", {"OMP_WAIT_POLICY": "PASSIVE"}, 2), ("libgomp default, 1 thread", {}, 1))


def _clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in _OWN}, **extra}


@contextmanager
def _busy(busy: bool):
    """One CPU-bound process (a Python loop) running while the block runs, when ``busy``."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner is not None:
            time.sleep(1.0)  # running, and seen by the load sample
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def measure(way: str, iters: int, busy: bool) -> dict[str, float]:
    """Median seconds per training iteration and per inference of one fresh benchmark process."""
    with _busy(busy), tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.json"
        code = BEFORE if way == "before" else AFTER
        subprocess.run([sys.executable, "-c", code, "benchmark", "demo_mask_rcnn", "--train", "--num-images", str(iters),
                        "--warmup", "2", "--out", str(out)], env=_clean_env(), check=True, capture_output=True,
                       timeout=1800)
        result = json.loads(out.read_text())
    return {"train_s": result["train"]["median_s_per_iter"],
            "infer_s": result["inference"]["median_ms_per_batch"] / 1000, "threads": result["torch_threads"]}


def compare_policies(repeat: int) -> None:
    """Median ms of the ResNet-18 forward per wait setting, quiet and busy (best of ``repeat`` processes)."""
    def forward_ms(env: dict[str, str], threads: int) -> float:
        runs = [float(subprocess.run([sys.executable, "-c", FORWARD, str(threads)], env=_clean_env(**env), check=True,
                                     capture_output=True, text=True, timeout=600).stdout) for _ in range(repeat)]
        return 1000 * min(runs)

    figures = {}
    for busy in (False, True):
        with _busy(busy):
            for name, env, threads in POLICIES:
                figures[name, busy] = forward_ms(env, threads)
    base = figures[POLICIES[0][0], False]
    for name, _, _ in POLICIES:
        quiet, busy = figures[name, False], figures[name, True]
        print(f"{name:36s} quiet {quiet:7.1f} ms ({quiet / base:.2f}x)   busy {busy:7.1f} ms ({busy / base:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=8, help="timed training iterations and inferences per process")
    parser.add_argument("--repeat", type=int, default=2, help="processes per setting (the best median is kept)")
    parser.add_argument("--policies", action="store_true", help="compare OpenMP wait settings on a ResNet-18 forward")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}, {len(os.sched_getaffinity(0))} CPUs")
    if args.policies:
        compare_policies(args.repeat)
        return
    rows = {}
    for way in ("before", "after"):
        for busy in (False, True):
            runs = [measure(way, args.iters, busy) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["train_s"])
            rows[way, busy] = best
            print(f"{way:6s} {'busy ' if busy else 'quiet'}: train {best['train_s']:.3f} s/iter, inference "
                  f"{best['infer_s']:.3f} s ({best['threads']} threads)", flush=True)
    for way in ("before", "after"):
        quiet, busy = rows[way, False], rows[way, True]
        print(f"{way}: busy / quiet = {busy['train_s'] / quiet['train_s']:.2f}x training, "
              f"{busy['infer_s'] / quiet['infer_s']:.2f}x inference")
    print(f"after / before, quiet: {rows['after', False]['train_s'] / rows['before', False]['train_s']:.2f}x training, "
          f"{rows['after', False]['infer_s'] / rows['before', False]['infer_s']:.2f}x inference")


if __name__ == "__main__":
    main()
