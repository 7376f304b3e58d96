"""Keypoint R-CNN: torchvision's keypointrcnn_resnet50_fpn converted gives its outputs; the heatmap
targets, loss and decoding equal torchvision's functions; a small model trains on the synthetic
shapes and is evaluated with OKS AP; converted weights predict COCO-style keypoints that
pycocotools evaluates as `swiftdet coco-eval` does, fine-tune to another class count, and bad
keypoint inputs are refused clearly or handled as COCO does."""
from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn, keypointrcnn_resnet50_fpn, maskrcnn_resnet50_fpn
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.ops import FrozenBatchNorm2d

from swiftdet.cli.main import main
from swiftdet.config import load_config
from swiftdet.data.coco import load_coco
from swiftdet.demo.synth import SYNTH_KEYPOINT_NAMES, generate_synthetic_coco
from swiftdet.errors import DatasetError, InputError, WeightsError
from swiftdet.model.build import build_model
from swiftdet.model.keypoint_head import heatmaps_to_keypoints, keypoint_loss, keypoints_to_heatmap
from swiftdet.structures import Boxes, Instances, Keypoints
from swiftdet.weights.torchvision_rcnn import convert_rcnn_state_dict

MIN_SIZE = 256
CONFIG = "keypoint_rcnn_R_50_FPN_1x"
TV_KWARGS = dict(box_score_thresh=0.05, rpn_post_nms_top_n_test=50, box_detections_per_img=4)
# Weight scale per layer-name fragment: activations O(1) through the random network, spread scores.
GAINS = {"fpn": 0.5, "rpn.head.cls_logits": 0.1, "rpn.head.bbox_pred": 0.01, "box_predictor.cls_score": 0.3,
         "box_predictor.bbox_pred": 0.05}


# ------------------------------------------------------------------------------------------------
# torchvision's functions on the same inputs
# ------------------------------------------------------------------------------------------------
def _rois_and_keypoints(g: torch.Generator, n: int = 40, k: int = 5):
    xy0 = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 60 + 0.3  # some boxes narrower than one pixel
    rois = torch.cat([xy0, xy0 + wh], 1)
    # Keypoints around each box: inside, outside, and exactly on its right and bottom edges.
    kp = xy0[:, None] + (torch.rand(n, k, 2, generator=g) * 1.4 - 0.2) * wh[:, None]
    kp[:3, 0, 0] = rois[:3, 2]
    kp[3:6, 1, 1] = rois[3:6, 3]
    vis = torch.randint(0, 3, (n, k, 1), generator=g).float()
    return rois, torch.cat([kp, vis], 2)


def test_heatmap_targets_and_loss_equal_torchvision():
    rois, kp = _rois_and_keypoints(torch.Generator().manual_seed(0))
    targets, valid = keypoints_to_heatmap(kp, rois, 56)
    tv_targets, tv_valid = tv_roi_heads.keypoints_to_heatmap(kp, rois, 56)
    assert torch.equal(targets, tv_targets) and torch.equal(valid.long(), tv_valid)
    assert 0 < int(valid.sum()) < valid.numel()  # some count, some (invisible or outside) do not
    assert bool(valid[:3, 0].logical_or(kp[:3, 0, 2] == 0).all())  # the right edge is inside
    logits = torch.randn(len(rois), kp.shape[1], 56, 56, generator=torch.Generator().manual_seed(1))
    expected = tv_roi_heads.keypointrcnn_loss(logits, [rois], [kp], [torch.arange(len(rois))])
    torch.testing.assert_close(keypoint_loss(logits, rois, kp), expected, rtol=0, atol=0)


def test_all_invisible_or_outside_keypoints_give_a_zero_loss_that_backpropagates():
    rois = torch.tensor([[10.0, 10, 50, 50], [0, 0, 30, 20]])
    kp = torch.tensor([[[20.0, 20, 0], [30, 30, 0]], [[100, 5, 2], [-3, 5, 1]]])  # unlabelled; outside the box
    logits = torch.randn(2, 2, 56, 56, requires_grad=True)
    loss = keypoint_loss(logits, rois, kp)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0


