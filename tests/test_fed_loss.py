"""The R-CNN box classifier's sigmoid cross entropy and federated loss (model.box_head.cls_loss).

The losses are compared with a re-implementation of detectron2's ``FastRCNNOutputLayers``
formulas (``sigmoid_cross_entropy_loss``, ``get_fed_loss_classes``; detectron2 keeps the
background LAST, swiftdet first) on random logits, the class draw under the same random seed.
Then: gradients, sigmoid scores at inference, tiny models training with each loss, the class
frequencies ``swiftdet train`` gives the model, and the detectron2 yaml mapping.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from swiftdet.config.core import load_config
from swiftdet.config.detectron2_yaml import config_from_detectron2_yaml
from swiftdet.errors import ConfigError
from swiftdet.model.build import build_model
from swiftdet.model.roi_heads import BoxPredictor, federated_classes, sigmoid_classification_loss
from swiftdet.structures import Boxes, Instances
from swiftdet.weights.detectron2 import convert_detectron2_state_dict


# ------------------------------------------------------------- detectron2's formulas (its layout)
def _d2_fed_loss_classes(gt: torch.Tensor, num_fed: int, k: int, weight: torch.Tensor) -> torch.Tensor:
    """detectron2's get_fed_loss_classes: the gt classes (background k included when present), then
    classes drawn by weight, without replacement, up to num_fed in all."""
    unique = torch.unique(gt)
    if len(unique) >= num_fed:
        return unique
    prob = torch.ones(k + 1)
    prob[:k] = weight.float()
    prob[k] = 0.0
    prob[unique] = 0.0
    return torch.cat([unique, torch.multinomial(prob, num_fed - len(unique), replacement=False)])


def _d2_sigmoid_ce(logits: torch.Tensor, gt: torch.Tensor, fed: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """detectron2's sigmoid_cross_entropy_loss: (N, K + 1) logits, background last; gt in 0..K."""
    n, k = logits.shape[0], logits.shape[1] - 1
    onehot = torch.zeros(n, k + 1)
    onehot[torch.arange(n), gt] = 1.0
    per_class = F.binary_cross_entropy_with_logits(logits[:, :k], onehot[:, :k], reduction="none")
    weight = torch.ones(k)
    if fed is not None:
        keep = torch.zeros(k + 1)
        keep[_d2_fed_loss_classes(gt, fed[0], k, fed[1])] = 1.0
        weight = keep[:k]
    return (per_class * weight[None]).sum() / n


