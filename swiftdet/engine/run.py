"""Training and evaluation runs built from a config: what ``swiftdet train`` and ``swiftdet eval`` do
in every process (alone, under torchrun, or spawned by ``--nproc``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from swiftdet.config.core import config_to_dict, config_to_yaml
from swiftdet.config.schema import Config
from swiftdet.engine.checkpoint import CheckpointManager, check_resume_solver_config, check_same_model_config
from swiftdet.engine.distributed import (
    get_rank,
    get_world_size,
    init_distributed_from_env,
    launch,
    shutdown_distributed,
)
from swiftdet.engine.evaluator import evaluate_model
from swiftdet.evaluation.coco import format_metrics
from swiftdet.engine.logging import MetricsWriter, setup_logger
from swiftdet.engine.run_folder import RunLock, move_leftovers_aside
from swiftdet.engine.trainer import (
    Trainer,
    check_best_metric,
    check_initial_weights,
    default_device,
    per_process_batch_size,
    prepare_output_dir,
    seed_everything,
    write_config,
)
from swiftdet.errors import ConfigError, DatasetError, TrainingProcessDiedError
from swiftdet.model.layers import fuse_for_inference
from swiftdet.weights.checkpoint import build_model_with_weights, read_checkpoint

__all__ = [
    "build_detector",
    "run_evaluation",
    "run_training",
    "sync_batch_norm_if_distributed",
    "train_in_processes",
]

logger = logging.getLogger("swiftdet")


def _uses_batch_norm(cfg: Config) -> bool:
    m = cfg.model
    return m.backbone.norm in ("BN", "SyncBN") or "BN" in (m.fpn.norm, m.box_head.norm, m.mask_head.norm)


def build_detector(cfg: Config, device: torch.device) -> nn.Module:
    """The model of ``cfg`` on ``device`` for training: built with ``seed``, given its initial weights
    (:func:`swiftdet.weights.load_initial_weights`: ``model.weights``, else ``model.backbone.weights``),
    and its BatchNorm layers synchronised across processes when several train together."""
    seed_everything(cfg.seed)  # the same initial weights in every process and every run
    model, _ = build_model_with_weights(cfg)
    return sync_batch_norm_if_distributed(model, cfg, device).to(device)


def sync_batch_norm_if_distributed(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """Under several GPU processes, BatchNorm layers of a BN/SyncBN config become SyncBatchNorm, so
    their statistics cover the whole batch rather than each process's slice.

    PyTorch's DDP accepts SyncBatchNorm on GPU modules only; CPU processes keep per-process
    BatchNorm (said in the log).
    """
    if get_world_size() == 1 or not _uses_batch_norm(cfg):
        return model
    if device.type != "cuda":
        logger.info("BatchNorm statistics stay per process: PyTorch's SyncBatchNorm needs CUDA")
        return model
    logger.info("converted BatchNorm layers to SyncBatchNorm (statistics over all processes)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _check_classes(cfg: Config, meta: Any, field: str) -> None:
    if meta.num_classes != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the dataset of {field} ({meta.name}) has "
            f"{meta.num_classes} categories ({', '.join(meta.class_names[:6])}{', ...' if meta.num_classes > 6 else ''}). "
            f"Set model.num_classes={meta.num_classes}."
        )
    wanted = cfg.model.keypoint_head.num_keypoints
    if cfg.model.keypoint_on and meta.num_keypoints != wanted:
        # Said before training starts, not at the first iteration or the first evaluation.
        have = f"{meta.num_keypoints} keypoints per instance" if meta.num_keypoints else "no keypoints (its categories list none)"
        raise ConfigError(
            f"model.keypoint_on with model.keypoint_head.num_keypoints={wanted}, but the dataset of {field} "
            f"({meta.name}) has {have}. Use a dataset with keypoints (e.g. COCO person_keypoints_*.json), set "
            f"model.keypoint_head.num_keypoints, or set model.keypoint_on=false."
        )


def class_image_counts(dataset: Any) -> torch.Tensor:
    """(K,) int64: how many images of a DetectionDataset hold each class among their non-crowd
    annotations (the objects training sees), as LVIS's ``image_count`` counts them."""
    import numpy as np

    ann = dataset.annotations
    image_of = np.repeat(np.arange(len(dataset)), np.diff(dataset.images.ann_offsets))
    k = dataset.meta.num_classes
    keep = ~ann.iscrowd.astype(bool)
    pairs = np.unique(image_of[keep] * k + ann.labels[keep])  # one entry per (image, class) present
    return torch.from_numpy(np.bincount(pairs % k, minlength=k).astype(np.int64))


