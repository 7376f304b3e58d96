"""`swiftdet plot RUN_DIR... --out curves.png [--keys loss,lr,bbox/AP]`: training curves of runs.

Reads each run's ``metrics.jsonl`` (what ``swiftdet train`` and ``swiftdet eval`` append: training
lines with the losses and ``lr`` every ``solver.log_period`` iterations, evaluation lines with the
AP at each evaluation) and draws one subplot per quantity, the runs overlaid (the legend names each
run by its folder). Writes ``curves.png`` and ``curves.svg`` (the ``--out`` name with each suffix).

By default: the total loss, each loss term, the learning rate and the AP of every evaluated type
(keys ending in ``/AP``, e.g. ``bbox/AP``, ``segm/AP``, ``ema/bbox/AP``; ``/mAP`` for VOC).
``--keys`` takes names or shell patterns (``'loss_*'``, ``'*/AP50'``), comma-separated.

A run that was resumed logs some iterations twice (the lines after its last checkpoint are logged
again): for each quantity the line written last wins. Lines of other kinds (evaluation and
training lines share iterations) contribute only the quantities they hold; AP values of -1 (not
defined: no objects of that size, say) and non-numeric values are left out; a half-written last
line (a run killed while writing) is skipped with a note.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
from pathlib import Path

import numpy as np

from swiftdet.errors import InputError
from swiftdet.visualization.plots import plot_training_curves

NAME = "plot"
HELP = "plot loss terms, learning rate and AP over iterations from runs' metrics.jsonl (PNG and SVG)"

DEFAULT_KEYS = ("loss", "loss_*", "lr", "*/AP", "*/mAP")
# Bookkeeping fields of the lines, never plotted by default.
_NOT_CURVES = {"iter", "time", "data_time", "max_mem_mb"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (holding metrics.jsonl) or metrics.jsonl files")
    parser.add_argument("--out", required=True, metavar="curves.png",
                        help="figure to write; the .png and the .svg of this name are both written")
    parser.add_argument("--keys", default=None, metavar="K1,K2",
                        help="quantities to plot, comma-separated names or patterns (default: "
                             f"{','.join(DEFAULT_KEYS)}; e.g. loss,lr,bbox/AP or 'loss_*,*/AP50')")
    parser.add_argument("--columns", type=int, default=3, metavar="N", help="subplots per row (default 3)")


def metrics_file(run: str | Path) -> Path:
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise InputError(f"No metrics file at {str(path)!r}. Give a run folder written by swiftdet train (it holds "
                         f"metrics.jsonl) or the path of a metrics.jsonl.")
    return path


def read_metrics(path: str | Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    """Numeric quantities of a metrics.jsonl: key -> {iteration: value}, the line written last winning.

    Returns also notes on what was skipped (unreadable lines).
    """
    path = Path(path)
    series: dict[str, dict[int, float]] = {}
    notes = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read {str(path)!r} ({error}).") from None
    bad = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("iter"), (int, float)) or \
                isinstance(record.get("iter"), bool):
            bad.append(number)
            continue
        iteration = int(record["iter"])
        for key, value in record.items():
            if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or (value < 0 and "/" in key):  # -1: an AP/AR that is not defined
                continue
            series.setdefault(key, {})[iteration] = float(value)
    if bad:
        where = "the last line" if bad == [len(lines)] else f"line(s) {', '.join(map(str, bad[:5]))}"
        notes.append(f"{path}: skipped {where}, not a json object with an 'iter' (a line half-written by a killed "
                     f"run reads so)")
    return series, notes


def run_labels(runs: list[str]) -> list[str]:
    """Each run's folder name, with parent folders added until the labels differ."""
    paths = [Path(r).resolve() for r in runs]
    paths = [p.parent if p.is_file() else p for p in paths]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


def select_keys(patterns: list[str], available: list[str], explicit: bool) -> list[str]:
    """The quantities the patterns pick, in pattern order (sorted within one pattern)."""
    chosen: list[str] = []
    for pattern in patterns:
        found = sorted(k for k in available if fnmatch.fnmatchcase(k, pattern))
        if explicit and not found:
            raise InputError(f"--keys: {pattern!r} is in none of the runs' metrics. They hold: "
                             f"{', '.join(sorted(available)) or 'no numeric values'}.")
        chosen += [k for k in found if k not in chosen]
    return chosen


def collect_curves(runs: list[str], keys: str | None = None) -> tuple[dict, list[str]]:
    """quantity -> run label -> (iterations, values) sorted by iteration, and notes to print.

    ``keys``: the --keys text (comma-separated names or patterns), None for DEFAULT_KEYS.
    """
    files = [metrics_file(r) for r in runs]
    labels = run_labels(runs)
    per_run, notes = {}, []
    for label, path in zip(labels, files):
        series, read_notes = read_metrics(path)
        notes += read_notes
        per_run[label] = series
    available = sorted({k for series in per_run.values() for k in series})
    explicit = keys is not None
    patterns = [k.strip() for k in keys.split(",") if k.strip()] if explicit else list(DEFAULT_KEYS)
    if explicit and not patterns:
        raise InputError("--keys is empty; give quantities such as loss,lr,bbox/AP.")
    chosen = select_keys(patterns, available, explicit)
    if not chosen:
        raise InputError(f"None of {', '.join(DEFAULT_KEYS)} is in the runs' metrics ({', '.join(map(str, files))}); "
                         f"they hold: {', '.join(available) or 'no numeric values'}. Pick quantities with --keys.")
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key in chosen:
        curves[key] = {}
        for label, series in per_run.items():
            if key in series:
                points = sorted(series[key].items())
                curves[key][label] = (np.array([p[0] for p in points]), np.array([p[1] for p in points]))
            elif len(per_run) > 1:
                notes.append(f"run {label} has no {key!r}")
    return curves, notes


def run(args: argparse.Namespace) -> int:
    if args.columns <= 0:
        raise InputError(f"--columns must be a positive number, got {args.columns}.")
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".svg", ""):
        raise InputError(f"--out {args.out!r}: give a .png name; the figure is written as PNG and SVG "
                         f"({out.stem}.png, {out.stem}.svg).")
    curves, notes = collect_curves(args.runs, args.keys)
    for note in notes:
        print(f"note: {note}")
    written = plot_training_curves(curves, [out.with_suffix(".png"), out.with_suffix(".svg")], columns=args.columns)
    print(f"Plotted {len(curves)} quantities of {len(args.runs)} run(s): {', '.join(map(str, written))}")
    return 0
