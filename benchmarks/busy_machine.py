"""The demo's training iterations and inference on a quiet CPU and next to one busy process.

Each measurement is a fresh ``swiftdet benchmark demo_mask_rcnn --train`` process (the demo's model,
images and batch), run two ways:

* before: PyTorch's defaults (one thread per CPU, OpenMP's spinning wait): torch is imported before
  swiftdet.cli and the verb is called as a library call (no thread choice),
* after: the console command as users run it (threads chosen from the free cores, passive wait).

"Busy" starts one CPU-bound process (a Python loop) first and stops it after. The report gives each
median and the busy / quiet ratio (issue target: at most 2x), and the CPU the figures came from.

    python benchmarks/busy_machine.py [--iters 8] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEFORE = "import sys, torch; from swiftdet.cli.main import main; sys.exit(main(sys.argv[1:]))"
AFTER = "import sys; from swiftdet.cli.main import main; sys.exit(main())"


def _cpu() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown CPU"
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, {' '.join(simd)}"


def measure(way: str, iters: int, busy: bool) -> dict[str, float]:
    """Median seconds per training iteration and per inference of one fresh benchmark process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner is not None:
            time.sleep(1.0)  # running, and seen by the load sample
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "b.json"
            code = BEFORE if way == "before" else AFTER
            subprocess.run([sys.executable, "-c", code, "benchmark", "demo_mask_rcnn", "--train", "--num-images", str(iters),
                            "--warmup", "2", "--out", str(out)], env=env, check=True, capture_output=True, timeout=1800)
            result = json.loads(out.read_text())
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {"train_s": result["train"]["median_s_per_iter"],
            "infer_s": result["inference"]["median_ms_per_batch"] / 1000, "threads": result["torch_threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=8, help="timed training iterations and inferences per process")
    parser.add_argument("--repeat", type=int, default=2, help="processes per setting (the best median is kept)")
    args = parser.parse_args()
    print(f"CPU: {_cpu()}")
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