def _set_federated_loss_weights(model: nn.Module, train_set: Any) -> None:
    """Give a federated-loss box predictor (model.box_head.cls_loss=federated) the class frequencies
    of data.train, from which its draw weights are made; they are saved with the model."""
    from swiftdet.model.roi_heads import BoxPredictor

    predictors = [m for m in model.modules() if isinstance(m, BoxPredictor) and m.cls_loss == "federated"]
    if not predictors:
        return
    counts = class_image_counts(train_set)
    if int(counts.sum()) == 0:
        raise DatasetError(f"data.train ({train_set.meta.name}) has no annotated object: the federated loss "
                           "(model.box_head.cls_loss=federated) draws classes by how many training images hold them.")
    for predictor in predictors:
        predictor.set_class_image_counts(counts.to(predictor.fed_loss_cls_weights.device))
    logger.info(f"federated loss: class weights from the image counts of data.train's {len(counts)} classes "
                f"(from {int(counts.min())} to {int(counts.max())} images per class)")


def _load_test_set(cfg: Config, verbose: bool):
    from swiftdet.data import load_dataset

    return load_dataset(cfg.data.test, training=False, field="data.test", verbose=verbose)


def _dataset_scorer(cfg: Config, test_set: Any, gt: Any) -> Callable[[list[dict]], dict[str, float]] | None:
    """The evaluation of ``data.test``'s format as a function of the gathered COCO-format results;
    None for COCO's own (evaluate_model's default)."""
    spec = cfg.data.test
    if spec.format == "coco":
        return None
    iou_types = ["bbox"] + (["segm"] if cfg.model.mask_on else [])
    if spec.format == "voc":
        from swiftdet.evaluation.voc import evaluate_voc

        def score(results: list[dict]) -> dict[str, float]:
            evaluation = evaluate_voc(gt, results, metric=cfg.test.voc_metric)
            logger.info("\n".join(evaluation.summary_lines()))
            return {f"bbox/{name}": value for name, value in evaluation.metrics.items()}
    elif spec.format == "lvis":
        from swiftdet.evaluation.lvis import evaluate_lvis

        def score(results: list[dict]) -> dict[str, float]:
            metrics = {}
            for iou_type in iou_types:
                values = evaluate_lvis(gt, results, iou_type)
                logger.info(format_metrics(values, title=f"LVIS {iou_type}"))
                metrics.update({f"{iou_type}/{name}": value for name, value in values.items()})
            return metrics
    else:
        from swiftdet.evaluation.cityscapes import evaluate_cityscapes

        image_files = {int(i): test_set.images.file_names[k] for k, i in enumerate(test_set.images.ids)}

        def score(results: list[dict]) -> dict[str, float]:
            values = evaluate_cityscapes(spec.roots[0], spec.split, results, image_files)
            logger.info(format_metrics(values, title="Cityscapes instance segmentation"))
            return {f"segm/{name}": value for name, value in values.items()}
    return score


def _make_evaluate(cfg: Config, test_set: Any):
    """``evaluate(model, prefix)`` over this rank's shard of the test set."""
    from swiftdet.data import build_test_loader, evaluation_ground_truth
    from swiftdet.data.loader import tta_resizes
    from swiftdet.model.tta import TestTimeAugmentation

    tta = cfg.test.aug.enabled  # test-time augmentation resizes the original images itself
    if tta:
        aug = cfg.test.aug
        logger.info(f"test-time augmentation: sizes {list(aug.min_sizes)} (max {aug.max_size})"
                    f"{', each also mirrored' if aug.flip else ''}: detections merged by NMS")
    loader = build_test_loader(cfg, test_set, batch_size=cfg.test.ims_per_batch, rank=get_rank(),
                               world_size=get_world_size(), with_targets=False, original_images=tta)
    category_ids = list(test_set.meta.category_ids)
    # Cityscapes' evaluation reads its own gtFine files: no COCO-format ground truth to build.
    gt = None if cfg.data.test.format == "cityscapes" else evaluation_ground_truth(cfg.data.test)
    scorer = _dataset_scorer(cfg, test_set, gt)

    def evaluate(model: nn.Module, prefix: str, *, in_place: bool = False) -> dict[str, float]:
        """``in_place``: the caller never needs ``model`` unfused again (``swiftdet eval``)."""
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        # Evaluation runs the inference fast path, as predict does (norms folded, channels-last): a
        # fused copy while training (the same weights give the same metrics in `swiftdet eval`).
        was_training = model.training
        fused = fuse_for_inference(model.eval(), inplace=in_place)
        model.train(was_training)  # a copy's owner keeps training the original
        model = fused
        if tta:
            model = TestTimeAugmentation(model, tta_resizes(cfg), cfg.test.aug.flip)
        return evaluate_model(model, loader, gt, category_ids, mask_on=cfg.model.mask_on, prefix=prefix,
                              segm_area_from=cfg.test.segm_area_from, kpt_sigmas=cfg.test.keypoint_oks_sigmas,
                              scorer=scorer)

    return evaluate


