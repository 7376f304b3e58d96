"""`swiftdet train CONFIG [key=value ...] [--output DIR] [--resume] [--nproc N]`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from swiftdet.config.core import load_config
from swiftdet.errors import ConfigError

NAME = "train"
HELP = "train a detector from a config (iteration-based; resumable; one or several processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="built-in config name, a .py config file or a saved config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. solver.max_iter=1000")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="output folder (default: the config's output_dir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output folder from its newest checkpoint (exactly: same losses as an uninterrupted run)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="spawn N local training processes (DDP; gloo on CPU, NCCL on GPU). Under torchrun leave it at 1")
    parser.epilog = (
        "Several machines or a custom launcher: run the same command under torchrun, e.g. "
        "'torchrun --nproc_per_node 4 -m swiftdet.cli.main train CONFIG'."
    )


def run(args: argparse.Namespace) -> int:
    from swiftdet.engine.checkpoint import CheckpointManager
    from swiftdet.engine.run import train_in_processes

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}.")
    cfg = load_config(args.config, args.overrides)
    output = args.output if args.output is not None else cfg.output_dir
    if args.output is not None:
        cfg.output_dir = args.output
    try:
        train_in_processes(cfg, output, resume=args.resume, nproc=args.nproc)
    except KeyboardInterrupt:
        # Ctrl-C, also in the middle of a checkpoint (its temp file is removed): say what is kept.
        latest = CheckpointManager(Path(output) / "checkpoints", 1).latest()
        if latest is not None:
            print(f"swiftdet: training interrupted; the checkpoints in {latest.parent} are intact (newest: "
                  f"{latest.name}): continue with the same command plus --resume", file=sys.stderr)
        raise
    # Under torchrun every process runs this command; the one that writes the run's folder reports.
    # The report reads the test set's COCO json itself; other formats get their metrics only.
    if cfg.data.test.format == "coco" and cfg.data.test.json and os.environ.get("RANK", "0") == "0" and (Path(output) / "model_final.pth").is_file():
        from swiftdet.cli.report import write_report

        write_report(Path(output), cfg.data.test.json, cfg.data.test.image_root)
    return 0