def _to_swiftdet(logits_d2: torch.Tensor, gt_d2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same logits and labels in swiftdet's layout (background first, labels 0 = background)."""
    k = logits_d2.shape[1] - 1
    logits = torch.cat([logits_d2[:, k:], logits_d2[:, :k]], dim=1)
    labels = torch.where(gt_d2 == k, torch.zeros_like(gt_d2), gt_d2 + 1)
    return logits, labels


def _random_case(seed: int, n: int = 96, k: int = 30, gt_classes: int = 4):
    """Random logits and d2-layout labels: a few foreground classes, the rest background."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k + 1, generator=g) * 3
    fg = torch.randperm(k, generator=g)[:gt_classes]
    gt = fg[torch.randint(0, gt_classes, (n,), generator=g)]
    gt[torch.rand(n, generator=g) < 0.7] = k  # background
    weights = torch.rand(k, generator=g) * 100 + 1
    return logits, gt, weights


@pytest.mark.parametrize("seed", range(4))
def test_sigmoid_loss_equals_detectron2(seed):
    logits_d2, gt_d2, _ = _random_case(seed)
    logits, labels = _to_swiftdet(logits_d2, gt_d2)
    ours = sigmoid_classification_loss(logits, labels)
    torch.testing.assert_close(ours, _d2_sigmoid_ce(logits_d2, gt_d2), rtol=1e-6, atol=1e-6)
    # Through the predictor, and not the softmax loss.
    predictor = BoxPredictor(8, 30, cls_loss="sigmoid")
    torch.testing.assert_close(predictor.classification_loss(logits, labels), ours)
    assert not torch.allclose(ours, F.cross_entropy(logits, labels))


@pytest.mark.parametrize("seed,num_fed", [(0, 10), (1, 10), (2, 25), (3, 28), (4, 3)])
def test_federated_loss_and_class_draw_equal_detectron2(seed, num_fed):
    logits_d2, gt_d2, weights = _random_case(seed)
    logits, labels = _to_swiftdet(logits_d2, gt_d2)
    torch.manual_seed(100 + seed)
    expected = _d2_sigmoid_ce(logits_d2, gt_d2, (num_fed, weights))
    torch.manual_seed(100 + seed)
    reference_classes = _d2_fed_loss_classes(gt_d2, num_fed, 30, weights)
    torch.manual_seed(100 + seed)
    chosen = federated_classes(labels, num_fed, weights)
    assert set(torch.nonzero(chosen).squeeze(1).tolist()) == {c for c in reference_classes.tolist() if c < 30}
    # Every ground-truth class is in; the background takes one of the num_fed places as in detectron2.
    present = set(gt_d2.tolist())
    assert present - {30} <= set(torch.nonzero(chosen).squeeze(1).tolist())
    assert int(chosen.sum()) == max(num_fed, len(present)) - (30 in present)

    predictor = BoxPredictor(8, 30, cls_loss="federated", fed_loss_num_classes=num_fed, fed_loss_freq_weight_power=1.0)
    predictor.set_class_image_counts(weights)
    torch.manual_seed(100 + seed)
    ours = predictor.classification_loss(logits, labels)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    if num_fed < 30:
        assert ours < sigmoid_classification_loss(logits, labels)  # a subset of the classes' (positive) terms


def test_class_draw_follows_the_weights_and_takes_what_there_is():
    k = 6
    labels = torch.tensor([0, 0, 2])  # background and class 1 (0-based)
    weights = torch.tensor([0.0, 5.0, 1.0, 0.0, 3.0, 0.0])
    torch.manual_seed(0)
    counts = torch.zeros(k)
    for _ in range(300):
        counts += federated_classes(labels, 3, weights).float()  # background + class 1 + one drawn
    assert counts[1] == 300 and counts[[0, 3, 5]].sum() == 0  # weight 0: never drawn
    assert counts[4] > counts[2] > 0 and counts[2] + counts[4] == 300  # drawn in proportion (3 : 1)
    # More classes asked for than carry a weight: all of those, where detectron2's multinomial would fail.
    chosen = federated_classes(labels, 50, weights)
    assert torch.nonzero(chosen).squeeze(1).tolist() == [1, 2, 4]


def test_gradients_reach_the_federated_classes_only():
    logits_d2, gt_d2, weights = _random_case(7)
    logits, labels = _to_swiftdet(logits_d2, gt_d2)
    logits.requires_grad_(True)
    predictor = BoxPredictor(8, 30, cls_loss="federated", fed_loss_num_classes=12, fed_loss_freq_weight_power=0.5)
    predictor.set_class_image_counts(weights)
    torch.manual_seed(3)
    predictor.classification_loss(logits, labels).backward()
    torch.manual_seed(3)
    chosen = federated_classes(labels, 12, weights ** 0.5)
    reached = logits.grad[:, 1:].abs().sum(0) > 0
    assert torch.equal(reached, chosen) and int(chosen.sum()) == 11  # 12 less the background's place
    assert torch.all(logits.grad[:, 0] == 0)  # the background score is never trained
    # The sigmoid loss: d(loss)/d(logit) = (sigmoid - target) / R on every foreground class.
    logits.grad = None
    sigmoid_classification_loss(logits, labels).backward()
    target = F.one_hot(labels, 31)[:, 1:].float()
    torch.testing.assert_close(logits.grad[:, 1:], (logits.detach()[:, 1:].sigmoid() - target) / len(labels))


def test_unset_weights_refused_and_empty_batches_give_zero():
    predictor = BoxPredictor(8, 5, cls_loss="federated")
    assert predictor.state_dict()["fed_loss_cls_weights"].shape == (5,)
    with pytest.raises(ValueError, match="set_class_image_counts"):
        predictor.classification_loss(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    predictor.set_class_image_counts(torch.tensor([4, 1, 0, 9, 16]))
    torch.testing.assert_close(predictor.fed_loss_cls_weights, torch.tensor([2.0, 1.0, 0.0, 3.0, 4.0]))
    empty = torch.zeros(0, 6, requires_grad=True)
    loss = predictor.classification_loss(empty, torch.zeros(0, dtype=torch.int64))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="federated"):
        BoxPredictor(8, 5, cls_loss="sigmoid").set_class_image_counts(torch.ones(5))
    assert "fed_loss_cls_weights" not in BoxPredictor(8, 5, cls_loss="sigmoid").state_dict()


# ------------------------------------------------------------------------- tiny models
def _tiny(cls_loss: str, name: str = "faster_rcnn_R_50_FPN_1x", **box_head):
    cfg = load_config(name, []).model
    cfg.num_classes = 3
    cfg.backbone.depth = 18
    cfg.fpn.out_channels = 32
    cfg.rpn.anchors.sizes = ((16.0,), (32.0,), (64.0,), (128.0,), (256.0,))
    cfg.rpn.pre_nms_topk_train = cfg.rpn.pre_nms_topk_test = 200
    cfg.rpn.post_nms_topk_train = cfg.rpn.post_nms_topk_test = 50
    cfg.box_head.fc_dim = 64
    cfg.box_head.batch_size_per_image = 64
    cfg.box_head.cls_loss = cls_loss
    for key, value in box_head.items():
        setattr(cfg.box_head, key, value)
    return cfg


def _batch() -> tuple[list[torch.Tensor], list[Instances]]:
    """Two 96x120 images with coloured rectangles of 3 classes."""
    colours = torch.tensor([[230.0, 40, 40], [40, 230, 40], [40, 40, 230]])
    layouts = [[(0, (15, 15, 60, 52)), (1, (68, 22, 112, 75))], [(2, (8, 45, 45, 90)), (0, (75, 8, 112, 45))]]
    images, targets = [], []
    for objects in layouts:
        image = torch.full((3, 96, 120), 110.0)
        for label, (x0, y0, x1, y1) in objects:
            image[:, y0:y1, x0:x1] = colours[label][:, None, None]
        images.append(image)
        targets.append(Instances((96, 120), boxes=Boxes(torch.tensor([b for _, b in objects], dtype=torch.float32)),
                                 labels=torch.tensor([label for label, _ in objects])))
    return images, targets


def _train(cls_loss: str, steps: int) -> tuple[list[float], list[float]]:
    """``steps`` SGD steps of a tiny Faster R-CNN on one batch; the classifier loss and total of each."""
    torch.manual_seed(0)
    model = build_model(_tiny(cls_loss, fed_loss_num_classes=2))
    if cls_loss == "federated":
        model.roi_heads.box_predictor.set_class_image_counts(torch.tensor([2, 1, 1]))
    model.train()
    images, targets = _batch()
    batch = model.preprocess(images)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    cls_losses, totals = [], []
    for step in range(steps):
        losses = model(batch, targets)
        assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        if step == 0:
            grad = model.roi_heads.box_predictor.cls_score.weight.grad
            assert grad is not None and grad[1:].abs().sum() > 0
            if cls_loss != "softmax":
                assert grad[0].abs().sum() == 0  # the background row: kept, never trained
        opt.step()
        cls_losses.append(losses["loss_cls"].item())
        totals.append(total.item())
    return cls_losses, totals


@pytest.mark.parametrize("cls_loss", ["softmax", "sigmoid", "federated"])
def test_tiny_model_trains_with_each_loss(cls_loss):
    cls_losses, _ = _train(cls_loss, 2)
    if cls_loss != "softmax":
        # Untrained, every foreground logit is about 0: each RoI's loss is about K log 2 (federated: fewer classes).
        assert 0.3 < cls_losses[0] < 3 * np.log(2) + 0.3, cls_losses


@pytest.mark.parametrize("cls_loss", ["sigmoid", "federated"])
def test_losses_fall_with_the_sigmoid_and_federated_losses(cls_loss):
    cls_losses, totals = _train(cls_loss, 20)
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:3]), totals
    assert np.mean(cls_losses[-5:]) < 0.7 * np.mean(cls_losses[:3]), cls_losses


@pytest.mark.parametrize("cls_loss", ["softmax", "sigmoid"])
def test_inference_scores_are_sigmoids(cls_loss):
    """With a constant classifier (weight 0, bias b) every RoI's probabilities are sigmoid(b) (or
    softmax(b)): each detection's score is then that of its label."""
    torch.manual_seed(0)
    cfg = _tiny(cls_loss)
    cfg.box_head.score_thresh = 0.01
    model = build_model(cfg).eval()
    bias = torch.tensor([0.5, 2.0, 0.0, -1.0])  # background, then the 3 classes
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.zero_()
        model.roi_heads.box_predictor.cls_score.bias.copy_(bias)
    images, _ = _batch()
    results = model.predict(images)
    expected = bias.sigmoid() if cls_loss == "sigmoid" else bias.softmax(0)
    labels = torch.cat([r.labels for r in results])
    scores = torch.cat([r.scores for r in results])
    assert set(labels.tolist()) == {0, 1, 2}
    torch.testing.assert_close(scores, expected[labels + 1])
    # _predict itself hands out the sigmoid of the logits, background slot included.
    rois = torch.tensor([[0.0, 10, 10, 50, 50], [1.0, 20, 5, 90, 60]])
    features = model.extract_features(model.preprocess(images).tensor)
    probs, _ = model.roi_heads._predict(features, rois, torch.tensor([[96, 120], [96, 120]]))
    torch.testing.assert_close(probs, expected.expand(2, 4))


