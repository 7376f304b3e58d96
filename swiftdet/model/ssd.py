"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector") and SSDlite (Sandler et al., MobileNetV2 §6.2).

Two layouts, chosen by ``model.backbone.name``, each torchvision's model of that name:

- "vgg16": ``ssd300_vgg16``. VGG-16 with a ceil-mode third pool; conv4_3 L2-normalised with a learnt
  per-channel scale (initially 20); pool5 3x3/s1, fc6 as a 3x3 conv of dilation 6, fc7 1x1; four
  extra blocks (1x1 reduce, 3x3). Plain 3x3 prediction convs. Six maps: 38, 19, 10, 5, 3, 1 at 300.
- "mobilenet_v3_large": ``ssdlite320_mobilenet_v3_large``. MobileNetV3-Large's C4 expansion
  output and its last conv; four extra blocks (1x1, depthwise 3x3/s2, 1x1, each BN + ReLU6);
  prediction blocks of a depthwise 3x3 (BN + ReLU6) and a 1x1 conv. Six maps: 20, 10, 5, 3, 2, 1.

Both predict, per default box, K + 1 softmax logits (background first) and (10, 10, 5, 5)-weighted
box deltas. Training: each ground truth takes its best box and every box of IoU >= 0.5
(torchvision's SSDMatcher); cross-entropy over the positives and the hardest negatives (3 per
positive, per image) plus smooth-L1 on the positives' deltas, both divided by the positives of the
batch. Inference: per image and class the top 400 boxes scoring above 0.01, class-wise NMS at
0.45, the 200 best (the thresholds are settings).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError
from swiftdet.model.box_coder import BoxCoder
from swiftdet.model.dense_head import batched_detections, flatten_level_output
from swiftdet.model.detector import Detector, shell_settings
from swiftdet.model.matcher import Matcher
from swiftdet.structures import ImageList, Instances

__all__ = ["DefaultBoxes", "SSD", "SSDHead", "SSD300Extras", "SSDLiteExtras", "build_ssd", "default_box_scales"]


def default_box_scales(num_levels: int, min_ratio: float, max_ratio: float) -> list[float]:
    """The SSD paper's box scales, evenly spaced from ``min_ratio`` to ``max_ratio`` over the levels,
    plus 1.0 (the scale after the last level, for its sqrt(s_k * s_k+1) box); as torchvision's
    DefaultBoxGenerator, in the same Python float arithmetic."""
    if num_levels == 1:
        return [min_ratio, max_ratio]
    span = max_ratio - min_ratio
    return [min_ratio + span * k / (num_levels - 1.0) for k in range(num_levels)] + [1.0]


