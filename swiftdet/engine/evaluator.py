"""Evaluation of a detector on a test set, alone or across processes.

Each rank runs ``model.predict`` over its shard of the test loader and converts the predictions to
COCO result dicts; rank 0 gathers every image's results once (by image id), evaluates them with
:func:`swiftdet.evaluation.coco.run_coco_evaluation` and every rank receives the metrics.

Detection areas (the small / medium / large ranges): the results carry a ``bbox`` besides their
``segmentation`` / ``keypoints``, so pycocotools' ``loadRes`` would range every kind of
detection by its box. Here ``segm`` detections are ranged by their MASK area instead
(:data:`SEGM_AREA_FROM`, detectron2's convention; ``swiftdet coco-eval --iou-type segm
--area-from mask`` on the same results reproduces the numbers, without it you get pycocotools').
Boxes and keypoints follow loadRes (box areas). The log says so after each table and the metrics
carry it as ``<iou_type>/area_from`` ("box", "mask", "keypoints" or "none").
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from swiftdet.data.proposals import batch_proposals
from swiftdet.engine.distributed import all_gather_object, get_rank
from swiftdet.evaluation.coco import CocoEvaluation, format_metrics, run_coco_evaluation
from swiftdet.evaluation.proposals import evaluate_box_proposals
from swiftdet.evaluation.results import instances_to_coco_results
from swiftdet.model.proposal_network import ProposalNetwork

__all__ = ["SEGM_AREA_FROM", "gather_results", "evaluate_model", "evaluate_proposal_model", "evaluate_results",
           "run_evaluations", "run_inference"]

#: The area convention of the trainer's ``segm`` evaluation: "mask" (detectron2's), or "loadres" for
#: pycocotools' (box areas, since the results carry boxes).
SEGM_AREA_FROM = "mask"

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
    convert: Callable[[Any, Any], Any] | None = None,
) -> dict[int, Any]:
    """COCO results of this process's images: ``{image_id: [result dict, ...]}``; with ``convert``,
    ``{image_id: convert(instances on the CPU, sample)}`` instead.

    ``loader`` yields lists of samples with ``image``, ``image_id``, ``file_name`` and
    ``original_size``. The model is put in eval mode and back into its previous mode afterwards.

    Progress: rank 0 draws a bar (images/s, ETA) on stderr when it is a terminal, else logs a line
    every ``log_every`` batches; "N images in S s (X images/s)" is logged at the end.
    """
    detector = _unwrap(model)
    was_training = detector.training
    detector.eval()
    results: dict[int, list[dict]] = {}
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    sampler = getattr(loader, "sampler", None)  # TestLoader's: this rank's images, for the bar's total
    total_images = len(sampler) if hasattr(sampler, "__len__") else None
    # A bar only where someone watches it (a log file would fill with redraws), and from one rank.
    bar = tqdm(total=total_images, unit="img", desc="inference", file=sys.stderr, dynamic_ncols=True, leave=False,
               disable=get_rank() != 0 or not sys.stderr.isatty())
    num_images = 0
    try:
        for index, batch in enumerate(loader):
            # A Fast R-CNN's samples carry their proposals (data.test.proposals): an input of the model.
            given = ({"proposals": batch_proposals(batch, detector.device)}
                     if getattr(batch[0], "proposals", None) is not None else {})
            predictions = detector.predict([s.image for s in batch], [tuple(s.original_size) for s in batch], **given)
            for sample, instances in zip(batch, predictions):
                instances = instances.to("cpu")
                results[int(sample.image_id)] = (convert(instances, sample) if convert is not None else
                                                 instances_to_coco_results(instances, sample.image_id, category_ids))
            num_images += len(batch)
            bar.update(len(batch))
            if log_every and bar.disable and (index + 1) % log_every == 0:
                per_batch = (time.perf_counter() - start) / (index + 1)
                left = f", eta {per_batch * (total - index - 1):.0f}s" if total is not None else ""
                logger.info(f"inference: {index + 1}{'/' + str(total) if total else ''} batches, {per_batch:.3f}s/batch{left}")
    finally:
        bar.close()
        detector.train(was_training)
    seconds = time.perf_counter() - start
    logger.info(f"inference: {num_images} images in {seconds:.1f} s ({num_images / max(seconds, 1e-9):.2f} images/s)")
    return results


def gather_results(local: dict[int, list[dict]]) -> list[dict]:
    """All ranks' results, each image once (the first rank that saw it wins), ordered by image id."""
    merged: dict[int, list[dict]] = {}
    for part in all_gather_object(local):
        for image_id, dets in part.items():
            merged.setdefault(image_id, dets)
    return [d for image_id in sorted(merged) for d in merged[image_id]]


def run_evaluations(gt: Any, results: list[dict], iou_types: Sequence[str], *,
                    segm_area_from: str = SEGM_AREA_FROM,
                    kpt_sigmas: Sequence[float] | None = None) -> dict[str, CocoEvaluation]:
    """``{iou_type: CocoEvaluation}`` of ``results`` against ``gt``; ``segm`` ranges detections by
    ``segm_area_from`` ("mask" or "loadres"), the others as pycocotools' loadRes does. ``kpt_sigmas``:
    the keypoints' OKS sigmas (None or empty: COCO's 17 person sigmas)."""
    return {iou_type: run_coco_evaluation(gt, results, iou_type,
                                          area_from=segm_area_from if iou_type == "segm" else "loadres",
                                          kpt_sigmas=list(kpt_sigmas) if kpt_sigmas else None)
            for iou_type in iou_types}