def run_training(cfg: Config, output_dir: str | Path, *, resume: bool = False) -> dict[str, float]:
    """Train ``cfg`` in this process (joining torchrun's process group if there is one).

    Returns the final evaluation metrics (empty when ``data.test`` is not set).
    """
    import copy

    from swiftdet.data import build_train_loader, load_dataset

    init_distributed_from_env()
    lock: RunLock | None = None
    try:
        rank, world = get_rank(), get_world_size()
        output_dir = prepare_output_dir(output_dir, resume=resume)
        if rank == 0:
            # Rank 0 alone writes the folder, so it alone holds the lock (under --nproc and torchrun alike);
            # taken before anything is written, so a second run into the folder changes nothing.
            lock = RunLock.acquire(output_dir)
        batch_size = per_process_batch_size(cfg.solver.ims_per_batch, world, cfg.solver.accumulate_steps)
        check_best_metric(cfg)
        if not resume:
            # A resumed run's weights come from its checkpoint, whatever the config says about initial ones.
            check_initial_weights(cfg)
        resume_from = None
        resume_notes: list[str] = []
        if resume:
            # Every check of a resume runs before anything is written: a refused resume leaves the run's
            # config.yaml (the one its message points to), metrics and log as they were.
            path = CheckpointManager(output_dir / "checkpoints", 1).latest()
            assert path is not None  # prepare_output_dir checked
            state = read_checkpoint(path)
            saved_classes = ((state.get("config") or {}).get("model") or {}).get("num_classes")
            if cfg.model.num_classes == 0 and isinstance(saved_classes, int) and saved_classes > 0:
                # Not given: the run took the number from data.train when it started, and its checkpoint holds it
                # (the data check below still compares it with the dataset).
                cfg = copy.deepcopy(cfg)
                cfg.model.num_classes = saved_classes
            check_same_model_config(config_to_dict(cfg), state, path)
            resume_notes = check_resume_solver_config(config_to_dict(cfg), state, path)
            resume_from = (path, state)
        # A fresh run into the folder of a run that died before its first checkpoint: move that run's
        # files aside, so the two never share metrics.jsonl, log.txt and TensorBoard files.
        moved = move_leftovers_aside(output_dir) if rank == 0 and not resume else None
        setup_logger(output_dir if rank == 0 else None, rank)
        if lock is not None and lock.took_over:
            logger.warning(lock.took_over)
        if moved is not None:
            logger.warning(f"{output_dir} held files of an earlier run without a checkpoint ({', '.join(moved[1])}): "
                           f"moved them to {moved[0]} (nothing was deleted)")
        if rank == 0:
            for note in resume_notes:
                logger.warning(note)
        device = default_device()
        train_set = load_dataset(cfg.data.train, training=True, field="data.train",
                                 filter_empty=cfg.data.filter_empty, verbose=rank == 0)
        if len(train_set) == 0:
            raise DatasetError(
                f"data.train ({cfg.data.train.source}) has no usable training image: every image was dropped "
                "(see the load summary above). Check the annotations, or set data.filter_empty=false to train "
                "on images without objects."
            )
        classes_from_data = cfg.model.num_classes == 0
        if classes_from_data:
            # Not given: the training data states it. Set before the model, the test-set check and config.yaml,
            # so that evaluation, prediction and a resume of this run see the number it trained with.
            cfg = copy.deepcopy(cfg)
            cfg.model.num_classes = train_set.meta.num_classes
            if rank == 0:
                logger.info(f"model.num_classes={cfg.model.num_classes}, from the categories of data.train "
                            f"({cfg.data.train.source})")
        _check_classes(cfg, train_set.meta, "data.train")
        evaluate = None
        if cfg.data.test.is_set:
            test_set = _load_test_set(cfg, verbose=rank == 0)
            if classes_from_data and test_set.meta.num_classes != cfg.model.num_classes:
                raise ConfigError(
                    f"data.train ({cfg.data.train.source}) has {cfg.model.num_classes} categories but data.test "
                    f"({cfg.data.test.source}) has {test_set.meta.num_classes}: a model is trained and evaluated on "
                    "the same categories. Give both the same categories list."
                )
            _check_classes(cfg, test_set.meta, "data.test")
            evaluate = _make_evaluate(cfg, test_set)
        elif rank == 0:
            logger.warning("data.test is not set (data.test.json, or data.test.roots for voc/cityscapes): training without evaluation (no best.pth)")
        if rank == 0:
            # Written once the data checks passed too, so a refused run never replaces config.yaml.
            write_config(cfg, output_dir)
            logger.info(f"config (saved as {output_dir / 'config.yaml'}):\n{config_to_yaml(cfg)}")
            logger.info(f"{world} process(es), {batch_size} images per process and forward pass, "
                        f"{cfg.solver.accumulate_steps} accumulation step(s)")

        model = build_detector(cfg, device)
        _set_federated_loss_weights(model, train_set)
        seed_everything(cfg.seed + rank)  # per-process random streams from here on

        def train_loader(start: int):
            return build_train_loader(cfg, train_set, batch_size=batch_size, rank=rank, world_size=world, start_iter=start)

        trainer = Trainer(cfg, model, train_loader, evaluate, train_set.meta.to_dict(), output_dir, device)
        return trainer.train(resume=resume, checkpoint=resume_from)
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed()


