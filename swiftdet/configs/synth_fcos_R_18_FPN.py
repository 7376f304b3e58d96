"""FCOS, ResNet-18-FPN from scratch, on the 128-pixel synthetic shapes dataset (CPU-sized)."""
from swiftdet.config.schema import Config
from swiftdet.configs._dense import fcos_fpn
from swiftdet.configs._synth import from_scratch_backbone, synth_training


def config() -> Config:
    cfg = from_scratch_backbone(synth_training(fcos_fpn(depth=18)))
    f = cfg.model.fcos
    f.num_convs = 2
    f.score_thresh = 0.05  # the COCO default 0.2 cuts recall early in a short schedule
    f.detections_per_image = 50
    cfg.output_dir = "output/synth_fcos"
    return cfg