def test_decoding_equals_torchvision_and_traces():
    rois, _ = _rois_and_keypoints(torch.Generator().manual_seed(2), n=12)
    maps = torch.randn(12, 5, 56, 56, generator=torch.Generator().manual_seed(3))
    tv_xy, tv_scores = tv_roi_heads.heatmaps_to_keypoints(maps, rois)
    ours = heatmaps_to_keypoints(maps, rois)
    assert ours.shape == (12, 5, 3)
    assert torch.equal(ours[..., :2], tv_xy[..., :2]) and torch.equal(ours[..., 2], tv_scores)
    # A trace recorded on 12 boxes decodes 4 others of other sizes correctly.
    traced = torch.jit.trace(heatmaps_to_keypoints, (maps, rois), check_trace=False)
    other = rois[:4] * torch.tensor([2.0, 1.5, 3.0, 2.5])
    assert torch.equal(traced(maps[:4], other), heatmaps_to_keypoints(maps[:4], other))
    assert heatmaps_to_keypoints(maps[:0], rois[:0]).shape == (0, 5, 3)


# ------------------------------------------------------------------------------------------------
# keypointrcnn_resnet50_fpn, converted
# ------------------------------------------------------------------------------------------------
def _real_images(root: Path) -> list[torch.Tensor]:
    """Two tiny_coco val images with people, shortest edge MIN_SIZE (torchvision's resize is then
    the identity), integer 0-255 values, of different sizes."""
    gt = json.loads((root / "annotations" / "person_keypoints_val.json").read_text())
    with_people = sorted({a["image_id"] for a in gt["annotations"] if a.get("num_keypoints", 0) > 5})
    files = {im["id"]: im["file_name"] for im in gt["images"]}
    out = []
    for image_id, shape in zip(with_people[:2], [(MIN_SIZE, 320), (288, MIN_SIZE)]):
        pixels = Image.open(root / files[image_id]).convert("RGB").resize(shape[::-1], Image.BILINEAR)
        out.append(torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float())
    return out


def _randomise(tv: nn.Module, images: list[torch.Tensor], g: torch.Generator) -> None:
    """Random weights and BN affines, BN statistics calibrated on ``images``, then frozen as the
    swiftdet config's FrozenBN (so both run the same kernels)."""
    with torch.no_grad():
        for name, m in tv.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
                fan_in = m.weight.shape[0] * 4 if isinstance(m, nn.ConvTranspose2d) else m.weight[0].numel()
                gain = next((v for k, v in GAINS.items() if k in name), 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * gain * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1 * min(gain, 1.0))
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: the statistics of the calibration pass
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        tv.backbone.train()
        tv.backbone(tv.transform([i / 255 for i in images])[0].tensors)
        tv.eval()
        for name, m in list(tv.backbone.body.named_modules()):
            if isinstance(m, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(m.num_features, eps=m.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(m, key))
                parent, _, leaf = name.rpartition(".")
                setattr(tv.backbone.body.get_submodule(parent) if parent else tv.backbone.body, leaf, frozen)


def _config(**kw):
    overrides = [f"model.box_head.score_thresh={TV_KWARGS['box_score_thresh']}",
                 f"model.rpn.post_nms_topk_test={TV_KWARGS['rpn_post_nms_top_n_test']}",
                 f"model.box_head.detections_per_image={TV_KWARGS['box_detections_per_img']}",
                 f"input.min_size_test={MIN_SIZE}", *kw.get("extra", [])]
    return load_config(CONFIG, overrides)


@functools.lru_cache(maxsize=None)
def _pair(root: Path):
    torch.manual_seed(0)
    images = _real_images(root)
    tv = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, min_size=MIN_SIZE,
                                   max_size=1333, **TV_KWARGS)
    _randomise(tv, images, torch.Generator().manual_seed(0))
    cfg = _config()
    ours = build_model(cfg.model).eval()
    ours.load_state_dict(convert_rcnn_state_dict(tv.state_dict(), cfg.model))
    return tv, ours, images, cfg


