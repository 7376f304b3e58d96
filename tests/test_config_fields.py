"""Every config field does something: a field that no code reads is a promise to the user that
nothing keeps. The test records which fields swiftdet's own code (outside the config package, whose
validation and serialisation read everything) reads while it trains, evaluates and predicts with
each architecture, and fails on any field left unread. It also checks ``input.size_divisibility``
end to end."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import swiftdet
from swiftdet.cli import train as train_cmd
from swiftdet.config import schema
from swiftdet.config.core import load_config
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine.run import run_evaluation
from swiftdet.engine.optim import IterationLRSchedule, build_optimizer
from swiftdet.inference import Predictor
from swiftdet.structures import Boxes, Instances, Keypoints
from swiftdet.weights import build_model_with_weights

PACKAGE = Path(swiftdet.__file__).resolve().parent
# Code that reads every field by construction (validation, dict/yaml conversion) or only writes them (recipes).
NOT_USES = (PACKAGE / "config", PACKAGE / "configs")

# Small widths and images, so that every architecture trains a step in about a second.
TINY_RCNN = [
    "model.backbone.depth=18", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
    "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.rpn.pre_nms_topk_test=50",
    "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16", "model.box_head.conv_dim=16",
    "model.box_head.batch_size_per_image=16", "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1",
    "input.min_size_train=[64]", "input.max_size_train=64", "input.min_size_test=64", "input.max_size_test=64",
]
TINY_DENSE = ["model.backbone.depth=18", "model.fpn.out_channels=64", "input.min_size_test=64", "input.max_size_test=64"]


def _config_classes() -> list[type]:
    return [c for c in vars(schema).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
            and c.__module__ == schema.__name__]


class _ReadRecorder:
    """Records (class name, field) for each field read from swiftdet code outside ``NOT_USES``."""

    def __init__(self):
        self.read: set[tuple[str, str]] = set()
        self._saved: dict[type, object] = {}

    def __enter__(self):
        recorder = self
        for cls in _config_classes():
            names = {f.name for f in dataclasses.fields(cls)}

            def getattribute(obj, name, _names=names, _cls=cls):
                if name in _names:
                    caller = Path(sys._getframe(1).f_code.co_filename)
                    if PACKAGE in caller.parents and not any(p in caller.parents for p in NOT_USES):
                        recorder.read.add((_cls.__name__, name))
                return object.__getattribute__(obj, name)

            self._saved[cls] = cls.__dict__.get("__getattribute__")
            cls.__getattribute__ = getattribute
        return self

    def __exit__(self, *exc):
        for cls, saved in self._saved.items():
            if saved is None:
                del cls.__getattribute__
            else:
                cls.__getattribute__ = saved


def _voc_folder(root: Path, image: torch.Tensor) -> Path:
    """A VOC year folder of one image with a cat and a dog, listed in ImageSets/Main/test.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    objects = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                      for name, (x0, y0, x1, y1) in (("cat", (5, 8, 40, 50)), ("dog", (30, 4, 60, 30))))
    (root / "Annotations" / "000001.xml").write_text(
        f"<annotation><size><width>64</width><height>64</height><depth>3</depth></size>{objects}</annotation>")
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "JPEGImages" / "000001.jpg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=4, num_val=2, image_size=(64, 64), seed=0)
    return root


def _data(root: Path) -> list[str]:
    return [f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
            f"data.test.json={root / 'annotations' / 'instances_val.json'}", f"data.test.image_root={root}"]


def _train_step(model: torch.nn.Module, image: torch.Tensor, num_classes: int) -> None:
    """One forward/backward of two images (BatchNorm needs more than one value on 1x1 levels),
    with targets that cover every loss of the architecture."""
    keypoints = None
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and roi_heads.keypoint_on:
        k = roi_heads.keypoint_head.num_keypoints
        keypoints = Keypoints(torch.tensor([[20.0, 20.0, 2.0], [45.0, 15.0, 2.0]])[:, None].repeat(1, k, 1))
    target = Instances(
        (64, 64), boxes=Boxes(torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 5.0, 60.0, 30.0]])),
        labels=torch.tensor([0, num_classes - 1]), keypoints=keypoints,
    )
    model.train()
    losses = model(model.preprocess([image, image.flip(-1)]), [target, target])
    sum(losses.values()).backward()


