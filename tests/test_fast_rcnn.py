"""Fast R-CNN on precomputed proposal files (model.proposal_generator=precomputed): the readers, the
proposals moving with the image, the model without an RPN fed through the real dataset, loader,
trainer and evaluator, the CLI's eval / predict / export, the config checks and the yaml mapping."""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from swiftdet.cli.main import main
from swiftdet.config.core import load_config, validate_config
from swiftdet.config.schema import Config, DatasetSpec
from swiftdet.data import build_test_loader, build_train_loader, load_dataset
from swiftdet.data.augment import LargeScaleJitter, RandomCrop
from swiftdet.data.proposals import batch_proposals, finish_proposals, image_proposals, read_proposal_file
from swiftdet.data.transforms import TrainTransform, augmentation_rng
from swiftdet.engine.evaluator import run_inference
from swiftdet.engine.run import run_training
from swiftdet.errors import ConfigError, DatasetError, InputError
from swiftdet.export.onnx import check_exportable
from swiftdet.model.build import build_model
from swiftdet.model.rcnn import padded_to_rois
from swiftdet.structures import Boxes, Instances
from test_rcnn_train import synthetic_batch, tiny_config

IDS = (11, 12)


def _write(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


def _tiny_dataset(tmp_path: Path) -> Path:
    """The two 96x120 synthetic images as PNG files and a COCO json (ids 11, 12; 3 categories)."""
    images, targets = synthetic_batch()
    root = tmp_path / "data"
    root.mkdir()
    entries, anns = [], []
    for image_id, img, t in zip(IDS, images, targets):
        name = f"{image_id}.png"
        Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy()).save(root / name)
        entries.append({"id": image_id, "file_name": name, "height": 96, "width": 120})
        for box, label in zip(t.boxes.tensor.tolist(), t.labels.tolist()):
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1, "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(("red", "green", "blue"))]
    (root / "train.json").write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return root


def _config(root: Path, proposals: Path | None, *, train: bool = False) -> Config:
    """A tiny R-CNN on the tiny dataset; Fast R-CNN when ``proposals`` is given. The test resize keeps
    the images at 96x120 (scale 1), so that proposals written from the RPN come back bit for bit."""
    cfg = load_config("faster_rcnn_R_50_FPN_1x", [])
    cfg.model = tiny_config("faster_rcnn_R_50_FPN_1x")
    cfg.model.box_head.score_thresh = 0.0  # random weights: keep detections, so the comparisons compare some
    cfg.model.proposal_generator = "precomputed" if proposals is not None else "rpn"
    spec = DatasetSpec(json=str(root / "train.json"), image_root=str(root), proposals=str(proposals or ""))
    cfg.data.test = spec
    cfg.data.train = DatasetSpec(**vars(spec)) if train else DatasetSpec()
    cfg.data.num_workers = 0
    cfg.input.min_size_test, cfg.input.max_size_test = 96, 1000
    cfg.input.min_size_train, cfg.input.max_size_train = (96,), 1000
    cfg.test.ims_per_batch = 2
    return validate_config(cfg)


# --------------------------------------------------------------------------- the readers
def test_read_detectron2_and_mmdetection_proposal_files(tmp_path):
    b7 = np.array([[0, 0, 10, 10], [5, 5, 50, 40], [20, 20, 20, 30], [90, 10, 130, 60]], np.float32)
    s7 = np.array([0.5, 2.0, 3.0, -1.0], np.float32)
    d2 = _write(tmp_path, "d2.pkl", {"ids": [9, 7, 4], "boxes": [np.zeros((0, 4)), b7, b7[:1]],
                                     "objectness_logits": [np.zeros(0), s7, s7[:1]], "bbox_mode": 0})
    props = read_proposal_file(d2, [7, 9])  # id 4 is not in this dataset: ignored
    assert props.format == "detectron2" and set(props.boxes) == {7, 9}
    assert props.scores[7].tolist() == [3.0, 2.0, 0.5, -1.0]  # ranked by score
    # Clipped to 100 x 100, the empty box (score 3.0) dropped, then the top 2.
    inst = finish_proposals(image_proposals(props, 7, (100, 100)), topk=2)
    assert inst.boxes.tensor.tolist() == [[5, 5, 50, 40], [0, 0, 10, 10]]
    assert inst.scores.tolist() == [2.0, 0.5]
    assert len(finish_proposals(image_proposals(props, 9, (100, 100)), topk=5)) == 0
    # XYWH and Detectron's old key names, string ids.
    old = _write(tmp_path, "old.pkl", {"indexes": ["7"], "boxes": [np.array([[5, 5, 45, 35]])],
                                       "scores": [np.array([1.0])], "bbox_mode": 1})
    assert read_proposal_file(old, [7]).boxes[7].tolist() == [[5, 5, 50, 40]]
    # mmdetection: a list of (N, 5) in the json's image order, which may list more images than the dataset kept.
    mm = _write(tmp_path, "mm.pkl", [np.zeros((0, 5)), np.concatenate([b7, s7[:, None]], 1)])
    props = read_proposal_file(mm, [7], json_order=lambda: [3, 7])
    assert props.format == "mmdetection" and props.boxes[7][0].tolist() == [20, 20, 20, 30]


