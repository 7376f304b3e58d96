"""Read a detectron2 yaml config (``_BASE_`` chains as detectron2's ``CfgNode.merge_from_file``
merges them) and map it to a swiftdet :class:`Config` with ``model.convention = "detectron2"``.

Unspecified keys take detectron2's defaults (``_D2_DEFAULTS``: the values of
``detectron2/config/defaults.py``, transcribed). A key detectron2's schema lacks (a typo) and every
setting that changes the model or its training in a way swiftdet cannot represent is refused by
name (ConfigError naming the yaml file, the key and its value); settings that change neither
(DATALOADER, OUTPUT_DIR, VIS_PERIOD, ...) are ignored. ``data`` is left empty: detectron2 names
registered datasets (DATASETS.TRAIN / TEST), which have no file paths here.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from swiftdet.config.core import validate_config
from swiftdet.config.schema import Config
from swiftdet.errors import ConfigError

__all__ = ["config_from_detectron2_yaml", "load_detectron2_yaml"]

# detectron2's defaults (detectron2/config/defaults.py at the fixtures' commit), every key.
_D2_DEFAULTS: dict[str, Any] = {'VERSION': 2,
 'MODEL': {'LOAD_PROPOSALS': False,
           'MASK_ON': False,
           'KEYPOINT_ON': False,
           'DEVICE': 'cuda',
           'META_ARCHITECTURE': 'GeneralizedRCNN',
           'WEIGHTS': '',
           'PIXEL_MEAN': [103.53, 116.28, 123.675],
           'PIXEL_STD': [1.0, 1.0, 1.0],
           'BACKBONE': {'NAME': 'build_resnet_backbone', 'FREEZE_AT': 2},
           'FPN': {'IN_FEATURES': [], 'OUT_CHANNELS': 256, 'NORM': '', 'FUSE_TYPE': 'sum'},
           'PROPOSAL_GENERATOR': {'NAME': 'RPN', 'MIN_SIZE': 0},
           'ANCHOR_GENERATOR': {'NAME': 'DefaultAnchorGenerator',
                                'SIZES': [[32, 64, 128, 256, 512]],
                                'ASPECT_RATIOS': [[0.5, 1.0, 2.0]],
                                'ANGLES': [[-90, 0, 90]],
                                'OFFSET': 0.0},
           'RPN': {'HEAD_NAME': 'StandardRPNHead',
                   'IN_FEATURES': ['res4'],
                   'BOUNDARY_THRESH': -1,
                   'IOU_THRESHOLDS': [0.3, 0.7],
                   'IOU_LABELS': [0, -1, 1],
                   'BATCH_SIZE_PER_IMAGE': 256,
                   'POSITIVE_FRACTION': 0.5,
                   'BBOX_REG_LOSS_TYPE': 'smooth_l1',
                   'BBOX_REG_LOSS_WEIGHT': 1.0,
                   'BBOX_REG_WEIGHTS': (1.0, 1.0, 1.0, 1.0),
                   'SMOOTH_L1_BETA': 0.0,
                   'LOSS_WEIGHT': 1.0,
                   'PRE_NMS_TOPK_TRAIN': 12000,
                   'PRE_NMS_TOPK_TEST': 6000,
                   'POST_NMS_TOPK_TRAIN': 2000,
                   'POST_NMS_TOPK_TEST': 1000,
                   'NMS_THRESH': 0.7,
                   'CONV_DIMS': [-1]},
           'ROI_HEADS': {'NAME': 'Res5ROIHeads',
                         'NUM_CLASSES': 80,
                         'IN_FEATURES': ['res4'],
                         'IOU_THRESHOLDS': [0.5],
                         'IOU_LABELS': [0, 1],
                         'BATCH_SIZE_PER_IMAGE': 512,
                         'POSITIVE_FRACTION': 0.25,
                         'SCORE_THRESH_TEST': 0.05,
                         'NMS_THRESH_TEST': 0.5,
                         'PROPOSAL_APPEND_GT': True},
           'ROI_BOX_HEAD': {'NAME': '',
                            'BBOX_REG_LOSS_TYPE': 'smooth_l1',
                            'BBOX_REG_LOSS_WEIGHT': 1.0,
                            'BBOX_REG_WEIGHTS': (10.0, 10.0, 5.0, 5.0),
                            'SMOOTH_L1_BETA': 0.0,
                            'POOLER_RESOLUTION': 14,
                            'POOLER_SAMPLING_RATIO': 0,
                            'POOLER_TYPE': 'ROIAlignV2',
                            'NUM_FC': 0,
                            'FC_DIM': 1024,
                            'NUM_CONV': 0,
                            'CONV_DIM': 256,
                            'NORM': '',
                            'CLS_AGNOSTIC_BBOX_REG': False,
                            'TRAIN_ON_PRED_BOXES': False,
                            'USE_FED_LOSS': False,
                            'USE_SIGMOID_CE': False,
                            'FED_LOSS_FREQ_WEIGHT_POWER': 0.5,
                            'FED_LOSS_NUM_CLASSES': 50},
           'ROI_BOX_CASCADE_HEAD': {'BBOX_REG_WEIGHTS': ((10.0, 10.0, 5.0, 5.0),
                                                         (20.0, 20.0, 10.0, 10.0),
                                                         (30.0, 30.0, 15.0, 15.0)),
                                    'IOUS': (0.5, 0.6, 0.7)},
           'ROI_MASK_HEAD': {'NAME': 'MaskRCNNConvUpsampleHead',
                             'POOLER_RESOLUTION': 14,
                             'POOLER_SAMPLING_RATIO': 0,
                             'NUM_CONV': 0,
                             'CONV_DIM': 256,
                             'NORM': '',
                             'CLS_AGNOSTIC_MASK': False,
                             'POOLER_TYPE': 'ROIAlignV2'},
           'ROI_KEYPOINT_HEAD': {'NAME': 'KRCNNConvDeconvUpsampleHead',
                                 'POOLER_RESOLUTION': 14,
                                 'POOLER_SAMPLING_RATIO': 0,
                                 'CONV_DIMS': (512, 512, 512, 512, 512, 512, 512, 512),
                                 'NUM_KEYPOINTS': 17,
                                 'MIN_KEYPOINTS_PER_IMAGE': 1,
                                 'NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS': True,
                                 'LOSS_WEIGHT': 1.0,
                                 'POOLER_TYPE': 'ROIAlignV2'},
           'SEM_SEG_HEAD': {'NAME': 'SemSegFPNHead',
                            'IN_FEATURES': ['p2', 'p3', 'p4', 'p5'],
                            'IGNORE_VALUE': 255,
                            'NUM_CLASSES': 54,
                            'CONVS_DIM': 128,
                            'COMMON_STRIDE': 4,
                            'NORM': 'GN',
                            'LOSS_WEIGHT': 1.0},
           'PANOPTIC_FPN': {'INSTANCE_LOSS_WEIGHT': 1.0,
                            'COMBINE': {'ENABLED': True,
                                        'OVERLAP_THRESH': 0.5,
                                        'STUFF_AREA_LIMIT': 4096,
                                        'INSTANCES_CONFIDENCE_THRESH': 0.5}},
           'RETINANET': {'NUM_CLASSES': 80,
                         'IN_FEATURES': ['p3', 'p4', 'p5', 'p6', 'p7'],
                         'NUM_CONVS': 4,
                         'IOU_THRESHOLDS': [0.4, 0.5],
                         'IOU_LABELS': [0, -1, 1],
                         'PRIOR_PROB': 0.01,
                         'SCORE_THRESH_TEST': 0.05,
                         'TOPK_CANDIDATES_TEST': 1000,
                         'NMS_THRESH_TEST': 0.5,
                         'BBOX_REG_WEIGHTS': (1.0, 1.0, 1.0, 1.0),
                         'FOCAL_LOSS_GAMMA': 2.0,
                         'FOCAL_LOSS_ALPHA': 0.25,
                         'SMOOTH_L1_LOSS_BETA': 0.1,
                         'BBOX_REG_LOSS_TYPE': 'smooth_l1',
                         'NORM': ''},
           'RESNETS': {'DEPTH': 50,
                       'OUT_FEATURES': ['res4'],
                       'NUM_GROUPS': 1,
                       'NORM': 'FrozenBN',
                       'WIDTH_PER_GROUP': 64,
                       'STRIDE_IN_1X1': True,
                       'RES5_DILATION': 1,
                       'RES2_OUT_CHANNELS': 256,
                       'STEM_OUT_CHANNELS': 64,
                       'DEFORM_ON_PER_STAGE': [False, False, False, False],
                       'DEFORM_MODULATED': False,
                       'DEFORM_NUM_GROUPS': 1}},
 'INPUT': {'MIN_SIZE_TRAIN': (800,),
           'MIN_SIZE_TRAIN_SAMPLING': 'choice',
           'MAX_SIZE_TRAIN': 1333,
           'MIN_SIZE_TEST': 800,
           'MAX_SIZE_TEST': 1333,
           'RANDOM_FLIP': 'horizontal',
           'CROP': {'ENABLED': False, 'TYPE': 'relative_range', 'SIZE': [0.9, 0.9]},
           'FORMAT': 'BGR',
           'MASK_FORMAT': 'polygon'},
 'DATASETS': {'TRAIN': (),
              'PROPOSAL_FILES_TRAIN': (),
              'PRECOMPUTED_PROPOSAL_TOPK_TRAIN': 2000,
              'TEST': (),
              'PROPOSAL_FILES_TEST': (),
              'PRECOMPUTED_PROPOSAL_TOPK_TEST': 1000},
 'DATALOADER': {'NUM_WORKERS': 4,
                'ASPECT_RATIO_GROUPING': True,
                'SAMPLER_TRAIN': 'TrainingSampler',
                'REPEAT_THRESHOLD': 0.0,
                'REPEAT_SQRT': True,
                'FILTER_EMPTY_ANNOTATIONS': True},
 'SOLVER': {'LR_SCHEDULER_NAME': 'WarmupMultiStepLR',
            'MAX_ITER': 40000,
            'BASE_LR': 0.001,
            'BASE_LR_END': 0.0,
            'MOMENTUM': 0.9,
            'NESTEROV': False,
            'WEIGHT_DECAY': 0.0001,
            'WEIGHT_DECAY_NORM': 0.0,
            'GAMMA': 0.1,
            'STEPS': (30000,),
            'NUM_DECAYS': 3,
            'WARMUP_FACTOR': 0.001,
            'WARMUP_ITERS': 1000,
            'WARMUP_METHOD': 'linear',
            'RESCALE_INTERVAL': False,
            'CHECKPOINT_PERIOD': 5000,
            'IMS_PER_BATCH': 16,
            'REFERENCE_WORLD_SIZE': 0,
            'BIAS_LR_FACTOR': 1.0,
            'WEIGHT_DECAY_BIAS': None,
            'CLIP_GRADIENTS': {'ENABLED': False, 'CLIP_TYPE': 'value', 'CLIP_VALUE': 1.0, 'NORM_TYPE': 2.0},
            'AMP': {'ENABLED': False}},
 'TEST': {'EXPECTED_RESULTS': [],
          'EVAL_PERIOD': 0,
          'KEYPOINT_OKS_SIGMAS': [],
          'DETECTIONS_PER_IMAGE': 100,
          'AUG': {'ENABLED': False,
                  'MIN_SIZES': (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
                  'MAX_SIZE': 4000,
                  'FLIP': True},
          'PRECISE_BN': {'ENABLED': False, 'NUM_ITER': 200}},
 'OUTPUT_DIR': './output',
 'SEED': -1,
 'CUDNN_BENCHMARK': False,
 'FLOAT32_PRECISION': '',
 'VIS_PERIOD': 0,
 'GLOBAL': {'HACK': 1.0}}



class _D2Config:
    """A merged detectron2 config: ``get("MODEL.RPN.NMS_THRESH")`` and the file each key came from."""

    def __init__(self, tree: dict[str, Any], origins: dict[str, str], path: str) -> None:
        self.tree, self.origins, self.path = tree, origins, path

    def get(self, key: str) -> Any:
        node: Any = self.tree
        for part in key.split("."):
            node = node[part]
        return node

    def where(self, key: str) -> str:
        return _where(self.path, self.origins, key)

    def refuse(self, key: str, why: str) -> ConfigError:
        """The error for ``key``'s value, naming the yaml given and the file that set it."""
        return ConfigError(f"{self.where(key)}: {key}: {self.get(key)!r} is not supported by swiftdet: {why}")


