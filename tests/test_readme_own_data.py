"""The README's "Train on your own data" commands, run as written on a small synthetic COCO
dataset (issue 13: a new user's whole path, from a json to drawn predictions and their AP). Only
the train command gets extra overrides: a tiny model and two iterations."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from swiftdet.cli.main import main
from swiftdet.demo.synth import generate_synthetic_coco
from test_config_fields import TINY_RCNN

README = Path(__file__).resolve().parents[1] / "README.md"
QUICK = ["solver.max_iter=2", "solver.ims_per_batch=2", "solver.reference_batch_size=2", "solver.warmup_iters=1",
         "solver.checkpoint_period=2", "test.eval_period=2", "test.ims_per_batch=2", "model.backbone.depth=18",
         # GroupNorm(32) needs widths that are multiples of 32.
         "model.fpn.out_channels=32", "model.box_head.conv_dim=32", "model.mask_head.conv_dim=32"]


def _readme_commands() -> list[list[str]]:
    section = README.read_text(encoding="utf-8").split("### Train on your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_own_data_path_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    generate_synthetic_coco(tmp_path / "my_data", num_train=6, num_val=3, image_size=(64, 64), seed=1)
    commands = _readme_commands()
    assert [c[:2] for c in commands] == [["swiftdet", "browse"], ["swiftdet", "train"], ["swiftdet", "predict"],
                                         ["swiftdet", "coco-eval"]]
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":
            at = args.index("--output")
            args = args[:at] + TINY_RCNN + QUICK + args[at:]
        assert main(args) == 0, f"{' '.join(argv)}\n{capsys.readouterr().err[-2000:]}"
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "mine"
    assert (run / "check").is_dir() and any((run / "check").iterdir())
    assert (run / "model_final.pth").is_file() and (run / "config.yaml").is_file()
    predictions = json.loads((run / "predictions" / "predictions.json").read_text())
    val = json.loads((tmp_path / "my_data" / "annotations" / "instances_val.json").read_text())
    assert {p["image_id"] for p in predictions} <= {im["id"] for im in val["images"]}
    assert len(list((run / "predictions").glob("*.jpg")) + list((run / "predictions").glob("*.png"))) == 3
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in out  # coco-eval's table
    # train ends with a report: the AP table, the AP of each class, and drawn validation images.
    report = (run / "report.txt").read_text()
    assert "bbox" in report and "segm" in report and "AP per class:" in report
    assert any(shape in report for shape in ("circle", "triangle", "rectangle", "star", "cross"))
    assert len(list((run / "val_predictions").glob("*.jpg"))) == 3 and "runs/mine/val_predictions" in report
