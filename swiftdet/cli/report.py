"""The report `swiftdet train` writes at the end of a run with a test set (OUTPUT/report.txt)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from swiftdet.utils.io import atomic_write

__all__ = ["REPORT_DRAWINGS", "REPORT_FILE", "write_report"]

REPORT_FILE = "report.txt"
REPORT_DRAWINGS = "val_predictions"
REPORT_IMAGES = 8


def _final_metrics(output: Path) -> dict:
    """The last evaluation line of the run's metrics.jsonl (rank 0 wrote it, also with --nproc)."""
    final: dict = {}
    with open(output / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if any(k.endswith("/AP") for k in record):
                final = record
    return final


def write_report(output: Path, test_json: str, image_root: str) -> Path:
    """The end of a run, in one file: the AP of each evaluated type, the AP of each class, and a few
    validation images drawn with the final model (what a fine-tuning user looks at first)."""
    from swiftdet.cli import predict

    metrics = _final_metrics(output)
    types = [t for t in ("bbox", "segm", "keypoints") if f"{t}/AP" in metrics]
    lines = [f"swiftdet train report: {output} (iteration {metrics.get('iter', '?')})", ""]
    if types:
        names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        lines.append(f"{'':10}" + "".join(f"{n:>8}" for n in names))
        for t in types:
            # -1 is COCO's "undefined" (no ground truth of that size): shown as "-".
            lines.append(f"{t:10}" + "".join(f"{100 * metrics[f'{t}/{n}']:8.1f}" if metrics.get(f"{t}/{n}", -1) >= 0
                                             else f"{'-':>8}" for n in names))
        for t in types:
            per_class = sorted((k.split("/AP-", 1)[1], v) for k, v in metrics.items() if k.startswith(f"{t}/AP-"))
            if per_class:
                lines += ["", f"{t} AP per class:"] + [f"  {name:24} {100 * ap:6.1f}" for name, ap in per_class]
    else:
        lines.append("no evaluation in metrics.jsonl (test.eval_period and data.test decide when the run evaluates)")
    # A few validation images, drawn by the same code as `swiftdet predict`, with the json's image ids.
    with open(test_json, encoding="utf-8") as f:
        images = json.load(f).get("images", [])[:REPORT_IMAGES]
    drawn = output / REPORT_DRAWINGS
    if images:
        paths = [str(Path(image_root) / im["file_name"]) for im in images]
        parser = argparse.ArgumentParser()
        predict.add_arguments(parser)
        predict.run(parser.parse_args(["--config", str(output / "config.yaml"), "--weights", str(output / "model_final.pth"),
                                       "--input", *paths, "--coco-json", test_json, "--image-root", image_root,
                                       "--output", str(drawn)]))
        lines += ["", f"{len(paths)} validation images drawn with model_final.pth: {drawn}",
                  f"all of them: swiftdet predict --config {output / 'config.yaml'} --weights {output / 'model_final.pth'} "
                  f"--images-from {test_json} --image-root {image_root} --output {output / 'predictions'}"]
    text = "\n".join(lines) + "\n"
    atomic_write(output / REPORT_FILE, lambda f: f.write(text), mode="w")
    print(text, end="")
    return output / REPORT_FILE