def evaluate_results(gt: Any, results: list[dict], iou_types: Sequence[str], *,
                     segm_area_from: str = SEGM_AREA_FROM,
                     kpt_sigmas: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """``{iou_type: metrics}`` of ``results`` against ``gt`` (path/dict of the COCO json)."""
    return {iou_type: evaluation.metrics
            for iou_type, evaluation in run_evaluations(gt, results, iou_types, segm_area_from=segm_area_from,
                                                        kpt_sigmas=kpt_sigmas).items()}


def evaluate_model(
    model: nn.Module,
    loader: Iterable[list[Any]],
    gt: Any,
    category_ids: Sequence[int],
    *,
    mask_on: bool,
    prefix: str = "",
    segm_area_from: str = SEGM_AREA_FROM,
    kpt_sigmas: Sequence[float] | None = None,
    scorer: Callable[[list[dict]], dict[str, float]] | None = None,
) -> dict[str, float | str]:
    """Run, gather and evaluate; returns flat metrics like ``{"bbox/AP": 0.41, "segm/AP": 0.37}``.

    ``scorer``: another dataset's evaluation (VOC, LVIS, Cityscapes) in place of COCO's: rank 0
    calls it on the gathered COCO-format results, and it returns flat metrics (without ``prefix``).

    Boxes are always evaluated, masks when ``mask_on``, keypoints when the predictions carry them.
    Each evaluated type also gets ``<iou_type>/area_from``, the (string) source of the detection
    areas of its small/medium/large numbers: "box", "mask" (``segm``, ``segm_area_from="mask"``),
    "keypoints" or "none" (no detections). ``prefix`` (e.g. ``"ema/"``) goes in front of every name.
    ``kpt_sigmas``: the OKS sigmas of the keypoint AP (``test.keypoint_oks_sigmas``; None: COCO's).
    Rank 0 prints the tables, each followed by where its areas came from; every rank returns the
    same metrics.
    """
    if isinstance(_unwrap(model), ProposalNetwork):  # an RPN alone: its output is proposals, evaluated by AR
        return evaluate_proposal_model(model, loader, gt, prefix=prefix)
    start = time.perf_counter()
    local = run_inference(model, loader, category_ids)
    results = gather_results(local)
    metrics: dict[str, float | str] = {}
    if get_rank() == 0 and scorer is not None:
        metrics = {f"{prefix}{name}": value for name, value in scorer(results).items()}
        logger.info(f"evaluation took {time.perf_counter() - start:.1f}s")
    elif get_rank() == 0:
        iou_types = ["bbox"] + (["segm"] if mask_on else [])
        if any("keypoints" in r for r in results):
            iou_types.append("keypoints")
        num_images = len({r["image_id"] for r in results})
        for iou_type, evaluation in run_evaluations(gt, results, iou_types, segm_area_from=segm_area_from,
                                                    kpt_sigmas=kpt_sigmas).items():
            values = evaluation.metrics
            logger.info(format_metrics(values, title=f"{prefix}{iou_type} ({num_images} images with detections)"))
            logger.info(f"{prefix}{iou_type} {evaluation.area_note()}")
            metrics.update({f"{prefix}{iou_type}/{name}": float(v) for name, v in values.items()})
            # Per-class AP, as detectron2 reports it ("bbox/AP-person"); classes without ground truth are left out.
            metrics.update({f"{prefix}{iou_type}/AP-{name}": ap for name, ap in evaluation.per_category_ap().items()
                            if ap >= 0})
            metrics[f"{prefix}{iou_type}/area_from"] = evaluation.area_source
        logger.info(f"evaluation took {time.perf_counter() - start:.1f}s")
    return all_gather_object(metrics)[0]


def _proposals_of(instances: Any, sample: Any) -> tuple:
    return instances.boxes.tensor.numpy(), instances.scores.numpy()


def evaluate_proposal_model(model: nn.Module, loader: Iterable[list[Any]], gt: Any, *, prefix: str = "") -> dict[str, float]:
    """An RPN-only model (``model.arch='rpn'``): detectron2's proposal recall of each image's proposals
    (:mod:`swiftdet.evaluation.proposals`, not pycocotools' AR), as ``{"box_proposals/AR@100": ...,
    "box_proposals/ARs@1000": ...}`` (fractions, -1 where a range has no ground truth); ``prefix``
    goes in front of every name. Rank 0 prints the table; every rank returns the same metrics."""
    start = time.perf_counter()
    local = run_inference(model, loader, (), convert=_proposals_of)
    merged: dict[int, tuple] = {}
    for part in all_gather_object(local):
        for image_id, proposals in part.items():
            merged.setdefault(image_id, proposals)
    metrics: dict[str, float] = {}
    if get_rank() == 0:
        values = evaluate_box_proposals(gt, merged)
        logger.info(format_metrics(values, title=f"{prefix}box_proposals ({len(merged)} images; detectron2's "
                                                  "proposal AR, not pycocotools')"))
        metrics = {f"{prefix}box_proposals/{name}": float(v) for name, v in values.items()}
        logger.info(f"evaluation took {time.perf_counter() - start:.1f}s")
    return all_gather_object(metrics)[0]
