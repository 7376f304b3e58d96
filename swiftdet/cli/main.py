"""The `swiftdet` console command. Each verb is a module of swiftdet/cli with NAME, HELP,
add_arguments(parser) and run(args) -> exit code; this file lists them, nothing is registered
behind the scenes."""
from __future__ import annotations

import argparse
import sys
import textwrap

from swiftdet.cli import (analyze, benchmark, browse, coco_eval, config_cmd, convert, convert_data, demo, export, flops,
                          plot, predict, synth, train, voc_eval)
from swiftdet.cli import eval as eval_cmd
from swiftdet.errors import SwiftdetError
from swiftdet.utils.threads import configure_threads, parse_threads

COMMANDS = (demo, train, eval_cmd, predict, config_cmd, synth, browse, coco_eval, convert, export, convert_data, voc_eval,
            benchmark, flops, plot, analyze)
# The verbs that run a model on the CPU take --threads.
THREADED = (demo, train, eval_cmd, predict, benchmark)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swiftdet", description="Object detection, segmentation and keypoints in PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        if module in THREADED:
            p.add_argument("--threads", type=parse_threads, default=None, metavar="N|auto",
                           help="CPU threads for PyTorch (default auto: one per core that other processes leave free, "
                                "from this process's CPUs and a short load sample)")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # The console command chooses its threads; a program calling main([...]) keeps its own
        # setting unless it passes --threads.
        if hasattr(args, "threads") and (args.threads is not None or argv is None):
            configure_threads(args.threads)
        return int(args._run(args) or 0)
    except SwiftdetError as e:
        # User errors: one readable paragraph, no traceback.
        message = " ".join(str(e).split())
        print(textwrap.fill("swiftdet: error: " + message, width=100, break_long_words=False, break_on_hyphens=False), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("swiftdet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
