"""Charts of training curves and of the COCO error analysis (matplotlib), and the two-colour
drawing of an image's objects and detections (PIL).

matplotlib is an optional extra (``pip install -e ".[plot]"``): it is imported inside the
functions that need it, and its figures are drawn with the Agg canvas of a ``Figure`` of their
own, so the global pyplot state and backend of the caller are left alone.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from swiftdet.errors import SwiftdetError

__all__ = ["plot_training_curves", "plot_error_breakdown", "plot_confusion_matrix", "draw_gt_and_detections",
           "GT_COLOR", "DETECTION_COLOR", "STEP_COLORS"]

GT_COLOR = (40, 200, 70)  # ground truth: green
DETECTION_COLOR = (230, 60, 40)  # detections: red
# One colour per error-analysis step, from the strictest (C75) to the most lenient (FN).
STEP_COLORS = ("#1f3b73", "#3f6fb5", "#7fb2e5", "#c44e52", "#55a868", "#8172b2", "#f0a030")


def _figure(width: float, height: float):
    """A matplotlib Figure with its own Agg canvas (no pyplot); SwiftdetError when matplotlib is absent."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise SwiftdetError(f"Plots need matplotlib, which is not installed ({error}). Install the 'plot' extra: "
                            f"pip install -e \".[plot]\" (or pip install matplotlib).") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, paths: Sequence[str | os.PathLike]) -> list[Path]:
    written = []
    for path in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fig.savefig(path)
        except OSError as error:
            raise SwiftdetError(f"Cannot write the figure {str(path)!r} ({error.strerror or error}). Choose a "
                                f"writable path.") from None
        written.append(path)
    return written


def plot_training_curves(series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                         paths: Sequence[str | os.PathLike], *, columns: int = 3) -> list[Path]:
    """One subplot per quantity, one line per run.

    Args:
        series: quantity name -> run name -> (iterations (N,), values (N,)); a run without the
            quantity is simply absent from its mapping.
        paths: files to write (the format follows each suffix: .png, .svg, .pdf).
        columns: subplots per row.
    """
    names = list(series)
    if not names:
        raise SwiftdetError("Nothing to plot: no quantity was found in the runs.")
    cols = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.2 * cols, 2.9 * rows)
    runs = sorted({run for per_run in series.values() for run in per_run})
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for run, (iters, values) in series[name].items():
            # A quantity logged once per evaluation gets markers, so a single point still shows.
            marker = "o" if len(iters) <= 20 else None
            ax.plot(iters, values, label=run, color=colors[run], marker=marker, markersize=3, linewidth=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    handles, labels = [], []
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / max(rows * 2.9, 1)))
    return _save(fig, paths)


def plot_error_breakdown(recall: np.ndarray, curves: np.ndarray, steps: Sequence[str], title: str,
                         path: str | os.PathLike) -> Path:
    """The filled PR curves of the error analysis.

    Args:
        recall: (R,) recall thresholds.
        curves: (S, R) precision of each step, each curve at or above the one before.
        steps: S step names (C75, C50, Loc, Sim, Oth, BG, FN); the legend gives each AP.
    """
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    below = np.zeros_like(recall, dtype=np.float64)
    # Legend from the most lenient down, the order the bands stack in on the plot.
    for i in range(len(steps)):
        ax.fill_between(recall, below, curves[i], color=STEP_COLORS[i % len(STEP_COLORS)], step=None,
                        label=f"[{curves[i].mean():.3f}] {steps[i]}", linewidth=0)
        ax.plot(recall, curves[i], color="black", linewidth=0.4)
        below = curves[i]
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="lower left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, [path])[0]


def plot_confusion_matrix(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str,
                          path: str | os.PathLike) -> Path:
    """A (K+1, K+1) count matrix drawn with each row normalised to its total; counts are written in
    the cells when there are at most 30 classes."""
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)
    size = min(max(4.0, 0.45 * len(columns) + 2.5), 30.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_xlabel("detected as")
    ax.set_ylabel("object")
    if len(columns) <= 31:
        for r in range(matrix.shape[0]):
            for c in range(matrix.shape[1]):
                if matrix[r, c]:
                    ax.text(c, r, str(int(matrix[r, c])), ha="center", va="center", fontsize=7,
                            color="white" if share[r, c] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, [path])[0]


def draw_gt_and_detections(image: np.ndarray, gt_boxes: np.ndarray, gt_texts: Sequence[str], det_boxes: np.ndarray,
                           det_texts: Sequence[str], *, min_size: int = 512) -> np.ndarray:
    """Objects in GT_COLOR and detections in DETECTION_COLOR on a copy of ``image``.

    Args:
        image: (H, W, 3) uint8 RGB.
        gt_boxes, det_boxes: (N, 4) x0, y0, x1, y1 in pixels.
        gt_texts, det_texts: one label per box (drawn above the object's box, below the
            detection's top edge, so the two do not cover each other).
        min_size: a smaller image is enlarged by a whole factor (nearest pixels) until its longer
            side reaches this, so that the labels stay readable.

    Returns:
        (H * f, W * f, 3) uint8, f the enlargement factor (1 for images of ``min_size`` or more).
    """
    height, width = image.shape[:2]
    factor = max(1, min_size // max(height, width, 1))
    canvas = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    if factor > 1:
        canvas = canvas.resize((width * factor, height * factor), Image.NEAREST)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64) * factor
        det_boxes = np.asarray(det_boxes, dtype=np.float64) * factor
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 300))
    for boxes, texts, color, inside in ((gt_boxes, gt_texts, GT_COLOR, False),
                                        (det_boxes, det_texts, DETECTION_COLOR, True)):
        for (x0, y0, x1, y1), text in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), texts):
            # A dark rim under the colour keeps the box visible on any background.
            pen.rectangle([x0 - 1, y0 - 1, max(x0, x1) + 1, max(y0, y1) + 1], outline=(0, 0, 0), width=width + 2)
            pen.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=color, width=width)
            if text:
                left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
                tw, th = right - left, bottom - top
                ty = y0 + width if inside else max(0.0, y0 - th - 3)
                pen.rectangle([x0, ty, x0 + tw + 3, ty + th + 3], fill=color)
                pen.text((x0 + 1.5, ty + 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