def _training_process(cfg_dict: dict, output_dir: str, resume: bool, nproc: int, threads: int) -> None:
    from swiftdet.config.core import config_from_dict

    if not torch.cuda.is_available():
        # Processes sharing the CPU split the parent's threads (its free cores) instead of oversubscribing them.
        torch.set_num_threads(max(1, threads // nproc))
    run_training(config_from_dict(Config, cfg_dict), output_dir, resume=resume)


def train_in_processes(cfg: Config, output_dir: str | Path, *, resume: bool, nproc: int) -> dict[str, float]:
    """Run :func:`run_training` in ``nproc`` local processes (``--nproc``), or in this one when 1."""
    if nproc <= 1:
        return run_training(cfg, output_dir, resume=resume)
    # Fail fast in the parent on what every child would reject anyway.
    if not resume:
        check_initial_weights(cfg)
    prepare_output_dir(output_dir, resume=resume)
    per_process_batch_size(cfg.solver.ims_per_batch, nproc, cfg.solver.accumulate_steps)
    try:
        launch(_training_process, nproc, (config_to_dict(cfg), str(output_dir), resume, nproc, torch.get_num_threads()))
    except TrainingProcessDiedError as error:
        latest = CheckpointManager(Path(output_dir) / "checkpoints", 1).latest()
        kept = (f"The checkpoints in {latest.parent} are intact (newest: {latest.name}): continue the run with the "
                f"same command plus --resume (swiftdet train ... --output {output_dir} --resume --nproc {nproc})."
                if latest is not None else
                f"No checkpoint had been written yet: run the same command again (swiftdet train ... --output "
                f"{output_dir} --nproc {nproc}).")
        raise TrainingProcessDiedError(f"Training stopped: {error} {kept}") from None
    return {}


def run_evaluation(cfg: Config, weights: str | Path, *, output_dir: str | Path | None = None,
                   precision: str = "fp32", compile: bool = False) -> dict[str, float]:
    """Evaluate the model file ``weights`` on ``cfg.data.test`` (every process of a torchrun group helps).
    ``compile``: run the core through torch.compile (``Detector.set_compiled``).

    With ``output_dir``, rank 0 appends the metrics to ``output_dir/metrics.jsonl`` (with the
    ``precision`` of the inference, one of model.detector.PRECISIONS).
    """
    init_distributed_from_env()
    try:
        rank = get_rank()
        if output_dir is not None:
            output_dir = prepare_output_dir_for_eval(output_dir)
        setup_logger(output_dir if rank == 0 else None, rank)
        if not cfg.data.test.is_set:
            raise ConfigError("data.test is not set: set data.test.json=... and data.test.image_root=... (or "
                              "data.test.format=voc|cityscapes data.test.roots=[...] data.test.split=...) to evaluate.")
        device = default_device()
        test_set = _load_test_set(cfg, verbose=rank == 0)
        _check_classes(cfg, test_set.meta, "data.test")
        # Shapes and names must match exactly; test-time settings (thresholds, sizes) may differ from training.
        model, report = build_model_with_weights(cfg, weights, require_complete=True)
        model.to(device).eval()
        model.set_precision(precision)
        model.set_compiled(compile)
        metrics = _make_evaluate(cfg, test_set)(model, "", in_place=True)
        if output_dir is not None and rank == 0:
            writer = MetricsWriter(output_dir, tensorboard=False)
            writer.write({"iter": report.iteration or 0, "weights": str(weights), "precision": precision, **metrics})
            writer.close()
        return metrics
    finally:
        shutdown_distributed()


def prepare_output_dir_for_eval(path: str | Path) -> Path:
    """Like the training folder check, but an evaluation may go into the folder of a run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"Output folder '{path}' is not writable ({error.strerror or error}). Pass --output with a folder you can write to.") from error
    return path
