"""`swiftdet flops` and `swiftdet benchmark` on tiny models, through the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from swiftdet.cli.main import main
from swiftdet.data.transforms import resized_size
from swiftdet.inference.flops import count_flops

# Narrow R18 models of 3 classes at ~128x160: every figure below comes from a real run, quickly.
TINY = ["model.num_classes=3", "model.backbone.depth=18", "model.fpn.out_channels=16", "model.box_head.fc_dim=32",
        "model.rpn.post_nms_topk_test=100", "model.rpn.pre_nms_topk_test=200", "model.rpn.post_nms_topk_train=100",
        "model.rpn.pre_nms_topk_train=200", "model.box_head.batch_size_per_image=32"]
TINY_MASK = TINY + ["model.mask_head.conv_dim=8", "model.box_head.detections_per_image=20"]
SMALL_INPUT = ["input.min_size_test=128", "input.max_size_test=160", "input.min_size_train=[128]",
               "input.max_size_train=160"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_single_conv_and_linear_counts_equal_the_formula():
    """FlopCounterMode's count as we read it: 2 FLOPs per multiply-add, biases not counted."""
    conv = torch.nn.Conv2d(6, 8, kernel_size=3, stride=2, padding=1, groups=2)
    x = torch.rand(2, 6, 17, 20)
    count = count_flops(conv, lambda: conv(x))
    h_out, w_out = (17 + 2 - 3) // 2 + 1, (20 + 2 - 3) // 2 + 1
    assert count.total_flops == 2 * 2 * 8 * h_out * w_out * (6 // 2) * 3 * 3
    assert count.params == 8 * 3 * 3 * 3 + 8
    assert count.modules == {"": count.total_flops}
    assert count.by_operator == {"aten.convolution": count.total_flops}

    linear = torch.nn.Linear(5, 7)
    count = count_flops(linear, lambda: linear(torch.rand(4, 5)))
    assert count.total_flops == 2 * 4 * 5 * 7
    assert count.by_operator == {"aten.addmm": count.total_flops}


def test_flops_cli_mask_rcnn_groups_add_up(tmp_path, capsys):
    out = tmp_path / "flops.json"
    code, text, _ = run_cli(["flops", "mask_rcnn_R_50_FPN_1x", *TINY_MASK, "--image-size", "96x128", "--out", str(out)],
                            capsys)
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("total_gflops", "total_gmacs", "params", "groups", "modules", "by_operator", "uncounted_ops",
                "flop_convention", "image_size", "padded_size", "detections"):
        assert key in result, key
    assert result["image_size"] == [96, 128] and result["padded_size"] == [96, 128]
    groups = result["groups"]
    assert set(groups) == {"backbone", "neck", "rpn", "roi_heads/box", "roi_heads/mask"}
    assert all(g["gflops"] > 0 and g["params"] > 0 for g in groups.values())
    # Every counted FLOP and every parameter lies in exactly one group (no "other").
    assert math.isclose(sum(g["gflops"] for g in groups.values()), result["total_gflops"], abs_tol=1e-3)
    assert sum(g["params"] for g in groups.values()) == result["params"]
    assert math.isclose(result["total_gmacs"], result["total_gflops"] / 2, abs_tol=1e-4)
    # Score threshold 0: the mask head ran on the model's full detections_per_image.
    assert result["detections"] == 20
    # The ResNet stem (7x7, stride 2, 3 -> 64 channels) at 96x128: the formula, 2 FLOPs per multiply-add.
    assert math.isclose(result["modules"]["backbone.conv1"], 2 * 64 * 3 * 7 * 7 * 48 * 64 / 1e9, abs_tol=1e-4)
    # RoIAlign and NMS have no FLOP formula: listed as uncounted, and named in the printout.
    assert result["uncounted_ops"]["torchvision.roi_align"] >= 2
    assert result["uncounted_ops"]["torchvision.nms"] >= 1
    assert "torchvision.roi_align" in text and "torchvision.nms" in text and "GMACs" in text
    assert "roi_heads/mask" in text


def test_flops_cli_dense_and_ssd_groups(tmp_path, capsys):
    out = tmp_path / "f.json"
    code, _, _ = run_cli(["flops", "retinanet_R_50_FPN_1x", "model.num_classes=3", "model.backbone.depth=18",
                          "model.fpn.out_channels=16", "--image-size", "64x64", "--out", str(out)], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["groups"]) == {"backbone", "neck", "dense_head"}
    # SSDlite at its fixed test size (the default image size): extras are the neck.
    code, _, _ = run_cli(["flops", "ssdlite320_MV3", "model.num_classes=3", "input.fixed_size=[160,160]",
                          "--out", str(out)], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["image_size"] == [160, 160]
    assert set(result["groups"]) == {"backbone", "neck", "dense_head"}


def test_benchmark_train_keypoint_rcnn(tmp_path, capsys):
    """--train on a keypoint model (random keypoints inside the random boxes); flops names its keypoint head."""
    overrides = [*TINY, *SMALL_INPUT, "model.keypoint_head.conv_dim=8", "model.keypoint_head.num_convs=2",
                 "model.box_head.detections_per_image=10"]
    out = tmp_path / "b.json"
    code, _, _ = run_cli(["benchmark", "keypoint_rcnn_R_50_FPN_1x", *overrides, "--device", "cpu", "--num-images", "1",
                          "--warmup", "0", "--train", "--out", str(out)], capsys)
    assert code == 0
    train = json.loads(out.read_text())["train"]
    assert train["iterations"] == 1 and "keypoints" in train["targets"] and train["s_per_iter"] > 0
    code, _, _ = run_cli(["flops", "keypoint_rcnn_R_50_FPN_1x", *overrides, "--image-size", "64x64", "--out", str(out)],
                         capsys)
    assert code == 0
    groups = json.loads(out.read_text())["groups"]
    assert groups["roi_heads/keypoint"]["gflops"] > 0 and "roi_heads/mask" not in groups


@pytest.mark.parametrize("config", ["cascade_mask_rcnn_R_50_FPN_1x", "mask_rcnn_R_50_C4_1x"])
def test_flops_cascade_and_c4_leave_nothing_outside_the_groups(config, tmp_path, capsys):
    """Cascade's stages (a ModuleList never called itself) count as the box head; C4's res5 run on the
    detections for the masks counts as the mask head's."""
    out = tmp_path / "f.json"
    code, _, _ = run_cli(["flops", config, *TINY_MASK, "--image-size", "64x64", "--out", str(out)], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    groups = result["groups"]
    assert "other" not in groups and groups["roi_heads/box"]["gflops"] > 0 and groups["roi_heads/mask"]["gflops"] > 0
    assert math.isclose(sum(g["gflops"] for g in groups.values()), result["total_gflops"], abs_tol=1e-3)
    if config.startswith("mask_rcnn_R_50_C4"):
        modules = result["modules"]
        res5_for_masks = modules["roi_heads.box_head.res5"] - modules["roi_heads.box_head"]
        assert res5_for_masks > 0
        assert math.isclose(groups["roi_heads/mask"]["gflops"], modules["roi_heads.mask_head"] + res5_for_masks,
                            abs_tol=1e-3)


def test_flops_refuses_a_bad_size(capsys):
    code, _, err = run_cli(["flops", "retinanet_R_50_FPN_1x", "--image-size", "800by1333"], capsys)
    assert code == 2 and "HxW" in err


def _check_inference(inf: dict, images: int, batch_size: int) -> None:
    assert inf["images"] == images and inf["batch_size"] == batch_size
    assert inf["batches"] == math.ceil(images / batch_size)
    assert math.isclose(inf["ms_per_image"] * inf["images_per_s"], 1000.0, rel_tol=1e-6)
    assert math.isclose(inf["total_s"] * 1000.0 / images, inf["ms_per_image"], rel_tol=1e-6)
    assert inf["peak_memory_mb"] > 0 and inf["memory_increase_mb"] >= 0 and inf["memory_method"]


def test_benchmark_synthetic_random_batch_fused(tmp_path, capsys):
    out = tmp_path / "benchmark.json"
    code, text, _ = run_cli(["benchmark", "faster_rcnn_R_50_FPN_1x", *TINY, *SMALL_INPUT, "--device", "cpu",
                             "--batch-size", "2", "--num-images", "3", "--warmup", "1", "--fuse", "--score-thresh", "0",
                             "--out", str(out)],
                            capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["random_weights"] and result["synthetic_images"] and result["score_thresh"] == 0.0
    assert "random" in result["weights"] and "synthetic" in result["images"] and "128x160" in result["images"]
    inf = result["inference"]
    _check_inference(inf, 3, 2)
    assert inf["fused"] and inf["input_sizes"] == [[128, 160]]
    # Score threshold 0: random scores pass it, so the post-processing handles boxes (at most detections_per_image).
    assert 0 < inf["mean_detections_per_image"] <= 100
    assert "train" not in result
    assert "inference (fused)" in text and "random weights" in text and "synthetic images" in text


def test_benchmark_images_weights_and_train(tmp_path, capsys):
    """A folder of images, a checkpoint, and --train on a mask model (random box-shaped masks)."""
    from swiftdet.config.core import load_config
    from swiftdet.model.build import build_model
    from swiftdet.weights.checkpoint import make_checkpoint

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (100, 150), "b.jpg": (120, 90)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)
    overrides = [*TINY_MASK, *SMALL_INPUT, "model.backbone.weights=", "solver.warmup_iters=1"]
    cfg = load_config("mask_rcnn_R_50_FPN_1x", overrides)
    weights = tmp_path / "model.pth"
    torch.save(make_checkpoint(build_model(cfg.model), cfg), weights)

    out = tmp_path / "b.json"
    code, text, _ = run_cli(["benchmark", "mask_rcnn_R_50_FPN_1x", *overrides, "--weights", str(weights),
                             "--images", str(folder), "--device", "cpu", "--num-images", "2", "--warmup", "0",
                             "--batch-size", "2", "--train", "--out", str(out)], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert not result["random_weights"] and result["weights"] == str(weights)
    assert not result["synthetic_images"] and "2 image(s)" in result["images"]
    assert result["score_thresh"] == cfg.model.box_head.score_thresh  # trained weights keep the config's
    inf = result["inference"]
    _check_inference(inf, 2, 2)
    assert not inf["fused"]
    # Both images resized by the test transform (shortest edge 128, longest at most 160).
    assert sorted(inf["input_sizes"]) == sorted([list(resized_size(100, 150, 128, 160)), list(resized_size(120, 90, 128, 160))])
    train = result["train"]
    for key in ("iterations", "s_per_iter", "median_s_per_iter", "images_per_s", "peak_memory_mb",
                "memory_increase_mb", "memory_method", "targets", "batch_size", "amp"):
        assert key in train, key
    assert train["iterations"] == 1 and train["batch_size"] == 2
    assert math.isclose(train["images_per_s"] * train["s_per_iter"], 2.0, rel_tol=1e-6)
    assert "masks" in train["targets"]
    assert "training" in text and "s/iter" in text


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--images", "/nonexistent/folder"], "not a folder"),
    (["--device", "tpu"], "Unknown device"),
])
def test_benchmark_refuses_bad_arguments(argv, message, capsys):
    code, _, err = run_cli(["benchmark", "faster_rcnn_R_50_FPN_1x", *TINY, *argv], capsys)
    assert code == 2 and message in " ".join(err.split())


@pytest.mark.slow
def test_r50_fpn_faster_rcnn_matches_torchvision_published_figures(tmp_path, capsys):
    """torchvision's fasterrcnn_resnet50_fpn meta: 134.38 "GFLOPS" (multiply-adds, its 800x800 input:
    the 224x224 image it counts on resized to min_size 800) and 41,755,286 parameters, with 91 class
    slots (swiftdet num_classes=90)."""
    out = tmp_path / "f.json"
    code, _, _ = run_cli(["flops", "faster_rcnn_R_50_FPN_1x", "model.num_classes=90", "--image-size", "800x800",
                          "--out", str(out)], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["params"] == 41_755_286
    assert abs(result["total_gmacs"] - 134.38) / 134.38 < 0.005
