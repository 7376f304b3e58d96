"""swiftdet's SSD300-VGG16 and SSDlite320-MobileNetV3 reproduce torchvision's after weight conversion.

torchvision's models are built with random weights (no download), made well-conditioned (every
conv rescaled on real images so its output has unit spread, BN statistics calibrated on them, the
class logits spread so softmax scores do not saturate into ties), then converted. Both sides get
the same real images of two different sizes and resize them with their own transform to the fixed
size (torchvision normalises then resizes, swiftdet resizes then normalises: equal to float
rounding). Losses are compared on the same fixed-size images and targets.
"""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn
from torchvision.models.detection import retinanet_resnet50_fpn, ssd300_vgg16, ssdlite320_mobilenet_v3_large

from swiftdet.config import load_config
from swiftdet.data.transforms import TestTransform as FixedSizeTransform  # (not a test class)
from swiftdet.data.transforms import read_image
from swiftdet.errors import WeightsError
from swiftdet.model.build import build_model
from swiftdet.structures import Boxes, Instances
from swiftdet.weights.coco_classes import COCO_CATEGORY_IDS
from swiftdet.weights.torchvision_ssd import convert_ssd_state_dict

VARIANTS = {
    "ssd300_vgg16": (ssd300_vgg16, "ssd300_VGG16"),
    "ssdlite320": (ssdlite320_mobilenet_v3_large, "ssdlite320_MV3"),
}
NUM_CLASSES = 5
LOGIT_SPREAD = 2.0  # std of the class logits after calibration
UNUSED_SLOTS = [i for i in range(1, 91) if i not in COCO_CATEGORY_IDS]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these small convolutions run several times faster so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _real_images(root) -> list[torch.Tensor]:
    """Two crops of different sizes (neither the model's) of real COCO images, 0-255 float."""
    files = sorted((root / "val2017").glob("*.jpg"))[:2]
    a, b = (read_image(f).float() for f in files)
    return [a[:, :240, :320].contiguous(), b[:, :280, :210].contiguous()]


def _rescale_outputs(convs: list[nn.Conv2d], target: dict[nn.Conv2d, float]) -> list:
    """Forward hooks that scale each conv (weight and bias) so its output on this pass has std
    ``target[conv]``, and pass the scaled output on (one pass calibrates the whole network)."""
    def hook(mod, _inputs, out):
        factor = target[mod] / out.std().clamp(min=1e-6)
        with torch.no_grad():
            mod.weight.mul_(factor)
            if mod.bias is not None:
                mod.bias.mul_(factor)
        return out * factor

    return [c.register_forward_hook(hook) for c in convs]


