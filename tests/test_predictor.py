"""Predictor inputs, the predict and convert verbs, and COCO-loadable predictions."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from swiftdet.cli import convert as convert_cmd
from swiftdet.cli import predict as predict_cmd
from swiftdet.config.core import config_to_dict, load_config
from swiftdet.errors import ConfigError, InputError, WeightsError
from swiftdet.inference import Predictor
from swiftdet.structures import CroppedMasks
from swiftdet.model.build import build_model
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights import make_checkpoint

SMALL = [
    "model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=32", "model.box_head.fc_dim=64",
    "model.mask_head.conv_dim=16", "model.box_head.detections_per_image=5", "model.rpn.post_nms_topk_test=50",
    "input.min_size_test=64", "input.max_size_test=96",
]


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config("mask_rcnn_R_50_FPN_1x", SMALL)
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    meta = {"class_names": ["a", "b", "c"], "category_ids": [5, 7, 9]}
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), meta), path)
    return cfg, path


@pytest.fixture(scope="module")
def predictor(small_weights):
    cfg, path = small_weights
    return Predictor(cfg, str(path), score_thresh=0.0)


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_numpy_tensor_and_path_inputs_agree(predictor, tmp_path):
    image = _rgb()
    Image.fromarray(image).save(tmp_path / "a.png")
    from_numpy = predictor(image)
    assert len(from_numpy) == 1 and from_numpy[0].image_size == (40, 60)
    for other in (torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(image).permute(2, 0, 1).float(),
                  str(tmp_path / "a.png"), tmp_path / "a.png"):
        got = predictor([other])[0]
        assert torch.equal(got.boxes.tensor, from_numpy[0].boxes.tensor)
    r = from_numpy[0]
    assert len(r) == 5 and isinstance(r.masks, CroppedMasks) and r.masks.tensor.shape == (5, 40, 60)
    assert float(r.boxes.tensor[:, 0::2].max()) <= 60 and float(r.boxes.tensor[:, 1::2].max()) <= 40
    assert predictor.category_ids == [5, 7, 9] and predictor.class_names == ["a", "b", "c"]


def test_resizes_to_the_test_size_and_batches(predictor):
    seen = []
    original = predictor.model.predict

    def spy(images, sizes):
        seen.extend((tuple(i.shape), s) for i, s in zip(images, sizes))
        return original(images, sizes)

    predictor.model.predict = spy
    try:
        one = [predictor(_rgb(100, 150, seed=s))[0] for s in (1, 2, 3)]
        predictor.batch_size = 2
        batched = predictor([_rgb(100, 150, seed=s) for s in (1, 2, 3)])
    finally:
        predictor.model.predict = original
        predictor.batch_size = 1
    # min(64 / 100, 96 / 150) = 0.64: 100x150 -> 64x96, results mapped back to 100x150.
    assert seen[0] == ((3, 64, 96), (100, 150))
    assert [r.image_size for r in batched] == [(100, 150)] * 3
    for a, b in zip(one, batched):
        assert torch.allclose(a.boxes.tensor, b.boxes.tensor, atol=1e-3)


def test_grayscale_rgba_16bit_and_tiny_images(predictor, tmp_path):
    gray = _rgb()[:, :, 0]
    expected = predictor(np.repeat(gray[:, :, None], 3, axis=2))[0].boxes.tensor
    assert torch.equal(predictor(gray)[0].boxes.tensor, expected)
    assert torch.equal(predictor(gray[:, :, None])[0].boxes.tensor, expected)
    rgba = np.concatenate([_rgb(), np.full((40, 60, 1), 7, np.uint8)], axis=2)
    assert torch.equal(predictor(rgba)[0].boxes.tensor, predictor(_rgb())[0].boxes.tensor)
    sixteen = (gray.astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    assert torch.equal(predictor(str(tmp_path / "g16.png"))[0].boxes.tensor, expected)
    assert torch.equal(predictor(sixteen)[0].boxes.tensor, expected)
    # Smaller than the network stride: resized up to the test size, results in 8x8 pixels.
    tiny = predictor(_rgb(8, 8))[0]
    assert tiny.image_size == (8, 8) and tiny.masks.image_size == (8, 8)
    assert float(tiny.boxes.tensor.max()) <= 8


def test_bad_inputs_are_refused_clearly(predictor, tmp_path):
    assert predictor([]) == []
    with pytest.raises(InputError, match=r"values in \[-1, 300\]"):
        predictor(np.linspace(-1, 300, 40 * 60 * 3, dtype=np.float32).reshape(40, 60, 3))
    with pytest.raises(InputError, match="does not exist"):
        predictor(str(tmp_path / "missing.jpg"))
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(InputError, match="notes.jpg"):
        predictor(str(tmp_path / "notes.jpg"))
    with pytest.raises(InputError, match="shape"):
        predictor(np.zeros((2, 40, 60, 3), np.uint8))
    with pytest.raises(InputError, match="empty"):
        predictor(np.zeros((0, 60, 3), np.uint8))
    with pytest.raises(InputError, match="list of images"):
        predictor({"image": 1})


def test_device_and_weights_are_checked(small_weights):
    cfg, path = small_weights
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Predictor(cfg, str(path), device="cuda")
    with pytest.raises(ConfigError, match="No weights"):
        Predictor(cfg, None)


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_predict_cli_on_folders_writes_drawings_and_coco_results(small_weights, tmp_path):
    from pycocotools.coco import COCO

    _, weights = small_weights
    for sub in ("x", "y/z"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        Image.fromarray(_rgb(30, 50)).save(tmp_path / "in" / sub / "same.jpg")
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "single.png")
    args = _parse(predict_cmd, [*SMALL, "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(weights), "--input",
                                str(tmp_path / "single.png"), str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                "--score-thresh", "0", "--batch-size", "2"])
    assert predict_cmd.run(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.json", "same-2.jpg", "same.jpg", "single.png"]
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == {0, 1, 2} and {r["category_id"] for r in results} <= {5, 7, 9}
    assert results[0]["file_name"].endswith("single.png") and "counts" in results[0]["segmentation"]
    sizes = [(20, 20), (30, 50), (30, 50)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)],
                  "annotations": [], "categories": [{"id": c, "name": str(c)} for c in (5, 7, 9)]}
    gt.createIndex()
    assert len(gt.loadRes(str(tmp_path / "out" / "predictions.json")).anns) == len(results) == 15
    with pytest.raises(InputError, match="does not exist"):
        predict_cmd.collect_images([str(tmp_path / "nothing")])
    # --draw-thresh filters what is drawn, never what is written to predictions.json.
    original = np.asarray(Image.open(tmp_path / "single.png"))
    for thresh, drawn_equals_input in (("2", True), ("0", False)):
        out = tmp_path / f"draw{thresh}"
        args = _parse(predict_cmd, [*SMALL, "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(weights), "--input",
                                    str(tmp_path / "single.png"), "--output", str(out), "--score-thresh", "0",
                                    "--draw-thresh", thresh])
        assert predict_cmd.run(args) == 0
        assert np.array_equal(np.asarray(Image.open(out / "single.png")), original) == drawn_equals_input
        assert len(json.loads((out / "predictions.json").read_text())) == 5


@pytest.mark.slow
def test_convert_torchvision_maskrcnn_then_predict_tiny_coco(tiny_coco, tmp_path):
    import torchvision
    from pycocotools.coco import COCO

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    torch.save({"model": tv.state_dict()}, tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match="mask_on"):
        convert_cmd.run(_parse(convert_cmd, ["torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "bad.pth"),
                                             "--config", "faster_rcnn_R_50_FPN_1x"]))
    assert convert_cmd.run(_parse(convert_cmd, ["torchvision", str(tmp_path / "tv.pth"), str(tmp_path / "ours.pth"),
                                                "--config", "mask_rcnn_R_50_FPN_1x"])) == 0
    ckpt = torch.load(tmp_path / "ours.pth", weights_only=True)
    assert ckpt["format"] == "swiftdet-checkpoint/1" and len(ckpt["meta"]["category_ids"]) == 80
    images = sorted((tiny_coco / "val2017").glob("*.jpg"))[:2]
    ann = tiny_coco / "annotations" / "instances_val.json"
    args = _parse(predict_cmd, ["input.min_size_test=128", "input.max_size_test=192", "model.box_head.detections_per_image=20",
                                "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(tmp_path / "ours.pth"),
                                "--input", *map(str, images), "--output", str(tmp_path / "out"),
                                "--score-thresh", "0.001", "--coco-json", str(ann)])
    assert predict_cmd.run(args) == 0
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(results) == 40
    dt = COCO(str(ann)).loadRes(str(tmp_path / "out" / "predictions.json"))
    assert {a["category_id"] for a in dt.anns.values()} <= set(ckpt["meta"]["category_ids"])


def test_fast_path_is_default_and_plain_runs_the_trained_model(small_weights):
    from swiftdet.model.layers import is_fused

    cfg, path = small_weights
    fast = Predictor(cfg, str(path), score_thresh=0.0)
    plain = Predictor(cfg, str(path), score_thresh=0.0, fast=False)
    assert is_fused(fast.model) and not is_fused(fast.source_model)
    assert plain.model is plain.source_model and not is_fused(plain.model)
    image = _rgb(50, 70, seed=4)
    a, b = fast(image)[0], plain(image)[0]
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.boxes.tensor, b.boxes.tensor, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)


def test_predict_and_evaluation_resize_images_identically(predictor, small_weights, tmp_path):
    """The test loader (evaluation, the demo) and the predictor go through one TestTransform: the
    same file gives the same resized tensor, also where max_size_test caps the scale."""
    from swiftdet.data import DatasetMeta, DetectionDataset, build_test_loader
    from swiftdet.data.transforms import TestTransform

    cfg, _ = small_weights
    records = []
    for i, (h, w) in enumerate([(40, 60), (50, 130), (97, 41)]):
        Image.fromarray(_rgb(h, w, seed=i)).save(tmp_path / f"{i}.png")
        records.append({"file_name": f"{i}.png", "height": h, "width": w, "image_id": i + 1,
                        "annotations": [{"bbox": [1, 1, 20, 20], "category_id": 0}]})
    dataset = DetectionDataset.from_records(records, DatasetMeta(class_names=("a", "b", "c")),
                                            image_root=str(tmp_path), verbose=False)
    loader = build_test_loader(cfg, dataset, batch_size=1, num_workers=0, with_targets=False)
    transform = TestTransform.from_config(cfg)
    sizes = []
    for batch in loader:
        sample = batch[0]
        resized, original = predictor.prepare(sample.file_name)
        assert original == tuple(sample.original_size)
        assert torch.equal(resized.cpu(), sample.image.float())
        assert tuple(resized.shape[1:]) == transform.output_size(*original)
        sizes.append(tuple(resized.shape[1:]))
    assert sizes == [(64, 96), (36, 96), (96, 40)]  # floor of the scaled sides, as torchvision
