"""The detector contract of docs/architecture.md, for every architecture: ``core`` maps tensors to
raw detection tensors of the documented shapes, and has no data-dependent Python control flow, so a
trace recorded on one batch gives the eager results on another batch of the same padded size."""
from __future__ import annotations

import warnings

import pytest
import torch

from swiftdet.config.core import load_config
from swiftdet.model.build import build_model

TINY = ["model.backbone.depth=18", "model.num_classes=3", "model.fpn.out_channels=32"]
MODELS = {
    "mask_rcnn_R_50_FPN_1x": [*TINY, "model.box_head.fc_dim=64", "model.mask_head.conv_dim=16",
                              "model.rpn.post_nms_topk_test=100", "model.box_head.detections_per_image=500"],
    "keypoint_rcnn_R_50_FPN_1x": [*TINY, "model.box_head.fc_dim=64", "model.keypoint_head.conv_dim=16",
                                  # Fewer proposals than the mask model: keypoints are decoded box by box.
                                  "model.keypoint_head.num_convs=2",
                                  "model.rpn.post_nms_topk_test=30", "model.box_head.detections_per_image=500"],
    "retinanet_R_50_FPN_1x": [*TINY, "model.retinanet.detections_per_image=2000"],
    "fcos_R_50_FPN_1x": [*TINY, "model.fcos.detections_per_image=2000"],
    # SSD (the SSDlite layout: VGG's unpadded 3x3 extra layers need at least 300 pixels).
    "ssdlite320_MV3": ["model.num_classes=3", "model.ssd.detections_per_image=2000"],
}
PADDED = (128, 160)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(load_config(name, MODELS[name]).model).eval()
    model.score_thresh = 0.0  # random weights score low: keep every candidate, many per image
    with torch.no_grad():
        for key, param in model.named_parameters():
            # The dense heads start from near-zero weights and one prior bias, so every candidate
            # would score ~0.01 and ties would decide the order; spread the scores.
            if key.startswith("head.cls_score"):
                param.normal_(0.0, 0.5)
    return model


def _batch(seed: int, sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(sizes), 3, *PADDED)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=g) * (1 + seed)
    return images, torch.tensor(sizes, dtype=torch.int64)


def _check_raw(raw: dict[str, torch.Tensor], sizes: torch.Tensor, num_classes: int, mask: bool, keypoints: int = 0) -> None:
    n = raw["boxes"].shape[0]
    assert raw["boxes"].shape == (n, 4) and raw["boxes"].dtype == torch.float32
    assert raw["scores"].shape == (n,) and raw["labels"].shape == (n,) and raw["labels"].dtype == torch.int64
    assert raw["num_detections"].shape == (len(sizes),) and int(raw["num_detections"].sum()) == n
    assert bool((raw["labels"] >= 0).all()) and bool((raw["labels"] < num_classes).all())
    start = 0
    for (h, w), count in zip(sizes.tolist(), raw["num_detections"].tolist()):
        boxes, scores = raw["boxes"][start:start + count], raw["scores"][start:start + count]
        assert bool((boxes[:, 0::2] <= w).all()) and bool((boxes[:, 1::2] <= h).all()) and bool((boxes >= 0).all())
        assert bool((scores[:-1] >= scores[1:]).all()), "each image's detections by decreasing score"
        start += count
    if mask:
        m = raw["mask_probs"]
        assert m.dim() == 3 and m.shape[0] == n and m.shape[1] == m.shape[2]
        assert bool((m >= 0).all()) and bool((m <= 1).all())
    else:
        assert "mask_probs" not in raw
    if keypoints:
        kp, start = raw["keypoints"], 0
        assert kp.shape == (n, keypoints, 3) and kp.dtype == torch.float32
        for count in raw["num_detections"].tolist():
            # Each keypoint lies inside its detection's box (torchvision's decoding: cell centres of the box).
            boxes, points = raw["boxes"][start:start + count, None], kp[start:start + count]
            assert bool((points[..., 0] >= boxes[..., 0]).all()) and bool((points[..., 1] >= boxes[..., 1]).all())
            assert bool((points[..., 0] <= boxes[..., 0] + (boxes[..., 2] - boxes[..., 0]).clamp(min=1)).all())
            start += count
    else:
        assert "keypoints" not in raw


@pytest.mark.parametrize("name", list(MODELS))
def test_core_outputs_the_documented_raw_tensors(name):
    model = _model(name)
    images, sizes = _batch(0, [(128, 150), (100, 160)])
    with torch.no_grad():
        raw = model.core(images, sizes)
    _check_raw(raw, sizes, model.num_classes, mask=name.startswith("mask"),
               keypoints=model.roi_heads.keypoint_head.num_keypoints if name.startswith("keypoint") else 0)
    assert int(raw["num_detections"].min()) > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_core_traced_on_one_batch_gives_eager_results_on_another(name):
    model = _model(name)
    first = _batch(0, [(128, 150), (100, 160)])
    second = _batch(1, [(120, 160), (128, 96)])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-only constants (anchors per padded size)
        traced = torch.jit.trace_module(model, {"core": first}, check_trace=False, strict=False)
        eager, replay = model.core(*second), traced.core(*second)
        first_counts = model.core(*first)["num_detections"]
    assert not torch.equal(first_counts, eager["num_detections"]), "the batches should keep different counts"
    assert set(replay) == set(eager)
    assert torch.equal(replay["num_detections"], eager["num_detections"])
    replay, eager = _canonical(replay), _canonical(eager)
    assert torch.equal(replay["labels"], eager["labels"])
    for key in set(eager) - {"num_detections", "labels"}:
        torch.testing.assert_close(replay[key], eager[key], rtol=1e-5, atol=1e-4)


def _canonical(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detections in one order that ties of equal scores cannot change: by image, decreasing
    score, label, then box."""
    image = torch.repeat_interleave(torch.arange(len(raw["num_detections"])), raw["num_detections"])
    order = torch.arange(len(image))
    boxes = raw["boxes"]
    for key in (boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], raw["labels"], -raw["scores"], image):
        order = order[key[order].argsort(stable=True)]
    return {k: (v if k == "num_detections" else v[order]) for k, v in raw.items()}


def test_dense_candidate_selection_traces_without_baking_in_its_shortcuts():
    """topk_above_threshold's eager shortcuts (k best of one row by a top-k; none above the
    threshold) depend on the values; a trace must not bake in the first input's choice."""
    from swiftdet.model.dense_head import topk_above_threshold

    def select(values):
        return topk_above_threshold(values, 0.5, 4)

    many = torch.linspace(0.0, 1.0, 20)[None]  # 9 above 0.5: the shortcut's case
    few = torch.tensor([[0.9, 0.1, 0.7, 0.2, 0.3, 0.1, 0.0, 0.2, 0.1, 0.4, 0.1, 0.2, 0.3, 0.4, 0.2, 0.1, 0.3, 0.0, 0.1, 0.2]])
    none = torch.zeros(1, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(select, (many,), check_trace=False, strict=False)
    for values in (many, few, none):
        rows, cols = select(values)
        t_rows, t_cols = traced(values)
        assert torch.equal(t_rows, rows)
        assert sorted(t_cols.tolist()) == sorted(cols.tolist())  # the same entries (order: by value)
    assert sorted(traced(few)[1].tolist()) == [0, 2]