def test_proposal_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="data.train.proposals: proposal file .*none.pkl' does not exist"):
        read_proposal_file(tmp_path / "none.pkl", [1], field="data.train.proposals")
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(DatasetError, match="not a readable pickle"):
        read_proposal_file(tmp_path / "text.pkl", [1])
    d2 = _write(tmp_path, "d2.pkl", {"ids": [1], "boxes": [np.zeros((2, 4))], "objectness_logits": [np.zeros(2)]})
    with pytest.raises(DatasetError, match=r"d2.pkl' has no proposals for 1 image id\(s\) of the dataset \(2\)"):
        read_proposal_file(d2, [1, 2])
    with pytest.raises(DatasetError, match="without \\['objectness_logits'\\]"):
        read_proposal_file(_write(tmp_path, "a.pkl", {"ids": [1], "boxes": [np.zeros((2, 4))]}), [1])
    with pytest.raises(DatasetError, match="bbox_mode 2"):
        read_proposal_file(_write(tmp_path, "b.pkl", {"ids": [1], "boxes": [np.zeros((2, 4))],
                                                      "objectness_logits": [np.zeros(2)], "bbox_mode": 2}), [1])
    with pytest.raises(DatasetError, match=r"expected \(N, 4\)"):
        read_proposal_file(_write(tmp_path, "c.pkl", {"ids": [1], "boxes": [np.zeros((2, 5))],
                                                      "objectness_logits": [np.zeros(2)]}), [1])
    with pytest.raises(DatasetError, match="list of 1 images but the dataset json lists 2"):
        read_proposal_file(_write(tmp_path, "m.pkl", [np.zeros((3, 5))]), [1, 2])
    with pytest.raises(DatasetError, match="holds a str"):
        read_proposal_file(_write(tmp_path, "s.pkl", "boxes"), [1])


