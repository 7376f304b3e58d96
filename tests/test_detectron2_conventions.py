"""model.convention="detectron2": each place whose numerics differ from torchvision's, against an
independent transcription of detectron2's formula (its ``find_top_rpn_proposals``,
``assign_boxes_to_levels``, ``fast_rcnn_inference``, ``detector_postprocess``, ``_do_paste_mask`` and
``heatmaps_to_keypoints``) on small seeded inputs. The fixture comparison is
tests/test_detectron2_fixtures.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from swiftdet.config.schema import ModelConfig
from swiftdet.model.anchors import AnchorGenerator
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.detector import Detector
from swiftdet.model.keypoint_head import heatmaps_to_keypoints
from swiftdet.model.matcher import BalancedPositiveNegativeSampler, Matcher
from swiftdet.model.postprocess import paste_masks_cropped_detectron2, postprocess_instances
from swiftdet.model.rcnn import build_rcnn
from swiftdet.model.roi_heads import MultiScaleRoIPooler
from swiftdet.model.rpn import RPN, RPNHead
from swiftdet.structures import Boxes, Instances


class _Shell(Detector):
    score_thresh = 0.05

    def core(self, images, image_sizes):  # pragma: no cover - not called
        raise AssertionError

    def losses(self, images, targets):  # pragma: no cover - not called
        raise AssertionError


def test_normalize_is_detectron2s():
    mean, std = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
    shell = _Shell(num_classes=1, pixel_mean=mean, pixel_std=std, input_format="BGR", convention="detectron2")
    rgb = torch.randint(0, 256, (3, 7, 9)).float()
    bgr = rgb.flip(0)
    expected = (bgr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.equal(shell.normalize(rgb), expected)
    tv = _Shell(num_classes=1, pixel_mean=mean, pixel_std=std, input_format="BGR")
    assert not torch.equal(tv.normalize(rgb), expected)  # torchvision's 0-1 arithmetic rounds differently


def _d2_top_proposals(proposals, logits, image_size, nms_thresh, pre, post, min_size):
    """detectron2's find_top_rpn_proposals for one image; proposals/logits: per level (A_l, 4) / (A_l,)."""
    boxes, scores, lvl = [], [], []
    for level, (p, lg) in enumerate(zip(proposals, logits)):
        s, idx = lg.topk(min(pre, lg.numel()))
        boxes.append(p[idx])
        scores.append(s)
        lvl.append(torch.full((len(idx),), level))
    boxes, scores, lvl = torch.cat(boxes), torch.cat(scores), torch.cat(lvl)
    h, w = image_size
    boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
    keep = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    keep = batched_nms(boxes, scores, lvl, nms_thresh)[:post]
    return boxes[keep], scores[keep]


def _rpn(convention):
    torch.manual_seed(0)
    strides = [4, 8]
    anchors = AnchorGenerator([(16.0,), (32.0,)], (0.5, 1.0, 2.0), convention=convention, strides=strides,
                              offset=0.0)
    head = RPNHead(8, 3)
    for m in head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.3)
            torch.nn.init.normal_(m.bias, std=0.5)
    torch.nn.init.constant_(head.objectness_logits.bias, -2.5)  # many negative logits
    return RPN(("p2", "p3"), head, anchors, BoxCoder((1.0, 1.0, 1.0, 1.0)), Matcher(0.7, 0.3, True),
               BalancedPositiveNegativeSampler(256, 0.5), pre_nms_topk=(50, 50), post_nms_topk=(40, 40),
               nms_thresh=0.7, min_box_size=0.0, convention=convention).eval()


