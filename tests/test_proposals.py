"""RPN-only models (model.arch='rpn') and detectron2's proposal AR (swiftdet.evaluation.proposals)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from swiftdet.config.core import load_config
from swiftdet.engine.evaluator import evaluate_model
from swiftdet.engine.trainer import check_best_metric
from swiftdet.errors import ConfigError, EvaluationError
from swiftdet.evaluation.proposals import evaluate_box_proposals, proposal_metric_names, proposal_recall
from swiftdet.model.build import build_model
from swiftdet.model.proposal_network import ProposalNetwork
from swiftdet.structures import Boxes, Instances

TINY = ["model.backbone.depth=18", "model.fpn.out_channels=16", "model.num_classes=3"]


# --------------------------------------------------------------------------- independent AR
def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def _reference_ar(gt: dict, proposals: dict, lo: float, hi: float, limit: int) -> float:
    """Greedy one-to-one coverage by sorting all pairs (the highest unused pair first), in float64 Python."""
    covered, num_pos = [], 0
    for image_id, (boxes, scores) in proposals.items():
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        if not anns or not len(boxes):
            continue
        anns = [a for a in anns if lo <= a["area"] <= hi]
        num_pos += len(anns)
        order = sorted(range(len(boxes)), key=lambda i: -scores[i])[:limit]
        gts = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        pairs = sorted(((_iou(boxes[p], g), n, j) for n, p in enumerate(order) for j, g in enumerate(gts)), reverse=True)
        used_p, best = set(), {}
        for iou, p, j in pairs:
            if p not in used_p and j not in best:
                used_p.add(p)
                best[j] = iou
        covered += [best.get(j, 0.0) for j in range(len(gts))]
    if num_pos == 0:
        return -1.0
    thresholds = [0.5 + 0.05 * i for i in range(10)]
    return float(np.mean([sum(c >= t for c in covered) / num_pos for t in thresholds]))


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    images, anns, proposals = [], [], {}
    for image_id in (3, 7, 9, 12):
        images.append({"id": image_id, "height": 300, "width": 300, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 6))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(4, 140, 2)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h],
                         "area": float(w * h * rng.uniform(0.5, 1.0)), "iscrowd": int(rng.random() < 0.15)})
        if image_id == 12:
            continue  # an image the model gave nothing for
        n = int(rng.integers(5, 40))
        xy = rng.uniform(0, 220, (n, 2))
        wh = rng.uniform(2, 150, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        # Jittered copies of this image's ground truth, so coverages spread over the IoU thresholds.
        near = [[x + dx, y + dy, x + w + dw, y + h + dh] for a in anns if a["image_id"] == image_id
                for (x, y, w, h) in [a["bbox"]] for dx, dy, dw, dh in rng.normal(0, 0.08 * min(w, h), (3, 4))]
        boxes = np.concatenate([boxes, np.array(near).reshape(-1, 4)]).astype(np.float32)
        proposals[image_id] = (boxes, rng.normal(size=len(boxes)).astype(np.float32))
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    return gt, proposals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ar_equals_independent_computation(seed):
    gt, proposals = _random_case(seed)
    # The reference works in float64 on the float32 boxes the evaluation sees.
    ref_props = {k: (b.astype(np.float64).tolist(), s.tolist()) for k, (b, s) in proposals.items()}
    got = evaluate_box_proposals(gt, proposals, limits=(10, 1000))
    assert list(got) == proposal_metric_names((10, 1000))
    ranges = {"": (0, 1e10), "s": (0, 32 ** 2), "m": (32 ** 2, 96 ** 2), "l": (96 ** 2, 1e10)}
    for limit in (10, 1000):
        for suffix, (lo, hi) in ranges.items():
            want = _reference_ar(gt, ref_props, lo, hi, limit)
            assert got[f"AR{suffix}@{limit}"] == pytest.approx(want, abs=1e-6), (suffix, limit)
    assert any(0 < v < 1 for v in got.values())  # a case that tells right from wrong


def test_hand_checked_recall():
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "area": 100.0, "iscrowd": 0},
              {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 300, 300], "area": 9e4, "iscrowd": 1},
              {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0}]}
    # Image 1: a proposal of IoU 0.62 with gt 1 (passes 0.50, 0.55, 0.60) and one exactly on gt 2
    # which also overlaps gt 1 less: one-to-one, so gt 1 keeps 0.62. Image 2 has no proposals: not counted.
    boxes = np.array([[50, 50, 60, 60], [0, 0, 10, 6.2]], np.float32)
    r = proposal_recall(gt, {1: (boxes, np.array([0.9, 0.1])), 2: (np.zeros((0, 4)), np.zeros(0))})
    assert r.num_pos == 2
    assert r.gt_overlaps.tolist() == pytest.approx([0.62, 1.0], abs=1e-6)
    assert r.ar == pytest.approx((3 + 10) / 20, abs=1e-6)
    # The limit keeps the best-scored: only the exact box.
    assert proposal_recall(gt, {1: (boxes, np.array([0.9, 0.1]))}, limit=1).ar == pytest.approx(0.5)
    # With lower score the exact box falls outside the limit.
    assert proposal_recall(gt, {1: (boxes, np.array([0.1, 0.9]))}, limit=1).ar == pytest.approx(0.15)
    # No gt in a range: -1 (detectron2: NaN).
    assert evaluate_box_proposals(gt, {1: (boxes, np.ones(2))})["ARl@1000"] == -1.0
    with pytest.raises(EvaluationError, match="not in the ground truth"):
        evaluate_box_proposals(gt, {5: (boxes, np.ones(2))})
    with pytest.raises(EvaluationError, match="boxes but"):
        evaluate_box_proposals(gt, {1: (boxes, np.ones(3))})


def _tiny_coco_gt_proposals(tiny_coco):
    gt = json.loads((tiny_coco / "annotations" / "instances_val.json").read_text())
    props: dict[int, list] = {img["id"]: [] for img in gt["images"]}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        props[a["image_id"]].append([x, y, x + w, y + h])
    return gt, {k: (np.array(v, np.float32).reshape(-1, 4), -np.arange(len(v), dtype=np.float32)) for k, v in props.items()}


def test_ground_truth_as_proposals_gives_ar_one(tiny_coco):
    gt, props = _tiny_coco_gt_proposals(tiny_coco)
    metrics = evaluate_box_proposals(tiny_coco / "annotations" / "instances_val.json", props)
    for name, value in metrics.items():
        assert value == pytest.approx(1.0) or value == -1.0, name
    assert metrics["AR@100"] == pytest.approx(1.0)
    # Dropping every other image's proposals drops nothing from the recall (those images are skipped) ...
    half = {k: v for n, (k, v) in enumerate(sorted(props.items())) if n % 2 == 0}
    assert evaluate_box_proposals(gt, half)["AR@1000"] == pytest.approx(1.0)
    # ... but a box moved by half its width covers its gt by IoU 1/3 < 0.5.
    moved = {k: (b + np.stack([(b[:, 2] - b[:, 0]) / 2, 0 * b[:, 0]] * 2, 1), s) for k, (b, s) in props.items()}
    assert evaluate_box_proposals(gt, moved)["AR@1000"] < 0.05


# --------------------------------------------------------------------------- the model
def _model(extra=()):
    cfg = load_config("rpn_R_50_FPN_1x", TINY + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # spread objectness so the ranking is not a tie
        model.rpn.head.objectness_logits.weight.normal_(0, 0.5)
        model.rpn.head.anchor_deltas.weight.normal_(0, 0.05)
    return cfg, model


@pytest.mark.parametrize("name, convention", [("rpn_R_50_FPN_1x", "torchvision"), ("d2_rpn_R_50_FPN_1x", "detectron2")])
def test_named_rpn_configs(name, convention):
    cfg = load_config(name)
    assert cfg.model.arch == "rpn" and cfg.model.convention == convention
    assert cfg.model.rpn.post_nms_topk_test == 2000  # detectron2's rpn_R_50_FPN_1x.yaml
    check_best_metric(cfg)
    cfg.test.best_metric = "bbox/AP"
    with pytest.raises(ConfigError, match="box_proposals/AR@1000"):
        check_best_metric(cfg)


def test_proposal_network_outputs_and_losses():
    cfg, model = _model(["model.rpn.post_nms_topk_test=300"])
    assert isinstance(model, ProposalNetwork)
    assert not any(k.startswith("roi_heads") for k in model.state_dict())
    images = [torch.rand(3, 160, 224) * 255, torch.rand(3, 192, 128) * 255]
    out = model.predict(images)
    for r, img in zip(out, images):
        assert 0 < len(r) <= 300
        assert (r.labels == 0).all()
        assert (r.scores[:-1] >= r.scores[1:]).all()
        b = r.boxes.tensor
        assert (b[:, 2] <= img.shape[2]).all() and (b[:, 3] <= img.shape[1]).all() and (b >= 0).all()
    # The scores are the RPN's own ranking scores of those boxes.
    model.eval()
    with torch.no_grad():
        batch = model.preprocess(images)
        sizes = torch.tensor(batch.image_sizes).reshape(-1, 2)
        feats = model.fpn(model.backbone(batch.tensor))
        (boxes, scores), _ = model.rpn(batch.tensor, sizes, feats, with_scores=True)
        raw = model(batch)
    for r, b, s in zip(raw, boxes, scores):
        torch.testing.assert_close(r.boxes.tensor, b)
        torch.testing.assert_close(r.scores, s)
    model.train()
    targets = [Instances((160, 224), boxes=Boxes(torch.tensor([[10.0, 20, 90, 120]])), labels=torch.tensor([2])),
               Instances((192, 128), boxes=Boxes(torch.tensor([[5.0, 5, 60, 50]])), labels=torch.tensor([0]))]
    losses = model(model.preprocess(images), targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_score_threshold_applies_in_both_conventions():
    """The predictor's --score-thresh (a probability) filters an RPN-only model's proposals also in
    detectron2's convention, whose scores are logits."""
    images = [torch.rand(3, 160, 224) * 255]
    for convention in ("torchvision", "detectron2"):
        _, model = _model([f"model.convention={convention}"])
        model.eval()
        everything = model.predict(images)[0]
        model.score_thresh = 0.6
        kept = model.predict(images)[0]
        probs = everything.scores.sigmoid() if convention == "detectron2" else everything.scores
        assert 0 < len(kept) < len(everything)
        assert len(kept) <= int((probs >= 0.6).sum())  # NMS runs on the kept ones: never more
        got = kept.scores.sigmoid() if convention == "detectron2" else kept.scores
        assert (got >= 0.6).all()