def test_matches_torchvision_keypointrcnn(tiny_coco):
    tv, ours, images, _ = _pair(tiny_coco)
    originals = [(int(i.shape[1] * 1.5), int(i.shape[2] * 1.25)) for i in images]
    with torch.no_grad():
        expected = tv([i / 255 for i in images])
        batch = ours.preprocess(images, originals)
        raw = ours(batch)
    for r, e in zip(raw, expected):
        assert len(r) == len(e["boxes"]) >= 3
        assert torch.equal(r.labels, e["labels"] - 1)
        torch.testing.assert_close(r.boxes.tensor, e["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(r.scores, e["scores"], rtol=0, atol=1e-4)
        assert r.keypoints.tensor.shape == (len(r), 17, 3)
        torch.testing.assert_close(r.keypoints.tensor[..., :2], e["keypoints"][..., :2], rtol=0, atol=1e-3)
        torch.testing.assert_close(r.keypoints.tensor[..., 2], e["keypoints_scores"], rtol=0, atol=1e-4)
        assert float(e["keypoints_scores"].std()) > 0.5  # the scores spread: the comparison means something
    # Back to the original sizes: keypoints scaled per axis as torchvision's transform does.
    final = ours.postprocess(raw, batch)
    rescaled = tv.transform.postprocess(copy.deepcopy(expected), [tuple(i.shape[1:]) for i in images], originals)
    for f, e, size in zip(final, rescaled, originals):
        assert f.image_size == size
        torch.testing.assert_close(f.boxes.tensor, e["boxes"], rtol=0, atol=2e-4)
        torch.testing.assert_close(f.keypoints.tensor[..., :2], e["keypoints"][..., :2], rtol=0, atol=2e-3)
        torch.testing.assert_close(f.keypoints.tensor[..., 2], e["keypoints_scores"], rtol=0, atol=1e-4)


def test_converter_maps_every_keypointrcnn_key_and_names_a_missing_head():
    with torch.device("meta"):
        kp_sd = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
        faster_sd = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).state_dict()
        mask_sd = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2).state_dict()
    cfg = load_config(CONFIG, []).model
    out = convert_rcnn_state_dict(kp_sd, cfg)
    assert out["roi_heads.keypoint_head.convs.7.conv.weight"].shape == (512, 512, 3, 3)
    assert out["roi_heads.keypoint_head.score_lowres.weight"].shape == (512, 17, 4, 4)
    assert out["roi_heads.box_predictor.cls_score.weight"].shape[0] == 2  # background + person
    with pytest.raises(WeightsError, match="keypoint_on"):
        convert_rcnn_state_dict(faster_sd, cfg)
    mask_cfg = load_config("mask_rcnn_R_50_FPN_1x", ["model.num_classes=1"]).model
    with pytest.raises(WeightsError, match="keypoint_on"):
        convert_rcnn_state_dict(kp_sd, mask_cfg)
    both = load_config(CONFIG, ["model.mask_on=true"]).model
    with pytest.raises(WeightsError, match="mask_on"):
        convert_rcnn_state_dict(kp_sd, both)
    assert "roi_heads.keypoint_head.convs.0.conv.weight" not in convert_rcnn_state_dict(
        mask_sd, load_config("mask_rcnn_R_50_FPN_1x", ["model.num_classes=1"]).model)


def test_masks_and_keypoints_together():
    cfg = load_config(CONFIG, ["model.mask_on=true", "model.backbone.depth=18", "model.fpn.out_channels=32",
                               "model.box_head.fc_dim=32", "model.mask_head.conv_dim=16",
                               "model.keypoint_head.conv_dim=16", "model.keypoint_head.num_convs=1",
                               "model.box_head.detections_per_image=5"]).model
    torch.manual_seed(0)
    model = build_model(cfg)
    image = torch.rand(3, 96, 128) * 255
    target = Instances((96, 128), boxes=Boxes(torch.tensor([[10.0, 10, 60, 80]])), labels=torch.tensor([0]),
                       keypoints=Keypoints(torch.rand(1, 17, 3) * torch.tensor([60.0, 80, 0]) + torch.tensor([10, 10, 2.0])))
    from swiftdet.structures import BitMasks

    mask = torch.zeros(1, 96, 128, dtype=torch.bool)
    mask[:, 10:80, 10:60] = True
    target = target.with_fields(masks=BitMasks(mask))
    model.train()
    losses = model(model.preprocess([image]), [target])
    assert {"loss_mask", "loss_keypoint"} <= set(losses) and all(math.isfinite(v.item()) for v in losses.values())
    model.score_thresh = 0.0
    (out,) = model.predict([image])
    assert out.masks is not None and out.keypoints.tensor.shape == (len(out), 17, 3) and len(out) > 0