def _where(path: str, origins: dict[str, str], key: str) -> str:
    """The yaml given, and the _BASE_ file that set ``key`` where that is another one."""
    origin = origins.get(key)
    if origin is None:
        return f"{path} (detectron2's default)"
    return path if Path(origin) == Path(path).resolve() else f"{path} (via _BASE_ {origin})"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"detectron2 config '{path}' cannot be read ({e.strerror or e}).") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"detectron2 config '{path}' is not valid yaml (or uses python tags): "
                          f"{' '.join(str(e).split())[:200]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"detectron2 config '{path}' holds a {type(data).__name__}, not a mapping of keys.")
    return data


def _load_with_base(path: Path, origins: dict[str, str], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The yaml at ``path`` merged over its ``_BASE_`` (recursively, relative to the file's folder),
    as fvcore's ``load_yaml_with_base``: mappings merge key by key, other values replace."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"detectron2 config '{path}': _BASE_ chain loops ({' -> '.join(map(str, seen + (path,)))}).")
    data = _read_yaml(path)
    base_name = data.pop("_BASE_", None)
    own: dict[str, str] = {}
    _record(data, "", str(path), own)
    if base_name is None:
        origins.update(own)
        return data
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: _BASE_ must be a file name (got {base_name!r}).")
    base_path = Path(base_name).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.is_file():
        raise ConfigError(f"{path}: _BASE_ '{base_name}' does not exist (looked at {base_path}).")
    base = _load_with_base(base_path, origins, seen + (path,))
    _merge_into(data, base)
    origins.update(own)
    return base


def _record(data: dict[str, Any], prefix: str, origin: str, out: dict[str, str]) -> None:
    for k, v in data.items():
        out[prefix + str(k)] = origin
        if isinstance(v, dict):
            _record(v, f"{prefix}{k}.", origin, out)


def _merge_into(src: dict[str, Any], dst: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(v, dst[k])
        else:
            dst[k] = v


def _merge_over_defaults(data: dict[str, Any], defaults: dict[str, Any], prefix: str, cfg_path: str,
                         origins: dict[str, str]) -> None:
    """Put ``data``'s values into ``defaults`` (a copy), refusing keys detectron2 does not have and
    values of another type (detectron2's ``merge_from_other_cfg`` checks; ints pass for floats)."""
    for k, v in data.items():
        key = prefix + str(k)
        where = _where(cfg_path, origins, key)
        if k not in defaults:
            raise ConfigError(f"{where}: {key} is not a detectron2 config key (a typo, or a key of a detectron2 project "
                              f"that swiftdet does not know).")
        old = defaults[k]
        if isinstance(old, dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {key} must be a mapping of keys (got {v!r}).")
            _merge_over_defaults(v, old, key + ".", cfg_path, origins)
            continue
        if isinstance(v, dict):
            raise ConfigError(f"{where}: {key} is a single value in detectron2, not a mapping (got {v!r}).")
        same = (old is None or v is None or type(v) is type(old) or (isinstance(old, (list, tuple)) and isinstance(v, (list, tuple)))
                or (type(old) is float and type(v) is int))
        if not same:
            raise ConfigError(f"{where}: {key} must be of type {type(old).__name__} as in detectron2 (got {v!r}).")
        defaults[k] = v


def load_detectron2_yaml(path: str | Path) -> _D2Config:
    """detectron2's merged config for the yaml at ``path``: its ``_BASE_`` chain over the defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"detectron2 config '{path}' does not exist.")
    origins: dict[str, str] = {}
    data = _load_with_base(path, origins)
    version = data.get("VERSION", 2)
    if version != 2:
        raise ConfigError(f"{_where(str(path), origins, 'VERSION')}: VERSION: {version!r}: only detectron2's config version 2 is "
                          "read (upgrade older configs with detectron2 first).")
    tree = copy.deepcopy(_D2_DEFAULTS)
    _merge_over_defaults(data, tree, "", str(path), origins)
    return _D2Config(tree, origins, str(path))


def _require(d2: _D2Config, key: str, allowed: tuple, why: str) -> Any:
    value = d2.get(key)
    if (list(value) if isinstance(value, (list, tuple)) else value) not in [list(a) if isinstance(a, tuple) else a for a in allowed]:
        raise d2.refuse(key, why)
    return value


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _per_level(d2: _D2Config, key: str, num_levels: int) -> list[list[float]]:
    """ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS per feature level (one list is broadcast, as detectron2 does)."""
    value = [list(v) if isinstance(v, (list, tuple)) else [v] for v in d2.get(key)]
    if len(value) == 1:
        value = value * num_levels
    if len(value) != num_levels:
        raise d2.refuse(key, f"{len(value)} lists for {num_levels} feature levels (give one, or one per level).")
    return [[float(x) for x in v] for v in value]


def config_from_detectron2_yaml(path: str | Path) -> Config:
    """The swiftdet Config (validated) of the detectron2 yaml at ``path``; see the module docstring.

    Raises:
        ConfigError: unreadable file, unknown key, or a setting swiftdet cannot represent (named).
    """
    d2 = load_detectron2_yaml(path)
    cfg = Config()
    m = cfg.model
    m.convention = "detectron2"
    meta = _require(d2, "MODEL.META_ARCHITECTURE", ("GeneralizedRCNN", "RetinaNet", "ProposalNetwork"),
                    "swiftdet builds GeneralizedRCNN, RetinaNet and ProposalNetwork.")
    m.arch = {"GeneralizedRCNN": "rcnn", "RetinaNet": "retinanet", "ProposalNetwork": "rpn"}[meta]
    if m.arch == "rpn":  # its output is proposals, evaluated by proposal recall
        cfg.test.best_metric = "box_proposals/AR@1000"
    _map_backbone(d2, cfg)
    if m.arch in ("rcnn", "rpn"):
        _map_rpn(d2, cfg)
    if m.arch == "rcnn":
        _map_roi_heads(d2, cfg)
    if m.arch == "retinanet":
        _map_retinanet(d2, cfg)
    _map_input_solver(d2, cfg)
    try:
        return validate_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: the swiftdet config mapped from this detectron2 config is invalid: {e}") from None


def _map_backbone(d2: _D2Config, cfg: Config) -> None:
    m, b = cfg.model, cfg.model.backbone
    name = _require(d2, "MODEL.BACKBONE.NAME", ("build_resnet_backbone", "build_resnet_fpn_backbone",
                                                  "build_retinanet_resnet_fpn_backbone"),
                    "swiftdet builds detectron2's ResNet, ResNet-FPN and RetinaNet ResNet-FPN backbones.")
    if m.arch == "retinanet" and name != "build_retinanet_resnet_fpn_backbone":
        raise d2.refuse("MODEL.BACKBONE.NAME", "RetinaNet is built on build_retinanet_resnet_fpn_backbone (P6/P7 from C5).")
    if m.arch != "retinanet" and name == "build_retinanet_resnet_fpn_backbone":
        raise d2.refuse("MODEL.BACKBONE.NAME", "the P6/P7 backbone serves META_ARCHITECTURE RetinaNet only here.")
    if m.arch == "rpn" and name == "build_resnet_backbone":
        raise d2.refuse("MODEL.BACKBONE.NAME", "swiftdet's RPN-only model (ProposalNetwork) is built on an FPN.")
    b.name = "resnet"
    b.depth = _require(d2, "MODEL.RESNETS.DEPTH", (18, 34, 50, 101, 152), "ResNet depths are 18, 34, 50, 101, 152.")
    b.groups = d2.get("MODEL.RESNETS.NUM_GROUPS")
    b.width_per_group = d2.get("MODEL.RESNETS.WIDTH_PER_GROUP")
    b.style = "caffe" if d2.get("MODEL.RESNETS.STRIDE_IN_1X1") else "torchvision"
    b.norm = _require(d2, "MODEL.RESNETS.NORM", ("FrozenBN", "BN", "SyncBN", "GN"),
                      "swiftdet's backbone norms are FrozenBN, BN, SyncBN and GN.")
    b.freeze_at = d2.get("MODEL.BACKBONE.FREEZE_AT")
    b.out_features = tuple(d2.get("MODEL.RESNETS.OUT_FEATURES"))
    b.stem_out_channels = d2.get("MODEL.RESNETS.STEM_OUT_CHANNELS")
    b.res2_out_channels = d2.get("MODEL.RESNETS.RES2_OUT_CHANNELS")
    b.res5_dilation = _require(d2, "MODEL.RESNETS.RES5_DILATION", (1, 2), "res5 dilation is 1 or 2 (DC5).")
    deform = tuple(bool(x) for x in d2.get("MODEL.RESNETS.DEFORM_ON_PER_STAGE"))
    if len(deform) != 4:
        raise d2.refuse("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "one flag per stage res2..res5.")
    b.deform_on_per_stage = deform
    b.deform_modulated = bool(d2.get("MODEL.RESNETS.DEFORM_MODULATED"))
    b.deform_num_groups = d2.get("MODEL.RESNETS.DEFORM_NUM_GROUPS")
    if name == "build_resnet_backbone":
        m.fpn = type(m.fpn)()  # no FPN: its settings stay at swiftdet's defaults, unread
        return
    fpn = m.fpn
    fpn.in_features = tuple(d2.get("MODEL.FPN.IN_FEATURES"))
    fpn.out_channels = d2.get("MODEL.FPN.OUT_CHANNELS")
    fpn.norm = _require(d2, "MODEL.FPN.NORM", ("", "BN", "GN"), "swiftdet's FPN norms are '', BN and GN.")
    _require(d2, "MODEL.FPN.FUSE_TYPE", ("sum",), "swiftdet's FPN adds the top-down and lateral features (sum).")
    fpn.top_block = "p6p7_c5" if name == "build_retinanet_resnet_fpn_backbone" else "maxpool"


def _map_anchors(d2: _D2Config, anchors: Any, num_levels: int) -> None:
    _require(d2, "MODEL.ANCHOR_GENERATOR.NAME", ("DefaultAnchorGenerator",),
             "swiftdet generates axis-aligned anchors only (DefaultAnchorGenerator); ANGLES are not read by it.")
    anchors.sizes = tuple(tuple(s) for s in _per_level(d2, "MODEL.ANCHOR_GENERATOR.SIZES", num_levels))
    ratios = _per_level(d2, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", num_levels)
    if any(r != ratios[0] for r in ratios):
        raise d2.refuse("MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "swiftdet uses the same aspect ratios on every level.")
    anchors.aspect_ratios = tuple(ratios[0])
    anchors.offset = float(d2.get("MODEL.ANCHOR_GENERATOR.OFFSET"))


def _pair_thresholds(d2: _D2Config, prefix: str) -> tuple[float, float]:
    """(bg, fg) of a matcher with IOU_THRESHOLDS [bg, fg] and IOU_LABELS [0, -1, 1]."""
    _require(d2, f"{prefix}.IOU_LABELS", ([0, -1, 1],), "swiftdet's matcher labels [negative, ignored, positive].")
    t = d2.get(f"{prefix}.IOU_THRESHOLDS")
    if len(t) != 2:
        raise d2.refuse(f"{prefix}.IOU_THRESHOLDS", "two thresholds [negative below, positive from] are needed.")
    return float(t[0]), float(t[1])


def _map_precomputed_proposals(d2: _D2Config, cfg: Config) -> None:
    """Fast R-CNN: LOAD_PROPOSALS with the PrecomputedProposals generator -> model.proposal_generator
    'precomputed' (no RPN is built; the MODEL.RPN keys keep their values unread), with its proposal
    files (one per dataset) and top-k. Without LOAD_PROPOSALS detectron2 reads neither, nor do we."""
    load = _require(d2, "MODEL.LOAD_PROPOSALS", (False, True), "MODEL.LOAD_PROPOSALS is true or false.")
    name = _require(d2, "MODEL.PROPOSAL_GENERATOR.NAME", ("RPN", "PrecomputedProposals"),
                    "swiftdet's proposal generators are detectron2's RPN and PrecomputedProposals (Fast R-CNN).")
    if load != (name == "PrecomputedProposals"):
        raise d2.refuse("MODEL.LOAD_PROPOSALS", f"MODEL.PROPOSAL_GENERATOR.NAME is {name!r}: swiftdet loads proposals "
                        "(LOAD_PROPOSALS true) exactly when the generator is PrecomputedProposals.")
    if not load:
        return
    cfg.model.proposal_generator = "precomputed"
    for key, spec in (("DATASETS.PROPOSAL_FILES_TRAIN", cfg.data.train), ("DATASETS.PROPOSAL_FILES_TEST", cfg.data.test)):
        files = list(d2.get(key))
        if len(files) > 1:
            raise d2.refuse(key, "swiftdet trains and evaluates on one dataset each: give one proposal file.")
        spec.proposals = str(files[0]) if files else ""
    cfg.data.proposal_topk_train = int(d2.get("DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN"))
    cfg.data.proposal_topk_test = int(d2.get("DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST"))


def _map_rpn(d2: _D2Config, cfg: Config) -> None:
    rpn = cfg.model.rpn
    _map_precomputed_proposals(d2, cfg)
    _require(d2, "MODEL.RPN.HEAD_NAME", ("StandardRPNHead",), "swiftdet's RPN head is StandardRPNHead.")
    rpn.in_features = tuple(d2.get("MODEL.RPN.IN_FEATURES"))
    conv_dims = list(d2.get("MODEL.RPN.CONV_DIMS"))
    if not conv_dims or any(c != -1 for c in conv_dims):
        raise d2.refuse("MODEL.RPN.CONV_DIMS", "swiftdet's RPN convs keep the input width (-1 each).")
    rpn.num_convs = len(conv_dims)
    _map_anchors(d2, rpn.anchors, len(rpn.in_features))
    rpn.bg_iou_thresh, rpn.fg_iou_thresh = _pair_thresholds(d2, "MODEL.RPN")
    _require(d2, "MODEL.RPN.BOUNDARY_THRESH", (-1,), "swiftdet keeps anchors that cross the image border (-1).")
    _require(d2, "MODEL.RPN.BBOX_REG_LOSS_TYPE", ("smooth_l1",), "swiftdet's RPN box loss is smooth L1.")
    rpn.batch_size_per_image = d2.get("MODEL.RPN.BATCH_SIZE_PER_IMAGE")
    rpn.positive_fraction = float(d2.get("MODEL.RPN.POSITIVE_FRACTION"))
    rpn.box_reg_weights = _floats(d2.get("MODEL.RPN.BBOX_REG_WEIGHTS"))
    rpn.smooth_l1_beta = float(d2.get("MODEL.RPN.SMOOTH_L1_BETA"))
    rpn.loss_weight = float(d2.get("MODEL.RPN.LOSS_WEIGHT"))
    if d2.get("MODEL.RPN.BBOX_REG_LOSS_WEIGHT") != 1.0:
        raise d2.refuse("MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "swiftdet weighs the RPN's losses together (MODEL.RPN.LOSS_WEIGHT).")
    rpn.pre_nms_topk_train = d2.get("MODEL.RPN.PRE_NMS_TOPK_TRAIN")
    rpn.pre_nms_topk_test = d2.get("MODEL.RPN.PRE_NMS_TOPK_TEST")
    rpn.post_nms_topk_train = d2.get("MODEL.RPN.POST_NMS_TOPK_TRAIN")
    rpn.post_nms_topk_test = d2.get("MODEL.RPN.POST_NMS_TOPK_TEST")
    rpn.nms_thresh = float(d2.get("MODEL.RPN.NMS_THRESH"))
    rpn.min_box_size = float(d2.get("MODEL.PROPOSAL_GENERATOR.MIN_SIZE"))
    rpn.score_thresh = 0.0


_POOLERS = {"ROIAlignV2": True, "ROIAlign": False}


def _pooler_aligned(d2: _D2Config, key: str) -> bool:
    _require(d2, key, tuple(_POOLERS), "swiftdet pools with RoIAlign: ROIAlignV2 (aligned) or ROIAlign.")
    return _POOLERS[d2.get(key)]


def _map_roi_heads(d2: _D2Config, cfg: Config) -> None:
    m, bh = cfg.model, cfg.model.box_head
    name = _require(d2, "MODEL.ROI_HEADS.NAME", ("StandardROIHeads", "Res5ROIHeads", "CascadeROIHeads"),
                    "swiftdet's RoI heads are StandardROIHeads, Res5ROIHeads (C4) and CascadeROIHeads.")
    backbone = d2.get("MODEL.BACKBONE.NAME")
    if name == "Res5ROIHeads":
        if backbone != "build_resnet_backbone":
            raise d2.refuse("MODEL.ROI_HEADS.NAME", "Res5ROIHeads (the C4 layout) needs MODEL.BACKBONE.NAME build_resnet_backbone.")
        m.layout = "c4"
    elif backbone == "build_resnet_backbone":
        m.layout = "single"  # DC5: RPN and RoI heads on one backbone feature
        if name == "CascadeROIHeads":
            raise d2.refuse("MODEL.ROI_HEADS.NAME", "swiftdet's Cascade R-CNN is built on an FPN.")
    else:
        m.layout = "fpn"
    m.num_classes = d2.get("MODEL.ROI_HEADS.NUM_CLASSES")
    m.mask_on = bool(d2.get("MODEL.MASK_ON"))
    m.keypoint_on = bool(d2.get("MODEL.KEYPOINT_ON"))
    bh.in_features = tuple(d2.get("MODEL.ROI_HEADS.IN_FEATURES"))
    _require(d2, "MODEL.ROI_HEADS.IOU_LABELS", ([0, 1],), "swiftdet's RoI matcher labels [background, foreground].")
    ious = d2.get("MODEL.ROI_HEADS.IOU_THRESHOLDS")
    if len(ious) != 1:
        raise d2.refuse("MODEL.ROI_HEADS.IOU_THRESHOLDS", "one threshold between background and foreground is needed.")
    bh.fg_iou_thresh = bh.bg_iou_thresh = float(ious[0])
    bh.batch_size_per_image = d2.get("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE")
    bh.positive_fraction = float(d2.get("MODEL.ROI_HEADS.POSITIVE_FRACTION"))
    bh.score_thresh = float(d2.get("MODEL.ROI_HEADS.SCORE_THRESH_TEST"))
    bh.nms_thresh = float(d2.get("MODEL.ROI_HEADS.NMS_THRESH_TEST"))
    bh.detections_per_image = d2.get("TEST.DETECTIONS_PER_IMAGE")
    _require(d2, "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", (True,), "swiftdet adds the ground-truth boxes to the proposals.")

    p = "MODEL.ROI_BOX_HEAD"
    if m.layout == "c4":
        _require(d2, f"{p}.NAME", ("",), "Res5ROIHeads uses res5 as its box head (NAME '').")
    else:
        _require(d2, f"{p}.NAME", ("FastRCNNConvFCHead",), "swiftdet's box head is FastRCNNConvFCHead.")
        shape = (d2.get(f"{p}.NUM_CONV"), d2.get(f"{p}.NUM_FC"))
        if shape not in ((0, 2), (4, 1)):
            raise d2.refuse(f"{p}.NUM_CONV", f"with {p}.NUM_FC {shape[1]} ({d2.where(f'{p}.NUM_FC')}): swiftdet's box heads are 2 fcs (NUM_CONV 0, NUM_FC 2) or "
                                             "4 convs and 1 fc (NUM_CONV 4, NUM_FC 1).")
        bh.head = "2fc" if shape == (0, 2) else "4conv1fc"
        bh.fc_dim = d2.get(f"{p}.FC_DIM")
        bh.conv_dim = d2.get(f"{p}.CONV_DIM")
        bh.norm = _require(d2, f"{p}.NORM", ("", "BN", "GN"), "swiftdet's box head norms are '', BN and GN.")
        if bh.head == "2fc" and bh.norm:
            raise d2.refuse(f"{p}.NORM", "a head of fcs only has no norm layers in swiftdet (NUM_CONV 0).")
    bh.pooler_resolution = d2.get(f"{p}.POOLER_RESOLUTION")
    bh.pooler_sampling_ratio = d2.get(f"{p}.POOLER_SAMPLING_RATIO")
    bh.pooler_aligned = _pooler_aligned(d2, f"{p}.POOLER_TYPE")
    bh.cls_agnostic_bbox_reg = bool(d2.get(f"{p}.CLS_AGNOSTIC_BBOX_REG"))
    bh.box_reg_weights = _floats(d2.get(f"{p}.BBOX_REG_WEIGHTS"))
    bh.smooth_l1_beta = float(d2.get(f"{p}.SMOOTH_L1_BETA"))
    _require(d2, f"{p}.BBOX_REG_LOSS_TYPE", ("smooth_l1",), "swiftdet's box-head regression loss is smooth L1.")
    _require(d2, f"{p}.BBOX_REG_LOSS_WEIGHT", (1.0,), "swiftdet weighs the box regression loss 1.")
    # FED_LOSS_* matter only with USE_FED_LOSS (detectron2 reads them then only); fed needs sigmoid, as detectron2 asserts.
    if d2.get(f"{p}.USE_FED_LOSS"):
        if not d2.get(f"{p}.USE_SIGMOID_CE"):
            raise d2.refuse(f"{p}.USE_FED_LOSS", f"the federated loss is a sigmoid cross entropy: set {p}.USE_SIGMOID_CE "
                                                 "True too (detectron2 asserts it).")
        bh.cls_loss = "federated"
        bh.fed_loss_num_classes = d2.get(f"{p}.FED_LOSS_NUM_CLASSES")
        bh.fed_loss_freq_weight_power = float(d2.get(f"{p}.FED_LOSS_FREQ_WEIGHT_POWER"))
    elif d2.get(f"{p}.USE_SIGMOID_CE"):
        bh.cls_loss = "sigmoid"
    if name == "CascadeROIHeads" and bh.cls_loss != "softmax":
        raise d2.refuse(f"{p}.USE_SIGMOID_CE", "swiftdet's Cascade R-CNN stages train a softmax classifier (False).")
    _require(d2, f"{p}.TRAIN_ON_PRED_BOXES", (False,), "swiftdet trains the box head on proposals.")
    if name == "CascadeROIHeads":
        ious = _floats(d2.get("MODEL.ROI_BOX_CASCADE_HEAD.IOUS"))
        weights = tuple(_floats(w) for w in d2.get("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"))
        if len(weights) != len(ious):
            raise d2.refuse("MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", f"one 4-tuple per stage ({len(ious)} IOUS).")
        m.cascade.num_stages, m.cascade.ious, m.cascade.box_reg_weights = len(ious), ious, weights
        if not bh.cls_agnostic_bbox_reg:  # detectron2 asserts this too
            raise d2.refuse(f"{p}.CLS_AGNOSTIC_BBOX_REG", "CascadeROIHeads regresses class-agnostically (True).")
    if m.mask_on:
        mp, mh = "MODEL.ROI_MASK_HEAD", m.mask_head
        _require(d2, f"{mp}.NAME", ("MaskRCNNConvUpsampleHead",), "swiftdet's mask head is MaskRCNNConvUpsampleHead.")
        _require(d2, f"{mp}.CLS_AGNOSTIC_MASK", (False,), "swiftdet predicts one mask per class.")
        if _pooler_aligned(d2, f"{mp}.POOLER_TYPE") != bh.pooler_aligned:
            raise d2.refuse(f"{mp}.POOLER_TYPE", "swiftdet's mask pooler aligns as the box pooler does (ROI_BOX_HEAD.POOLER_TYPE).")
        mh.num_convs = d2.get(f"{mp}.NUM_CONV")
        mh.conv_dim = d2.get(f"{mp}.CONV_DIM")
        mh.norm = _require(d2, f"{mp}.NORM", ("", "BN", "GN"), "swiftdet's mask head norms are '', BN and GN.")
        mh.pooler_resolution = d2.get(f"{mp}.POOLER_RESOLUTION")
        mh.pooler_sampling_ratio = d2.get(f"{mp}.POOLER_SAMPLING_RATIO")
    if m.keypoint_on:
        kp, kh = "MODEL.ROI_KEYPOINT_HEAD", m.keypoint_head
        _require(d2, f"{kp}.NAME", ("KRCNNConvDeconvUpsampleHead",), "swiftdet's keypoint head is KRCNNConvDeconvUpsampleHead.")
        if _pooler_aligned(d2, f"{kp}.POOLER_TYPE") != bh.pooler_aligned:
            raise d2.refuse(f"{kp}.POOLER_TYPE", "swiftdet's keypoint pooler aligns as the box pooler does.")
        dims = list(d2.get(f"{kp}.CONV_DIMS"))
        if not dims or any(d != dims[0] for d in dims):
            raise d2.refuse(f"{kp}.CONV_DIMS", "swiftdet's keypoint convs all have one width.")
        kh.num_convs, kh.conv_dim = len(dims), dims[0]
        kh.num_keypoints = d2.get(f"{kp}.NUM_KEYPOINTS")
        kh.pooler_resolution = d2.get(f"{kp}.POOLER_RESOLUTION")
        kh.pooler_sampling_ratio = d2.get(f"{kp}.POOLER_SAMPLING_RATIO")
        kh.loss_weight = float(d2.get(f"{kp}.LOSS_WEIGHT"))
        _require(d2, f"{kp}.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS", (True,),
                 "swiftdet normalises the keypoint loss by the visible keypoints.")
        cfg.test.best_metric = "keypoints/AP"
    oks = d2.get("TEST.KEYPOINT_OKS_SIGMAS")
    cfg.test.keypoint_oks_sigmas = _floats(oks)


def _map_retinanet(d2: _D2Config, cfg: Config) -> None:
    r, p = cfg.model.retinanet, "MODEL.RETINANET"
    cfg.model.num_classes = d2.get(f"{p}.NUM_CLASSES")
    r.in_features = tuple(d2.get(f"{p}.IN_FEATURES"))
    _map_anchors(d2, r.anchors, len(r.in_features))
    r.num_convs = d2.get(f"{p}.NUM_CONVS")
    r.norm = _require(d2, f"{p}.NORM", ("", "GN"), "swiftdet's RetinaNet head norms are '' and GN.")
    r.prior_prob = float(d2.get(f"{p}.PRIOR_PROB"))
    r.bg_iou_thresh, r.fg_iou_thresh = _pair_thresholds(d2, p)
    r.focal_alpha = float(d2.get(f"{p}.FOCAL_LOSS_ALPHA"))
    r.focal_gamma = float(d2.get(f"{p}.FOCAL_LOSS_GAMMA"))
    loss = _require(d2, f"{p}.BBOX_REG_LOSS_TYPE", ("smooth_l1", "giou"), "swiftdet's RetinaNet box losses are smooth_l1 and giou.")
    beta = float(d2.get(f"{p}.SMOOTH_L1_LOSS_BETA"))
    r.box_loss = "l1" if loss == "smooth_l1" and beta == 0 else loss  # smooth L1 with beta 0 is L1
    r.smooth_l1_beta = beta if r.box_loss == "smooth_l1" else 0.0
    r.box_reg_weights = _floats(d2.get(f"{p}.BBOX_REG_WEIGHTS"))
    r.score_thresh = float(d2.get(f"{p}.SCORE_THRESH_TEST"))
    r.topk_candidates = d2.get(f"{p}.TOPK_CANDIDATES_TEST")
    r.nms_thresh = float(d2.get(f"{p}.NMS_THRESH_TEST"))
    r.detections_per_image = d2.get("TEST.DETECTIONS_PER_IMAGE")


def _map_input_solver(d2: _D2Config, cfg: Config) -> None:
    m, i, s = cfg.model, cfg.input, cfg.solver
    m.input_format = _require(d2, "INPUT.FORMAT", ("BGR", "RGB"), "swiftdet feeds BGR or RGB images.")
    m.pixel_mean = _floats(d2.get("MODEL.PIXEL_MEAN"))
    m.pixel_std = _floats(d2.get("MODEL.PIXEL_STD"))
    i.min_size_train = tuple(d2.get("INPUT.MIN_SIZE_TRAIN"))
    _require(d2, "INPUT.MIN_SIZE_TRAIN_SAMPLING", ("choice",), "swiftdet picks the training size from the list (choice).")
    i.max_size_train = d2.get("INPUT.MAX_SIZE_TRAIN")
    i.min_size_test = d2.get("INPUT.MIN_SIZE_TEST")
    i.max_size_test = d2.get("INPUT.MAX_SIZE_TEST")
    flip = _require(d2, "INPUT.RANDOM_FLIP", ("horizontal", "none"), "swiftdet flips horizontally or not at all.")
    i.hflip_prob = 0.5 if flip == "horizontal" else 0.0
    _require(d2, "INPUT.CROP.ENABLED", (False,), "swiftdet's R-CNN training has no random crop.")
    # detectron2 pads to the backbone's size_divisibility: 32 for an FPN, none for C4 / DC5.
    i.size_divisibility = 32 if d2.get("MODEL.BACKBONE.NAME") != "build_resnet_backbone" else 1
    sched = _require(d2, "SOLVER.LR_SCHEDULER_NAME", ("WarmupMultiStepLR", "WarmupCosineLR"),
                     "swiftdet's schedules are multistep and cosine, with linear warmup.")
    s.schedule = "multistep" if sched == "WarmupMultiStepLR" else "cosine"
    _require(d2, "SOLVER.WARMUP_METHOD", ("linear",), "swiftdet warms up linearly.")
    s.base_lr = float(d2.get("SOLVER.BASE_LR"))
    s.momentum = float(d2.get("SOLVER.MOMENTUM"))
    _require(d2, "SOLVER.NESTEROV", (False,), "swiftdet's SGD has no Nesterov momentum.")
    _require(d2, "SOLVER.BIAS_LR_FACTOR", (1.0,), "swiftdet trains biases at the base learning rate.")
    s.weight_decay = float(d2.get("SOLVER.WEIGHT_DECAY"))
    s.weight_decay_norm = float(d2.get("SOLVER.WEIGHT_DECAY_NORM"))
    bias_wd = d2.get("SOLVER.WEIGHT_DECAY_BIAS")
    s.weight_decay_bias = s.weight_decay if bias_wd is None else float(bias_wd)  # None: as WEIGHT_DECAY
    s.ims_per_batch = d2.get("SOLVER.IMS_PER_BATCH")
    s.reference_batch_size = s.ims_per_batch  # detectron2's BASE_LR is for its IMS_PER_BATCH
    s.max_iter = d2.get("SOLVER.MAX_ITER")
    # detectron2 ignores (with a warning) steps at or after MAX_ITER; a cosine schedule has none.
    s.steps = tuple(x for x in d2.get("SOLVER.STEPS") if x < s.max_iter) if s.schedule == "multistep" else ()
    s.gamma = float(d2.get("SOLVER.GAMMA"))
    s.warmup_iters = d2.get("SOLVER.WARMUP_ITERS")
    s.warmup_factor = float(d2.get("SOLVER.WARMUP_FACTOR"))
    s.checkpoint_period = d2.get("SOLVER.CHECKPOINT_PERIOD")
    s.amp = "fp16" if d2.get("SOLVER.AMP.ENABLED") else "off"
    if d2.get("SOLVER.CLIP_GRADIENTS.ENABLED"):
        _require(d2, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ("full_model",), "swiftdet clips the norm of all gradients together.")
        _require(d2, "SOLVER.CLIP_GRADIENTS.NORM_TYPE", (2.0,), "swiftdet clips the L2 norm.")
        s.clip_grad_norm = float(d2.get("SOLVER.CLIP_GRADIENTS.CLIP_VALUE"))
    cfg.test.eval_period = d2.get("TEST.EVAL_PERIOD")
    _require(d2, "TEST.AUG.ENABLED", (False,), "swiftdet has no test-time augmentation.")
    seed = d2.get("SEED")
    cfg.seed = seed if seed >= 0 else 0  # detectron2's -1 draws a seed per run; swiftdet's runs are seeded