@torch.no_grad()
def _randomise(tv: nn.Module, images01: list[torch.Tensor], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in tv.modules():
        if isinstance(mod, nn.Conv2d):
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=g))
            if mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
        elif isinstance(mod, nn.BatchNorm2d):
            mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
    if hasattr(tv.backbone, "scale_weight"):
        tv.backbone.scale_weight.copy_(torch.rand(512, generator=g) * 10 + 15)
    x = tv.transform(images01)[0].tensors
    convs = [m for m in tv.modules() if isinstance(m, nn.Conv2d)]
    cls_out = [m for m in tv.head.classification_head.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    target = {c: (LOGIT_SPREAD if c in cls_out else 1.0) for c in convs}

    def run() -> None:
        tv.head(list(tv.backbone(x).values()))

    tv.eval()
    handles = _rescale_outputs(convs, target)
    run()
    for h in handles:
        h.remove()
    norms = [m for m in tv.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:  # statistics of these images; then the logits' spread again
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        tv.train()
        run()
        tv.eval()
        for m in norms:  # the coarsest maps have a handful of positions: floor their variances
            m.running_var.clamp_(min=m.running_var.mean().item())
        handles = _rescale_outputs(cls_out, target)
        run()
        for h in handles:
            h.remove()


def _pair(variant: str, root, coco: bool):
    """(torchvision model, swiftdet model, swiftdet config) with the same weights, calibrated on
    the real images under ``root``, in eval mode. ``coco``: a 91-slot torchvision head (its 10
    unused slots scoring nothing) into an 80-class model. Copies of one pair per arguments."""
    tv, ours, cfg = _calibrated_pair(variant, root, coco)
    return copy.deepcopy(tv).eval(), copy.deepcopy(ours).eval(), cfg


@functools.lru_cache(maxsize=None)
def _calibrated_pair(variant: str, root, coco: bool):
    images = _real_images(root)
    fn, config_name = VARIANTS[variant]
    tv = fn(weights=None, weights_backbone=None, num_classes=91 if coco else NUM_CLASSES + 1)
    _randomise(tv, [i / 255 for i in images])
    if coco:
        with torch.no_grad():
            for conv in [m for m in tv.head.classification_head.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]:
                bias = conv.bias.view(-1, 91)  # (anchors, slots)
                bias[:, UNUSED_SLOTS] = -1e4
    cfg = load_config(config_name, [] if coco else [f"model.num_classes={NUM_CLASSES}"])
    ours = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility).eval()
    ours.load_state_dict(convert_ssd_state_dict(tv.state_dict(), cfg.model))
    return tv, ours, cfg


@pytest.mark.parametrize("variant,coco", [("ssd300_vgg16", False), ("ssdlite320", True)])
def test_detections_match_torchvision(tiny_coco, variant, coco):
    images = _real_images(tiny_coco)
    tv, ours, cfg = _pair(variant, tiny_coco, coco)
    transform = FixedSizeTransform.from_config(cfg)
    assert tuple(transform(images[0]).shape[-2:]) == cfg.input.fixed_size
    with torch.no_grad():
        ref = tv([i / 255 for i in images])
    out = ours.predict([transform(i) for i in images], [tuple(i.shape[-2:]) for i in images])
    for r, o, img in zip(ref, out, images):
        assert o.image_size == tuple(img.shape[-2:])
        assert len(o) == len(r["boxes"]) == ours.detections_per_image  # the per-image cap bites
        expected_labels = r["labels"] - 1
        if coco:  # torchvision's label is the category id
            expected_labels = torch.tensor([COCO_CATEGORY_IDS.index(int(c)) for c in r["labels"]])
        torch.testing.assert_close(o.scores, r["scores"], atol=1e-4, rtol=0)
        # runs of the reference's scores closer than 1e-5
        run = torch.cat([torch.zeros(1, dtype=torch.long), (r["scores"][:-1] - r["scores"][1:] >= 1e-5).long().cumsum(0)])
        order, ref_order = _tie_order(run, o.labels, o.boxes.tensor), _tie_order(run, expected_labels, r["boxes"])
        assert torch.equal(o.labels[order], expected_labels[ref_order])
        torch.testing.assert_close(o.boxes.tensor[order], r["boxes"][ref_order], atol=1e-4, rtol=0)
        assert float(r["scores"].max()) < 0.999 and float(r["scores"][0] - r["scores"][-1]) > 0.05  # spread


def _tie_order(run: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The detections' order with each run of near-equal scores (where float rounding may swap
    neighbours) sorted by label and box: both sides then list the same detections alike."""
    order = torch.arange(len(run))
    for key in (boxes[:, 1], boxes[:, 0], labels.double(), run.double()):
        order = order[key[order].argsort(stable=True)]
    return order


def _targets(g: torch.Generator, size: int, counts: list[int]) -> list[Instances]:
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = torch.rand(n, 2, generator=g) * size * 0.5 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        out.append(Instances((size, size), boxes=Boxes(boxes), labels=labels))
    return out


@pytest.mark.parametrize("variant", [pytest.param("ssd300_vgg16", marks=pytest.mark.slow), "ssdlite320"])
def test_loss_matches_torchvision(tiny_coco, variant):
    """Same fixed-size images (torchvision's resize is then the identity), same targets: the same
    matching, hard negatives and normalisation give the same losses."""
    coco = variant == "ssdlite320"  # the pair of the detection test (the 80 of 91 slots for SSDlite)
    tv, ours, cfg = _pair(variant, tiny_coco, coco=coco)
    size = cfg.input.fixed_size[0]
    images = [FixedSizeTransform.from_config(cfg)(i) for i in _real_images(tiny_coco)]
    g = torch.Generator().manual_seed(3)
    # Several boxes, a box smaller than any default box (its low-quality best match), and an
    # image without boxes (all negatives, none mined).
    targets = _targets(g, size, [6, 1, 0])
    targets[1] = Instances((size, size), boxes=Boxes(torch.tensor([[100.0, 100.0, 104.0, 103.0]])), labels=torch.tensor([2]))
    images.append(images[0].flip(-1))
    tv.train()
    ours.train()
    tv_labels = (lambda lab: torch.tensor(COCO_CATEGORY_IDS)[lab]) if coco else (lambda lab: lab + 1)
    tv_targets = [{"boxes": t.boxes.tensor.clone(), "labels": tv_labels(t.labels)} for t in targets]
    ref = tv([i / 255 for i in images], tv_targets)
    got = ours(ours.preprocess(images), targets)
    assert set(got) == {"loss_cls", "loss_box"}
    torch.testing.assert_close(got["loss_cls"], ref["classification"], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(got["loss_box"], ref["bbox_regression"], atol=1e-4, rtol=1e-6)
    assert float(got["loss_box"].detach()) > 0


def _synthetic_batch(g: torch.Generator, size: int, num: int) -> tuple[list[torch.Tensor], list[Instances]]:
    """Images of bright rectangles on dark noise, one class per colour channel."""
    images, targets = [], []
    for _ in range(num):
        img = torch.rand(3, size, size, generator=g) * 40
        boxes, labels = [], []
        for _ in range(2):
            cls = int(torch.randint(0, 3, (1,), generator=g))
            x0, y0 = (torch.rand(2, generator=g) * size * 0.5).tolist()
            w, h = (torch.rand(2, generator=g) * size * 0.4 + size * 0.15).tolist()
            x1, y1 = min(x0 + w, size), min(y0 + h, size)
            img[cls, int(y0):int(y1), int(x0):int(x1)] = 230
            boxes.append([x0, y0, x1, y1])
            labels.append(cls)
        images.append(img)
        targets.append(Instances((size, size), boxes=Boxes(torch.tensor(boxes)), labels=torch.tensor(labels)))
    return images, targets


def test_tiny_ssdlite_trains_on_synthetic_data():
    torch.manual_seed(0)
    # 96 pixels (maps of 6, 3, 2, 1, 1, 1) and the first four MobileNet stages frozen: CPU-sized.
    cfg = load_config("ssdlite320_MV3", ["model.num_classes=3", "input.fixed_size=[96,96]", "model.backbone.freeze_at=4"])
    model = build_model(cfg.model, size_divisibility=1).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    images, targets = _synthetic_batch(g, 96, 2)
    history = []
    for _ in range(40):
        losses = model(model.preprocess(images), targets)
        assert set(losses) == {"loss_cls", "loss_box"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(float(total.detach()))
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5, history


def _tv_state_dict(fn, stand_ins: tuple[str, ...] = (), **kwargs) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict: its keys and shapes (built on the meta device, without the
    cost of initialising), random values; keys starting with ``stand_ins`` get small zero tensors."""
    with torch.device("meta"):
        shapes = fn(weights=None, **kwargs).state_dict()
    g = torch.Generator().manual_seed(0)

    def value(key: str, v: torch.Tensor) -> torch.Tensor:
        if key.startswith(stand_ins):
            return torch.zeros(2)
        return torch.randn(v.shape, generator=g) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)

    return {k: value(k, v) for k, v in shapes.items()}


def test_converter_rejects_other_architectures():
    vgg_cfg = load_config("ssd300_VGG16", [f"model.num_classes={NUM_CLASSES}"]).model
    lite_cfg = load_config("ssdlite320_MV3", [f"model.num_classes={NUM_CLASSES}"]).model
    vgg = _tv_state_dict(ssd300_vgg16, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    lite = _tv_state_dict(ssdlite320_mobilenet_v3_large, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    retina = _tv_state_dict(retinanet_resnet50_fpn, weights_backbone=None, num_classes=NUM_CLASSES)
    with pytest.raises(WeightsError, match="not recognised"):
        convert_ssd_state_dict(lite, vgg_cfg)
    with pytest.raises(WeightsError, match="missing"):
        convert_ssd_state_dict(vgg, lite_cfg)
    with pytest.raises(WeightsError, match="not recognised"):
        convert_ssd_state_dict(retina, lite_cfg)
    with pytest.raises(WeightsError, match="model.arch is 'retinanet'"):
        convert_ssd_state_dict(vgg, load_config("retinanet_R_50_FPN_1x").model)
    with pytest.raises(WeightsError, match="num_classes=7"):
        convert_ssd_state_dict(vgg, load_config("ssd300_VGG16", ["model.num_classes=7"]).model)
    # the full tail of an ImageNet-started SSDlite does not fit the reduced-tail config
    full_tail = load_config("ssdlite320_MV3", [f"model.num_classes={NUM_CLASSES}", "model.backbone.reduced_tail=false"]).model
    with pytest.raises(WeightsError, match="other shapes"):
        convert_ssd_state_dict(lite, full_tail)
    assert convert_ssd_state_dict(vgg, vgg_cfg) and convert_ssd_state_dict(lite, lite_cfg)


@pytest.mark.parametrize("variant", ["ssd300_vgg16", "ssdlite320"])
def test_converter_selects_coco_classes_from_91_slot_head(variant):
    """Per default box, the background row and the rows of COCO_CATEGORY_IDS of the 91-slot head."""
    fn, config_name = VARIANTS[variant]
    cfg = load_config(config_name).model
    assert cfg.num_classes == 80
    sd = _tv_state_dict(fn, weights_backbone=None, num_classes=91)
    out = convert_ssd_state_dict(sd, cfg)
    suffix = "" if variant == "ssd300_vgg16" else "1."
    for level in (0, 5):
        w = sd[f"head.classification_head.module_list.{level}.{suffix}weight"]
        b = sd[f"head.classification_head.module_list.{level}.{suffix}bias"]
        ow, ob = out[f"head.cls_logits.{level}.{suffix}weight"], out[f"head.cls_logits.{level}.{suffix}bias"]
        anchors = w.shape[0] // 91
        assert ow.shape[0] == anchors * 81
        for anchor in (0, anchors - 1):
            for row, slot in ((0, 0), (1, 1), (12, 13), (80, 90)):  # background, then label k at id
                assert torch.equal(ow[anchor * 81 + row], w[anchor * 91 + slot])
                assert ob[anchor * 81 + row] == b[anchor * 91 + slot]


def test_finetune_from_converted_file_with_another_class_count(tmp_path):
    """A converted SSDlite file loads into a 3-class model: all but the class predictors."""
    from swiftdet.cli.convert import convert_torchvision
    from swiftdet.weights.checkpoint import load_initial_weights

    tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    cfg = load_config("ssdlite320_MV3", [f"model.num_classes={NUM_CLASSES}"])
    convert_torchvision(str(tmp_path / "tv.pth"), str(tmp_path / "ssdlite.pth"), cfg)
    fine = load_config("ssdlite320_MV3", ["model.num_classes=3"])
    model = build_model(fine.model, size_divisibility=1)
    report = load_initial_weights(model, fine.model, str(tmp_path / "ssdlite.pth"))
    assert report.num_classes_in_file == NUM_CLASSES
    skipped = {s.split(":")[0] for s in report.skipped}
    assert skipped == {f"head.cls_logits.{level}.1.{p}" for level in range(6) for p in ("weight", "bias")}
    assert not report.missing and not report.unexpected
    state = model.state_dict()
    tv_state = tv.state_dict()
    assert torch.equal(state["extras.blocks.0.1.0.weight"], tv_state["backbone.extra.0.1.0.weight"])
    assert torch.equal(state["head.bbox_reg.2.1.weight"], tv_state["head.regression_head.module_list.2.1.weight"])
    assert state["head.cls_logits.0.1.weight"].shape[0] == 6 * 4  # 6 boxes per location x (3 + background)


def test_imagenet_vgg16_initialises_the_backbone(tmp_path):
    """torchvision's ImageNet vgg16 classification file is the SSD300 backbone's initialisation."""
    from torchvision.models import vgg16

    from swiftdet.weights.checkpoint import load_initial_weights

    # The classifier (~120M values) has no place in the detector; small stand-ins keep its keys.
    sd = _tv_state_dict(vgg16, stand_ins=("classifier.",))
    torch.save(sd, tmp_path / "vgg16.pth")
    cfg = load_config("ssd300_VGG16", [f"model.backbone.weights={tmp_path / 'vgg16.pth'}"]).model
    model = build_model(cfg, size_divisibility=1)
    report = load_initial_weights(model, cfg)
    assert not report.missing and not report.unexpected  # the classifier is dropped
    for i in (0, 21, 28):  # conv1_1, conv4_3, conv5_3
        assert torch.equal(model.state_dict()[f"backbone.features.{i}.weight"], sd[f"features.{i}.weight"])
    # freeze_at=1 (torchvision's trainable_backbone_layers=4): conv1 is frozen, conv2 trains
    assert not model.backbone.features[0].weight.requires_grad and model.backbone.features[5].weight.requires_grad


def test_default_boxes_match_torchvision():
    """Default boxes of both layouts, and at a size other than the recipe's, equal torchvision's."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.image_list import ImageList as TVImageList

    for config_name, tv_gen in (
        ("ssd300_VGG16", DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                             scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300])),
        ("ssdlite320_MV3", DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)),
    ):
        model = build_model(load_config(config_name, ["model.num_classes=2"]).model, size_divisibility=1)
        for shape in ((300, 300), (320, 256)):
            grids = [(math.ceil(shape[0] / s), math.ceil(shape[1] / s)) for s in (8, 16, 32, 64, 100, 300)]
            feats = [torch.zeros(1, 1, *g) for g in grids]
            ref = tv_gen(TVImageList(torch.zeros(1, 3, *shape), [shape]), feats)[0]
            assert torch.equal(model.default_boxes(shape, grids, torch.device("cpu")), ref)


@pytest.mark.parametrize("overrides,message", [
    (["model.backbone.name=resnet", "model.backbone.out_features=[res4,res5]"], "builds on model.backbone.name 'vgg16'"),
    (["model.arch=retinanet"], "'vgg16' serves model.arch 'ssd' only"),
    (["model.ssd.scales=[0.1,0.2]"], "model.ssd.scales has 2 values for 6 maps"),
    (["model.ssd.steps=[8,16]"], "model.ssd.steps has 2 values for 6 maps"),
    (["model.backbone.out_features=[conv3,conv4]"], "SSD300 takes VGG-16's"),
    (["model.backbone.freeze_at=6"], "VGG-16 has 5 stages"),
    (["model.backbone.norm=BN"], "VGG-16 has no norm layers"),
    (["input.size_divisibility=32"], "would pad SSD's input.fixed_size"),
])
def test_config_refuses_what_ssd300_cannot_build(overrides, message):
    from swiftdet.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("ssd300_VGG16", overrides)


def test_builder_refuses_aspect_ratios_for_another_number_of_maps():
    from swiftdet.errors import ConfigError

    cfg = load_config("ssdlite320_MV3", ["model.ssd.aspect_ratios=[[2.0],[2.0]]", "model.ssd.min_ratio=0.2"]).model
    with pytest.raises(ConfigError, match="aspect_ratios has 2 levels but the mobilenet_v3_large SSD has 6"):
        build_model(cfg, size_divisibility=1)