def test_config_fields_are_validated():
    assert load_config("mask_rcnn_R_50_FPN_1x", []).model.box_head.cls_loss == "softmax"
    with pytest.raises(ConfigError, match="fed_loss_num_classes.*federated"):
        load_config("mask_rcnn_R_50_FPN_1x", ["model.box_head.cls_loss=sigmoid", "model.box_head.fed_loss_num_classes=20"])
    with pytest.raises(ConfigError, match="fed_loss_freq_weight_power"):
        load_config("mask_rcnn_R_50_FPN_1x", ["model.box_head.fed_loss_freq_weight_power=1.0"])
    with pytest.raises(ConfigError, match="cls_loss"):
        load_config("mask_rcnn_R_50_FPN_1x", ["model.box_head.cls_loss=focal"])
    with pytest.raises(ConfigError, match="fed_loss_num_classes"):
        load_config("mask_rcnn_R_50_FPN_1x", ["model.box_head.cls_loss=federated", "model.box_head.fed_loss_num_classes=0"])
    cfg = load_config("cascade_rcnn_R_50_FPN_1x", ["model.box_head.cls_loss=sigmoid", "model.backbone.depth=18"])
    with pytest.raises(ConfigError, match="Cascade.*cls_loss=softmax"):
        build_model(cfg.model)


