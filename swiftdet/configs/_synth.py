"""Small from-scratch recipes on the synthetic shapes dataset at 128 pixels (``swiftdet demo`` makes
it in swiftdet_demo/data; or ``swiftdet synth swiftdet_demo/data --images 800 --val-images 100
--size 128``). They share the demo's data, input size and optimiser so architectures compare."""
from __future__ import annotations

from swiftdet.config.schema import Config

SYNTH_SIZE = 128
# The shapes of swiftdet.demo.synth.SYNTH_SHAPES (a recipe names the data it trains on; it does not
# import the generator, which sits above the configs; tests/test_synth.py keeps the two in step).
SYNTH_NUM_CLASSES = 5
SYNTH_DATA = "swiftdet_demo/data"


def synth_training(cfg: Config, *, max_iter: int = 600) -> Config:
    """Data paths, one input scale, AdamW + cosine, as in the demo."""
    cfg.model.num_classes = SYNTH_NUM_CLASSES
    cfg.data.train.json = f"{SYNTH_DATA}/annotations/instances_train.json"
    cfg.data.train.image_root = SYNTH_DATA
    cfg.data.test.json = f"{SYNTH_DATA}/annotations/instances_val.json"
    cfg.data.test.image_root = SYNTH_DATA
    cfg.data.num_workers = 0  # 128-pixel JPEGs decode in well under a millisecond
    cfg.input.min_size_train = (SYNTH_SIZE,)
    cfg.input.max_size_train = 2 * SYNTH_SIZE
    cfg.input.min_size_test = SYNTH_SIZE
    cfg.input.max_size_test = 2 * SYNTH_SIZE
    s = cfg.solver
    s.optimizer = "AdamW"
    s.base_lr = 0.002
    s.weight_decay = 0.05
    s.weight_decay_norm = s.weight_decay_bias = 0.0
    s.ims_per_batch = s.reference_batch_size = 8
    s.schedule = "cosine"
    s.steps = ()
    s.max_iter = max_iter
    s.warmup_iters = 50
    s.warmup_factor = 0.01
    s.checkpoint_period = 200
    s.keep_last = 1
    cfg.test.ims_per_batch = 8
    return cfg


def from_scratch_backbone(cfg: Config, fpn_channels: int = 64) -> Config:
    """ResNet-18 trained from scratch with BatchNorm everywhere (no pretrained weights offline)."""
    cfg.model.backbone.depth = 18
    cfg.model.backbone.norm = "BN"
    cfg.model.backbone.freeze_at = 0
    cfg.model.fpn.out_channels = fpn_channels
    cfg.model.fpn.norm = "BN"
    return cfg
