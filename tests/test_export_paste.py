"""Mask R-CNN exported with its masks pasted inside the graph (issue 12, item 1): the graph takes each
image's original size, maps boxes there and outputs thresholded (B, K, Hmax, Wmax) uint8 masks with
torchvision's paste arithmetic (detectron2's for that convention), in standard ONNX operators with a
dynamic batch and image size; ``--no-masks-paste`` and files written before keep mask_probs, pasted
by the runtime; both give the same predictions.json."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import test_export
from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.errors import InputError
from swiftdet.export.graph import ExportGraph
from swiftdet.export.onnx import export_graph_for, export_model
from swiftdet.export.runtime import load_exported_predictor, read_export_info
from swiftdet.inference import Predictor
from swiftdet.model.build import build_model
from swiftdet.structures import ImageList
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights.checkpoint import make_checkpoint

META = {"class_names": [f"c{i}" for i in range(5)], "category_ids": list(range(10, 15))}


def _mask_rcnn(images, convention: str = "torchvision"):
    """test_export's calibrated random-weight Mask R-CNN (test size 160-256 px, the originals ~640)
    with decisive mask logits, so that masks have foreground and few pixels lie at the threshold;
    the score threshold at the median score, so that images keep different numbers of rows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(test_export, "SIZE", test_export.SIZE + [f"model.convention={convention}"])
        model, cfg = test_export._calibrated("mask_rcnn", images)
    assert model.convention == convention
    with torch.no_grad():
        model.roi_heads.mask_head.predictor.weight.mul_(4.0)
        model.roi_heads.mask_head.predictor.bias.add_(1.0)
    scores = torch.cat([r.scores for r in Predictor.from_model(cfg, model, batch_size=4)(images)])
    cfg.model.box_head.score_thresh = model.score_thresh = round(float(scores.median()), 3)
    return model, cfg


@pytest.fixture(scope="module")
def images(tiny_coco):
    return test_export._real_images(tiny_coco, 4)


@pytest.fixture(scope="module")
def exported(images, tmp_path_factory):
    """(eager predictor, folder with model.onnx, masks pasted), torchvision's convention."""
    model, cfg = _mask_rcnn(images)
    folder = tmp_path_factory.mktemp("paste")
    export_model(model, cfg, folder / "model.onnx", meta=META)
    return Predictor.from_model(cfg, model, batch_size=3, meta=META), folder


# Batches of 1, 2 and 3 images of different sizes, as slices of the 4 images.
CHUNKS = ((0, 1), (1, 3), (0, 3))
_EAGER: dict = {}


def _eager(eager, images, chunk):
    """The eager predictions of images[chunk], computed once per module (eager pasting is the slow part)."""
    if chunk not in _EAGER:
        _EAGER[chunk] = eager(images[slice(*chunk)])
    return _EAGER[chunk]