def test_traced_core_equals_eager():
    """A trace recorded on one batch replays another of the same padded size as eager mode gives it."""
    _, model = _model(["model.rpn.post_nms_topk_test=200"])
    model.eval()
    keys = ("boxes", "scores", "labels", "num_detections")

    class Core(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, sizes):
            raw = self.m.core(x, sizes)
            return tuple(raw[k] for k in keys)

    def batch(shapes):
        b = model.preprocess([torch.rand(3, h, w) * 255 for h, w in shapes])
        return b.tensor, torch.tensor(b.image_sizes).reshape(-1, 2)

    torch.manual_seed(1)
    first, second = batch([(160, 224), (150, 200)]), batch([(140, 220), (160, 190)])
    assert first[0].shape == second[0].shape
    with torch.no_grad():
        traced = torch.jit.trace(Core(model), first, check_trace=False)
        eager = model.core(*second)
        replay = traced(*second)
    assert eager["num_detections"].tolist() != [0, 0]
    for key, value in zip(keys, replay):
        torch.testing.assert_close(value, eager[key])


def test_eval_dispatches_to_proposal_ar(tiny_coco):
    """evaluate_model on an RPN-only model reports box_proposals/AR@...: here the proposals are the ground truth."""
    gt_path = tiny_coco / "annotations" / "instances_val.json"
    gt, props = _tiny_coco_gt_proposals(tiny_coco)
    _, model = _model()
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}

    def predict(images, original_sizes):  # the ground truth in place of the network's output
        return [Instances(tuple(s), boxes=Boxes(torch.as_tensor(props[i][0])), scores=torch.as_tensor(props[i][1]),
                          labels=torch.zeros(len(props[i][0]), dtype=torch.int64))
                for i, s in zip(images, original_sizes)]

    model.predict = predict
    loader = [[SimpleNamespace(image=i, image_id=i, original_size=sizes[i])] for i in sorted(props)]
    metrics = evaluate_model(model, loader, gt_path, [1], mask_on=False, prefix="x/")
    assert set(metrics) == {f"x/box_proposals/{n}" for n in proposal_metric_names()}
    assert metrics["x/box_proposals/AR@100"] == pytest.approx(1.0)
