"""200 random bad inputs over the CLI verbs: fuzzed configs and overrides, annotation and results
json, images and weights files. Each must end in exit code 0 or 2 with no traceback, and change no
file outside its output folder (issue 16). Seeded: a failure names its case and replays."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from swiftdet.cli.main import main
from swiftdet.config.core import _all_keys, config_to_dict, load_config
from swiftdet.config.schema import Config
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.model.build import build_model
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights import make_checkpoint

pytestmark = pytest.mark.slow

NUM_CASES = 200
SMALL = [
    "model.backbone.depth=18", "model.num_classes=5", "model.fpn.out_channels=16", "model.box_head.fc_dim=32",
    "model.mask_head.conv_dim=8", "model.rpn.post_nms_topk_test=20", "model.box_head.detections_per_image=5",
    "input.min_size_test=64", "input.max_size_test=64",
]
JUNK = ["", "-1", "0", "inf", "-inf", ".nan", "1e400", "[]", "[[]]", "{}", "{a: 1}", "true", "null", "abc", "[1, 2, 3, 4, 5]",
        "999999999999", "0.5", "'", "[", "]:", "\u00e9\u00e8", "x=y"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Valid inputs to break: a small synthetic dataset, its results, a tiny checkpoint, a config."""
    root = tmp_path_factory.mktemp("fuzz")
    data = generate_synthetic_coco(root / "data", num_train=3, num_val=3, image_size=(64, 64), seed=0)
    torch.manual_seed(0)
    cfg = load_config("mask_rcnn_R_50_FPN_1x", SMALL)
    weights = root / "weights.pth"
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), {}), weights)
    gt = json.loads(Path(data.val_json).read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                "segmentation": a["segmentation"]} for a in gt["annotations"]]
    (root / "results.json").write_text(json.dumps(results))
    (root / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    return {"root": root, "data": data, "weights": weights, "gt": gt, "results": results}


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and skip not in path.parents:
            out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def _mutate_text(rng: random.Random, text: str) -> str:
    kind = rng.randrange(4)
    if kind == 0 and text:
        return text[: rng.randrange(len(text))]  # truncated
    if kind == 1 and text:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice("{}[]:,\"'\n\x00#") + text[i + 1:]
    if kind == 2:
        return text + rng.choice(["]", "}", ",", "garbage", "\x00"])
    return rng.choice(["", "null", "[]", "{}", "42", "\"text\"", "\xff\xfe"])


def _mutate_json(rng: random.Random, obj):
    """A copy of ``obj`` with one random entry deleted, retyped or replaced."""
    obj = json.loads(json.dumps(obj))
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:4]):
                walk(v, path + [i])

    walk(obj, [])
    path = rng.choice(paths[1:]) if len(paths) > 1 else []
    if not path:
        return rng.choice([None, [], {}, 3, "x"])
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    action = rng.randrange(3)
    if action == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == 0 and isinstance(parent, list):
        parent.pop(path[-1])
    else:
        parent[path[-1]] = rng.choice([None, -1, 0, 1e308, float("inf"), "", "x", [], {}, [1, 2], True, -5.5, 10**12])
    return obj


def _bad_image(rng: random.Random, path: Path) -> None:
    kind = rng.randrange(6)
    if kind == 0:
        path.write_bytes(b"")
    elif kind == 1:
        path.write_bytes(rng.randbytes(rng.randrange(1, 2000)))
    elif kind == 2:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
        path.write_bytes(data[: rng.randrange(10, len(data))])
    elif kind == 3:
        Image.fromarray(np.zeros((30, 20), np.uint8)).save(path.with_suffix(".png"))  # grayscale
    elif kind == 4:
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(path.with_suffix(".png"))  # one pixel
    else:
        Image.fromarray(np.zeros((20, 30, 4), np.uint8)).save(path.with_suffix(".png"))  # RGBA


