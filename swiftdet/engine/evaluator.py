"""Evaluation of a detector on a test set, alone or across processes.

Each rank runs ``model.predict`` over its shard of the test loader and converts the predictions to
COCO result dicts; rank 0 gathers every image's results once (by image id), evaluates them with
:func:`swiftdet.evaluation.coco.evaluate_coco` and every rank receives the metrics.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from swiftdet.engine.distributed import all_gather_object, get_rank
from swiftdet.evaluation.coco import evaluate_coco, format_metrics
from swiftdet.evaluation.results import instances_to_coco_results

__all__ = ["gather_results", "evaluate_model", "evaluate_results", "run_inference"]

logger = logging.getLogger("swiftdet")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def run_inference(
    model: nn.Module,
    loader: Iterable[list[Any]],
    category_ids: Sequence[int],
    *,
    log_every: int = 50,
) -> dict[int, list[dict]]:
    """COCO results of this process's images: ``{image_id: [result dict, ...]}``.

    ``loader`` yields lists of samples with ``image``, ``image_id``, ``file_name`` and
    ``original_size``. The model is put in eval mode and back into its previous mode afterwards.
    """
    detector = _unwrap(model)
    was_training = detector.training
    detector.eval()
    results: dict[int, list[dict]] = {}
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        for index, batch in enumerate(loader):
            predictions = detector.predict([s.image for s in batch], [tuple(s.original_size) for s in batch])
            for sample, instances in zip(batch, predictions):
                results[int(sample.image_id)] = instances_to_coco_results(instances.to("cpu"), sample.image_id, category_ids)
            if log_every and (index + 1) % log_every == 0:
                per_batch = (time.perf_counter() - start) / (index + 1)
                left = f", eta {per_batch * (total - index - 1):.0f}s" if total is not None else ""
                logger.info(f"inference: {index + 1}{'/' + str(total) if total else ''} batches, {per_batch:.3f}s/batch{left}")
    finally:
        detector.train(was_training)
    return results


def gather_results(local: dict[int, list[dict]]) -> list[dict]:
    """All ranks' results, each image once (the first rank that saw it wins), ordered by image id."""
    merged: dict[int, list[dict]] = {}
    for part in all_gather_object(local):
        for image_id, dets in part.items():
            merged.setdefault(image_id, dets)
    return [d for image_id in sorted(merged) for d in merged[image_id]]


def evaluate_results(gt: Any, results: list[dict], iou_types: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{iou_type: metrics}`` of ``results`` against ``gt`` (path/dict of the COCO json)."""
    return {iou_type: evaluate_coco(gt, results, iou_type) for iou_type in iou_types}


def evaluate_model(
    model: nn.Module,
    loader: Iterable[list[Any]],
    gt: Any,
    category_ids: Sequence[int],
    *,
    mask_on: bool,
    prefix: str = "",
) -> dict[str, float]:
    """Run, gather and evaluate; returns flat metrics like ``{"bbox/AP": 0.41, "segm/AP": 0.37}``.

    Boxes are always evaluated, masks when ``mask_on``, keypoints when the predictions carry them.
    ``prefix`` (e.g. ``"ema/"``) goes in front of every name. Rank 0 prints the tables; every rank
    returns the same metrics.
    """
    start = time.perf_counter()
    local = run_inference(model, loader, category_ids)
    results = gather_results(local)
    metrics: dict[str, float] = {}
    if get_rank() == 0:
        iou_types = ["bbox"] + (["segm"] if mask_on else [])
        if any("keypoints" in r for r in results):
            iou_types.append("keypoints")
        num_images = len({r["image_id"] for r in results})
        for iou_type, values in evaluate_results(gt, results, iou_types).items():
            logger.info(format_metrics(values, title=f"{prefix}{iou_type} ({num_images} images with detections)"))
            metrics.update({f"{prefix}{iou_type}/{name}": float(v) for name, v in values.items()})
        logger.info(f"evaluation took {time.perf_counter() - start:.1f}s")
    return all_gather_object(metrics)[0]
