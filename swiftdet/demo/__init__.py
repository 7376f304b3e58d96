"""The demo application: a synthetic shapes dataset (:mod:`swiftdet.demo.synth`) and the end-to-end
run of ``swiftdet demo`` (:mod:`swiftdet.demo.app`: make the data, train, evaluate, draw).

It sits above the engine and the configs, so that neither imports drawing or synthetic data.
"""
from swiftdet.demo.app import DEMO_CONFIG, DemoResult, demo_config, draw_predictions, run_demo
from swiftdet.demo.synth import SYNTH_SHAPES, generate_synthetic_coco

__all__ = ["DEMO_CONFIG", "DemoResult", "SYNTH_SHAPES", "demo_config", "draw_predictions", "generate_synthetic_coco", "run_demo"]