def _case(rng: random.Random, world: dict, work: Path, out: Path) -> list[str]:
    """The argv of one random bad-input case (inputs written under ``work``, outputs to ``out``)."""
    data = world["data"]
    verb = rng.choice(["config", "config-file", "train", "eval", "predict", "predict-weights", "coco-eval", "browse"])
    keys = [k for k in _all_keys(Config) if "." in k]
    if verb == "config":
        return ["config", "mask_rcnn_R_50_FPN_1x", f"{rng.choice(keys + ['solver.bse_lr', 'x', 'model'])}={rng.choice(JUNK)}"]
    if verb == "config-file":
        ext = rng.choice([".yaml", ".py"])
        text = (world["root"] / "config.yaml").read_text() if ext == ".yaml" else (
            "from swiftdet.configs.mask_rcnn_R_50_FPN_1x import config as base\n\n"
            "def config():\n    cfg = base()\n    cfg.solver.base_lr = 0.1\n    return cfg\n")
        path = work / f"cfg{ext}"
        path.write_text(_mutate_text(rng, text), encoding="utf-8", errors="replace")
        return ["config", str(path)]
    if verb == "train":
        # Only values that cannot all be valid, so that no case starts a real training run.
        key = rng.choice(["solver.max_iter", "solver.log_period", "solver.checkpoint_period", "solver.base_lr",
                          "test.ims_per_batch", "model.num_classes", "input.min_size_train", "solver.bse_lr"])
        return ["train", "mask_rcnn_R_50_FPN_1x", *SMALL, f"{key}={rng.choice(['0', '-1', 'inf', 'abc', '[]', '.nan'])}",
                "--output", str(out)]
    if verb == "eval":
        gt = work / "gt.json"
        gt.write_text(json.dumps(_mutate_json(rng, world["gt"])))
        return ["eval", "mask_rcnn_R_50_FPN_1x", f"data.test.json={gt}", f"data.test.image_root={data.image_root}",
                "--weights", str(world["weights"]), "--output", str(out)]
    if verb == "predict":
        folder = work / "images"
        folder.mkdir()
        for i in range(rng.randrange(1, 3)):
            _bad_image(rng, folder / f"bad{i}.jpg")
        args = ["predict", "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(world["weights"]),
                "--input", str(folder), "--output", str(out)]
        return args + (["--strict"] if rng.random() < 0.3 else [])
    if verb == "predict-weights":
        bad = work / "bad.pth"
        blob = world["weights"].read_bytes()
        bad.write_bytes(rng.choice([b"", blob[: rng.randrange(len(blob))], rng.randbytes(500), b"{\"a\": 1}"]))
        image = work / "ok.png"
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
        return ["predict", "--config", "mask_rcnn_R_50_FPN_1x", *SMALL, "--weights", str(bad), "--input", str(image),
                "--output", str(out)]
    if verb == "coco-eval":
        gt, res = work / "gt.json", work / "res.json"
        if rng.random() < 0.5:
            gt.write_text(json.dumps(_mutate_json(rng, world["gt"])))
            res.write_text(json.dumps(world["results"]))
        else:
            gt.write_text(json.dumps(world["gt"]))
            text = json.dumps(_mutate_json(rng, world["results"]))
            res.write_text(_mutate_text(rng, text) if rng.random() < 0.3 else text)
        return ["coco-eval", str(gt), str(res), "--iou-type", rng.choice(["bbox", "segm"]), "--out", str(out / "m.json")]
    gt = work / "gt.json"
    gt.write_text(json.dumps(_mutate_json(rng, world["gt"])))
    return ["browse", str(gt), str(data.image_root), "--out", str(out), "--limit", "2"]


def test_random_bad_inputs_end_cleanly_and_touch_nothing_outside_the_output(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    watched = world["root"]
    for index in range(NUM_CASES):
        rng = random.Random(index)
        work, out = tmp_path / f"case{index}", tmp_path / f"case{index}" / "out"
        work.mkdir()
        argv = _case(rng, world, work, out)
        before = _snapshot(watched, out) | _snapshot(work, out)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code
        printed = capsys.readouterr()
        assert code in (0, 2), f"case {index} {argv}: exit code {code}\n{printed.err[-2000:]}"
        assert "Traceback" not in printed.err + printed.out, f"case {index} {argv}:\n{printed.err[-2000:]}"
        after = _snapshot(watched, out) | _snapshot(work, out)
        changed = sorted({path for path, _ in set(after.items()) ^ set(before.items())})
        assert not changed, f"case {index} {argv} changed files outside its output: {changed[:5]}"
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("case")) == [], \
            f"case {index} {argv} wrote into the working directory"