def test_the_lvis_recipes():
    softmax = load_config("mask_rcnn_R_50_FPN_lvis_1x")
    fed = load_config("mask_rcnn_R_50_FPN_lvis_1x_fed")
    assert softmax.model.box_head.cls_loss == "softmax"
    bh = fed.model.box_head
    assert (bh.cls_loss, bh.fed_loss_num_classes, bh.fed_loss_freq_weight_power) == ("federated", 50, 0.5)
    assert (bh.score_thresh, bh.detections_per_image, fed.model.num_classes) == (0.02, 300, 1203)
    assert (fed.data.sampler, fed.data.train.format, fed.solver.max_iter) == ("repeat_factor", "lvis", 180000)


# --------------------------------------------------------- class frequencies from the training run
def _coco_folder(root: Path) -> Path:
    """4 images, classes a (3 images), b (1 image, plus a crowd region in another), c (3 images)."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in range(1, 5)]
    objects = [(1, 1, 0), (1, 1, 0), (1, 3, 0), (2, 1, 0), (2, 2, 0), (3, 1, 0), (3, 3, 0), (4, 3, 0), (4, 2, 1)]
    annotations = [{"id": n + 1, "image_id": image, "category_id": cat, "bbox": [4 + 6 * (n % 3), 6, 24, 30],
                    "area": 720.0, "iscrowd": crowd} for n, (image, cat, crowd) in enumerate(objects)]
    categories = [{"id": i, "name": name} for i, name in ((1, "a"), (2, "b"), (3, "c"))]
    rng = np.random.default_rng(0)
    for image in images:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / image["file_name"])
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_training_run_gives_the_model_the_class_image_counts(tmp_path):
    from swiftdet.data import load_dataset
    from swiftdet.engine.run import class_image_counts, run_training

    path = _coco_folder(tmp_path)
    overrides = [
        "data.train.format=coco", f"data.train.json={path}", f"data.train.image_root={tmp_path}", "data.test.json=",
        "data.test.image_root=", "data.num_workers=0", "model.num_classes=3", "model.mask_on=false",
        "model.backbone.depth=18", "model.backbone.weights=", "model.fpn.out_channels=16", "model.rpn.batch_size_per_image=32",
        "model.rpn.pre_nms_topk_train=50", "model.rpn.post_nms_topk_train=20", "model.box_head.fc_dim=16",
        "model.box_head.batch_size_per_image=16", "model.box_head.fed_loss_num_classes=2", "input.min_size_train=[48]",
        "input.max_size_train=64", "solver.ims_per_batch=2", "solver.reference_batch_size=2", "solver.steps=[]",
        "solver.warmup_iters=1", "solver.max_iter=2", "solver.checkpoint_period=2", "test.best_metric=bbox/AP",
        "model.backbone.norm=BN", "model.backbone.freeze_at=0",  # no weights: train all
    ]
    cfg = load_config("mask_rcnn_R_50_FPN_lvis_1x_fed", overrides)
    dataset = load_dataset(cfg.data.train, training=True, field="data.train", verbose=False)
    assert class_image_counts(dataset).tolist() == [3, 1, 3]  # the crowd region of b does not count
    run_training(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", map_location="cpu", weights_only=False)["model"]
    torch.testing.assert_close(state["roi_heads.box_predictor.fed_loss_cls_weights"], torch.tensor([3.0, 1.0, 3.0]) ** 0.5)


# --------------------------------------------------------------------- detectron2 yaml and weights
_D2_FPN = """MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE:
    NAME: build_resnet_fpn_backbone
  RESNETS:
    OUT_FEATURES: [res2, res3, res4, res5]
  FPN:
    IN_FEATURES: [res2, res3, res4, res5]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: [p2, p3, p4, p5, p6]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
    POST_NMS_TOPK_TRAIN: 1000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: {heads}
    IN_FEATURES: [p2, p3, p4, p5]
    NUM_CLASSES: 1203
  ROI_BOX_HEAD:
    NAME: FastRCNNConvFCHead
    NUM_FC: 2
    POOLER_RESOLUTION: 7
    CLS_AGNOSTIC_BBOX_REG: {agnostic}
{box_head}"""


def _d2_yaml(tmp_path: Path, box_head: str, heads: str = "StandardROIHeads") -> Path:
    path = tmp_path / "d2.yaml"
    path.write_text(_D2_FPN.format(heads=heads, agnostic=heads == "CascadeROIHeads", box_head=box_head))
    return path


def test_detectron2_yaml_maps_the_sigmoid_and_federated_losses(tmp_path):
    assert config_from_detectron2_yaml(_d2_yaml(tmp_path, "")).model.box_head.cls_loss == "softmax"
    bh = config_from_detectron2_yaml(_d2_yaml(tmp_path, "    USE_SIGMOID_CE: true\n")).model.box_head
    assert (bh.cls_loss, bh.fed_loss_num_classes, bh.fed_loss_freq_weight_power) == ("sigmoid", 50, 0.5)
    # FED_LOSS_* without USE_FED_LOSS change nothing in detectron2: ignored, not refused.
    ignored = "    USE_SIGMOID_CE: true\n    FED_LOSS_NUM_CLASSES: 20\n"
    assert config_from_detectron2_yaml(_d2_yaml(tmp_path, ignored)).model.box_head.fed_loss_num_classes == 50
    fed = ("    USE_SIGMOID_CE: true\n    USE_FED_LOSS: true\n    FED_LOSS_NUM_CLASSES: 40\n"
           "    FED_LOSS_FREQ_WEIGHT_POWER: 0.25\n")
    bh = config_from_detectron2_yaml(_d2_yaml(tmp_path, fed)).model.box_head
    assert (bh.cls_loss, bh.fed_loss_num_classes, bh.fed_loss_freq_weight_power) == ("federated", 40, 0.25)
    path = _d2_yaml(tmp_path, "    USE_FED_LOSS: true\n")
    with pytest.raises(ConfigError, match=r"d2\.yaml.*MODEL\.ROI_BOX_HEAD\.USE_FED_LOSS.*USE_SIGMOID_CE"):
        config_from_detectron2_yaml(path)
    path = _d2_yaml(tmp_path, "    USE_SIGMOID_CE: true\n", heads="CascadeROIHeads")
    with pytest.raises(ConfigError, match=r"d2\.yaml.*MODEL\.ROI_BOX_HEAD\.USE_SIGMOID_CE.*Cascade"):
        config_from_detectron2_yaml(path)


def test_a_detectron2_federated_checkpoint_converts():
    """detectron2 keeps the K + 1 scores (background last) and its fed_loss_cls_weights buffer (K,):
    converted, they load into swiftdet's federated predictor, background first."""
    cfg = _tiny("federated")
    model = build_model(cfg)
    own = model.state_dict()
    k, dim = 3, model.roi_heads.box_predictor.cls_score.in_features
    d2 = {
        "roi_heads.box_predictor.cls_score.weight": torch.randn(k + 1, dim),
        "roi_heads.box_predictor.cls_score.bias": torch.arange(k + 1.0),
        "roi_heads.box_predictor.bbox_pred.weight": torch.randn(4 * k, dim),
        "roi_heads.box_predictor.bbox_pred.bias": torch.randn(4 * k),
        "roi_heads.box_predictor.fed_loss_cls_weights": torch.tensor([9.0, 4.0, 1.0]) ** 0.5,
    }
    converted = convert_detectron2_state_dict(d2, cfg, "d2.pth")
    assert set(converted) <= set(own) and all(converted[key].shape == own[key].shape for key in converted)
    assert converted["roi_heads.box_predictor.cls_score.bias"].tolist() == [3.0, 0.0, 1.0, 2.0]
    model.load_state_dict(converted, strict=False)
    torch.testing.assert_close(model.roi_heads.box_predictor.fed_loss_cls_weights, torch.tensor([3.0, 2.0, 1.0]))