class DefaultBoxes(nn.Module):
    """SSD's default (anchor) boxes, in the order and float32 values of torchvision's DefaultBoxGenerator.

    Per level k: boxes of scale s_k and sqrt(s_k * s_k+1) at aspect ratio 1, then (w, h) and (h, w)
    of each ratio r (w = s_k sqrt(r), h = s_k / sqrt(r)), all relative to the image and clipped to
    [0, 1] when ``clip``; centred at ((j + 0.5) / f_x, (i + 0.5) / f_y) with f = image size / step
    (or the grid size when no steps are given). Location-major, then box.

    Args:
        aspect_ratios: per level, the ratios besides 1 (2 + 2 * len boxes per location).
        scales: len(levels) + 1 relative sizes.
        steps: per level the stride in pixels, or empty for the grid size.
        clip: clip the relative (w, h) to [0, 1].
    """

    def __init__(self, aspect_ratios: Sequence[Sequence[float]], scales: Sequence[float], steps: Sequence[int], clip: bool):
        super().__init__()
        if len(scales) != len(aspect_ratios) + 1:
            raise ValueError(f"DefaultBoxes: {len(aspect_ratios)} levels need {len(aspect_ratios) + 1} scales, got {len(scales)}")
        if steps and len(steps) != len(aspect_ratios):
            raise ValueError(f"DefaultBoxes: {len(aspect_ratios)} levels but {len(steps)} steps")
        self.aspect_ratios = [tuple(level) for level in aspect_ratios]
        self.scales = [float(s) for s in scales]
        self.steps = list(steps)
        self.clip = clip
        self._cell_wh: list[Tensor] = []
        for k, ratios in enumerate(self.aspect_ratios):
            s_k, s_next = self.scales[k], self.scales[k + 1]
            pairs = [[s_k, s_k], [math.sqrt(s_k * s_next)] * 2]
            for r in ratios:
                w, h = s_k * math.sqrt(r), s_k / math.sqrt(r)
                pairs += [[w, h], [h, w]]
            wh = torch.as_tensor(pairs, dtype=torch.float32)
            self._cell_wh.append(wh.clamp(min=0, max=1) if clip else wh)
        self._cache: dict[tuple, Tensor] = {}

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def forward(self, image_shape: tuple[int, int], grid_sizes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
        """(N, 4) xyxy boxes in pixels of a padded batch of size ``image_shape`` = (H, W), for
        feature maps of ``grid_sizes`` [(H_l, W_l)]; the same for every image of the batch."""
        if len(grid_sizes) != len(self.aspect_ratios):
            raise ValueError(f"DefaultBoxes has {len(self.aspect_ratios)} levels but got {len(grid_sizes)} feature maps")
        key = (tuple(image_shape), tuple(tuple(g) for g in grid_sizes), device)
        boxes = self._cache.get(key)
        if boxes is not None:
            return boxes
        height, width = image_shape
        levels = []
        for k, (gh, gw) in enumerate(grid_sizes):
            fx, fy = (width / self.steps[k], height / self.steps[k]) if self.steps else (gw, gh)
            cx = ((torch.arange(0, gw) + 0.5) / fx).to(torch.float32)
            cy = ((torch.arange(0, gh) + 0.5) / fy).to(torch.float32)
            grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
            num_boxes = self._cell_wh[k].shape[0]
            centres = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)) * num_boxes, dim=-1).reshape(-1, 2)
            levels.append(torch.cat((centres, self._cell_wh[k].repeat(gh * gw, 1)), dim=1))
        rel = torch.cat(levels)
        size = torch.tensor([width, height])  # int64, as torchvision multiplies
        boxes = torch.cat([(rel[:, :2] - 0.5 * rel[:, 2:]) * size, (rel[:, :2] + 0.5 * rel[:, 2:]) * size], -1).to(device)
        if len(self._cache) >= 64:  # a few padded sizes at most; bounded anyway
            self._cache.clear()
        self._cache[key] = boxes
        return boxes


def _xavier(module: nn.Module) -> nn.Module:
    """torchvision's SSD300 initialisation of the layers it adds to VGG: Xavier-uniform, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _normal(module: nn.Module) -> nn.Module:
    """torchvision's SSDlite initialisation of its extra blocks and heads: N(0, 0.03), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class SSD300Extras(nn.Module):
    """What SSD300 puts on VGG-16: conv4_3's L2 normalisation with a learnt scale, pool5 (3x3/s1),
    fc6 (3x3, dilation 6), fc7 (1x1) and four extra blocks (conv8_2 .. conv11_2).

    ``forward({"conv4": (B, 512, 38, 38), "conv5": (B, 512, 19, 19)})`` (at 300 x 300) -> six maps
    of 512, 1024, 512, 256, 256, 256 channels (38, 19, 10, 5, 3, 1).
    """

    out_channels = (512, 1024, 512, 256, 256, 256)

    def __init__(self):
        super().__init__()
        self.l2_scale = nn.Parameter(torch.full((512,), 20.0))
        self.fc = _xavier(nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        ))
        # (in, reduced, out, stride, padding) of conv8_2 .. conv11_2, each after a 1x1 reduction.
        specs = ((1024, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 1, 0), (256, 128, 256, 1, 0))
        self.blocks = _xavier(nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_mid, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_mid, c_out, kernel_size=3, stride=stride, padding=pad),
                nn.ReLU(inplace=True),
            )
            for c_in, c_mid, c_out, stride, pad in specs
        ))

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        out = [self.l2_scale.view(1, -1, 1, 1) * F.normalize(features["conv4"])]
        x = self.fc(features["conv5"])
        out.append(x)
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