def test_rpn_selection_is_find_top_rpn_proposals():
    rpn = _rpn("detectron2")
    images = torch.zeros(2, 3, 64, 96)
    sizes = torch.tensor([[64, 96], [50, 70]])
    feats = {"p2": torch.randn(2, 8, 16, 24), "p3": torch.randn(2, 8, 8, 12)}
    with torch.no_grad():
        (boxes, scores), _ = rpn(images, sizes, feats, with_scores=True)
        logits, deltas = rpn.head([feats["p2"], feats["p3"]])
        anchors = rpn.anchor_generator(images, [feats["p2"], feats["p3"]])
        counts = [lg[0].numel() for lg in logits]
        for i in range(2):
            # Independent flattening: (A, H, W) -> location-major, anchor within a location.
            flat_lg = [lg[i].permute(1, 2, 0).reshape(-1) for lg in logits]
            flat_dl = [dl[i].view(3, 4, *dl.shape[2:]).permute(2, 3, 0, 1).reshape(-1, 4) for dl in deltas]
            props = [rpn.box_coder.decode(d, a) for d, a in zip(flat_dl, anchors.split(counts))]
            ref_boxes, ref_scores = _d2_top_proposals(props, flat_lg, sizes[i].tolist(), 0.7, 50, 40, 0.0)
            assert torch.equal(boxes[i], ref_boxes)
            assert torch.equal(scores[i], ref_scores)  # logits, not probabilities
            assert bool((scores[i] < 0).any())  # no score threshold on logits

        # The traced path (export) selects the same proposals.
        def run(img, s, p2, p3):
            return rpn(img, s, {"p2": p2, "p3": p3}, with_scores=True)[0]

        rpn.requires_grad_(False)
        traced = torch.jit.trace(run, (images, sizes, feats["p2"], feats["p3"]), check_trace=False)
        rois, roi_scores = traced(images, sizes, feats["p2"], feats["p3"])
    for i in range(2):
        sel = rois[:, 0] == i
        assert torch.equal(rois[sel, 1:], boxes[i])
        assert torch.equal(roi_scores[sel], scores[i])


def test_rpn_keeps_strictly_larger_than_min_size():
    rpn = _rpn("detectron2")
    rpn.min_box_size = 2.0
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 5.0], [0.0, 0.0, 2.5, 2.5], [1.0, 1.0, 9.0, 9.0]]])
    scores, keep = rpn._score_and_keep(boxes, torch.tensor([[-1.0, 0.5, 2.0]]))
    assert keep.tolist() == [[False, True, True]] and torch.equal(scores, torch.tensor([[-1.0, 0.5, 2.0]]))


def test_pooler_levels_are_assign_boxes_to_levels():
    torch.manual_seed(1)
    feats = {f"p{k}": torch.randn(1, 2, 128 // 2 ** k, 128 // 2 ** k) for k in (2, 3, 4, 5)}
    pooler = MultiScaleRoIPooler(["p2", "p3", "p4", "p5"], [4, 8, 16, 32], 7, 0, True, convention="detectron2")
    # Sides around the level boundaries 112, 224, 448 (where the 1e-6 / 1e-8 placements differ) and others.
    sides = torch.tensor([3.0, 111.99, 112.0, 112.0001, 223.99, 224.0, 447.9, 448.0, 600.0])
    x0 = torch.rand(len(sides)) * 5
    rois = torch.stack([torch.zeros_like(sides), x0, x0, x0 + sides, x0 + sides], 1)
    out = pooler.pool(feats, rois)
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    levels = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-8)).clamp(2, 5).long()
    for r in range(len(sides)):
        k = int(levels[r])
        ref = roi_align(feats[f"p{k}"], rois[r : r + 1], (7, 7), 1.0 / 2 ** k, 0, True)
        assert torch.equal(out[r : r + 1], ref), (r, k)