# --------------------------------------------------------------------------- moving with the image
TRANSFORMS = {
    "resize_flip_crop_rotate": TrainTransform(min_sizes=(64, 128), max_size=1000, hflip_prob=0.5, rotate90_prob=0.5,
                                              random_crop=RandomCrop("relative_range", (0.5, 0.5))),
    "zoom_out_lsj_flip": TrainTransform(min_sizes=(96,), max_size=1000, hflip_prob=0.5, zoom_out_prob=0.5,
                                        zoom_out_max_scale=2.0, lsj=LargeScaleJitter((128, 128), (0.3, 2.0))),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("seed", range(4))
def test_proposals_move_like_the_boxes_through_the_train_transform(name, seed):
    """Proposals equal to the targets' boxes stay equal to them through the training transform."""
    transform = TRANSFORMS[name]
    boxes = torch.tensor([[10.0, 12, 60, 70], [70, 5, 115, 40], [30, 50, 90, 94]])
    image = torch.rand(3, 96, 120) * 255
    targets = Instances((96, 120), boxes=Boxes(boxes), labels=torch.tensor([0, 1, 2]))
    proposals = Instances((96, 120), boxes=Boxes(boxes.clone()), scores=torch.tensor([3.0, 2.0, 1.0]))
    out, moved_targets, moved = transform.with_proposals(image, targets, proposals, augmentation_rng(seed, 0))
    same, _ = transform(image, targets, augmentation_rng(seed, 0))
    assert torch.equal(out, same)  # the proposals do not change the image's draws
    moved = finish_proposals(moved, topk=10)
    assert moved.image_size == moved_targets.image_size == tuple(out.shape[1:])
    assert torch.equal(moved.boxes.tensor, moved_targets.boxes.tensor)
    assert moved.scores.tolist() == [s for s, k in zip([3.0, 2.0, 1.0], [0, 1, 2]) if k in moved_targets.labels.tolist()]


def test_test_loader_resizes_and_keeps_topk(tmp_path):
    root = _tiny_dataset(tmp_path)
    boxes = np.array([[10, 10, 50, 40], [0, 0, 130, 20], [40, 40, 40, 60]], np.float32)  # clipped, empty
    path = _write(tmp_path, "p.pkl", {"ids": list(IDS), "boxes": [boxes, boxes[:1]],
                                      "objectness_logits": [np.array([1.0, 2.0, 3.0]), np.array([0.0])]})
    cfg = _config(root, path)
    cfg.input.min_size_test = 192  # x2
    cfg.data.proposal_topk_test = 1
    dataset = load_dataset(cfg.data.test, training=False, field="data.test")
    [batch] = list(build_test_loader(cfg, dataset, batch_size=2))
    # Image 11: by score the empty box (dropped), the clipped one (kept, the top 1), the first.
    assert batch[0].proposals.boxes.tensor.tolist() == [[0, 0, 240, 40]]
    assert batch[0].proposals.scores.tolist() == [2.0]
    padded, counts = batch_proposals(batch)
    assert padded.shape == (2, 1, 4) and counts.tolist() == [1, 1]
    assert padded[1].tolist() == [[20, 20, 100, 80]]


def test_padded_proposals_to_rois():
    boxes = torch.tensor([[[1.0, 2, 3, 4], [5, 6, 7, 8]], [[0, 0, 0, 0], [0, 0, 0, 0]], [[9, 9, 19, 19], [0, 0, 0, 0]]])
    rois = padded_to_rois(boxes, torch.tensor([2, 0, 1]))
    assert rois.tolist() == [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [2, 9, 9, 19, 19]]


def test_core_with_proposals_traces_and_replays_for_other_counts():
    """The proposals are tensor inputs of the core: a trace recorded with some counts replays others."""
    torch.manual_seed(0)
    cfg = tiny_config("faster_rcnn_R_50_FPN_1x")
    cfg.proposal_generator, cfg.box_head.score_thresh = "precomputed", 0.0
    model = build_model(cfg).eval()

    class Core(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x, sizes, boxes, counts):
            return self.model.core(x, sizes, (boxes, counts))

    images, _ = synthetic_batch()
    batch = model.preprocess(images)
    sizes = torch.tensor(batch.image_sizes).reshape(-1, 2)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 8 + torch.rand(2, 30, 2, generator=g) * 40], dim=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes it records
        traced = torch.jit.trace(Core(), (batch.tensor, sizes, boxes, torch.tensor([30, 20])), check_trace=False,
                                 strict=False)
    with torch.no_grad():
        for counts in ([12, 30], [5, 0]):
            eager = model.core(batch.tensor, sizes, (boxes, torch.tensor(counts)))
            replay = traced(batch.tensor, sizes, boxes, torch.tensor(counts))
            assert replay["num_detections"].tolist() == eager["num_detections"].tolist()
            torch.testing.assert_close(replay["boxes"], eager["boxes"], atol=1e-4, rtol=0)
            torch.testing.assert_close(replay["scores"], eager["scores"])
        assert eager["num_detections"].tolist()[1] == 0  # an image without proposals has no detections