@pytest.fixture(scope="module")
def detectron2(images):
    """(model, cfg) with model.convention=detectron2."""
    return _mask_rcnn(images[:3], "detectron2")


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of (N, H, W) bool masks (1 where both are empty)."""
    a, b = a.flatten(1), b.flatten(1)
    union = (a | b).sum(1).float()
    return torch.where(union > 0, (a & b).sum(1).float() / union.clamp(min=1), torch.ones_like(union))


def _assert_same(expected, got, min_iou: float = 0.99, max_flips: int = 2) -> None:
    """Same counts, labels and image sizes; boxes (original pixels) within 1e-3 of the network's input
    pixels times the resize; scores within 1e-3; each mask IoU >= ``min_iou`` or at most
    ``max_flips`` pixels different. (The runtimes' float rounding of the boxes, ~1e-4 px, decides the
    pixels whose sample lands on the threshold: a clean-clone CI run flipped one pixel of a small
    mask through OpenVINO and two through onnxruntime's detectron2 paste, IoU 0.97-0.98; a wrong
    paste moves whole edges.)"""
    assert [len(r) for r in got] == [len(r) for r in expected] and sum(len(r) for r in expected) > 0
    for e, o in zip(expected, got):
        assert o.image_size == e.image_size and torch.equal(o.labels, e.labels)
        torch.testing.assert_close(o.scores, e.scores, atol=1e-3, rtol=0)
        torch.testing.assert_close(o.boxes.tensor, e.boxes.tensor, atol=4e-3, rtol=0)  # ~640 / 160 px ratio
        a, b = e.masks.to_bitmasks().tensor, o.masks.to_bitmasks().tensor
        assert a.shape == b.shape
        flips = (a ^ b).flatten(1).sum(1)
        assert bool(((_iou(a, b) >= min_iou) | (flips <= max_flips)).all()), (_iou(a, b).min(), flips.max())
    assert sum(int(r.masks.tensor.sum()) for r in expected) > 100 * len(expected)  # masks with foreground


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow),
                                     pytest.param("torchscript", marks=pytest.mark.slow)])
def test_pasted_masks_match_eager_for_batches_of_several_sizes(exported, images, backend):
    eager, folder = exported
    path = folder / "model.onnx"
    if backend == "torchscript":  # the same graph, traced
        path = export_model(eager.model, eager.cfg, folder / "model.pt", fmt="torchscript", meta=META)
    predictor = load_exported_predictor(path, backend, batch_size=3)
    assert predictor.model.masks_pasted
    assert len({img.shape for img in images}) > 1
    # Every batch size through onnxruntime; the other backends run the same graph on the batch of 3.
    for chunk in CHUNKS if backend == "onnxruntime" else CHUNKS[-1:]:
        _assert_same(_eager(eager, images, chunk), predictor(images[slice(*chunk)]))


def test_the_graph_outputs_masks_at_the_largest_original_size(exported, images):
    eager, folder = exported
    model = load_exported_predictor(folder / "model.onnx").model
    prepared = [eager.prepare(img)[0] for img in images[:3]]
    originals = torch.tensor([img.shape[:2] for img in images[:3]])
    batch = ImageList.from_tensors([p.float() for p in prepared], eager.cfg.input.size_divisibility, 0.0)
    sizes = torch.tensor(batch.image_sizes)
    assert not torch.equal(sizes, originals)  # the rescale matters
    out = model.run(batch.tensor, sizes, originals)
    assert list(out) == ["boxes", "scores", "labels", "num_detections", "masks"]
    masks, counts = out["masks"], out["num_detections"]
    k = out["boxes"].shape[1]
    assert masks.dtype == torch.uint8 and tuple(masks.shape) == (3, k, *originals.max(0).values.tolist())
    assert set(masks.unique().tolist()) <= {0, 1}
    for i, ((h, w), n) in enumerate(zip(originals.tolist(), counts.tolist())):
        assert n < k  # some rows are padding: they hold no mask
        assert not masks[i, n:].any() and not masks[i, :, h:].any() and not masks[i, :, :, w:].any()
        assert float(out["boxes"][i, :n, 2].max()) <= w and float(out["boxes"][i, :n, 3].max()) <= h
    with pytest.raises(InputError, match="original_sizes"):
        model.run(batch.tensor, sizes)


def test_the_paste_in_the_graph_is_the_eager_paste_bit_for_bit(exported, detectron2, images):
    """The graph's arithmetic itself (run by PyTorch, so that the network's rounding is the same):
    every pasted mask equals the eager predictor's, both conventions."""
    for convention, (model, cfg) in (("torchvision", (exported[0].model, exported[0].cfg)), ("detectron2", detectron2)):
        eager = Predictor.from_model(cfg, model, batch_size=3)
        expected = _eager(eager, images, CHUNKS[-1]) if convention == "torchvision" else eager(images[:3])
        prepared = [eager.prepare(img)[0] for img in images[:3]]
        batch = ImageList.from_tensors([p.float() for p in prepared], cfg.input.size_divisibility, 0.0)
        originals = torch.tensor([img.shape[:2] for img in images[:3]])
        with torch.no_grad():
            boxes, scores, labels, counts, masks = export_graph_for(model, cfg, paste_masks=True)(
                batch.tensor, torch.tensor(batch.image_sizes), originals)
        for i, e in enumerate(expected):
            n = int(counts[i])
            h, w = e.image_size
            assert n == len(e) > 0
            torch.testing.assert_close(boxes[i, :n], e.boxes.tensor, atol=1e-4, rtol=0)
            assert torch.equal(masks[i, :n, :h, :w].bool(), e.masks.to_bitmasks().tensor), convention


@pytest.mark.slow
def test_detectron2_convention_pastes_its_way(detectron2, images, tmp_path):
    """detectron2's paste follows the box continuously (no integer box), so onnxruntime's box
    rounding (~1e-4 px) can flip pixels at a small mask's edge: IoU >= 0.99 or two pixels; and the
    graph's paste equals the runtime's paste of the same file's mask_probs (--no-masks-paste)."""
    model, cfg = detectron2
    export_model(model, cfg, tmp_path / "d2.onnx", meta=META)
    export_model(model, cfg, tmp_path / "d2_probs.onnx", meta=META, paste_masks=False)
    eager = Predictor.from_model(cfg, model, batch_size=3)
    pasted = load_exported_predictor(tmp_path / "d2.onnx", batch_size=3)(images[:3])
    _assert_same(eager(images[:3]), pasted)
    for a, b in zip(pasted, load_exported_predictor(tmp_path / "d2_probs.onnx", batch_size=3)(images[:3])):
        assert torch.equal(a.masks.to_bitmasks().tensor, b.masks.to_bitmasks().tensor)


