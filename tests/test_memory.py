"""Inference memory (issue 17, part 5): the Predictor holds one copy of the weights, and the masks
of a large image stay box-sized crops from the model to predictions.json (COCO RLE encoded from
each crop, equal to pycocotools' encode of the pasted mask)."""
from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
import types

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from swiftdet.cli import predict as predict_cmd
from swiftdet.config.core import config_to_dict, load_config
from swiftdet.evaluation.results import _crop_rle, instances_to_coco_results
from swiftdet.inference import Predictor
from swiftdet.model.build import build_model
from swiftdet.model.layers import fuse_for_inference, is_fused
from swiftdet.structures import CroppedMasks
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights import make_checkpoint

from test_predictor import SMALL  # the small Mask R-CNN of the predictor's tests


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config("mask_rcnn_R_50_FPN_1x", SMALL)
    model = build_model(cfg.model)
    with torch.no_grad():  # FrozenBN statistics that are not the identity, so folding changes the weights
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                buf.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    atomic_torch_save(make_checkpoint(model, config_to_dict(cfg), {"class_names": ["a", "b", "c"]}), path)
    return cfg, path


def _reachable_storages(root: object) -> dict[int, int]:
    """{data_ptr: bytes} of the storages of every tensor reachable from ``root`` through object
    references (not through classes, modules or functions, which lead to the whole program)."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, storages, stack = set(), {}, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        stack.extend(gc.get_referents(obj))
    return storages


def _model_storages(model: torch.nn.Module) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in model.state_dict().values()}


def test_fast_predictor_holds_one_copy_of_the_weights_and_detects_as_before(small_weights):
    cfg, path = small_weights
    fast = Predictor(cfg, str(path), score_thresh=0.0)
    reachable, own = _reachable_storages(fast), _model_storages(fast.model)
    assert is_fused(fast.model) and set(own) <= set(reachable)
    # A trained copy beside the fused one would double this (its convs' weights alone are most of it).
    assert sum(reachable.values()) <= 1.05 * sum(own.values())

    # source_model is the trained model, built again from the file: unfused, equal to the checkpoint,
    # and not kept (reading it twice gives two models; the predictor's storages are unchanged).
    trained = fast.source_model
    assert not is_fused(trained) and not trained.training and trained is not fast.source_model
    saved = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(trained.state_dict()[k], v) for k, v in saved.items())
    assert not set(_model_storages(trained)) & set(reachable)
    del trained
    assert set(_reachable_storages(fast)) == set(reachable)

    # Fusing in place gives exactly the detections of fusing a copy (the path before), and those of
    # the unfused model within float rounding.
    plain = Predictor(cfg, str(path), score_thresh=0.0, fast=False)
    assert plain.source_model is plain.model and not is_fused(plain.model)
    copied = Predictor.from_model(cfg, fuse_for_inference(plain.model), meta=plain.meta)
    assert not is_fused(plain.model)  # the copy left the caller's model alone
    image = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    a, b, c = fast(image)[0], copied(image)[0], plain(image)[0]
    assert len(a) == 5
    for field in ("boxes", "scores", "labels"):
        x, y = getattr(a, field), getattr(b, field)
        assert torch.equal(x.tensor if field == "boxes" else x, y.tensor if field == "boxes" else y)
    assert all(torch.equal(p, q) for p, q in zip(a.masks.crops, b.masks.crops))
    assert torch.equal(a.labels, c.labels)
    torch.testing.assert_close(a.boxes.tensor, c.boxes.tensor, atol=1e-3, rtol=0)


def test_fuse_for_inference_in_place_fuses_the_model_itself(small_weights):
    cfg, _ = small_weights
    model = build_model(cfg.model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copy = fuse_for_inference(model)
    assert copy is not model and not is_fused(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    same = fuse_for_inference(model, inplace=True)
    assert same is model and is_fused(model)
    assert model.state_dict().keys() == copy.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in copy.state_dict().items())


def _random_crop(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """A (h, w) bool crop and its (x0, y0): empty, full or random; often touching the image's edges
    (a crop as tall as the image joins runs of ones across columns)."""
    h, w = int(rng.integers(0, height + 1)), int(rng.integers(0, width + 1))
    if rng.random() < 0.3:
        h = height
    y0 = int(rng.choice([0, height - h, rng.integers(0, height - h + 1)]))
    x0 = int(rng.choice([0, width - w, rng.integers(0, width - w + 1)]))
    kind = rng.random()
    if kind < 0.1:
        crop = np.zeros((h, w), dtype=bool)
    elif kind < 0.2:
        crop = np.ones((h, w), dtype=bool)
    else:
        crop = rng.random((h, w)) < rng.random()
    return crop, x0, y0


def test_crop_rle_equals_pycocotools_encode_of_the_pasted_mask():
    rng = np.random.default_rng(17)
    for _ in range(2000):
        height, width = (int(v) for v in rng.integers(1, 12, 2))
        crop, x0, y0 = _random_crop(rng, height, width)
        full = np.zeros((height, width), dtype=np.uint8)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        got = _crop_rle(crop, x0, y0, height, width)
        assert got["counts"] == mask_utils.encode(np.asfortranarray(full))["counts"], (height, width, x0, y0, crop)
        assert list(got["size"]) == [height, width]


def test_crop_rle_works_in_the_memory_of_the_crop():
    """A 200x300 disc-shaped crop in a 4000x4000 image: encoding must not allocate a full-height
    (or full) plane (4000 x 300 bytes = 1.2 MB; the full mask 16 MB)."""
    yy, xx = np.mgrid[:200, :300]
    crop = ((yy - 100) / 100) ** 2 + ((xx - 150) / 150) ** 2 < 1
    tracemalloc.start()
    try:
        rle = _crop_rle(crop, 1234, 2345, 4000, 4000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400_000, peak  # the crop is 60 kB: its int8 copy, their difference and the run positions
    full = np.zeros((4000, 4000), dtype=np.uint8)
    full[2345:2545, 1234:1534] = crop
    assert rle["counts"] == mask_utils.encode(np.asfortranarray(full))["counts"]


class _NoFullSizeMasks(TorchFunctionMode):
    """Fails on any torch result that is a mask at the full image size: a bool tensor whose last two
    dims are (height, width), or torchvision-style (N, 1, height, width) float masks."""

    def __init__(self, height: int, width: int):
        super().__init__()
        self.size = (height, width)
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and tuple(t.shape[-2:]) == self.size:
                dense = t.dtype == torch.bool or (t.dim() == 4 and t.shape[1] == 1)
                assert not dense, f"{getattr(func, '__name__', func)} made a full-size mask tensor {tuple(t.shape)}"
        return out


def test_large_image_goes_to_predictions_json_as_crops(small_weights, tmp_path, monkeypatch):
    cfg, path = small_weights
    side = 4000
    rng = np.random.default_rng(5)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((side, side), Image.BILINEAR).save(tmp_path / "big.png", compress_level=1)

    # Any full-size mask: the dense view of the crops, or a full-size paste, would fail the test.
    def refuse(*_args, **_kwargs):
        raise AssertionError("a full-size (N, H, W) mask was built")

    monkeypatch.setattr(CroppedMasks, "to_bitmasks", refuse)
    monkeypatch.setattr("swiftdet.model.postprocess.paste_masks_in_image", refuse)
    parser = argparse.ArgumentParser()
    predict_cmd.add_arguments(parser)
    args = parser.parse_args([*SMALL, "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(path), "--input",
                              str(tmp_path / "big.png"), "--output", str(tmp_path / "out"), "--score-thresh", "0",
                              "--draw-thresh", "0"])
    with _NoFullSizeMasks(side, side) as guard:
        assert predict_cmd.run(args) == 0
    assert guard.calls > 1000  # the mode saw the model and the post-processing
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(results) == 5 and all(r["segmentation"]["size"] == [side, side] for r in results)
    assert (tmp_path / "out" / "big.png").is_file()
    monkeypatch.undo()

    # The RLEs are those of the masks pasted at full size (decoded one at a time, outside the guard).
    [instances] = Predictor(cfg, str(path), score_thresh=0.0)(str(tmp_path / "big.png"))
    assert isinstance(instances.masks, CroppedMasks) and len(instances) == 5
    stored = sum(c.numel() for c in instances.masks.crops)
    assert stored < 5 * side * side  # crops of the boxes, not five images
    expected = instances_to_coco_results(instances, 0, [1, 2, 3])
    assert [r["segmentation"] for r in results] == [r["segmentation"] for r in expected]
    for result, crop, (x0, y0) in zip(results, instances.masks.crops, instances.masks.offsets.tolist()):
        seg = result["segmentation"]
        decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
        assert int(decoded.sum()) == int(crop.sum())
        assert np.array_equal(decoded[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]], crop.numpy())


def test_drawing_converts_back_in_bands_to_the_same_pixels():
    from swiftdet.visualization.draw import _picture_to_array

    pixels = np.random.default_rng(2).integers(0, 256, (53, 31, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    for band_rows in (1, 7, 53, 512):
        out = _picture_to_array(picture, band_rows)
        assert out.flags.writeable and np.array_equal(out, pixels)
