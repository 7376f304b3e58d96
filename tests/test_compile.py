"""--compile: the detector's core through torch.compile gives eager's detections, keeps the state
dict's keys, reaches the model from predict / eval / benchmark, and is refused where it cannot run.

Compiling is slow on a 2-core CPU (a minute or more per tiny model and image size, even dynamo's
graph capture alone), so only the ``slow`` tests compile: TorchInductor on a tiny Faster R-CNN,
and ``swiftdet predict --compile`` end to end with dynamo's ``eager`` backend (graph breaks,
guards and recompiles as in real compilation, no code generated). The fast tests check
the wiring with ``Detector.set_compiled`` spied on, the state dict, and the refusals.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch._dynamo
from conftest import randomise_weights
from PIL import Image
from torch import nn

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.config.core import config_to_dict
from swiftdet.errors import ConfigError
from swiftdet.model.build import build_model
from swiftdet.model.detector import Detector, check_compile_toolchain
from swiftdet.model.layers import fuse_for_inference
from swiftdet.utils.io import atomic_torch_save
from swiftdet.weights.checkpoint import make_checkpoint

FASTER = ("faster_rcnn_R_50_FPN_1x", [
    "model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=32", "model.box_head.fc_dim=64",
    "model.box_head.score_thresh=0.0", "model.box_head.detections_per_image=8", "model.rpn.post_nms_topk_test=50",
    "input.min_size_test=64", "input.max_size_test=96"])
RETINANET = ("synth_retinanet_R_18_FPN", ["model.retinanet.score_thresh=0.0", "model.retinanet.detections_per_image=8",
                                          "input.min_size_test=64", "input.max_size_test=96"])
ARCHS = {"faster_rcnn": FASTER, "retinanet": RETINANET}
# Two sizes in a row (the second a new shape for the compiled graphs), each a multiple of 32.
SIZES = ((64, 96), (96, 64))


def _model(arch: str) -> Detector:
    """A tiny fused model whose random weights spread the scores (no near-ties at the top-k)."""
    name, overrides = ARCHS[arch]
    cfg = load_config(name, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    randomise_weights(model, torch.Generator().manual_seed(0))
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # calibrate the reset statistics
        with torch.no_grad():
            model.train()
            batch = model.preprocess([torch.rand(3, 64, 96) * 255 for _ in range(2)])
            model.extract_features(batch.tensor) if arch == "faster_rcnn" else model.fpn(model.backbone(batch.tensor))
    return fuse_for_inference(model.eval())


@pytest.fixture(scope="module")
def models():
    return {arch: _model(arch) for arch in ARCHS}


def _images(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=gen).float() for h, w in SIZES]


def _assert_same(expected, got) -> None:
    assert len(expected) == len(got) > 0
    assert torch.equal(expected.labels, got.labels)
    # Boxes within 1e-4 of the image's size (~0.01 px here): inductor fuses the pointwise operations
    # around the convolutions and matrix products, so sums round differently, and the random box
    # head amplifies that (seen: up to 9e-4 px; folding the norms alone moves boxes ~1e-4..1e-3 px).
    side = max(expected.image_size)
    torch.testing.assert_close(got.boxes.tensor, expected.boxes.tensor, atol=1e-4 * side, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)


def _compare(eager: Detector, backend: str) -> None:
    """The compiled copy's detections equal ``eager``'s on two image sizes in a row."""
    torch._dynamo.reset()  # earlier tests' compilations count towards dynamo's recompile limit
    compiled = copy.deepcopy(eager)
    compiled.set_compiled(True, backend=backend)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for image in _images():
        _assert_same(eager.predict([image])[0], compiled.predict([image])[0])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > before  # it did compile
    assert not eager.compiled


@pytest.mark.slow
def test_inductor_gives_eagers_detections(models):
    # One architecture: TorchInductor needs 1-4 minutes per tiny model on a 2-core CI machine with a
    # cold cache. RetinaNet's compiled detections are compared in benchmarks/compile_inference.py.
    _compare(models["faster_rcnn"], "inductor")


def test_state_dict_keys_stay_and_copies_are_compiled(models):
    model = copy.deepcopy(models["retinanet"])
    keys = list(model.state_dict())
    model.set_compiled(True)
    assert model.compiled and list(model.state_dict()) == keys
    assert not any(k.startswith("_orig_mod") for k in model.state_dict())
    assert copy.deepcopy(model).compiled  # fuse_for_inference's copy runs compiled too
    model.set_compiled(False)
    assert not model.compiled


def test_a_missing_toolchain_says_what_to_install(monkeypatch, models):
    from torch._inductor import config

    check_compile_toolchain(torch.device("cpu"))  # this machine has one (inductor's tests need it too)
    model = copy.deepcopy(models["retinanet"])
    # config.patch, not monkeypatch: undoing a setattr on inductor's config proxy deletes the entry.
    with config.patch({"cpp.cxx": (None, "no-such-compiler-swiftdet")}):
        with pytest.raises(ConfigError, match=r"C\+\+ compiler.*no-such-compiler-swiftdet.*apt-get install g\+\+"):
            check_compile_toolchain(torch.device("cpu"))
        with pytest.raises(ConfigError, match=r"C\+\+ compiler"):
            model.set_compiled(True)
    assert not model.compiled
    monkeypatch.setattr("swiftdet.model.detector._has_triton", lambda: False)
    with pytest.raises(ConfigError, match="pip install triton"):
        check_compile_toolchain(torch.device("cuda"))


def _spy(monkeypatch, compile_with: str | None) -> list:
    """Detector.set_compiled spied on: the calls' (``enabled``, model); it compiles with dynamo's
    ``compile_with`` backend, or (None) records only and runs eagerly."""
    calls = []
    original = Detector.set_compiled

    def spy(self, enabled=True, **kwargs):
        calls.append((enabled, self))
        original(self, enabled and compile_with is not None, backend=compile_with or "inductor")

    monkeypatch.setattr(Detector, "set_compiled", spy)
    torch._dynamo.reset()
    return calls


@pytest.fixture
def recorded(monkeypatch):
    return _spy(monkeypatch, None)


@pytest.fixture(scope="module")
def faster_weights(tmp_path_factory):
    cfg = load_config(*FASTER)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "faster.pth"
    atomic_torch_save(make_checkpoint(build_model(cfg.model), config_to_dict(cfg), {}), path)
    return path


def _predict(weights, tmp_path, *extra) -> int:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    name, overrides = FASTER
    return main(["predict", *overrides, "--config", name, "--weights", str(weights), "--input", str(tmp_path / "a.png"),
                 "--output", str(tmp_path / "out"), "--no-draw", *extra])


def test_predict_compile_reaches_the_model(recorded, faster_weights, tmp_path):
    assert _predict(faster_weights, tmp_path) == 0
    assert [enabled for enabled, _ in recorded] == [False]
    assert _predict(faster_weights, tmp_path, "--compile") == 0
    assert [enabled for enabled, _ in recorded] == [False, True]
    assert not recorded[1][1].training  # the fused model the predictor runs


@pytest.mark.slow
def test_predict_compile_runs_the_compiled_core(monkeypatch, faster_weights, tmp_path):
    calls = _spy(monkeypatch, "eager")
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert _predict(faster_weights, tmp_path, "--compile") == 0
    assert calls[0][1].compiled and torch._dynamo.utils.counters["stats"]["unique_graphs"] > before
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 8


def test_eval_compile_reaches_the_evaluation(monkeypatch, faster_weights):
    seen = {}
    monkeypatch.setattr("swiftdet.engine.run.run_evaluation", lambda cfg, weights, **kwargs: seen.update(kwargs))
    name, overrides = FASTER
    assert main(["eval", name, *overrides, "--weights", str(faster_weights), "--compile"]) == 0
    assert seen["compile"] is True


def test_benchmark_records_compiled_and_times_after_the_warmup(recorded, tmp_path, capsys):
    out = tmp_path / "b.json"
    name, overrides = RETINANET
    assert main(["benchmark", name, *overrides, "--num-images", "1", "--warmup", "1", "--compile", "--out", str(out),
                 "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["compiled"] is True and result["inference"]["compiled"] is True
    assert result["inference"]["warmup_batches"] == 1 and result["inference"]["images"] == 1
    assert [enabled for enabled, _ in recorded] == [True]
    assert "warm-up" in capsys.readouterr().out


@pytest.mark.parametrize("verb", [
    ["predict", "--backend", "onnxruntime", "--model", "m.onnx", "--input", "x.png", "--output", "out"],
    ["eval", "faster_rcnn_R_50_FPN_1x", "--backend", "torchscript", "--model", "m.pt"],
])
def test_exported_backends_refuse_compile(verb, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*verb, "--compile"]) == 2
    assert "--compile" in capsys.readouterr().err


def test_benchmark_refuses_compile_without_warmup(capsys):
    assert main(["benchmark", RETINANET[0], "--num-images", "1", "--warmup", "0", "--compile"]) == 2
    assert "--warmup >= 1" in capsys.readouterr().err
