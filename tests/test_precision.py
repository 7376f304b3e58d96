"""bf16 inference (--precision bf16): refused without native bfloat16, float32 outputs and box
predictor, detections close to float32's on a calibrated model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torchvision.ops import box_iou

from swiftdet.cli.main import main
from swiftdet.errors import ConfigError
from swiftdet.model.detector import check_precision
from swiftdet.model.roi_heads import BoxPredictor
from swiftdet.utils.cpu import has_native_bf16
from test_export import _calibrated, _real_images
from test_predictor import SMALL, small_weights  # noqa: F401  (the fixture, for the predict test)

NATIVE = pytest.mark.skipif(not has_native_bf16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def test_precision_is_checked(monkeypatch):
    check_precision("fp32", torch.device("cpu"))
    with pytest.raises(ConfigError, match="one of fp32, bf16"):
        check_precision("int4", torch.device("cpu"))
    monkeypatch.setattr("swiftdet.model.detector.has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="native bfloat16"):
        check_precision("bf16", torch.device("cpu"))


def test_cli_refuses_bf16_on_a_cpu_without_it(monkeypatch, capsys):
    monkeypatch.setattr("swiftdet.model.detector.has_native_bf16", lambda: False)
    assert main(["benchmark", "synth_retinanet_R_18_FPN", "--num-images", "1", "--warmup", "0", "--precision", "bf16"]) == 2
    assert "native bfloat16" in capsys.readouterr().err


def test_box_predictor_stays_float32_under_autocast():
    predictor = BoxPredictor(16, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, deltas = predictor(torch.randn(5, 16).to(torch.bfloat16))
    assert logits.dtype == deltas.dtype == torch.float32


@NATIVE
@pytest.mark.parametrize("arch", ["mask_rcnn", "retinanet"])
def test_bf16_detections_are_close_to_float32(arch, tiny_coco):
    images = _real_images(tiny_coco, 2)
    model, cfg = _calibrated(arch, images)
    from swiftdet.inference import Predictor

    predictor = Predictor.from_model(cfg, model)
    expected = predictor(images)
    model.set_precision("bf16")
    got = predictor(images)
    assert not torch.equal(expected[0].scores, got[0].scores)  # bf16 did run
    for e, g in zip(expected, got):
        assert g.boxes.tensor.dtype == g.scores.dtype == torch.float32
        assert len(e) >= 10 and len(g)
        # Random weights give flat proposal and anchor scores, so bf16's rounding changes which
        # near-tied candidates survive and boxes move (a trained model's AP is the real measure:
        # benchmarks and the issue note); what must hold: float32's top detections have bf16 twins
        # of the same class and nearly the same score, mostly overlapping.
        iou = box_iou(e.boxes.tensor[:10], g.boxes.tensor)
        twins = [int(iou[i].argmax()) for i in range(10)]
        same = [int(g.labels[j]) == int(e.labels[i]) and abs(float(g.scores[j]) - float(e.scores[i])) < 0.06
                and float(iou[i, j]) > 0.25 for i, j in enumerate(twins)]
        assert sum(same) >= 8, same
        if e.masks is not None:
            assert g.masks is not None and len(g.masks) == len(g)


@NATIVE
def test_benchmark_records_the_precision(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run([sys.executable, "-m", "swiftdet.cli.main", "benchmark", "synth_retinanet_R_18_FPN", "--num-images", "1",
                    "--warmup", "0", "--precision", "bf16", "--threads", "1", "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    assert json.loads(out.read_text())["precision"] == "bf16"


@NATIVE
def test_predict_cli_in_bf16_writes_its_predictions(small_weights, tmp_path):  # noqa: F811
    from PIL import Image

    _, weights = small_weights
    Image.fromarray((torch.rand(40, 60, 3) * 255).to(torch.uint8).numpy()).save(tmp_path / "a.png")
    assert main(["predict", *SMALL, "--config", "mask_rcnn_R_50_FPN_1x", "--weights", str(weights), "--input",
                 str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--score-thresh", "0", "--precision",
                 "bf16"]) == 0
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(results) == 5 and all("counts" in r["segmentation"] for r in results)


def test_exported_models_refuse_another_precision(tmp_path, capsys):
    assert main(["predict", "--backend", "onnxruntime", "--model", str(tmp_path / "m.onnx"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "out"), "--precision", "bf16"]) == 2
    assert "the precision it was exported with" in " ".join(capsys.readouterr().err.split())
