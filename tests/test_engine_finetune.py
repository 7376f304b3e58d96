"""The real pieces end to end on real data: the finetune_coco_folder recipe trains a tiny Mask R-CNN
on tiny_coco for a few iterations, `swiftdet eval` reproduces its final numbers, and bad datasets
fail clearly."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from swiftdet.cli import eval as eval_cmd
from swiftdet.cli import train as train_cmd
from swiftdet.config.core import load_config
from swiftdet.engine.run import run_training
from swiftdet.errors import ConfigError, DatasetError

# A tiny model and small images, so that the recipe runs in seconds on a CPU.
TINY = [
    "model.backbone.depth=18", "model.backbone.norm=BN", "model.backbone.freeze_at=0", "model.fpn.out_channels=32",
    "model.rpn.batch_size_per_image=32", "model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
    "model.rpn.pre_nms_topk_test=100", "model.rpn.post_nms_topk_test=50", "model.box_head.fc_dim=64",
    "model.box_head.batch_size_per_image=32", "model.box_head.detections_per_image=20", "model.mask_head.conv_dim=16",
    "model.mask_head.num_convs=1", "model.box_head.score_thresh=0.0", "input.min_size_train=[96]",
    "input.max_size_train=128", "input.min_size_test=96", "input.max_size_test=128", "solver.max_iter=3",
    "solver.warmup_iters=2", "solver.ims_per_batch=2", "solver.log_period=1", "data.num_workers=0",
    "test.ims_per_batch=2",
]


def _val_subset(root: Path, out: Path, num_images: int = 6) -> Path:
    """The first images of tiny_coco's val split (all categories kept), so that evaluation is quick."""
    data = json.loads((root / "annotations" / "instances_val.json").read_text())
    images = data["images"][:num_images]
    keep = {im["id"] for im in images}
    data.update(images=images, annotations=[a for a in data["annotations"] if a["image_id"] in keep])
    path = out / "val_subset.json"
    path.write_text(json.dumps(data))
    return path


def _data(root: Path, val_json: Path) -> list[str]:
    return [
        f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
        f"data.test.json={val_json}", f"data.test.image_root={root}",
    ]


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.slow
def test_finetune_recipe_on_tiny_coco_then_eval_reproduces_metrics(tiny_coco, tmp_path):
    out = tmp_path / "ft"
    data = _data(tiny_coco, _val_subset(tiny_coco, tmp_path))
    args = _parse(train_cmd, ["finetune_coco_folder", *data, *TINY, "--output", str(out)])
    assert train_cmd.run(args) == 0

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train] == [1, 2, 3]
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"} <= set(train[0])
    [final] = [r for r in records if "bbox/AP" in r]
    assert "segm/AP" in final and final["iter"] == 3
    # The untrained model (score_thresh 0) still outputs detections, so the comparison below means something.
    assert "bbox (6 images with detections)" in (out / "log.txt").read_text()
    assert load_config(str(out / "config.yaml")).model.backbone.depth == 18  # the saved config reloads

    args = _parse(eval_cmd, [str(out / "config.yaml"), "--weights", str(out / "checkpoints" / "last.pth"),
                             "--output", str(tmp_path / "eval")])
    assert eval_cmd.run(args) == 0
    [again] = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert {k: again[k] for k in final if "/" in k} == {k: v for k, v in final.items() if "/" in k}


def test_dataset_without_usable_image_fails_before_writing_checkpoints(tiny_coco, tmp_path):
    source = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    empty = {"images": source["images"][:3], "annotations": [], "categories": source["categories"]}
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(empty))
    cfg = load_config("finetune_coco_folder", [f"data.train.json={path}", f"data.train.image_root={tiny_coco}", *TINY])
    with pytest.raises(DatasetError, match="no (usable )?training image"):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_wrong_number_of_classes_names_the_fix(tiny_coco, tmp_path):
    cfg = load_config("finetune_coco_folder", [*_data(tiny_coco, _val_subset(tiny_coco, tmp_path)), *TINY, "model.num_classes=3"])
    with pytest.raises(ConfigError, match="Set model.num_classes=80"):
        run_training(cfg, tmp_path / "run")
