"""detectron2 yaml -> swiftdet Config, detectron2 / Detectron checkpoints -> swiftdet weights, and
`swiftdet convert detectron2|detectron`, on the fixtures of ../shared/fixtures/detectron2."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from swiftdet.cli.convert import convert_detectron2
from swiftdet.cli.main import main
from swiftdet.config.core import config_to_dict, config_to_yaml, load_config
from swiftdet.config.detectron2_yaml import config_from_detectron2_yaml
from swiftdet.errors import ConfigError, WeightsError
from swiftdet.weights.detectron import convert_detectron_blobs
from swiftdet.weights.detectron2 import convert_detectron2_file, read_detectron2_file

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SWIFTDET_SHARED_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures")) / "detectron2"
NAMES = ["mask_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_C4_1x", "faster_rcnn_R_50_DC5_1x", "keypoint_rcnn_R_50_FPN_1x",
         "cascade_mask_rcnn_R_50_FPN_1x", "retinanet_R_50_FPN_1x", "rpn_R_50_FPN_1x", "mask_rcnn_X_101_32x8d_FPN_3x",
         "mask_rcnn_R_50_FPN_1x_dconv_c3-c5", "mask_rcnn_R_50_FPN_3x_gn"]
DETECTRON = ["mask_rcnn_R_50_FPN_1x", "faster_rcnn_R_50_C4_1x", "keypoint_rcnn_R_50_FPN_1x"]
EXPECTED = {  # (arch, layout, cascade stages, mask, keypoints) the yaml describes
    "mask_rcnn_R_50_FPN_1x": ("rcnn", "fpn", 0, True, False),
    "faster_rcnn_R_50_C4_1x": ("rcnn", "c4", 0, False, False),
    "faster_rcnn_R_50_DC5_1x": ("rcnn", "single", 0, False, False),
    "keypoint_rcnn_R_50_FPN_1x": ("rcnn", "fpn", 0, False, True),
    "cascade_mask_rcnn_R_50_FPN_1x": ("rcnn", "fpn", 3, True, False),
    "retinanet_R_50_FPN_1x": ("retinanet", "fpn", 0, False, False),
    "rpn_R_50_FPN_1x": ("rpn", "fpn", 0, False, False),
    "mask_rcnn_X_101_32x8d_FPN_3x": ("rcnn", "fpn", 0, True, False),
    "mask_rcnn_R_50_FPN_1x_dconv_c3-c5": ("rcnn", "fpn", 0, True, False),
    "mask_rcnn_R_50_FPN_3x_gn": ("rcnn", "fpn", 0, True, False),
}


def _fixture(name: str) -> Path:
    d = FIXTURES / name
    if not (d / "config.yaml").is_file():
        pytest.skip(f"detectron2 fixtures not found at {d} (present only beside a developer's or CI's checkout)")
    return d


def _model_gap(cfg) -> str | None:
    """The model piece swiftdet does not build yet for ``cfg`` (other work of issue 11), or None.
    Only these named gaps skip; any other failure to load the converted weights fails the test."""
    from swiftdet.model.build import build_model

    try:
        model = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    except Exception as e:  # noqa: BLE001 - reported as the missing piece
        return f"the model of this config is not buildable yet: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    sd = model.state_dict()
    b = cfg.model.backbone
    if sd["backbone.conv1.weight"].shape[0] != b.stem_out_channels:
        return "the ResNet ignores model.backbone.stem_out_channels / res2_out_channels (detectron2's widths)"
    if any(b.deform_on_per_stage) and not any("conv2_offset" in k for k in sd):
        return "deformable convs (model.backbone.deform_on_per_stage) are not built yet"
    if cfg.model.cascade.num_stages and not any(k.startswith("roi_heads.box_heads.") for k in sd):
        return "Cascade R-CNN (model.cascade.num_stages) is not built yet"
    return None


def _build_and_load(cfg, weights: dict) -> None:
    from swiftdet.model.build import build_model

    model = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    own = model.state_dict()
    assert sorted(own) == sorted(weights), (set(own) ^ set(weights))
    assert all(own[k].shape == weights[k].shape for k in own), [k for k in own if own[k].shape != weights[k].shape][:5]
    model.load_state_dict(weights, strict=True)


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_fixture_config_maps_validates_and_round_trips(name, tmp_path):
    d = _fixture(name)
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    m = cfg.model
    assert m.convention == "detectron2"
    assert (m.arch, m.layout, m.cascade.num_stages, m.mask_on, m.keypoint_on) == EXPECTED[name]
    assert m.input_format == "BGR" and m.pixel_mean == (103.53, 116.28, 123.675)
    assert m.backbone.stem_out_channels == (64 if name.endswith("_gn") else 4)
    assert cfg.input.size_divisibility == (1 if m.layout in ("c4", "single") else 32)
    assert cfg.data.train.json == "" and cfg.data.test.json == ""  # registered d2 datasets have no files here
    if m.arch != "rpn":
        assert m.num_classes == (1 if m.keypoint_on else 80)
    if m.arch == "rcnn":
        assert m.box_head.pooler_aligned and m.box_head.box_reg_weights == (10.0, 10.0, 5.0, 5.0)
    path = tmp_path / "swiftdet.yaml"
    path.write_text(config_to_yaml(cfg))
    assert config_to_dict(load_config(str(path))) == config_to_dict(cfg)


def test_specific_values_mapped():
    c4 = config_from_detectron2_yaml(_fixture("faster_rcnn_R_50_C4_1x") / "config.yaml").model
    assert c4.rpn.anchors.sizes == ((32.0, 64.0, 128.0, 256.0, 512.0),) and c4.rpn.pre_nms_topk_test == 6000
    assert c4.backbone.style == "caffe" and c4.backbone.out_features == ("res4",) and c4.box_head.pooler_resolution == 14
    dc5 = config_from_detectron2_yaml(_fixture("faster_rcnn_R_50_DC5_1x") / "config.yaml").model
    assert dc5.backbone.res5_dilation == 2 and dc5.rpn.in_features == ("res5",) and dc5.box_head.in_features == ("res5",)
    x101 = config_from_detectron2_yaml(_fixture("mask_rcnn_X_101_32x8d_FPN_3x") / "config.yaml").model
    assert (x101.backbone.depth, x101.backbone.groups, x101.backbone.style) == (101, 2, "torchvision")
    assert x101.pixel_std == (57.375, 57.12, 58.395)
    gn = config_from_detectron2_yaml(_fixture("mask_rcnn_R_50_FPN_3x_gn") / "config.yaml").model
    assert (gn.backbone.norm, gn.fpn.norm, gn.box_head.head, gn.box_head.norm, gn.mask_head.norm) == ("GN", "GN", "4conv1fc", "GN", "GN")
    dconv = config_from_detectron2_yaml(_fixture("mask_rcnn_R_50_FPN_1x_dconv_c3-c5") / "config.yaml").model
    assert dconv.backbone.deform_on_per_stage == (False, True, True, True)
    casc = config_from_detectron2_yaml(_fixture("cascade_mask_rcnn_R_50_FPN_1x") / "config.yaml").model
    assert casc.cascade.ious == (0.5, 0.6, 0.7) and casc.cascade.box_reg_weights[2] == (30.0, 30.0, 15.0, 15.0)
    assert casc.box_head.cls_agnostic_bbox_reg
    ret = config_from_detectron2_yaml(_fixture("retinanet_R_50_FPN_1x") / "config.yaml")
    assert ret.model.fpn.top_block == "p6p7_c5" and ret.model.retinanet.detections_per_image == 100
    assert len(ret.model.retinanet.anchors.sizes) == 5 and len(ret.model.retinanet.anchors.sizes[0]) == 3
    assert ret.model.retinanet.box_loss == "l1"  # the zoo config: smooth L1 with SMOOTH_L1_LOSS_BETA 0
    kp = config_from_detectron2_yaml(_fixture("keypoint_rcnn_R_50_FPN_1x") / "config.yaml").model
    assert (kp.keypoint_head.num_convs, kp.keypoint_head.conv_dim, kp.keypoint_head.num_keypoints) == (8, 8, 17)
    rpn = config_from_detectron2_yaml(_fixture("rpn_R_50_FPN_1x") / "config.yaml").model
    assert rpn.rpn.post_nms_topk_test == 2000 and rpn.rpn.min_box_size == 0.0


def test_base_chain_merges_and_defaults_fill(tmp_path):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    (base_dir / "Base.yaml").write_text((_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml").read_text())
    (tmp_path / "mid.yaml").write_text("_BASE_: base/Base.yaml\nMODEL:\n  RPN:\n    NMS_THRESH: 0.6\n")
    (tmp_path / "top.yaml").write_text("_BASE_: mid.yaml\nMODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 0.3\n"
                                       "SOLVER:\n  BASE_LR: 1\n")
    cfg = config_from_detectron2_yaml(tmp_path / "top.yaml")
    ref = config_from_detectron2_yaml(base_dir / "Base.yaml")
    assert cfg.model.rpn.nms_thresh == 0.6 and cfg.model.box_head.score_thresh == 0.3 and cfg.solver.base_lr == 1.0
    assert cfg.model.backbone == ref.model.backbone and cfg.model.fpn == ref.model.fpn  # merged key by key
    # Only a few keys given: detectron2's defaults fill the rest (R-50-C4 Faster R-CNN pieces).
    (tmp_path / "small.yaml").write_text("MODEL:\n  ROI_HEADS:\n    NAME: Res5ROIHeads\n")
    small = config_from_detectron2_yaml(tmp_path / "small.yaml")
    assert (small.model.layout, small.model.num_classes, small.model.backbone.out_features) == ("c4", 80, ("res4",))
    assert small.model.rpn.pre_nms_topk_test == 6000 and (small.solver.steps, small.solver.max_iter) == ((30000,), 40000)


def test_load_proposals_maps_to_fast_rcnn(tmp_path):
    """detectron2's fast_rcnn_R_50_FPN_1x.yaml: LOAD_PROPOSALS with PrecomputedProposals is a Fast R-CNN
    (model.proposal_generator precomputed) with its proposal files and top-k; inconsistent settings are refused."""
    (tmp_path / "Base.yaml").write_text((_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml").read_text())
    fast = ("_BASE_: Base.yaml\nMODEL:\n  MASK_ON: false\n  LOAD_PROPOSALS: true\n  PROPOSAL_GENERATOR:\n"
            "    NAME: PrecomputedProposals\nDATASETS:\n  PROPOSAL_FILES_TRAIN: [train_props.pkl]\n"
            "  PROPOSAL_FILES_TEST: [val_props.pkl]\n  PRECOMPUTED_PROPOSAL_TOPK_TRAIN: 1500\n"
            "  PRECOMPUTED_PROPOSAL_TOPK_TEST: 700\n")
    (tmp_path / "fast.yaml").write_text(fast)
    cfg = config_from_detectron2_yaml(tmp_path / "fast.yaml")
    assert cfg.model.proposal_generator == "precomputed" and not cfg.model.mask_on
    assert (cfg.data.train.proposals, cfg.data.test.proposals) == ("train_props.pkl", "val_props.pkl")
    assert (cfg.data.proposal_topk_train, cfg.data.proposal_topk_test) == (1500, 700)
    plain = config_from_detectron2_yaml(tmp_path / "Base.yaml")  # an RPN model reads none of them
    assert plain.model.proposal_generator == "rpn" and plain.data.test.proposals == ""
    (tmp_path / "half.yaml").write_text("_BASE_: Base.yaml\nMODEL:\n  LOAD_PROPOSALS: true\n")
    with pytest.raises(ConfigError, match="half.yaml.*MODEL.LOAD_PROPOSALS"):
        config_from_detectron2_yaml(tmp_path / "half.yaml")
    (tmp_path / "two.yaml").write_text(fast.replace("[train_props.pkl]", "[a.pkl, b.pkl]"))
    with pytest.raises(ConfigError, match="two.yaml.*DATASETS.PROPOSAL_FILES_TRAIN"):
        config_from_detectron2_yaml(tmp_path / "two.yaml")


BAD_SETTINGS = [
    # USE_SIGMOID_CE and USE_FED_LOSS map (tests/test_fed_loss.py); the federated loss without the sigmoid does not.
    ("MODEL:\n  ROI_BOX_HEAD:\n    USE_FED_LOSS: true\n", "MODEL.ROI_BOX_HEAD.USE_FED_LOSS"),
    ("MODEL:\n  ROI_MASK_HEAD:\n    CLS_AGNOSTIC_MASK: true\n", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"),
    ("MODEL:\n  FPN:\n    FUSE_TYPE: avg\n", "MODEL.FPN.FUSE_TYPE"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    POOLER_TYPE: ROIPool\n", "MODEL.ROI_BOX_HEAD.POOLER_TYPE"),
    ("MODEL:\n  ROI_MASK_HEAD:\n    POOLER_TYPE: ROIAlign\n", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"),
    ("MODEL:\n  ROI_HEADS:\n    NAME: RROIHeads\n", "MODEL.ROI_HEADS.NAME"),
    ("MODEL:\n  ANCHOR_GENERATOR:\n    NAME: RotatedAnchorGenerator\n", "MODEL.ANCHOR_GENERATOR.NAME"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    BBOX_REG_LOSS_TYPE: giou\n", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE"),
    ("MODEL:\n  META_ARCHITECTURE: PanopticFPN\n", "MODEL.META_ARCHITECTURE"),
    ("MODEL:\n  ROI_BOX_HEAD:\n    NUM_FC: 3\n", "MODEL.ROI_BOX_HEAD.NUM_CONV"),
    ("MODEL:\n  RPN:\n    NMS_THRES: 0.5\n", "MODEL.RPN.NMS_THRES"),  # a typo: not in detectron2's schema
    ("MODEL:\n  RPN:\n    NMS_THRESH: [0.5]\n", "MODEL.RPN.NMS_THRESH"),  # a wrong type
]


@pytest.mark.parametrize("text,key", BAD_SETTINGS, ids=[k for _, k in BAD_SETTINGS])
def test_unsupported_setting_refused_by_name(text, key, tmp_path):
    base = tmp_path / "Base.yaml"
    base.write_text((_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml").read_text())
    top = tmp_path / "bad.yaml"
    top.write_text("_BASE_: Base.yaml\n" + text)
    with pytest.raises(ConfigError) as err:
        config_from_detectron2_yaml(top)
    message = str(err.value)
    assert str(top.resolve()) in message and key in message


def test_ignored_settings_do_not_change_the_model(tmp_path):
    base = tmp_path / "Base.yaml"
    base.write_text((_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml").read_text())
    top = tmp_path / "top.yaml"
    top.write_text("_BASE_: Base.yaml\nOUTPUT_DIR: /elsewhere\nVIS_PERIOD: 7\nDATALOADER:\n  NUM_WORKERS: 9\n")
    assert config_to_dict(config_from_detectron2_yaml(top).model) == config_to_dict(config_from_detectron2_yaml(base).model)


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_pkl_and_pth_convert_identically_and_load_strictly(name):
    d = _fixture(name)
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    fmt, source = read_detectron2_file(d / "model_final.pkl")
    assert fmt == "detectron2"
    from_pkl = convert_detectron2_file(d / "model_final.pkl", cfg.model, expected_format="detectron2")
    # Every tensor of the file is kept (bar computed buffers), values unchanged up to the class layout.
    kept = [k for k in source if not k.startswith(("pixel_", "proposal_generator.anchor_generator", "anchor_generator"))]
    assert len(from_pkl) == len(kept)
    assert sum(float(v.double().sum()) for v in from_pkl.values()) == pytest.approx(
        sum(float(source[k].double().sum()) for k in kept), rel=1e-12, abs=1e-9)  # zero background slots add 0
    if (d / "model_final.pth").is_file():
        from_pth = convert_detectron2_file(d / "model_final.pth", cfg.model)
        assert sorted(from_pth) == sorted(from_pkl)
        assert all(from_pth[k].dtype == torch.float32 and torch.equal(from_pth[k], from_pkl[k]) for k in from_pkl)
    if cfg.model.arch == "rcnn":
        for key in [k for k in from_pkl if k.endswith("cls_score.weight")]:
            d2_key = key.replace("box_predictors.", "box_predictor.")
            if d2_key in source:  # background: last in detectron2, first in swiftdet
                assert torch.equal(from_pkl[key][0], source[d2_key][-1]) and torch.equal(from_pkl[key][1:], source[d2_key][:-1])
    gap = _model_gap(cfg)
    if gap:
        pytest.skip(f"{name}: {gap}")
    _build_and_load(cfg, from_pkl)


@pytest.mark.parametrize("name", DETECTRON)
def test_detectron_file_equals_its_detectron2_twin_but_folded_norms(name):
    d = _fixture(name)
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    fmt, blobs = read_detectron2_file(d / "detectron_model.pkl")
    assert fmt == "detectron"
    _, twin = read_detectron2_file(d / "model_final.pkl")
    got = convert_detectron_blobs(blobs, cfg.model, name)
    assert sorted(got) == sorted(twin)
    folded = 0
    for key, ref in twin.items():
        base = key.rsplit(".", 1)[0] + "."
        if base + "running_var" in twin:  # FrozenBN: AffineChannel scale and shift, statistics 0 / 1
            s = twin[base + "weight"].double() / torch.sqrt(twin[base + "running_var"].double() + 1e-5)
            expect = {"weight": s, "bias": twin[base + "bias"].double() - twin[base + "running_mean"].double() * s,
                      "running_mean": torch.zeros_like(s), "running_var": torch.ones_like(s)}[key.rsplit(".", 1)[1]]
            assert torch.equal(got[key], expect.float()), key
            folded += 1
        else:
            assert torch.equal(got[key], ref), key
    assert folded > 50
    # and through to swiftdet's layout: same as the twin there too, except the norms
    a = convert_detectron2_file(d / "detectron_model.pkl", cfg.model, expected_format="detectron")
    b = convert_detectron2_file(d / "model_final.pkl", cfg.model)
    assert sorted(a) == sorted(b)
    norms = {k.rsplit(".", 1)[0] for k in b if k.endswith("running_var")}
    assert all(torch.equal(a[k], b[k]) for k in a if k.rsplit(".", 1)[0] not in norms)
    assert all(torch.equal(a[k], torch.ones_like(a[k])) for k in a if k.endswith("running_var"))
    gap = _model_gap(cfg)
    if gap:
        pytest.skip(f"{name}: {gap}")
    cfg.model.backbone.norm_eps = 0.0
    _build_and_load(cfg, a)


def test_detectron_drops_momentum_and_fixed_upsampling():
    d = _fixture("keypoint_rcnn_R_50_FPN_1x")
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    _, blobs = read_detectron2_file(d / "detectron_model.pkl")
    assert "kps_score_w" in blobs
    blobs["conv1_momentum"] = torch.zeros(1)
    got = convert_detectron_blobs(blobs, cfg.model, "x")
    assert "roi_heads.keypoint_head.score_lowres.weight" in got
    assert not any("keypoint_head.score." in k or "momentum" in k for k in got)


def test_wrong_format_for_the_verb():
    d = _fixture("mask_rcnn_R_50_FPN_1x")
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    with pytest.raises(WeightsError, match="model_final.pkl.*convert detectron2"):
        convert_detectron2_file(d / "model_final.pkl", cfg.model, expected_format="detectron")
    with pytest.raises(WeightsError, match="detectron_model.pkl.*convert detectron`"):
        convert_detectron2_file(d / "detectron_model.pkl", cfg.model, expected_format="detectron2")


def test_other_architecture_refused(tmp_path):
    mask = config_from_detectron2_yaml(_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml")
    retina = _fixture("retinanet_R_50_FPN_1x") / "model_final.pkl"
    with pytest.raises(WeightsError, match="retinanet_R_50_FPN_1x/model_final.pkl"):
        convert_detectron2(str(retina), str(tmp_path / "out.pth"), mask)
    c4 = config_from_detectron2_yaml(_fixture("faster_rcnn_R_50_C4_1x") / "config.yaml")
    with pytest.raises(WeightsError, match="keypoint_rcnn_R_50_FPN_1x/detectron_model.pkl"):
        convert_detectron2(str(_fixture("keypoint_rcnn_R_50_FPN_1x") / "detectron_model.pkl"), str(tmp_path / "o.pth"),
                           c4, "detectron")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "o.pth").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + str(_Evil.marker),))


def test_pkl_that_is_not_a_checkpoint(tmp_path):
    listed = tmp_path / "list.pkl"
    listed.write_bytes(pickle.dumps([np.zeros(3, np.float32)], protocol=2))
    with pytest.raises(WeightsError, match="list.pkl.*list"):
        read_detectron2_file(listed)
    _Evil.marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": _Evil()}}, protocol=2))
    with pytest.raises(WeightsError, match="evil.pkl.*(posix|nt).system"):
        read_detectron2_file(evil)
    assert not _Evil.marker.exists()
    empty_blobs = tmp_path / "blobs.pkl"
    empty_blobs.write_bytes(pickle.dumps({"blobs": {b"weird_blob_w": np.zeros(2, np.float32)}}, protocol=2))
    cfg = config_from_detectron2_yaml(_fixture("mask_rcnn_R_50_FPN_1x") / "config.yaml")
    with pytest.raises(WeightsError, match="blobs.pkl.*weird_blob_w"):
        convert_detectron2_file(empty_blobs, cfg.model)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def test_cli_errors_name_file_and_key(tmp_path, capsys):
    d = _fixture("mask_rcnn_R_50_FPN_1x")
    out = tmp_path / "out.pth"
    assert main(["convert", "detectron", str(d / "model_final.pkl"), str(out), "--d2-config", str(d / "config.yaml")]) == 2
    assert "convert detectron2" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {d / 'config.yaml'}\nMODEL:\n  FPN:\n    FUSE_TYPE: avg\n")
    assert main(["convert", "detectron2", str(d / "model_final.pkl"), str(out), "--d2-config", str(bad)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "MODEL.FPN.FUSE_TYPE" in err and "bad.yaml" in err
    assert main(["convert", "detectron2", str(d / "model_final.pkl"), str(out)]) == 2  # neither config given
    assert "--d2-config" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".yaml").exists()


@pytest.mark.parametrize("verb,name,file", [("detectron2", "mask_rcnn_R_50_FPN_1x", "model_final.pth"),
                                            ("detectron", "keypoint_rcnn_R_50_FPN_1x", "detectron_model.pkl")])
def test_cli_end_to_end(verb, name, file, tmp_path):
    d = _fixture(name)
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    gap = _model_gap(cfg)
    if gap:
        pytest.skip(f"{name}: {gap}")
    out = tmp_path / "converted.pth"
    assert main(["convert", verb, str(d / file), str(out), "--d2-config", str(d / "config.yaml")]) == 0
    written = load_config(str(out.with_suffix(".yaml")))
    assert written.model.convention == "detectron2"
    assert written.model.backbone.norm_eps == (0.0 if verb == "detectron" else 1e-5)
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    assert ckpt["meta"]["converted_from"] == f"{verb}:{file}"
    assert ckpt["meta"]["class_names"][0] == "person"
    weights = convert_detectron2_file(d / file, written.model)
    model_sd = ckpt.get("model") or ckpt.get("state_dict")
    assert all(torch.equal(model_sd[k], weights[k]) for k in weights)


def test_detectron_c4_file_gives_detectron2_detections(tiny_coco):
    """The folded AffineChannel norms are exact with FrozenBN eps 0: detectron2's outputs (outputs.json)
    within float noise (README: 1e-2 px, 1e-4 score), on both images (no resize, no padding for C4)."""
    import json

    from torchvision.ops import box_iou

    from swiftdet.data.transforms import read_image
    from swiftdet.model.build import build_model

    d = _fixture("faster_rcnn_R_50_C4_1x")
    cfg = config_from_detectron2_yaml(d / "config.yaml")
    cfg.model.backbone.norm_eps = 0.0
    model = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    model.load_state_dict(convert_detectron2_file(d / "detectron_model.pkl", cfg.model, "detectron"), strict=True)
    model.eval()
    npz = np.load(d / "outputs.npz")
    for index, entry in enumerate(json.loads((d / "outputs.json").read_text())["images"]):
        result = model.predict([read_image(tiny_coco / entry["file_name"])])[0]
        ref_boxes = torch.from_numpy(npz[f"img{index}_pred_boxes"])
        ref_scores = torch.from_numpy(npz[f"img{index}_scores"])
        ref_classes = torch.from_numpy(npz[f"img{index}_pred_classes"])
        assert len(result) == len(ref_boxes)
        iou = box_iou(ref_boxes, result.boxes.tensor)
        iou[ref_classes[:, None] != result.labels[None, :]] = -1  # labels: 0-based COCO classes, as detectron2's
        best = iou.argmax(dim=1)
        assert len(set(best.tolist())) == len(best) and bool((iou.max(dim=1).values > 0.999).all())
        assert (result.boxes.tensor[best] - ref_boxes).abs().max() < 1e-2
        assert (result.scores[best] - ref_scores).abs().max() < 1e-4