def _conv_bn_relu6(
    c_in: int, c_out: int, kernel_size: int, norm: tuple[float, float], stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias), BatchNorm (eps, momentum = ``norm``), ReLU6: torchvision's Conv2dNormActivation layout."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=norm[0], momentum=norm[1]),
        nn.ReLU6(inplace=True),
    )


class SSDLiteExtras(nn.Module):
    """SSDlite's extra blocks on MobileNetV3: each 1x1 to half the output channels, depthwise 3x3/s2,
    1x1 to the output channels (all BN + ReLU6).

    Args:
        in_features: the two backbone features taken as they are (C4 expansion, last conv).
        in_channels: channels of the last of them.
        norm: (eps, momentum) of the BatchNorm layers.

    ``forward(backbone features)`` -> six maps: the two inputs, then 512, 256, 256, 128 channels.
    """

    widths = (512, 256, 256, 128)

    def __init__(self, in_features: Sequence[str], in_channels: int, norm: tuple[float, float]):
        super().__init__()
        self.in_features = tuple(in_features)
        blocks = []
        for width in self.widths:
            mid = width // 2
            blocks.append(nn.Sequential(
                _conv_bn_relu6(in_channels, mid, 1, norm),
                _conv_bn_relu6(mid, mid, 3, norm, stride=2, groups=mid),
                _conv_bn_relu6(mid, width, 1, norm),
            ))
            in_channels = width
        self.blocks = _normal(nn.ModuleList(blocks))

    def forward(self, features: dict[str, Tensor]) -> list[Tensor]:
        out = [features[f] for f in self.in_features]
        x = out[-1]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out