def test_every_config_field_is_read(synth, tmp_path):
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with _ReadRecorder() as recorder:
        # `swiftdet train` of a Mask R-CNN with evaluation, SGD and steps (output_dir from the config).
        parser = argparse.ArgumentParser()
        train_cmd.add_arguments(parser)
        args = parser.parse_args([
            "demo_mask_rcnn", *_data(synth), *TINY_RCNN, "solver.optimizer=SGD", "solver.schedule=multistep",
            "solver.steps=[1]", "solver.max_iter=2", "solver.ims_per_batch=2", "solver.reference_batch_size=2",
            "solver.warmup_iters=1", "solver.checkpoint_period=2", "solver.ema_decay=0.5", "solver.clip_grad_norm=1.0",
            "test.eval_period=2", "test.ims_per_batch=2", f"output_dir={tmp_path / 'train'}",
        ])
        assert train_cmd.run(args) == 0
        # AdamW and the cosine schedule.
        cfg = load_config("demo_mask_rcnn", TINY_RCNN)
        IterationLRSchedule(build_optimizer(build_model_with_weights(cfg)[0], cfg.solver), cfg.solver).step(1)
        # The other architectures and layouts: a training step, and prediction through the Predictor.
        for name, overrides in [
            ("mask_rcnn_R_50_C4_1x", ["model.mask_on=false", "model.backbone.depth=18", "model.box_head.batch_size_per_image=16", *TINY_RCNN[12:]]),
            ("faster_rcnn_R_50_FPN_v2", TINY_RCNN),
            ("retinanet_R_50_FPN_v2", TINY_DENSE),
            ("retinanet_R_50_FPN_1x", [*TINY_DENSE, "model.retinanet.box_loss=smooth_l1", "model.retinanet.smooth_l1_beta=0.1"]),
            ("fcos_R_50_FPN_1x", [*TINY_DENSE, "test.aug.enabled=true", "test.aug.min_sizes=[48,64]"]),
            ("faster_rcnn_MV3_FPN_320", TINY_RCNN[1:]),
            ("ssdlite320_MV3", ["input.fixed_size=[64,64]"]),
            ("keypoint_rcnn_R_50_FPN_1x", [*TINY_RCNN, "model.num_classes=2", "model.keypoint_head.conv_dim=16",
                                           "model.keypoint_head.num_convs=1"]),
            ("cascade_mask_rcnn_R_50_FPN_1x", [*TINY_RCNN, "model.mask_on=false"]),
            ("d2_mask_rcnn_R_50_FPN_1x_dconv_c3_c5", [*TINY_RCNN[1:], "model.backbone.stem_out_channels=8",
                                                      "model.backbone.res2_out_channels=16", "model.backbone.width_per_group=4",
                                                      "model.rpn.anchors.offset=0.5", "model.backbone.deform_modulated=true",
                                                      "model.mask_on=false"]),
            ("d2_faster_rcnn_R_50_DC5_1x", [*TINY_RCNN[1:], "model.backbone.stem_out_channels=8",
                                            "model.backbone.res2_out_channels=16", "model.backbone.width_per_group=4"]),
            ("d2_rpn_R_50_FPN_1x", [*TINY_RCNN[:8]]),
        ]:
            cfg = load_config(name, overrides)
            model, _ = build_model_with_weights(cfg)
            _train_step(model, image, cfg.model.num_classes)
            torch.save(model.state_dict(), tmp_path / "w.pth")
            Predictor(cfg, str(tmp_path / "w.pth"))(image)
        # A VOC test set through the evaluation run: its roots, split and VOC metric.
        voc = _voc_folder(tmp_path / "VOC2007", image)
        cfg = load_config("faster_rcnn_R_50_FPN_voc0712", [*TINY_RCNN, "model.backbone.weights=",
                                                           f"data.test.roots=[{voc}]", "data.test.split=test"])
        torch.save(build_model_with_weights(cfg)[0].state_dict(), tmp_path / "voc.pth")
        assert "bbox/mAP" in run_evaluation(cfg, tmp_path / "voc.pth")
    every = {(c.__name__, f.name) for c in _config_classes() for f in dataclasses.fields(c)}
    unread = sorted(f"{c}.{f}" for c, f in every - recorder.read)
    assert not unread, f"config fields that no code reads: {unread}"


@pytest.mark.parametrize("name", ["mask_rcnn_R_50_FPN_1x", "retinanet_R_50_FPN_1x", "fcos_R_50_FPN_1x"])
def test_size_divisibility_pads_the_batches_of_every_model(name, tmp_path):
    overrides = TINY_DENSE if "rcnn" not in name else TINY_RCNN
    image = torch.randint(0, 256, (3, 70, 100), dtype=torch.uint8)
    for divisor in (32, 128):
        cfg = load_config(name, [*overrides, f"input.size_divisibility={divisor}"])
        model, _ = build_model_with_weights(cfg)
        assert tuple(model.preprocess([image]).tensor.shape[-2:]) == (-(-70 // divisor) * divisor, -(-100 // divisor) * divisor)
        # The predictor (fused copy included) pads the same way.
        torch.save(model.state_dict(), tmp_path / "w.pth")
        predictor = Predictor(cfg, str(tmp_path / "w.pth"))
        resized, _ = predictor.prepare(image)
        padded = predictor.model.preprocess([resized]).tensor.shape[-2:]
        assert all(s % divisor == 0 for s in padded)