# --------------------------------------------------------------------------- the wiring
def test_fast_rcnn_on_the_rpns_proposals_equals_faster_rcnn(tmp_path):
    """A Faster R-CNN's RPN proposals written to a detectron2 proposal file, then the Fast R-CNN with
    the same weights less the RPN's reading that file through the dataset, loader and run_inference:
    exactly the Faster R-CNN's detections."""
    root = _tiny_dataset(tmp_path)
    torch.manual_seed(0)
    full_cfg = _config(root, None)
    full = build_model(full_cfg.model).eval()
    test_set = load_dataset(full_cfg.data.test, training=False, field="data.test")
    [batch] = list(build_test_loader(full_cfg, test_set, batch_size=2))
    with torch.no_grad():
        images = full.preprocess([s.image for s in batch])
        sizes = torch.tensor(images.image_sizes).reshape(-1, 2)
        (boxes, scores), _ = full.rpn(images.tensor, sizes, full.extract_features(images.tensor), with_scores=True)
    assert all(len(b) > 10 for b in boxes)
    path = _write(tmp_path, "box_proposals.pkl", {"ids": [s.image_id for s in batch], "boxes": [b.numpy() for b in boxes],
                                                   "objectness_logits": [s.numpy() for s in scores], "bbox_mode": 0})
    fast_cfg = _config(root, path)
    fast = build_model(fast_cfg.model).eval()
    assert fast.rpn is None
    # strict: the Fast R-CNN has exactly the Faster R-CNN's weights less the RPN's
    fast.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("rpn.")})
    fast_set = load_dataset(fast_cfg.data.test, training=False, field="data.test")
    [fast_batch] = list(build_test_loader(fast_cfg, fast_set, batch_size=2))
    assert [torch.equal(s.proposals.boxes.tensor, b) for s, b in zip(fast_batch, boxes)] == [True, True]
    convert = lambda inst, sample: inst  # noqa: E731 - the Instances themselves
    expected = run_inference(full, build_test_loader(full_cfg, test_set, batch_size=2), (), convert=convert)
    got = run_inference(fast, build_test_loader(fast_cfg, fast_set, batch_size=2), (), convert=convert)
    assert set(got) == set(IDS) and all(len(expected[i]) > 0 for i in IDS)
    for i in IDS:
        assert torch.equal(got[i].boxes.tensor, expected[i].boxes.tensor)
        assert torch.equal(got[i].scores, expected[i].scores) and torch.equal(got[i].labels, expected[i].labels)
    # The proposals are the core's input, not state: without them the model says what it needs.
    with pytest.raises(InputError, match="has no RPN: it needs each image's proposals"):
        fast.predict([s.image for s in fast_batch])
    with pytest.raises(InputError, match="makes its own proposals"):
        full(images, proposals=batch_proposals(fast_batch))


def test_fast_rcnn_losses_fall(tmp_path):
    """Training on given proposals: the box head's losses only, finite, falling."""
    torch.manual_seed(0)
    cfg = tiny_config("faster_rcnn_R_50_FPN_1x")
    cfg.proposal_generator = "precomputed"
    cfg.backbone.freeze_at = 5  # the heads learn; a frozen trunk keeps the test quick
    model = build_model(cfg).train()
    images, targets = synthetic_batch()
    batch = model.preprocess(images)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 40, 2, generator=g) * torch.tensor([90.0, 70.0])
    wh = 8 + torch.rand(2, 40, 2, generator=g) * 50
    proposals = (torch.cat([xy, xy + wh], dim=2), torch.tensor([40, 25]))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    totals = []
    for _ in range(15):
        losses = model(batch, targets, proposals=proposals)
        assert set(losses) == {"loss_cls", "loss_box"}
        assert all(torch.isfinite(v) for v in losses.values())
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        totals.append(float(sum(losses.values()).detach()))
    assert np.mean(totals[-3:]) < 0.7 * np.mean(totals[:3]), totals


