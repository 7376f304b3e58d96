"""How a model gets its initial weights (swiftdet.weights.load_initial_weights), through the real
paths that use it: `swiftdet train` from an ImageNet backbone file, `model.weights` as a URL or a
bare state_dict for training, and evaluation refusing a file that does not fill the model."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
import torchvision

from swiftdet.cli import train as train_cmd
from swiftdet.config.core import load_config
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.weights import read_checkpoint
from swiftdet.engine.run import build_detector, run_evaluation
from swiftdet.errors import WeightsError
from swiftdet.model.build import build_model

# The demo's Mask R-CNN (ResNet-18 FPN) made tiny, with an ImageNet-style backbone: FrozenBN, stem
# and res2 frozen, as the COCO recipes have it.
TINY = [
    "model.backbone.norm=FrozenBN", "model.backbone.freeze_at=2", "model.fpn.out_channels=16", "model.fpn.norm=",
    "model.rpn.batch_size_per_image=32", "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20",
    "model.rpn.pre_nms_topk_test=50", "model.rpn.post_nms_topk_test=20", "model.box_head.fc_dim=16",
    "model.box_head.batch_size_per_image=16", "model.mask_head.conv_dim=8", "model.mask_head.num_convs=1",
    "model.mask_head.norm=", "input.min_size_train=[64]", "input.max_size_train=64", "input.min_size_test=64",
    "input.max_size_test=64", "solver.ims_per_batch=2", "solver.reference_batch_size=2", "solver.max_iter=2",
    "solver.warmup_iters=1", "solver.checkpoint_period=2", "solver.log_period=1", "data.test.json=",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=4, num_val=2, image_size=(64, 64), seed=0)
    return root


def _data(root) -> list[str]:
    return [f"data.train.json={root / 'annotations' / 'instances_train.json'}", f"data.train.image_root={root}",
            f"data.test.image_root={root}"]


def _imagenet_file(path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet-18 checkpoint as ImageNet training leaves one: random weights, and
    BatchNorm statistics that are not the defaults (so that loading them shows)."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.5)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
        elif key.endswith("bn1.weight") or key.endswith("bn2.weight"):
            value.uniform_(0.5, 1.5)
    torch.save(state, path)
    return state


def test_training_starts_from_the_backbone_file(synth, tmp_path):
    file = tmp_path / "resnet18-imagenet.pth"
    state = _imagenet_file(file)
    out = tmp_path / "run"
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args(["demo_mask_rcnn", *_data(synth), *TINY, f"model.backbone.weights={file}", "--output", str(out)])
    assert train_cmd.run(args) == 0
    assert f"Loaded 100 tensors from {file}." in (out / "log.txt").read_text()  # ResNet-18 without fc

    trained = read_checkpoint(out / "checkpoints" / "last.pth")
    assert trained["iteration"] == 2
    model = trained["model"]
    frozen_prefixes = ("conv1.", "bn1.", "layer1.")
    compared = 0
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        ours = model[f"backbone.{key}"]
        if key.startswith(frozen_prefixes) or ".bn" in key or "downsample.1" in key or key.startswith("bn1"):
            # Frozen stages and every FrozenBN tensor: exactly the file's after training.
            assert torch.equal(ours, value), key
        else:
            # Trained for two small warm-up steps: still the file's values, moved a little.
            assert torch.allclose(ours, value, atol=1e-2), key
        compared += 1
    assert compared == sum(1 for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))


def _tiny_cfg(synth, *extra):
    return load_config("demo_mask_rcnn", [*_data(synth), *TINY, *extra])


def test_model_weights_as_url_or_bare_state_dict_start_training(synth, tmp_path):
    torch.manual_seed(3)
    source = build_model(_tiny_cfg(synth).model).state_dict()
    source = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in source.items()}
    bare = tmp_path / "bare.pth"
    torch.save(source, bare)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": source}, wrapped)
    for weights in (str(bare), bare.as_uri(), str(wrapped)):
        cfg = _tiny_cfg(synth, f"model.weights={weights}")
        loaded = build_detector(cfg, torch.device("cpu")).state_dict()
        assert loaded.keys() == source.keys()
        assert all(torch.equal(loaded[k], source[k]) for k in source), weights


def test_evaluation_refuses_weights_that_do_not_fill_the_model(synth, tmp_path):
    cfg = _tiny_cfg(synth, f"data.test.json={synth / 'annotations' / 'instances_val.json'}", "model.box_head.score_thresh=0")
    state = build_model(cfg.model).state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("roi_heads.mask_head.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="do not fill this model exactly"):
        run_evaluation(cfg, tmp_path / "partial.pth")
    torch.save(state, tmp_path / "whole.pth")
    metrics = run_evaluation(cfg, tmp_path / "whole.pth", output_dir=tmp_path / "eval")
    assert "bbox/AP" in metrics
    [record] = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert record["iter"] == 0 and record["weights"] == str(tmp_path / "whole.pth")
    # The area convention of segm evaluation follows test.segm_area_from.
    assert metrics["segm/area_from"] == "mask"
    cfg.test.segm_area_from = "loadres"
    assert run_evaluation(cfg, tmp_path / "whole.pth")["segm/area_from"] == "box"