def test_an_image_without_detections(exported, images):
    eager, folder = exported
    blank = np.zeros((120, 150, 3), dtype=np.uint8)
    predictor = load_exported_predictor(folder / "model.onnx", batch_size=2)
    expected = eager([blank, images[0]])
    floor = float(expected[0].scores.max()) + 1e-4 if len(expected[0]) else 0.0
    if floor:  # raise the floor above the blank image's best score
        eager = Predictor.from_model(eager.cfg, eager.model, batch_size=2, min_score=floor)
        predictor = load_exported_predictor(folder / "model.onnx", batch_size=2, score_thresh=floor)
        expected = eager([blank, images[0]])
    got = predictor([blank, images[0]])
    assert len(got[0]) == 0 and got[0].masks is not None and got[0].image_size == (120, 150)
    _assert_same(expected, got)


def test_the_pasted_graph_has_standard_operators_only(exported):
    import onnx

    proto = onnx.load(str(exported[1] / "model.onnx"))
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert [o.domain for o in proto.opset_import] == [""] and proto.opset_import[0].version == 17
    # The paste's matrix products carry its name, so that an int8 quantizer can leave them float.
    matmuls = [node.name for node in proto.graph.node if node.op_type == "MatMul"]
    assert matmuls and all("mask_paste" in name for name in matmuls)
    assert [i.name for i in proto.graph.input] == ["images", "image_sizes", "original_sizes"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_detections", "masks"]
    masks = proto.graph.output[4].type.tensor_type
    assert masks.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param for d in masks.shape.dim]
    assert (dims[0], dims[2], dims[3]) == ("batch", "original_height", "original_width")
    info = read_export_info(exported[1] / "model.onnx")
    assert info["masks_pasted"] == "1" and info["inputs"] == "images,image_sizes,original_sizes"


def test_no_masks_paste_and_older_files_keep_mask_probs_with_the_same_predictions(exported, images, tmp_path):
    import onnx

    eager, folder = exported
    weights = tmp_path / "model.pth"
    atomic_torch_save(make_checkpoint(eager.model, eager.cfg, META), weights)
    probs = tmp_path / "probs.onnx"
    assert main(["export", "demo_mask_rcnn", "--weights", str(weights), "--output", str(probs), "--no-masks-paste"]) == 0
    info = read_export_info(probs)
    assert info["masks_pasted"] == "0" and info["outputs"].split(",")[-1] == "mask_probs"
    assert [i.name for i in onnx.load(str(probs)).graph.input] == ["images", "image_sizes"]
    # A file written before masks were pasted in the graph: no masks_pasted / inputs keys.
    proto = onnx.load(str(probs))
    kept = [p for p in proto.metadata_props if p.key not in ("masks_pasted", "inputs")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert not load_exported_predictor(tmp_path / "old.onnx").model.masks_pasted
    (tmp_path / "images").mkdir()
    for i, img in enumerate(images[:2]):
        Image.fromarray(img).save(tmp_path / "images" / f"{i}.png")
    results = {}
    for name, path in (("pasted", folder / "model.onnx"), ("probs", probs), ("old", tmp_path / "old.onnx")):
        assert main(["predict", "--backend", "onnxruntime", "--model", str(path), "--input", str(tmp_path / "images"),
                     "--output", str(tmp_path / name), "--no-draw"]) == 0
        results[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert len(results["pasted"]) > 0 and "segmentation" in results["pasted"][0]
    # The same graph numerics, pasted in the graph or by the runtime: the same file, masks included.
    assert results["pasted"] == results["probs"] == results["old"]


def test_models_without_masks_accept_no_masks_paste(tmp_path):
    """Nothing to paste: --no-masks-paste (or not) gives a RetinaNet the same graph."""
    cfg = load_config(test_export.CONFIGS["retinanet"], test_export.SIZE)
    model = build_model(cfg.model).eval()
    assert not ExportGraph(model, 10, paste_masks=True).paste_masks
    weights = tmp_path / "r.pth"
    atomic_torch_save(make_checkpoint(model, cfg, {}), weights)
    path = tmp_path / "r.onnx"
    assert main(["export", test_export.CONFIGS["retinanet"], "--weights", str(weights), "--output", str(path),
                 "--no-masks-paste"]) == 0
    info = read_export_info(path)
    assert info["masks_pasted"] == "0" and info["inputs"] == "images,image_sizes"
    assert info["outputs"] == "boxes,scores,labels,num_detections"