# ------------------------------------------------------------------------------------------------
# Training and evaluation on the synthetic shapes
# ------------------------------------------------------------------------------------------------
TINY = ["model.fpn.out_channels=32", "model.box_head.fc_dim=64", "model.keypoint_head.conv_dim=32",
        "model.keypoint_head.num_convs=2", "model.rpn.post_nms_topk_test=50", "input.min_size_train=[96]",
        "input.max_size_train=96", "input.min_size_test=96", "input.max_size_test=96", "solver.ims_per_batch=4",
        "solver.reference_batch_size=4", "solver.warmup_iters=5", "solver.log_period=1", "test.ims_per_batch=4"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_coco(root, num_train=8, num_val=4, image_size=(96, 96), seed=0)
    return root


def _data(root: Path, train: Path | None = None) -> list[str]:
    train = train or root / "annotations" / "instances_train.json"
    return [f"data.train.json={train}", f"data.train.image_root={root}",
            f"data.test.json={root / 'annotations' / 'instances_val.json'}", f"data.test.image_root={root}"]


def test_synth_recipe_matches_the_generator():
    from swiftdet.configs.synth_keypoint_rcnn_R_18_FPN import SYNTH_NUM_KEYPOINTS

    cfg = load_config("synth_keypoint_rcnn_R_18_FPN", [])
    assert cfg.model.keypoint_on and cfg.model.keypoint_head.num_keypoints == SYNTH_NUM_KEYPOINTS == len(SYNTH_KEYPOINT_NAMES)
    assert len(cfg.test.keypoint_oks_sigmas) == SYNTH_NUM_KEYPOINTS and cfg.test.best_metric == "keypoints/AP"


@pytest.mark.slow
def test_trains_on_synth_data_and_reports_keypoint_ap(synth, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "synth_keypoint_rcnn_R_18_FPN", *_data(synth), *TINY, "solver.max_iter=36",
                 "solver.checkpoint_period=36", "--output", str(out)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss_keypoint" in r]
    assert len(train) >= 30
    for r in train:
        assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_keypoint"} <= set(r)
        assert all(math.isfinite(r[k]) for k in r if k.startswith("loss"))
    first = sum(r["loss_keypoint"] for r in train[:5]) / 5
    last = sum(r["loss_keypoint"] for r in train[-5:]) / 5
    assert first > 6.0 and last < 0.8 * first, (first, last)  # from ln(56 * 56) = 8.05 down
    final = [r for r in records if "keypoints/AP" in r][-1]
    assert 0.0 <= final["keypoints/AP"] <= 1.0 and final["keypoints/area_from"] == "box"
    assert (out / "model_final.pth").is_file()


def test_keypoint_config_on_a_dataset_without_keypoints_is_refused(synth, tmp_path, capsys):
    data = json.loads((synth / "annotations" / "instances_train.json").read_text())
    for c in data["categories"]:
        c.pop("keypoints", None)
        c.pop("skeleton", None)
    for a in data["annotations"]:
        a.pop("keypoints", None)
        a.pop("num_keypoints", None)
    plain = tmp_path / "no_keypoints.json"
    plain.write_text(json.dumps(data))
    assert main(["train", "synth_keypoint_rcnn_R_18_FPN", *_data(synth, plain), *TINY, "solver.max_iter=2",
                 "--output", str(tmp_path / "run")]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "no keypoints" in message and "model.keypoint_on=false" in message


def test_keypoint_count_of_the_data_must_match_the_config():
    model = build_model(load_config("synth_keypoint_rcnn_R_18_FPN", ["model.keypoint_head.num_keypoints=3",
                                                                     "test.keypoint_oks_sigmas=[0.1,0.1,0.1]"]).model)
    target = Instances((64, 64), boxes=Boxes(torch.tensor([[4.0, 4, 40, 40]])), labels=torch.tensor([0]),
                       keypoints=Keypoints(torch.zeros(1, 4, 3)))
    with pytest.raises(InputError, match="4 keypoints per instance but model.keypoint_head.num_keypoints is 3"):
        model.train()(model.preprocess([torch.zeros(3, 64, 64)]), [target])


def test_an_image_without_objects_trains_beside_one_with_keypoints():
    torch.manual_seed(0)
    model = build_model(load_config("synth_keypoint_rcnn_R_18_FPN", TINY[:5]).model).train()
    kp = torch.tensor([[[20.0, 4, 2], [4, 20, 2], [20, 40, 1], [40, 20, 0]]])
    targets = [Instances((64, 64), boxes=Boxes(torch.tensor([[4.0, 4, 40, 40]])), labels=torch.tensor([1]),
                         keypoints=Keypoints(kp)), Instances.empty((64, 64))]
    losses = model(model.preprocess([torch.rand(3, 64, 64) * 255, torch.rand(3, 64, 64) * 255]), targets)
    assert losses["loss_keypoint"].item() > 0 and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    # Only images without objects: the keypoint loss is 0, and still part of the graph.
    losses = model(model.preprocess([torch.rand(3, 64, 64) * 255]), [Instances.empty((64, 64))])
    assert losses["loss_keypoint"].item() == 0.0
    sum(losses.values()).backward()


def test_oks_sigmas_must_fit_the_keypoints():
    from swiftdet.errors import ConfigError

    with pytest.raises(ConfigError, match="one sigma per keypoint"):
        load_config("synth_keypoint_rcnn_R_18_FPN", ["test.keypoint_oks_sigmas=[0.1]"])
    with pytest.raises(ConfigError, match="test.keypoint_oks_sigmas"):
        load_config(CONFIG, ["model.keypoint_head.num_keypoints=4"])


def _write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_keypoint_annotations(synth, tmp_path):
    data = json.loads((synth / "annotations" / "instances_train.json").read_text())
    # The wrong count for the category: refused, naming the file, image and annotation.
    wrong = copy.deepcopy(data)
    wrong["annotations"][0]["keypoints"] = wrong["annotations"][0]["keypoints"][:9]
    with pytest.raises(DatasetError, match="12 values"):
        load_coco(_write_json(tmp_path / "wrong.json", wrong), synth, verbose=False)
    # An image whose keypoints are all unlabelled: dropped from training (COCO/detectron2), counted.
    hidden = copy.deepcopy(data)
    first_image = hidden["images"][0]["id"]
    for a in hidden["annotations"]:
        if a["image_id"] == first_image:
            a["keypoints"] = [0.0] * (3 * len(SYNTH_KEYPOINT_NAMES))
            a["num_keypoints"] = 0
    ds = load_coco(_write_json(tmp_path / "hidden.json", hidden), synth, training=True, verbose=False)
    assert ds.load_summary.dropped_images_without_keypoints == 1 and len(ds) == len(data["images"]) - 1
    # A keypoint outside the image: kept as stored (COCO keeps it), and not a training target.
    outside = copy.deepcopy(data)
    outside["annotations"][0]["keypoints"][:3] = [500.0, -20.0, 2]
    ds = load_coco(_write_json(tmp_path / "outside.json", outside), synth, training=True, verbose=False)
    assert float(ds.annotations.keypoints[0, 0, 0]) == 500.0
    box = torch.tensor(outside["annotations"][0]["bbox"], dtype=torch.float32)
    rois = torch.cat([box[:2], box[:2] + box[2:]])[None]
    _, valid = keypoints_to_heatmap(torch.from_numpy(ds.annotations.keypoints[:1]), rois, 56)
    assert not bool(valid[0, 0])


# ------------------------------------------------------------------------------------------------
# Converted weights: convert, predict, coco-eval = pycocotools, fine-tune
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tiny_coco, tmp_path_factory) -> Path:
    tv, _, _, _ = _pair(tiny_coco)
    folder = tmp_path_factory.mktemp("converted")
    torch.save(tv.state_dict(), folder / "keypointrcnn.pth")
    assert main(["convert", "torchvision", str(folder / "keypointrcnn.pth"), str(folder / "ours.pth"),
                 "--config", CONFIG]) == 0
    (folder / "keypointrcnn.pth").unlink()
    return folder / "ours.pth"


@pytest.mark.slow
def test_predict_writes_coco_keypoints_that_coco_eval_scores_as_pycocotools(tiny_coco, converted, tmp_path, monkeypatch):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    import swiftdet.visualization.draw as draw

    drawn_with = []
    real_draw = draw.draw_instances
    monkeypatch.setattr(draw, "draw_instances", lambda *a, **kw: drawn_with.append(kw) or real_draw(*a, **kw))
    full = json.loads((tiny_coco / "annotations" / "person_keypoints_val.json").read_text())
    ids = sorted({a["image_id"] for a in full["annotations"] if a.get("num_keypoints", 0) > 5})[:3]
    gt = {**full, "images": [i for i in full["images"] if i["id"] in ids],
          "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
    gt_path = _write_json(tmp_path / "gt.json", gt)
    out = tmp_path / "pred"
    assert main(["predict", "--config", CONFIG, f"input.min_size_test={MIN_SIZE}", "model.box_head.detections_per_image=5",
                 "--weights", str(converted), "--images-from", str(gt_path), "--image-root", str(tiny_coco),
                 "--output", str(out), "--score-thresh", "0.05", "--draw-thresh", "0.0"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert results and all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert {r["image_id"] for r in results} <= set(ids)
    assert drawn_with and [tuple(pair) for pair in drawn_with[0]["skeleton"]] == list(draw.COCO_PERSON_SKELETON)
    # Near-ground-truth detections besides the random model's, so that the AP is not trivially 0.
    g = torch.Generator().manual_seed(0)
    for a in gt["annotations"]:
        if a.get("num_keypoints", 0) > 0:
            kp = torch.tensor(a["keypoints"], dtype=torch.float64).view(-1, 3)
            kp[:, :2] += torch.randn(len(kp), 2, generator=g, dtype=torch.float64) * 3
            results.append({"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"],
                            "score": float(torch.rand(1, generator=g)), "keypoints": kp.flatten().tolist()})
    res_path = tmp_path / "results.json"
    res_path.write_text(json.dumps(results))
    coco_gt = COCO(str(gt_path))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(res_path)), "keypoints")
    ev.params.imgIds = sorted(coco_gt.getImgIds())
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert main(["coco-eval", str(gt_path), str(res_path), "--iou-type", "keypoints", "--out", str(tmp_path / "m.json")]) == 0
    ours = list(json.loads((tmp_path / "m.json").read_text()).values())
    assert ours == ev.stats.tolist() and ev.stats[0] > 0.1


def test_fine_tunes_from_the_converted_file_with_another_class_count(converted):
    from swiftdet.weights.checkpoint import build_model_with_weights, read_checkpoint

    cfg = load_config(CONFIG, ["model.num_classes=3", "model.box_head.batch_size_per_image=16",
                               "model.rpn.post_nms_topk_train=50", "model.rpn.pre_nms_topk_train=100"])
    model, report = build_model_with_weights(cfg, str(converted))
    stored = read_checkpoint(str(converted))["model"]
    state = model.state_dict()
    for key in ("roi_heads.keypoint_head.convs.3.conv.weight", "roi_heads.keypoint_head.score_lowres.weight",
                "backbone.layer1.0.conv1.weight"):
        assert torch.equal(state[key], stored[key]), key
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4
    image = torch.rand(3, 128, 160) * 255
    kp = torch.tensor([[[30.0, 20, 2]] * 9 + [[40.0, 70, 1]] * 8])
    target = Instances((128, 160), boxes=Boxes(torch.tensor([[20.0, 10, 80, 110]])), labels=torch.tensor([2]),
                       keypoints=Keypoints(kp))
    model.train()
    losses = model(model.preprocess([image]), [target])
    assert "loss_keypoint" in losses and all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