def test_train_then_eval_through_the_cli(tmp_path, capsys):
    """2 iterations through the real Trainer (the loader's proposals into the model), then
    `swiftdet eval` on its saved config and weights; `predict` and `export` refuse the model."""
    root = _tiny_dataset(tmp_path)
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 70, (2, 30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 50, (2, 30, 2))], axis=2).astype(np.float32)
    path = _write(tmp_path, "props.pkl", {"ids": list(IDS), "boxes": list(boxes), "objectness_logits": list(rng.random((2, 30)))})
    cfg = _config(root, path, train=True)
    cfg.model.backbone.norm, cfg.model.backbone.freeze_at = "BN", 0  # random weights: a trainable backbone
    cfg.solver.max_iter, cfg.solver.warmup_iters, cfg.solver.ims_per_batch = 2, 1, 2
    cfg.solver.reference_batch_size, cfg.solver.log_period, cfg.solver.steps = 2, 1, ()
    out = tmp_path / "run"
    metrics = run_training(validate_config(cfg), out)
    assert "bbox/AP" in metrics
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert [r["iter"] for r in train] == [1, 2]
    assert {"loss_cls", "loss_box"} <= set(train[0]) and not any(k.startswith("loss_rpn") for k in train[0])
    assert all(np.isfinite(r["loss"]) for r in train)

    config_yaml, weights = str(out / "config.yaml"), str(out / "checkpoints" / "last.pth")
    assert main(["eval", config_yaml, "--weights", weights, "--output", str(tmp_path / "eval")]) == 0
    [again] = [json.loads(line) for line in (tmp_path / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert again["bbox/AP"] == pytest.approx(metrics["bbox/AP"])
    capsys.readouterr()
    assert main(["predict", "--config", config_yaml, "--weights", weights, "--input", str(root / "11.png"),
                 "--output", str(tmp_path / "pred")]) == 2
    assert "predict cannot run a Fast R-CNN" in capsys.readouterr().err
    assert main(["export", config_yaml, "--weights", weights, "--output", str(tmp_path / "m.onnx")]) == 2
    assert "Exporting a Fast R-CNN" in capsys.readouterr().err


# --------------------------------------------------------------------------- the config
def test_config_checks(tmp_path):
    root = _tiny_dataset(tmp_path)
    path = _write(tmp_path, "p.pkl", {"ids": [11], "boxes": [np.zeros((1, 4))], "objectness_logits": [np.zeros(1)]})
    cfg = _config(root, path)
    with pytest.raises(ConfigError, match="Exporting a Fast R-CNN"):
        check_exportable(cfg)
    # An RPN model given proposals: a file nothing would read.
    cfg.model.proposal_generator = "rpn"
    with pytest.raises(ConfigError, match="data.test.proposals is set but model.proposal_generator is 'rpn'"):
        validate_config(cfg)
    cfg = _config(root, None)
    cfg.data.proposal_topk_test = 10
    with pytest.raises(ConfigError, match="data.proposal_topk_test is read by a Fast R-CNN"):
        validate_config(cfg)
    # A Fast R-CNN evaluating on a dataset without its proposals.
    cfg = _config(root, path)
    cfg.data.test.proposals = ""
    with pytest.raises(ConfigError, match="set data.test.proposals to the proposal file"):
        validate_config(cfg)
    cfg = _config(root, path)
    cfg.model.cascade.num_stages = 3
    with pytest.raises(ConfigError, match="needs arch 'rcnn' without model.cascade"):
        validate_config(cfg)
    cfg = _config(root, path)
    cfg.test.aug.enabled = True
    with pytest.raises(ConfigError, match="test.aug.enabled=true with model.proposal_generator=precomputed"):
        validate_config(cfg)
    with pytest.raises(ConfigError, match="coco and lvis datasets only, not format 'voc'"):
        DatasetSpec(format="voc", roots=("x",), split="test", proposals=str(path)).validate()
    # The file lacks image 12: named when the dataset loads.
    with pytest.raises(DatasetError, match=r"data.test.proposals '.*p.pkl' has no proposals .*\(12\)"):
        load_dataset(_config(root, path).data.test, training=False, field="data.test")
    # Augmentations that cannot move proposals are refused when the train loader is built.
    path = _write(tmp_path, "q.pkl", {"ids": list(IDS), "boxes": [np.zeros((1, 4))] * 2, "objectness_logits": [np.zeros(1)] * 2})
    for key, value in (("mosaic", "prob"), ("copy_paste", "prob"), ("crop", "keep_instances")):
        cfg = _config(root, path, train=True)
        setattr(getattr(cfg.input, key), value, 0.5 if value == "prob" else True)
        if key == "crop":
            cfg.input.crop.type, cfg.input.crop.size = "relative_range", (0.5, 0.5)
        train_set = load_dataset(cfg.data.train, training=True, field="data.train")
        with pytest.raises(ConfigError, match=f"input.{key}.{value}: this augmentation cannot move the precomputed"):
            build_train_loader(validate_config(cfg), train_set, batch_size=2)


def test_named_config():
    cfg = load_config("d2_fast_rcnn_R_50_FPN_1x", [])
    assert cfg.model.proposal_generator == "precomputed" and cfg.model.convention == "detectron2"
    assert (cfg.data.proposal_topk_train, cfg.data.proposal_topk_test) == (2000, 1000)
    assert cfg.data.test.proposals.endswith("coco_2017_val_box_proposals_ee0dad.pkl")
    assert build_model(cfg.model).rpn is None
