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

import torch

from swiftdet.config.core import load_config
from swiftdet.config.schema import Config
from swiftdet.data.synth import generate_synthetic_coco
from swiftdet.engine.checkpoint import CheckpointManager
from swiftdet.engine.run import load_model_weights, run_training

__all__ = ["DEMO_CONFIG", "DemoResult", "demo_config", "draw_predictions", "run_demo"]

logger = logging.getLogger("swiftdet")

DEMO_CONFIG = "demo_mask_rcnn"
DEMO_IMAGE_SIZE = (256, 256)
DEMO_NUM_TRAIN = 400
DEMO_NUM_VAL = 100


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
                     score_threshold: float = 0.5) -> list[Path]:
    """Draw the predictions of ``weights`` on the first ``num_images`` test images into ``out_dir``."""
    from swiftdet.data import build_test_loader, load_dataset, read_image
    from swiftdet.model.build import build_model
    from swiftdet.visualization.draw import draw_instances, save_image

    dataset = load_dataset(cfg.data.test, training=False, field="data.test", verbose=False)
    model = build_model(cfg.model)
    load_model_weights(model, weights)
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
        drawn = draw_instances(
            image,
            boxes=instances.boxes.tensor.numpy(),
            labels=instances.labels.numpy(),
            scores=instances.scores.numpy(),
            masks=instances.masks.numpy() if instances.masks is not None else None,
            class_names=list(dataset.meta.class_names),
        )
        written.append(save_image(drawn, out_dir / f"{Path(sample.file_name).stem}.png"))
    return written


def run_demo(output_dir: str | Path = "swiftdet_demo", overrides: Sequence[str] = ()) -> DemoResult:
    """Make the data, train (or continue), evaluate and draw; returns the final metrics and timing."""
    start = time.perf_counter()
    output_dir = Path(output_dir)
    print(f"swiftdet demo: synthetic shapes dataset in {output_dir / 'data'}", flush=True)
    generate_synthetic_coco(output_dir / "data", num_train=DEMO_NUM_TRAIN, num_val=DEMO_NUM_VAL,
                            image_size=DEMO_IMAGE_SIZE, seed=0)
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