def _d2_paste(masks, boxes, h, w, threshold=0.5):
    """detectron2's CPU paste_masks_in_image (one chunk per mask), full (N, h, w) bool masks."""
    out = torch.zeros(len(masks), h, w, dtype=torch.bool)
    for i in range(len(masks)):
        b = boxes[i : i + 1]
        x0i, y0i = torch.clamp(b.min(dim=0).values.floor()[:2] - 1, min=0).to(torch.int32)
        x1i = torch.clamp(b[:, 2].max().ceil() + 1, max=w).to(torch.int32)
        y1i = torch.clamp(b[:, 3].max().ceil() + 1, max=h).to(torch.int32)
        x0, y0, x1, y1 = torch.split(b, 1, dim=1)
        iy = (torch.arange(y0i, y1i, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        ix = (torch.arange(x0i, x1i, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gx = ix[:, None, :].expand(1, iy.size(1), ix.size(1))
        gy = iy[:, :, None].expand(1, iy.size(1), ix.size(1))
        pasted = F.grid_sample(masks[i : i + 1, None], torch.stack([gx, gy], dim=3), align_corners=False)
        out[i, y0i:y1i, x0i:x1i] = pasted[0, 0] >= threshold
    return out


def test_mask_paste_is_detectron2s():
    torch.manual_seed(2)
    h, w = 37, 53
    masks = torch.rand(7, 28, 28)
    masks[0] = 0.5  # exactly the threshold: detectron2 keeps >= 0.5
    boxes = torch.tensor([[3.2, 4.7, 20.1, 30.9], [0.0, 0.0, 53.0, 37.0], [40.5, 30.2, 53.0, 37.0],
                          [10.0, 10.0, 10.6, 11.3], [0.3, 20.0, 5.5, 36.9], [25.25, 1.75, 47.5, 18.0],
                          [12.0, 3.0, 13.0, 35.0]])
    cropped = paste_masks_cropped_detectron2(masks[:, None], boxes, (h, w))
    assert torch.equal(cropped.to_bitmasks().tensor, _d2_paste(masks, boxes, h, w))
    assert bool(cropped.to_bitmasks().tensor[0].any())
    # Each crop is the pasted region of its box: one pixel beyond the box's integer bounds, in the image.
    assert cropped.offsets[0].tolist() == [2, 3] and tuple(cropped.crops[0].shape) == (32 - 3, 22 - 2)


def test_postprocess_clips_then_drops_empty_boxes_then_pastes():
    boxes = torch.tensor([[2.0, 3.0, 30.0, 20.0], [45.0, 5.0, 60.0, 9.0], [-5.0, 4.0, 0.0, 8.0], [10.0, 10.0, 10.0, 12.0]])
    probs = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(3))
    r = Instances((20, 40), boxes=Boxes(boxes), scores=torch.tensor([0.9, 0.8, 0.7, 0.6]), labels=torch.zeros(4, dtype=torch.long),
                  mask_probs=probs)
    out = postprocess_instances(r, (20, 40), 0.5, "detectron2")
    clipped = torch.tensor([[2.0, 3.0, 30.0, 20.0], [40.0, 5.0, 40.0, 9.0], [0.0, 4.0, 0.0, 8.0], [10.0, 10.0, 10.0, 12.0]])
    assert torch.equal(out.boxes.tensor, clipped[:1]) and out.scores.tolist() == [0.8999999761581421]
    assert torch.equal(out.masks.to_bitmasks().tensor, _d2_paste(probs[:1], clipped[:1], 20, 40))
    tv = postprocess_instances(r, (20, 40), 0.5)
    assert len(tv) == 4  # torchvision keeps them (the shell only clips)


def _d2_keypoints(maps, rois):
    """detectron2's heatmaps_to_keypoints, columns (x, y, softmax score)."""
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    wc, hc = widths.ceil(), heights.ceil()
    k = maps.shape[1]
    out = maps.new_zeros(len(rois), k, 3)
    idx = torch.arange(k)
    for i in range(len(rois)):
        roi_map = F.interpolate(maps[[i]], size=(int(hc[i]), int(wc[i])), mode="bicubic", align_corners=False)[0]
        mx = roi_map.view(k, -1).max(1)[0].view(k, 1, 1)
        sc = (roi_map - mx).exp_() / (maps[i] - mx).exp_().sum((1, 2), keepdim=True)
        pos = roi_map.view(k, -1).argmax(1)
        xi = pos % roi_map.shape[2]
        yi = (pos - xi) // roi_map.shape[2]
        out[i, :, 0] = (xi.float() + 0.5) * (widths[i] / wc[i]) + rois[i, 0]
        out[i, :, 1] = (yi.float() + 0.5) * (heights[i] / hc[i]) + rois[i, 1]
        out[i, :, 2] = sc[idx, yi, xi]
    return out


def test_keypoints_are_detectron2s():
    torch.manual_seed(4)
    maps = torch.randn(3, 5, 14, 14) * 2
    rois = torch.tensor([[1.5, 2.25, 30.7, 41.0], [0.0, 0.0, 0.5, 60.0], [10.0, 5.0, 70.3, 25.9]])
    got = heatmaps_to_keypoints(maps, rois, "detectron2")
    assert torch.equal(got, _d2_keypoints(maps, rois))
    tv = heatmaps_to_keypoints(maps, rois)
    assert torch.equal(tv[..., :2], got[..., :2]) and not torch.equal(tv[..., 2], got[..., 2])
    traced = torch.jit.trace(lambda m, r: heatmaps_to_keypoints(m, r, "detectron2"), (maps, rois), check_trace=False)
    assert torch.equal(traced(maps[:2], rois[:2]), got[:2])


def _tiny_cfg(convention: str, layout: str = "fpn") -> ModelConfig:
    cfg = ModelConfig()
    cfg.convention = convention
    cfg.num_classes = 3
    cfg.layout = layout
    cfg.backbone.depth = 18
    if layout == "c4":
        cfg.backbone.out_features = ("res4",)
        cfg.rpn.in_features = ("res4",)
        cfg.box_head.in_features = ("res4",)
        cfg.rpn.anchors.sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),)
    cfg.fpn.out_channels = 16
    cfg.box_head.fc_dim = 16
    cfg.mask_head.conv_dim = 8
    cfg.mask_on = True
    return cfg


def test_builder_passes_the_convention():
    model = build_rcnn(_tiny_cfg("detectron2"))
    assert model.convention == "detectron2"
    assert model.rpn.convention == "detectron2" and model.rpn.anchor_generator.convention == "detectron2"
    assert model.rpn.anchor_generator.strides == [4, 8, 16, 32, 64]
    assert model.roi_heads.convention == "detectron2"
    assert model.roi_heads.box_pooler.convention == "detectron2" and model.roi_heads.mask_pooler.convention == "detectron2"
    tv = build_rcnn(_tiny_cfg("torchvision"))
    assert tv.convention == tv.rpn.convention == tv.roi_heads.convention == "torchvision"


def test_box_inference_keeps_tiny_boxes_and_numbers_classes_from_zero():
    model = build_rcnn(_tiny_cfg("detectron2")).eval()
    heads = model.roi_heads
    rois = torch.tensor([[0.0, 5.0, 5.0, 5.004, 9.0], [0.0, 10.0, 10.0, 30.0, 30.0]])
    probs = torch.tensor([[0.16, 0.8, 0.02, 0.02], [0.1, 0.1, 0.78, 0.02]])
    boxes = rois[:, None, 1:].expand(-1, 4, 4).clone()
    feats = model.extract_features(torch.zeros(1, 3, 64, 64))
    raw = heads._detections(feats, rois, probs, boxes, torch.tensor([[64, 64]]))
    assert raw["labels"].tolist() == [0, 1, 0] and raw["num_detections"].tolist() == [3]
    model_tv = build_rcnn(_tiny_cfg("torchvision")).eval()
    raw_tv = model_tv.roi_heads._detections(model_tv.extract_features(torch.zeros(1, 3, 64, 64)), rois, probs, boxes,
                                            torch.tensor([[64, 64]]))
    assert raw_tv["labels"].tolist() == [1, 0]  # the 0.004 px wide box is removed before NMS


def test_c4_detectron2_model_runs():
    torch.manual_seed(5)
    model = build_rcnn(_tiny_cfg("detectron2", "c4"), size_divisibility=1).eval()
    assert model.rpn.anchor_generator.num_anchors_per_location() == [15]
    out = model.predict([torch.randint(0, 256, (3, 70, 90)).float()])[0]
    assert out.boxes.tensor.shape[1] == 4 and len(out.masks) == len(out)