class SSDHead(nn.Module):
    """One class and one box predictor per feature map (not shared: the maps differ in channels).

    Args:
        in_channels: channels of each map.
        num_anchors: default boxes per location of each map (A_l).
        num_classes: foreground classes K; the class predictor has K + 1 outputs per box,
            background first.
        lite: SSDlite's predictors (depthwise 3x3 + BN + ReLU6, then 1x1) instead of a 3x3 conv.
        norm: (eps, momentum) of the lite predictors' BatchNorm.
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int, lite: bool,
                 norm: tuple[float, float] = (1e-3, 0.03)):
        super().__init__()
        self.num_classes = num_classes

        def predictor(channels: int, outputs: int) -> nn.Module:
            if lite:
                return nn.Sequential(_conv_bn_relu6(channels, channels, 3, norm, groups=channels),
                                     nn.Conv2d(channels, outputs, kernel_size=1))
            return nn.Conv2d(channels, outputs, kernel_size=3, padding=1)

        init = _normal if lite else _xavier
        self.cls_logits = init(nn.ModuleList(predictor(c, a * (num_classes + 1)) for c, a in zip(in_channels, num_anchors)))
        self.bbox_reg = init(nn.ModuleList(predictor(c, a * 4) for c, a in zip(in_channels, num_anchors)))

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(B, N, K + 1) class logits and (B, N, 4) box deltas over all maps (N default boxes)."""
        logits = [flatten_level_output(m(x), self.num_classes + 1) for m, x in zip(self.cls_logits, features)]
        deltas = [flatten_level_output(m(x), 4) for m, x in zip(self.bbox_reg, features)]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class SSD(Detector):
    """SSD / SSDlite detector (see the module docstring). Built by :func:`build_ssd`.

    Args:
        backbone: VGG16 or MobileNetV3, a dict of named features from a (B, 3, H, W) batch.
        extras: the layers from those features to the head's maps (:class:`SSD300Extras`,
            :class:`SSDLiteExtras`).
        head: the :class:`SSDHead`.
        default_boxes: the default boxes of the maps.
        box_coder: box encoding relative to the default boxes.
        iou_thresh: default boxes of at least this IoU with a ground truth are its positives.
        neg_to_pos_ratio: hard negatives kept per positive in the classification loss.
        score_thresh, topk_candidates, nms_thresh, detections_per_image: inference (per image
            and class the top-k above the threshold; class-wise NMS; a cap per image).
        **shell: the :class:`Detector` settings (normalisation, padding).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        extras: nn.Module,
        head: SSDHead,
        default_boxes: DefaultBoxes,
        box_coder: BoxCoder,
        iou_thresh: float,
        neg_to_pos_ratio: float,
        score_thresh: float,
        topk_candidates: int,
        nms_thresh: float,
        detections_per_image: int,
        **shell,
    ):
        super().__init__(num_classes=head.num_classes, **shell)
        self.backbone = backbone
        self.extras = extras
        self.head = head
        self.default_boxes = default_boxes
        self.box_coder = box_coder
        # Below the threshold: background; no "ignored" band (both thresholds equal).
        self.matcher = Matcher(iou_thresh, iou_thresh, allow_low_quality_matches=False)
        self.neg_to_pos_ratio = neg_to_pos_ratio
        self.score_thresh = score_thresh
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image

    def _head_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, K + 1) logits, (B, N, 4) deltas and the (N, 4) default boxes of the batch."""
        maps = self.extras(self.backbone(images))
        logits, deltas = self.head(maps)
        grids = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        anchors = self.default_boxes((int(images.shape[-2]), int(images.shape[-1])), grids, images.device)
        return logits, deltas, anchors

    def core(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        logits, deltas, anchors = self._head_outputs(images)
        return self.inference(logits, deltas, anchors, image_sizes)

    def losses(self, images: ImageList, targets: list[Instances]) -> dict[str, Tensor]:
        logits, deltas, anchors = self._head_outputs(images.tensor)
        return self.loss(logits, deltas, anchors, targets)

    def match(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """(N,) index of the ground truth of each default box, -1 for background.

        IoU >= ``iou_thresh`` with its best ground truth, and each ground truth's own best box
        (the first of equal IoUs; a later ground truth wins a box two of them pick), as
        torchvision's SSDMatcher.
        """
        if gt_boxes.shape[0] == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        iou = box_iou(gt_boxes, anchors)
        matches = self.matcher(iou)
        best = iou.max(dim=1).indices
        matches[best] = torch.arange(best.shape[0], dtype=torch.int64, device=best.device)
        return matches

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Instances]) -> dict[str, Tensor]:
        """Hard-negative-mined cross-entropy and smooth-L1, each summed over the batch and divided
        by its number of positives (at least 1), as torchvision's SSD.

        Args:
            logits: (B, N, K + 1); deltas: (B, N, 4); anchors: (N, 4).
        """
        logits, deltas = logits.float(), deltas.float()
        num_images, _, num_outputs = logits.shape
        cls_targets = torch.zeros(logits.shape[:2], dtype=torch.int64, device=logits.device)
        box_losses = []
        num_positive = 0
        for i, t in enumerate(targets):
            gt = t.boxes.tensor.to(device=anchors.device, dtype=anchors.dtype)
            matches = self.match(gt, anchors)
            positive = torch.where(matches >= 0)[0]
            matched = matches[positive]
            num_positive += positive.numel()
            target_deltas = self.box_coder.encode(gt[matched], anchors[positive])
            box_losses.append(F.smooth_l1_loss(deltas[i, positive], target_deltas, reduction="sum"))
            cls_targets[i, positive] = t.labels.to(logits.device)[matched] + 1  # 0 is background
        ce = F.cross_entropy(logits.reshape(-1, num_outputs), cls_targets.reshape(-1), reduction="none")
        ce = ce.view(num_images, -1)
        foreground = cls_targets > 0
        # Per image, the negatives with the largest loss: rank of each box's loss among the
        # negatives' (positives sorted last), kept below neg_to_pos_ratio * #positives.
        num_negative = self.neg_to_pos_ratio * foreground.sum(dim=1, keepdim=True)
        negative_loss = ce.clone()
        negative_loss[foreground] = -math.inf
        rank = negative_loss.sort(dim=1, descending=True)[1].sort(dim=1)[1]
        hard_negative = rank < num_negative
        normaliser = max(1, num_positive)
        return {
            "loss_cls": (ce[foreground].sum() + ce[hard_negative].sum()) / normaliser,
            "loss_box": torch.stack(box_losses).sum() / normaliser,
        }

    def inference(self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """Raw detections: softmax, per image and foreground class the ``topk_candidates`` best
        boxes scoring above ``score_thresh``, decoded, clipped, class-wise NMS, at most
        ``detections_per_image`` per image.

        Args:
            logits: (B, N, K + 1); deltas: (B, N, 4); anchors: (N, 4); image_sizes: (B, 2) int64.
        """
        scores = F.softmax(logits.float(), dim=-1)[:, :, 1:].transpose(1, 2).contiguous()  # (B, K, N)
        k = min(self.topk_candidates, scores.shape[-1])
        # The k best of every (image, class) row, then those above the threshold: the same set as
        # thresholding first (torchvision), without a pass per class.
        top_scores, top_boxes = scores.topk(k, dim=2)
        img_idx, labels, slot = (top_scores > self.score_thresh).nonzero(as_tuple=True)
        anchor_idx = top_boxes[img_idx, labels, slot]
        boxes = self.box_coder.decode(deltas.float()[img_idx, anchor_idx], anchors[anchor_idx])
        return batched_detections(
            boxes, top_scores[img_idx, labels, slot], labels, img_idx, image_sizes, self.num_classes,
            self.nms_thresh, self.detections_per_image,
        )


def build_ssd(cfg: ModelConfig, size_divisibility: int = 1) -> SSD:
    """SSD300-VGG16 or SSDlite-MobileNetV3 described by ``cfg`` (``cfg.arch == "ssd"``, the layout
    by ``cfg.backbone.name``), randomly initialised."""
    sc = cfg.ssd
    if cfg.convention != "torchvision":
        raise ConfigError(
            f"model.convention '{cfg.convention}' is not available for arch 'ssd': detectron2's model zoo has no "
            "SSD, so SSD follows torchvision's conventions only; set model.convention=torchvision."
        )
    name = cfg.backbone.name
    if name == "vgg16":
        from swiftdet.model.backbone.vgg import VGG16

        backbone: nn.Module = VGG16(("conv4", "conv5"), pool3_ceil_mode=True, freeze_at=cfg.backbone.freeze_at)
        extras: nn.Module = SSD300Extras()
        channels = list(SSD300Extras.out_channels)
    elif name == "mobilenet_v3_large":
        from swiftdet.model.backbone.mobilenet import build_mobilenet_v3

        backbone = build_mobilenet_v3(cfg.backbone)
        shapes = backbone.output_shape()
        if len(shapes) != 2:
            raise ConfigError(
                f"SSDlite takes two MobileNetV3 features (C4's expansion and the last conv: model.backbone.out_features="
                f"['block13_expand', 'block16']), got {list(shapes)}."
            )
        norm = (sc.norm_eps, sc.norm_momentum)
        extras = SSDLiteExtras(cfg.backbone.out_features, shapes[cfg.backbone.out_features[-1]][0], norm)
        channels = [shapes[f][0] for f in cfg.backbone.out_features] + list(SSDLiteExtras.widths)
    else:
        raise ConfigError(f"model.arch 'ssd' has layouts for model.backbone.name 'vgg16' and 'mobilenet_v3_large', not '{name}'.")
    if len(sc.aspect_ratios) != len(channels):
        raise ConfigError(
            f"model.ssd.aspect_ratios has {len(sc.aspect_ratios)} levels but the {name} SSD has {len(channels)} "
            "feature maps; give one tuple of ratios per map."
        )
    scales = list(sc.scales) if sc.scales else default_box_scales(len(channels), sc.min_ratio, sc.max_ratio)
    default_boxes = DefaultBoxes(sc.aspect_ratios, scales, sc.steps, sc.clip_default_boxes)
    head = SSDHead(channels, default_boxes.num_anchors_per_location(), cfg.num_classes, lite=name != "vgg16",
                   norm=(sc.norm_eps, sc.norm_momentum))
    return SSD(
        backbone=backbone,
        extras=extras,
        head=head,
        default_boxes=default_boxes,
        box_coder=BoxCoder(sc.box_reg_weights),
        iou_thresh=sc.iou_thresh,
        neg_to_pos_ratio=sc.neg_to_pos_ratio,
        score_thresh=sc.score_thresh,
        topk_candidates=sc.topk_candidates,
        nms_thresh=sc.nms_thresh,
        detections_per_image=sc.detections_per_image,
        **shell_settings(cfg, size_divisibility),
    )
