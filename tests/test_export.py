"""Exported Mask R-CNN, RetinaNet, FCOS and SSDlite (ONNX run by onnxruntime and OpenVINO, and TorchScript) give
the eager model's detections and masks: batches of 1, 2 and 3 images of different sizes through one
file with a dynamic batch and image size (SSD: its fixed size), an image without detections, the
CLI's export -> predict --backend round trip, and clear errors for files and flags that do not fit
(issue 12, first part)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_weights
from PIL import Image
from torch import nn

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.errors import ConfigError, InputError, WeightsError
from swiftdet.export.graph import ExportGraph
from swiftdet.export.onnx import EXPORT_FORMAT, export_graph_for, export_model
from swiftdet.export.runtime import load_exported_predictor, read_export_info
from swiftdet.inference import Predictor
from swiftdet.model.build import build_model
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights.checkpoint import make_checkpoint

CONFIGS = {"retinanet": "synth_retinanet_R_18_FPN", "fcos": "synth_fcos_R_18_FPN", "mask_rcnn": "demo_mask_rcnn",
           "keypoint_rcnn": "synth_keypoint_rcnn_R_18_FPN", "mask_rcnn_c4": "mask_rcnn_R_50_C4_1x"}
RCNN = ("mask_rcnn", "keypoint_rcnn", "mask_rcnn_c4")
# The C4 layout (res5 as the RoI head, masks from its output) at a test width, BN in training mode to calibrate.
# 100 proposals, not 1000: res5 on every RoI is the slow part, and 100 cover these small images.
C4 = ["model.backbone.depth=18", "model.backbone.weights=", "model.num_classes=5", "model.backbone.norm=BN",
      "model.backbone.freeze_at=0", "model.rpn.pre_nms_topk_test=300", "model.rpn.post_nms_topk_test=100"]
SIZE = ["input.min_size_test=160", "input.max_size_test=256"]


def _real_images(tiny_coco: Path, count: int) -> list[np.ndarray]:
    files = sorted((tiny_coco / "val2017").glob("*.jpg"))[:count] or sorted(tiny_coco.rglob("*.jpg"))[:count]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _calibrated(arch: str, images: list[np.ndarray]):
    """A model with random weights whose norms are calibrated on real images and whose class
    logits spread over a realistic range (not all at the prior), and its config."""
    cfg = load_config(CONFIGS[arch], SIZE + (C4 if arch == "mask_rcnn_c4" else []))
    torch.manual_seed(0)  # the layers not set below (e.g. the mask deconv) too: the same model in any test order
    model = build_model(cfg.model)
    g = torch.Generator().manual_seed(0)
    randomise_weights(model, g)
    with torch.no_grad():
        if arch in RCNN:
            # Class logits a few units apart (the initial std of 0.01 ties every softmax score near
            # 1/6), small box deltas (boxes near their proposals, not degenerate).
            model.roi_heads.box_predictor.cls_score.weight.mul_(2.0)
            model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.05)
            # Decisive mask logits: res5's features give many pixels near probability 0.5, where
            # onnxruntime's rounding flips a few (IoU 0.985 with some thread counts).
            if model.roi_heads.mask_head is not None:
                model.roi_heads.mask_head.predictor.weight.mul_(16.0 if arch == "mask_rcnn_c4" else 4.0)
        predictor = Predictor.from_model(cfg, model)
        batch = model.preprocess([predictor.prepare(img)[0] for img in images])
        model.train()
        model.extract_features(batch.tensor) if arch in RCNN else model.fpn(model.backbone(batch.tensor))
        model.eval()
    return model, cfg


@pytest.fixture(scope="module")
def images(tiny_coco):
    return _real_images(tiny_coco, 4)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, images, tmp_path_factory):
    """(arch, eager predictor, {backend: exported predictor})."""
    arch = request.param
    model, cfg = _calibrated(arch, images)
    # A threshold inside the score range, so that some candidates fall below it.
    scores = torch.cat([r.scores for r in Predictor.from_model(cfg, model, batch_size=4)(images)])
    threshold = round(float(scores.median()), 3) if len(scores) else 0.0
    (cfg.model.box_head if arch in RCNN else getattr(cfg.model, arch)).score_thresh = threshold
    model.score_thresh = threshold
    folder = tmp_path_factory.mktemp(f"export_{arch}")
    meta = {"class_names": [f"c{i}" for i in range(cfg.model.num_classes)],
            "category_ids": list(range(10, 10 + cfg.model.num_classes))}
    export_model(model, cfg, folder / "model.onnx", meta=meta)
    export_model(model, cfg, folder / "model.pt", fmt="torchscript", meta=meta)
    backends = {"onnxruntime": load_exported_predictor(folder / "model.onnx", "onnxruntime", batch_size=3),
                "openvino": load_exported_predictor(folder / "model.onnx", "openvino", batch_size=3),
                "torchscript": load_exported_predictor(folder / "model.pt", "torchscript", batch_size=3)}
    return arch, Predictor.from_model(cfg, model, batch_size=3), backends


def _assert_same(expected, got, scales=None, atol: float = 1e-3) -> None:
    """Same counts and labels; scores within ``atol``, boxes within ``atol`` pixels of the network's
    input (``scales``: each image's original / resized size; the resize back multiplies any
    difference, and onnxruntime's convolutions round differently from PyTorch's)."""
    assert [len(r) for r in got] == [len(r) for r in expected]
    for i, (e, o) in enumerate(zip(expected, got)):
        assert o.image_size == e.image_size
        assert torch.equal(o.labels, e.labels)
        scale = 1.0 if scales is None else scales[i]
        torch.testing.assert_close(o.boxes.tensor, e.boxes.tensor, atol=atol * scale, rtol=0)
        torch.testing.assert_close(o.scores, e.scores, atol=atol, rtol=0)
        assert (o.masks is None) == (e.masks is None)
        if e.masks is not None and len(e):
            a, b = e.masks.tensor.flatten(1), o.masks.tensor.flatten(1)
            # The probabilities are compared in the graph's outputs (test below); here pixels whose
            # probability is within rounding of the threshold may flip, many on a flat random-weight
            # mask: at most 1% of the union (or 2 pixels) differs on 95% of the masks, and no mask
            # is lost (IoU > 0.5).
            union, differ = (a | b).sum(1), (a ^ b).sum(1)
            close = differ <= torch.clamp(0.01 * union, min=2)
            assert float(close.float().mean()) >= 0.95 and bool((2 * differ <= union).all()), (differ, union)
        assert (o.keypoints is None) == (e.keypoints is None)
        if e.keypoints is not None:
            torch.testing.assert_close(o.keypoints.tensor[..., :2], e.keypoints.tensor[..., :2], atol=atol * scale, rtol=0)
            torch.testing.assert_close(o.keypoints.tensor[..., 2], e.keypoints.tensor[..., 2], atol=atol, rtol=0)


def _scales(predictor, images) -> list[float]:
    return [img.shape[0] / predictor.prepare(img)[0].shape[1] for img in images]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torchscript"])
def test_exported_model_matches_eager_for_batches_of_several_sizes(exported, images, backend):
    arch, eager, backends = exported
    assert len({img.shape for img in images}) > 1  # the batch is padded, images resized differently
    # C4 runs res5 (its convolution blocks) on every RoI after the RoI pooling: the backends' different
    # convolution rounding reaches the box deltas as ~1e-5 relative, up to ~3e-3 px (OpenVINO).
    atol = 5e-3 if arch == "mask_rcnn_c4" else 1e-3
    for chunk in (images[:1], images[1:3], images[:3], images[3:] + images[:2]):
        expected = eager(chunk)
        assert sum(len(r) for r in expected) > 0
        _assert_same(expected, backends[backend](chunk), _scales(eager, chunk), atol=atol)
    assert backends[backend].class_names == eager.class_names or eager.class_names is None
    # The graph's own outputs on one padded batch: scores and (mask models) pasted masks as computed.
    batch = eager.model.preprocess([eager.prepare(img)[0] for img in images[:3]])
    sizes = torch.tensor(batch.image_sizes, dtype=torch.int64)
    pasted = backends[backend].model.masks_pasted
    assert pasted == (arch in ("mask_rcnn", "mask_rcnn_c4"))  # the default for mask models
    originals = torch.tensor([img.shape[:2] for img in images[:3]])
    with torch.no_grad():
        expected = export_graph_for(eager.model, backends[backend].cfg, paste_masks=pasted)(
            batch.tensor, sizes, *([originals] if pasted else []))
    got = backends[backend].model.run(batch.tensor, sizes, originals)
    assert torch.equal(got["num_detections"], expected[3])
    for name, e in zip(got, expected):
        if name == "scores":
            torch.testing.assert_close(got[name], e, atol=atol, rtol=0)
        elif name == "masks":  # pixels within rounding of the threshold may flip
            assert got[name].shape == e.shape and int((got[name] != e).sum()) <= max(2, 0.01 * int(e.sum()))


def test_an_image_without_detections_gives_zero_rows(exported, images):
    arch, eager, backends = exported
    blank = np.zeros((120, 150, 3), dtype=np.uint8)
    expected = eager([blank, images[0]])
    _assert_same(expected, backends["onnxruntime"]([blank, images[0]]), _scales(eager, [blank, images[0]]))
    # One image that keeps nothing, next to one that keeps detections: raise the floor above the
    # blank image's best score (below the other's).
    if len(expected[0]) == 0:  # the blank image keeps nothing already
        assert len(expected[1]) > 0
        return
    floor = float(expected[0].scores.max()) + 1e-4
    assert float(expected[1].scores.max()) > floor
    strict = load_exported_predictor(backends["onnxruntime"].model.path, "onnxruntime", batch_size=2, score_thresh=floor)
    got = strict([blank, images[0]])
    assert len(got[0]) == 0 and len(got[1]) == int((expected[1].scores >= floor).sum()) > 0


def test_exported_files_carry_their_config_and_format(exported):
    arch, eager, backends = exported
    info = read_export_info(backends["onnxruntime"].model.path)
    assert info["swiftdet_format"] == EXPORT_FORMAT and info["arch"] == ("rcnn" if arch in RCNN else arch)
    assert info["batch"] == "dynamic" and info["image_size"] == "dynamic"
    assert backends["onnxruntime"].cfg.input.min_size_test == 160
    assert backends["torchscript"].category_ids == eager.category_ids or eager.meta == {}
    import onnx

    graph = onnx.load(str(backends["onnxruntime"].model.path)).graph
    assert all(node.domain in ("", "ai.onnx") for node in graph.node)  # standard operators only
    pasted = ["original_sizes"] if arch in ("mask_rcnn", "mask_rcnn_c4") else []  # masks pasted in the graph
    assert [i.name for i in graph.input] == ["images", "image_sizes", *pasted]
    extra = {"mask_rcnn": ["masks"], "mask_rcnn_c4": ["masks"], "keypoint_rcnn": ["keypoints"]}.get(arch, [])
    assert [o.name for o in graph.output] == ["boxes", "scores", "labels", "num_detections", *extra]


@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory):
    """A RetinaNet checkpoint with its config and meta, and a folder of two of the images."""
    model, cfg = _calibrated("retinanet", images)
    cfg.model.retinanet.score_thresh = 0.2
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "model.pth"
    meta = {"class_names": [f"c{i}" for i in range(cfg.model.num_classes)],
            "category_ids": list(range(1, cfg.model.num_classes + 1))}
    atomic_torch_save(make_checkpoint(model, cfg, meta), path)
    (folder / "images").mkdir()
    for i, img in enumerate(images[:2]):
        Image.fromarray(img).save(folder / "images" / f"{i}.png")
    return folder, path


def test_cli_export_then_predict_with_onnxruntime_writes_the_eager_predictions(checkpoint, tmp_path, capsys):
    folder, weights = checkpoint
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "synth_retinanet_R_18_FPN", "--weights", str(weights), "--output", str(onnx_file)]) == 0
    assert "predict --backend onnxruntime" in capsys.readouterr().out
    assert main(["predict", "--config", "synth_retinanet_R_18_FPN", "--weights", str(weights), "--input",
                 str(folder / "images"), "--output", str(tmp_path / "eager"), "--no-draw"]) == 0
    assert main(["predict", "--backend", "onnxruntime", "--model", str(onnx_file), "--input", str(folder / "images"),
                 "--output", str(tmp_path / "onnx")]) == 0
    eager = json.loads((tmp_path / "eager" / "predictions.json").read_text())
    ours = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert len(eager) == len(ours) > 0
    for e, o in zip(eager, ours):
        assert (e["image_id"], e["category_id"], e["file_name"]) == (o["image_id"], o["category_id"], o["file_name"])
        assert np.allclose(e["bbox"], o["bbox"], atol=5e-3) and abs(e["score"] - o["score"]) < 1e-3
    assert len(list((tmp_path / "onnx").glob("*.png"))) == 2  # drawn as eager predict draws


def test_cli_fixed_batch_and_size_export(checkpoint, tmp_path):
    folder, weights = checkpoint
    onnx_file = tmp_path / "fixed.onnx"
    assert main(["export", "synth_retinanet_R_18_FPN", "--weights", str(weights), "--output", str(onnx_file),
                 "--batch", "2", "--image-size", "256x256"]) == 0
    info = read_export_info(onnx_file)
    assert (info["batch"], info["image_size"]) == ("2", "256x256")
    predictor = load_exported_predictor(onnx_file, batch_size=2)
    eager = Predictor.from_config("synth_retinanet_R_18_FPN", weights=str(weights), batch_size=2, fast=False)
    files = sorted(str(p) for p in (folder / "images").glob("*.png"))
    # Every batch is padded to 256x256 (so anchors and strides are those of 256x256, not of the
    # batch's own padded size): the eager graph on the same padded batch is the reference.
    prepared = [eager.prepare(f)[0] for f in files]
    batch = torch.zeros(2, 3, 256, 256)
    for i, img in enumerate(prepared):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    sizes = torch.tensor([list(img.shape[1:]) for img in prepared])
    with torch.no_grad():
        expected = ExportGraph(eager.model.eval(), eager.model.detections_per_image)(batch, sizes)
    got = predictor.model.run(batch, sizes)
    assert list(got) == ["boxes", "scores", "labels", "num_detections"]
    assert torch.equal(got["num_detections"], expected[3]) and int(expected[3].sum()) > 0
    for e, name in zip(expected[:3], got):
        torch.testing.assert_close(got[name], e, atol=1e-3, rtol=0)
    assert [len(r) for r in predictor(files)] == expected[3].tolist()
    with pytest.raises(InputError, match="exactly 2 images"):
        predictor(files[:1])


def test_clear_errors_for_what_does_not_fit(checkpoint, tmp_path, capsys):
    folder, weights = checkpoint
    images = str(folder / "images")
    # A model that does not export (an RPN alone: its output is proposals): said before anything is written.
    assert main(["export", "rpn_R_50_FPN_1x", "--output", str(tmp_path / "r.onnx")]) == 2
    assert "Exporting model.arch='rpn' is not supported" in capsys.readouterr().err
    cfg = load_config("rpn_R_50_FPN_1x", ["model.backbone.depth=18", "model.backbone.weights="])
    with pytest.raises(ConfigError, match="exportable architectures are"):
        export_model(build_model(cfg.model), cfg, tmp_path / "r.onnx")
    assert not (tmp_path / "r.onnx").exists()
    # Weights that do not fit the config (a bare state_dict: no config of its own to adopt).
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(weights, weights_only=True)["model"], bare)
    assert main(["export", "synth_fcos_R_18_FPN", "--weights", str(bare), "--output", str(tmp_path / "f.onnx")]) == 2
    assert "bare.pth" in capsys.readouterr().err  # the message names the file that does not fit
    assert not (tmp_path / "f.onnx").exists()
    # An ONNX file that swiftdet did not write.
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(nn.Linear(2, 2), (torch.zeros(1, 2),), str(foreign), dynamo=False)
    with pytest.raises(WeightsError, match="no swiftdet metadata"):
        load_exported_predictor(foreign)
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not an ONNX file"):
        read_export_info(not_onnx)
    # The other backend's file, and flags that do not apply to an exported model.
    exported = tmp_path / "ok.onnx"
    assert main(["export", "synth_retinanet_R_18_FPN", "--weights", str(weights), "--output", str(exported)]) == 0
    with pytest.raises(ConfigError, match="use --backend onnxruntime"):
        load_exported_predictor(exported, "torchscript")
    capsys.readouterr()
    for argv, message in (
        (["--backend", "onnxruntime"], "give it with --model"),
        (["--model", str(exported)], "give --backend onnxruntime"),
        (["--backend", "onnxruntime", "--model", str(exported), "--config", "x"], "--config do not apply"),
        ([], "predict needs --config"),
    ):
        assert main(["predict", *argv, "--input", images, "--output", str(tmp_path / "p")]) == 2
        assert message in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(ConfigError, match="below the threshold"):
        load_exported_predictor(exported, score_thresh=0.1)


def test_exported_ssdlite_matches_eager_at_its_fixed_size(tiny_coco, images, tmp_path):
    """SSD resizes every image to input.fixed_size: the graph takes exactly that size (a dynamic
    batch), whatever --image-size was asked."""
    import copy

    from test_ssd import _pair  # SSDlite320 with weights calibrated on real images

    _, model, cfg = _pair("ssdlite320", tiny_coco, False)
    cfg = copy.deepcopy(cfg)
    scores = torch.cat([r.scores for r in Predictor.from_model(cfg, model, batch_size=4)(images)])
    cfg.model.ssd.score_thresh = model.score_thresh = round(float(scores.quantile(0.9)), 3)
    with pytest.raises(ConfigError, match="leave --image-size out"):
        export_model(model, cfg, tmp_path / "bad.onnx", image_size=(640, 640))
    export_model(model, cfg, tmp_path / "ssd.onnx")
    assert read_export_info(tmp_path / "ssd.onnx")["image_size"] == "320x320"
    eager = Predictor.from_model(cfg, model, batch_size=3)
    exported = load_exported_predictor(tmp_path / "ssd.onnx", batch_size=3)
    for chunk in (images[:1], images[1:4]):
        expected = eager(chunk)
        assert sum(len(r) for r in expected) > 0
        _assert_same(expected, exported(chunk), _scales(eager, chunk))
