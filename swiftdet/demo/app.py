"""The end-to-end demo: synthetic data -> train a small Mask R-CNN on the CPU -> evaluate -> draw.

Layout of the demo folder::

    DIR/data/          the synthetic COCO dataset (annotations/, train/, val/)
    DIR/train/         the training run (config.yaml, metrics.jsonl, log.txt, TensorBoard, checkpoints/)
    DIR/predictions/   a few validation images with the final model's predictions drawn on them

Running the demo again continues an interrupted run (or only evaluates a finished one).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from swiftdet.config.core import load_config
from swiftdet.config.schema import Config
from swiftdet.demo.synth import generate_synthetic_coco
from swiftdet.engine.checkpoint import CheckpointManager
from swiftdet.engine.run import run_training

__all__ = ["DEMO_CONFIG", "DemoResult", "demo_config", "draw_predictions", "run_demo"]

logger = logging.getLogger("swiftdet")

DEMO_CONFIG = "demo_mask_rcnn"
# Small images make each iteration cheap on a CPU (the backbone's cost grows with the pixel count),
# and many of them keep the model from memorising the training set; the demo config trains and
# tests at this size, without rescaling.
DEMO_IMAGE_SIZE = (128, 128)
DEMO_NUM_TRAIN = 800
DEMO_NUM_VAL = 100
DEMO_OBJECTS_PER_IMAGE = (1, 6)
DEMO_SEED = 0
# The drawings are enlarged this many times (nearest neighbour), so that labels stay readable.
DRAW_SCALE = 3


@dataclass
class DemoResult:
    metrics: dict[str, float]
    seconds: float
    output_dir: Path
    prediction_images: list[Path]


def demo_config(output_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The demo's config with its dataset under ``output_dir/data`` (then ``overrides`` applied)."""
    data = Path(output_dir) / "data"
    paths = [
        f"data.train.json={data / 'annotations' / 'instances_train.json'}",
        f"data.train.image_root={data}",
        f"data.test.json={data / 'annotations' / 'instances_val.json'}",
        f"data.test.image_root={data}",
        f"output_dir={Path(output_dir) / 'train'}",
    ]
    return load_config(DEMO_CONFIG, [*paths, *overrides])


@torch.no_grad()
def draw_predictions(cfg: Config, weights: Path, out_dir: Path, num_images: int = 6,
                     score_threshold: float = 0.5, scale: int = DRAW_SCALE) -> list[Path]:
    """Draw the predictions of ``weights`` on the first ``num_images`` test images into ``out_dir``,
    each image enlarged ``scale`` times."""
    from swiftdet.data import build_test_loader, load_dataset, read_image
    from swiftdet.visualization.draw import draw_instances, save_image
    from swiftdet.weights.checkpoint import build_model_with_weights

    dataset = load_dataset(cfg.data.test, training=False, field="data.test", verbose=False)
    model, _ = build_model_with_weights(cfg, weights, require_complete=True)
    model.eval()
    loader = build_test_loader(cfg, dataset, batch_size=1, num_workers=0, with_targets=False)
    written = []
    for index, batch in enumerate(loader):
        if index >= num_images:
            break
        sample = batch[0]
        instances = model.predict([sample.image], [tuple(sample.original_size)])[0]
        instances = instances[instances.scores >= score_threshold]
        image = read_image(sample.file_name).permute(1, 2, 0).numpy()  # (H, W, 3) uint8 at the original size
        masks = instances.masks.tensor.numpy() if instances.masks is not None else None
        drawn = draw_instances(
            _enlarge(image, scale, 0),
            boxes=instances.boxes.tensor.numpy() * scale,
            labels=instances.labels.numpy(),
            scores=instances.scores.numpy(),
            masks=_enlarge(masks, scale, 1) if masks is not None else None,
            class_names=list(dataset.meta.class_names),
        )
        written.append(save_image(drawn, out_dir / f"{Path(sample.file_name).stem}.png"))
    return written


def _enlarge(array: np.ndarray, scale: int, height_axis: int) -> np.ndarray:
    """Repeat each pixel ``scale`` x ``scale`` times along ``height_axis`` and the axis after it
    (0 for an (H, W, 3) image, 1 for (N, H, W) masks)."""
    return array.repeat(scale, axis=height_axis).repeat(scale, axis=height_axis + 1)


def run_demo(output_dir: str | Path = "swiftdet_demo", overrides: Sequence[str] = (), *,
             num_train: int = DEMO_NUM_TRAIN, num_val: int = DEMO_NUM_VAL) -> DemoResult:
    """Make the data, train (or continue), evaluate and draw; returns the final metrics and timing.

    ``overrides`` change the config; ``num_train``/``num_val`` the size of the dataset (for quick tries).
    """
    start = time.perf_counter()
    output_dir = Path(output_dir)
    print(f"swiftdet demo: synthetic shapes dataset in {output_dir / 'data'}", flush=True)
    generate_synthetic_coco(output_dir / "data", num_train=num_train, num_val=num_val, image_size=DEMO_IMAGE_SIZE,
                            seed=DEMO_SEED, objects_per_image=DEMO_OBJECTS_PER_IMAGE)
    cfg = demo_config(output_dir, overrides)
    train_dir = Path(cfg.output_dir)
    checkpoints = CheckpointManager(train_dir / "checkpoints", cfg.solver.keep_last)
    resume = checkpoints.latest() is not None
    if resume:
        print(f"swiftdet demo: continuing the run in {train_dir}", flush=True)
    metrics = run_training(cfg, train_dir, resume=resume)
    latest = checkpoints.latest()
    assert latest is not None  # run_training always saves at max_iter
    images = draw_predictions(cfg, latest, output_dir / "predictions")
    seconds = time.perf_counter() - start
    logger.info(
        f"swiftdet demo finished in {seconds / 60:.1f} min: box AP {metrics.get('bbox/AP', float('nan')):.3f}, "
        f"mask AP {metrics.get('segm/AP', float('nan')):.3f}; predictions drawn in {output_dir / 'predictions'}"
    )
    return DemoResult(metrics, seconds, output_dir, images)
