"""Cascade Mask R-CNN on the 128-pixel synthetic shapes dataset: the demo's Mask R-CNN
(configs/demo_mask_rcnn.py: ResNet-18-FPN from scratch, same data, input size and optimiser) with
three cascade box stages, so the two compare at equal iterations (benchmarks/cascade_vs_mask_rcnn.py)."""
from swiftdet.config.schema import Config
from swiftdet.configs.cascade_mask_rcnn_R_50_FPN_1x import cascade
from swiftdet.configs.demo_mask_rcnn import config as demo_config


def config() -> Config:
    cfg = cascade(demo_config())
    cfg.test.best_metric = "bbox/AP"
    cfg.output_dir = "output/synth_cascade_mask_rcnn"
    return cfg
