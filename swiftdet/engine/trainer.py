"""The iteration-based training loop: one code path for CPU/GPU, one or several processes.

:class:`Trainer` takes an already-built model, a factory of the (infinite, resumable) train loader and
an evaluation callable, and owns the rest: optimizer and schedule, AMP, gradient accumulation and
clipping, EMA, logging, checkpoints and resuming. :func:`run_training` builds those parts from a
config (dataset, loaders, model) and is what ``swiftdet train`` calls in every process.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from swiftdet.config.core import config_to_dict, config_to_yaml
from swiftdet.config.schema import Config
from swiftdet.data.proposals import batch_proposals
from swiftdet.engine.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    check_same_model_config,
    load_training_buffers,
    restore_rng_state,
    training_buffers,
)
from swiftdet.engine.distributed import all_gather_object, barrier, get_rank, get_world_size, local_rank
from swiftdet.engine.ema import ModelEMA
from swiftdet.engine.logging import MetricsWriter, format_progress, memory_text
from swiftdet.engine.optim import IterationLRSchedule, build_optimizer, scaled_base_lr
from swiftdet.errors import ConfigError, OutputWriteError, SwiftdetError, WeightsError
from swiftdet.evaluation.coco import detection_metric_specs, keypoint_metric_specs
from swiftdet.evaluation.proposals import proposal_metric_names
from swiftdet.model.layers import prepare_for_training
from swiftdet.structures import Instances
from swiftdet.utils.io import atomic_torch_save, atomic_write
from swiftdet.utils.threads import current_choice
from swiftdet.weights.checkpoint import make_checkpoint, read_checkpoint

__all__ = [
    "TrainingDivergedError",
    "Trainer",
    "check_best_metric",
    "check_initial_weights",
    "default_device",
    "per_process_batch_size",
    "prepare_output_dir",
    "seed_everything",
    "write_config",
]

logger = logging.getLogger("swiftdet")

TrainLoaderFactory = Callable[[int], Iterable[list[Any]]]
EvaluateFn = Callable[[nn.Module, str], dict[str, float]]


class TrainingDivergedError(SwiftdetError, FloatingPointError):
    """A loss became NaN or infinite; the run stopped before the bad update was applied."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """This process's GPU when CUDA is available (LOCAL_RANK picks it), else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def per_process_batch_size(total: int, world_size: int, accumulate_steps: int) -> int:
    """Images per forward pass in one process, from ``solver.ims_per_batch`` (total per optimizer step)."""
    parts = world_size * accumulate_steps
    if total % parts != 0:
        raise ConfigError(
            f"solver.ims_per_batch={total} is the total batch of one optimizer step and must be divisible by "
            f"processes x solver.accumulate_steps = {world_size} x {accumulate_steps} = {parts}. "
            f"Use e.g. solver.ims_per_batch={max(parts, total // parts * parts)}."
        )
    return total // parts


def check_best_metric(cfg: Config) -> None:
    """Fail at start, not after hours of training, when ``test.best_metric`` can never be produced."""
    name = cfg.test.best_metric
    fmt = cfg.data.test.format
    detection = [s.name for s in detection_metric_specs((1, 10, 100))]
    if fmt == "lvis":  # lvis-api's summary: COCO's AP rows without the recalls, plus AP by frequency
        detection = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
    valid = [f"bbox/{n}" for n in detection]
    if cfg.model.mask_on:
        valid += [f"segm/{n}" for n in detection]
    valid += [f"keypoints/{s.name}" for s in keypoint_metric_specs(20)]
    if fmt == "voc":  # VOC's mean AP at IoU 0.5 (test.voc_metric says which AP)
        valid = ["bbox/mAP"]
    elif fmt == "cityscapes":  # cityscapesscripts' instance-level AP
        valid = ["segm/AP", "segm/AP50"]
    if cfg.model.arch == "rpn":  # an RPN alone is evaluated by proposal recall only
        valid = [f"box_proposals/{n}" for n in proposal_metric_names()]
    if cfg.solver.ema_decay > 0:
        valid += [f"ema/{v}" for v in valid]
    if name not in valid:
        raise ConfigError(
            f"test.best_metric '{name}' is not a metric this run produces. Choose one of: {', '.join(valid[:14])}"
            + (", ... (the same with 'ema/' in front)" if cfg.solver.ema_decay > 0 else "")
            + "."
        )


def check_initial_weights(cfg: Config) -> None:
    """Refuse a fresh run whose backbone settings only make sense for pretrained weights when none are given.

    FrozenBN layers keep their loaded statistics (identities when nothing is loaded) and ``freeze_at``
    stages never train: with random weights such a run trains a detector on a random, frozen backbone,
    and nothing in its losses says so.
    """
    m = cfg.model
    if m.weights or m.backbone.weights:
        return
    reasons = []
    if m.backbone.norm == "FrozenBN":
        reasons.append("model.backbone.norm=FrozenBN (frozen statistics, identities without weights)")
    if m.backbone.freeze_at > 0:
        reasons.append(f"model.backbone.freeze_at={m.backbone.freeze_at} (stages that never train)")
    if reasons:
        raise ConfigError(
            f"This config is meant to start from pretrained weights ({' and '.join(reasons)}), but neither "
            f"model.weights nor model.backbone.weights is given: it would train a random ResNet-{m.backbone.depth} "
            "that cannot learn. Give model.weights=... (a swiftdet or converted model file) or model.backbone.weights=... "
            "(ImageNet ResNet weights, a path or URL), or train from scratch with the scratch_coco_folder recipe "
            "(or model.backbone.norm=BN model.backbone.freeze_at=0)."
        )


def prepare_output_dir(path: str | Path, *, resume: bool) -> Path:
    """Create ``path`` if needed and check it can hold this run, without touching anything in it.

    A fresh run refuses a folder that already holds checkpoints (they would be mixed and pruned);
    ``--resume`` needs one.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"Output folder '{path}' is not writable ({error.strerror or error}). Pass --output with a folder "
            "you can write to (or set output_dir=...)."
        ) from error
    latest = CheckpointManager(path / "checkpoints", 1).latest()
    if resume and latest is None:
        raise WeightsError(
            f"--resume was given but '{path / 'checkpoints'}' holds no checkpoint (model_*.pth or last.pth). "
            "Run without --resume to start training, or point --output at the folder of the run to continue."
        )
    if not resume and latest is not None:
        raise ConfigError(
            f"Output folder '{path}' already holds checkpoints of a run (newest: {latest.name}). Pass --resume "
            "to continue that run, or choose another --output folder; nothing was changed."
        )
    return path


class Trainer:
    """Trains ``model`` for ``cfg.solver.max_iter`` iterations.

    Args:
        cfg: the whole config (solver, test, seed and model config for checkpoints).
        model: the detector (contract: ``preprocess``, loss dict in training mode, ``predict``),
            already on ``device``; wrapped in DistributedDataParallel here when several processes run.
        train_loader_factory: ``factory(start)`` returns the infinite train loader of this process
            positioned after ``start`` batches (so a resumed run continues the same stream).
        evaluate: ``evaluate(model, prefix)`` returns flat metrics (e.g. ``{"bbox/AP": ...}``) with
            names prefixed by ``prefix``; called on every rank. None disables evaluation.
        meta: dataset metadata saved in checkpoints (class_names, category_ids, keypoint_names).
        output_dir: the run's folder (see :func:`prepare_output_dir`).
        device: where the model lives.

    Each logged iteration's record in ``metrics.jsonl`` holds, besides ``lr``, the loss terms and
    timings, ``image_ids``: one list per process (rank order) of the dataset image ids that process
    trained on in that iteration (all accumulation steps), gathered to rank 0. It tells which images
    an odd iteration saw, and that the processes of a run train on different images. A loss that is
    not finite stops the run with the image ids of that iteration in the error.
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        train_loader_factory: TrainLoaderFactory,
        evaluate: EvaluateFn | None,
        meta: dict[str, Any],
        output_dir: str | Path,
        device: torch.device,
    ):
        self.cfg = cfg
        self.solver = cfg.solver
        self.device = device
        self.rank = get_rank()
        self.world_size = get_world_size()
        self.meta = meta
        self.output_dir = Path(output_dir)
        self.train_loader_factory = train_loader_factory
        self.evaluate = evaluate
        check_best_metric(cfg)

        self.model = prepare_for_training(model)  # channels-last convolutions, before DDP and the optimizer
        self.module = model  # the unwrapped detector: checkpoints, EMA and evaluation use it
        if self.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.module, self.solver)
        self.schedule = IterationLRSchedule(self.optimizer, self.solver)
        self.amp_dtype = self._amp_dtype()
        # Loss scaling is needed for fp16 only; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = ModelEMA(self.module, self.solver.ema_decay) if self.solver.ema_decay > 0 else None
        self.checkpoints = CheckpointManager(self.output_dir / "checkpoints", self.solver.keep_last)
        self.writer: MetricsWriter | None = None
        self.iteration = 0
        self.best_value = -math.inf
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.solver.amp
        if amp == "off":
            return None
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                "solver.amp=fp16 needs a CUDA GPU (float16 training relies on its loss scaling); on the CPU use "
                "solver.amp=bf16 or solver.amp=off."
            )
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; RNG states of every rank (collective: call on all ranks)."""
        rng = all_gather_object(capture_rng_state())
        state = make_checkpoint(self.module, self.cfg, self.meta)
        state.update(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            iteration=self.iteration,
            rng=rng,
            loader={"batches": self.iteration * self.solver.accumulate_steps, "world_size": self.world_size},
            best_value=self.best_value,
            # Sums over a different number of threads differ in the last bits: resume with the same.
            torch_threads=torch.get_num_threads(),
            training_buffers=training_buffers(self.module),
        )
        return state

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        check_same_model_config(config_to_dict(self.cfg), state, path)
        self.module.load_state_dict(state["model"])
        load_training_buffers(self.module, state.get("training_buffers", {}), path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                logger.warning(f"{path} has no EMA weights (EMA was off); the EMA starts from the current weights.")
            else:
                self.ema.load_state_dict(state["ema"])
        self.iteration = int(state["iteration"])
        self.best_value = float(state.get("best_value", -math.inf))
        rng = state["rng"]
        if len(rng) != self.world_size:
            logger.warning(
                f"{path} was written by {len(rng)} processes and this run has {self.world_size}; the random streams "
                "and data order continue approximately, not exactly."
            )
        restore_rng_state(rng[min(self.rank, len(rng) - 1)])
        self._resume_thread_count(state.get("torch_threads"), path)

    @staticmethod
    def _resume_thread_count(saved: int | None, path: Path) -> None:
        """Continue on the thread count the run was written with, unless --threads chose another."""
        if saved is None or saved == torch.get_num_threads():
            return
        choice = current_choice()
        if choice is not None and not choice.automatic:
            logger.warning(f"{path} was written with {saved} threads and --threads is {choice.threads}: the losses "
                           "continue equal up to float rounding, not bit for bit.")
            return
        logger.info(f"{torch.get_num_threads()} threads chosen for this machine's load; continuing on the {saved} "
                    f"threads the run was written with (bit-exact resume)")
        torch.set_num_threads(saved)

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # collective
        if self.rank == 0:
            self.last_checkpoint = self.checkpoints.save(state, self.iteration)
            logger.info(f"saved checkpoint {self.last_checkpoint}")
        barrier()

    # ------------------------------------------------------------------------------------------
    def train(self, resume: bool = False, checkpoint: tuple[Path, dict[str, Any]] | None = None) -> dict[str, float]:
        """Run (or continue with ``resume``) until ``max_iter``; returns the final evaluation metrics.

        ``checkpoint``: (path, state) to resume from, already read (and checked) by the caller;
        otherwise ``resume`` reads the newest checkpoint of the run.
        """
        if resume:
            if checkpoint is not None:
                path, state = checkpoint
            else:
                path = self.checkpoints.latest()
                if path is None:
                    raise WeightsError(f"--resume was given but {self.checkpoints.directory} holds no checkpoint.")
                state = read_checkpoint(path)
            self.load_state_dict(state, path)
            self.last_checkpoint = path
            logger.info(f"resumed from {path} at iteration {self.iteration}")
        elif self.device.type == "cpu":
            choice = current_choice()
            logger.info(f"{torch.get_num_threads()} CPU thread(s)" + (f" ({choice.reason})" if choice else ""))
        if self.rank == 0:
            self.writer = MetricsWriter(self.output_dir)
            if resume:
                dropped = self.writer.truncate_after(self.iteration)
                if dropped:
                    logger.info(f"metrics.jsonl: dropped {dropped} records logged after iteration {self.iteration}")
        base_lr = scaled_base_lr(self.solver)
        if base_lr != self.solver.base_lr:
            logger.info(
                f"solver.ims_per_batch={self.solver.ims_per_batch} differs from solver.reference_batch_size="
                f"{self.solver.reference_batch_size}: base_lr {self.solver.base_lr:g} scaled linearly to {base_lr:g}"
            )
        metrics: dict[str, float] = {}
        try:
            if self.iteration < self.solver.max_iter:
                metrics = self._loop()
            else:
                logger.info(f"already trained to iteration {self.iteration} = solver.max_iter; evaluating only")
                metrics = self._evaluate()
        finally:
            if self.writer is not None:
                self.writer.close()
        # The trained model alone (weights, config, meta; no optimizer, RNG or loader state): the file to
        # predict with, evaluate or share. Written by the process that writes the run's folder.
        if self.rank == 0:
            final = self.output_dir / "model_final.pth"
            atomic_torch_save(make_checkpoint(self.module, self.cfg, self.meta), final)
            logger.info(f"saved the final model {final}")
        barrier()  # every process returns once the file is there
        return metrics

    def _loop(self) -> dict[str, float]:
        solver = self.solver
        accumulate = solver.accumulate_steps
        # A resumed run builds and starts its loader at the checkpoint's iteration, an uninterrupted one
        # at 0: whatever that draws from the global generators must stay out of the training stream
        # (the RPN/RoI samplers draw from it), or the resumed run's losses differ from the checkpoint
        # on. swiftdet's TrainLoader starts in iter() and seeds its DataLoader with a generator of its
        # own; the fork covers loaders of other factories for their construction and iter().
        with self._fork_rng():
            loader: Iterator[list[Any]] = iter(self.train_loader_factory(self.iteration * accumulate))
        self.model.train()
        logger.info(f"starting training from iteration {self.iteration} to {solver.max_iter}")
        recent_times: list[float] = []
        metrics: dict[str, float] = {}
        started = time.monotonic()  # solver.max_minutes counts from here, in each run and each resume
        while self.iteration < solver.max_iter:
            start = time.perf_counter()
            lr = self.schedule.step(self.iteration)
            data_time = 0.0
            totals: dict[str, torch.Tensor] = {}
            image_ids: list[Any] = []
            for micro in range(accumulate):
                fetch = time.perf_counter()
                batch = next(loader)
                data_time += time.perf_counter() - fetch
                image_ids += [getattr(s, "image_id", None) for s in batch]
                sync = (
                    self.model.no_sync()
                    if isinstance(self.model, nn.parallel.DistributedDataParallel) and micro < accumulate - 1
                    else contextlib.nullcontext()
                )
                with sync:
                    images = self.module.preprocess([s.image for s in batch])
                    targets = [_targets_of(s).to(self.device) for s in batch]
                    # A Fast R-CNN's batch carries its proposals (data.train.proposals): an input of the model.
                    given = ({"proposals": batch_proposals(batch, self.device)}
                             if getattr(batch[0], "proposals", None) is not None else {})
                    with self._autocast():
                        losses = self.model(images, targets, **given)
                    loss = sum(losses.values()) / accumulate
                    # Non-finite losses are caught after the reduction below, before the optimizer
                    # step, so that every rank stops at the same iteration and no bad update lands.
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                for name, value in losses.items():
                    totals[name] = totals.get(name, 0.0) + value.detach().float() / accumulate
            values = self._reduce(totals)
            self._check_finite(values, image_ids)
            self._step()
            self.iteration += 1

            elapsed = time.perf_counter() - start
            recent_times = (recent_times + [elapsed])[-20:]
            out_of_time = self._time_budget_spent(started)
            if self.iteration % solver.log_period == 0 or self.iteration == solver.max_iter or out_of_time:
                every_rank_ids = all_gather_object(image_ids)  # collective: every rank logs the same iterations
                self._log(values, lr, elapsed, data_time, sum(recent_times) / len(recent_times), every_rank_ids)
            if out_of_time and self.iteration < solver.max_iter:
                logger.info(f"stopped at iteration {self.iteration} of {solver.max_iter} on the time budget "
                            f"(solver.max_minutes={solver.max_minutes:g}): saving a checkpoint and evaluating; "
                            "continue the run with the same command plus --resume")
            last = self.iteration == solver.max_iter or out_of_time
            eval_period = self.cfg.test.eval_period
            # Evaluate before saving, so the checkpoint of this iteration knows the best value so far.
            if (eval_period > 0 and self.iteration % eval_period == 0) or last:
                metrics = self._evaluate()
                self.model.train()
            if self.iteration % solver.checkpoint_period == 0 or last:
                self.save_checkpoint()
            if out_of_time:
                break
        return metrics

    def _time_budget_spent(self, started: float) -> bool:
        """Whether ``solver.max_minutes`` of training have passed; rank 0's clock decides for every rank, so
        all processes stop at the same iteration (one tiny broadcast per iteration, only with a budget)."""
        if self.solver.max_minutes <= 0:
            return False
        spent = time.monotonic() - started >= 60.0 * self.solver.max_minutes
        if self.world_size > 1:
            flag = torch.tensor([float(spent)], device=self.device)
            dist.broadcast(flag, src=0)
            spent = bool(flag.item())
        return spent

    def _fork_rng(self) -> contextlib.AbstractContextManager:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _reduce(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms averaged over processes (one small all-reduce per iteration), plus their sum."""
        names = sorted(totals)
        stacked = torch.stack([totals[n] for n in names])
        if self.world_size > 1:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        values = dict(zip(names, stacked.tolist()))
        return {"loss": sum(values.values()), **values}

    def _check_finite(self, values: dict[str, float], image_ids: list[Any]) -> None:
        bad = [name for name, v in values.items() if name != "loss" and not math.isfinite(v)]
        if not bad:
            return
        # ``values`` are the same on every rank (all-reduced), so every rank gets here: a collective is safe.
        every_rank_ids = all_gather_object(image_ids)
        if len(every_rank_ids) == 1:
            images = f"its images (dataset image ids): {every_rank_ids[0]}"
        else:
            images = "its images (dataset image ids) per process: " + ", ".join(
                f"rank {r} {ids}" for r, ids in enumerate(every_rank_ids))
        saved = (
            f"The last good checkpoint is {self.last_checkpoint} (left intact; resume from it with --resume)."
            if self.last_checkpoint is not None
            else "No checkpoint had been written yet."
        )
        detail = ", ".join(f"{name} = {values[name]}" for name in bad)
        raise TrainingDivergedError(
            f"Training stopped at iteration {self.iteration + 1}: loss term {bad[0]} is not finite ({detail}); the "
            f"update was not applied. {saved} Lengthen solver.warmup_iters or set solver.clip_grad_norm (a resume "
            f"may change them), or lower solver.base_lr (in a new run: a resume keeps the checkpoint's optimizer), "
            f"and check the data of this iteration's images; {images}."
        )

    def _step(self) -> None:
        clip = self.solver.clip_grad_norm
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip > 0:
                nn.utils.clip_grad_norm_(self.module.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module)

    def _log(self, values: dict[str, float], lr: float, iter_time: float, data_time: float, mean_time: float,
             image_ids: list[list[Any]]) -> None:
        if self.rank != 0:
            return
        memory = memory_text(self.device)
        logger.info(format_progress(self.iteration, self.solver.max_iter, values, lr, mean_time, data_time, memory))
        record = {"iter": self.iteration, "lr": lr, **values, "time": iter_time, "data_time": data_time,
                  "image_ids": image_ids}
        if self.device.type == "cuda":
            record["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self._write_record(record)

    def _write_record(self, record: dict[str, Any]) -> None:
        assert self.writer is not None
        try:
            self.writer.write(record)
        except OSError as error:
            hint = "free some disk space" if error.errno == errno.ENOSPC else "make the folder writable"
            saved = (f"The last checkpoint {self.last_checkpoint} is intact; continue from it with --resume once you "
                     f"{hint} (the records after it are dropped and logged again)."
                     if self.last_checkpoint is not None else
                     f"No checkpoint had been written yet; start again once you {hint}.")
            raise OutputWriteError(
                f"Could not append to {self.writer.path} at iteration {self.iteration}: {error.strerror or error}. "
                f"{saved}"
            ) from error

    # ------------------------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        # Evaluation must not shift the training random streams (test loaders draw seeds).
        with self._fork_rng():
            metrics = dict(self.evaluate(self.module, ""))
            if self.ema is not None:
                metrics.update(self.evaluate(self.ema.model, "ema/"))
        if self.rank == 0:
            self._write_record({"iter": self.iteration, **metrics})
            self._maybe_save_best(metrics)
        barrier()
        return metrics

    def _maybe_save_best(self, metrics: dict[str, float]) -> None:
        name = self.cfg.test.best_metric
        value = metrics.get(name)
        if value is None:
            logger.warning(f"test.best_metric '{name}' is not among this evaluation's metrics; best.pth not updated")
            return
        if value <= self.best_value:
            return
        self.best_value = value
        use_ema = name.startswith("ema/")
        weights = self.ema.model.state_dict() if use_ema and self.ema is not None else self.module.state_dict()
        state = make_checkpoint(weights, self.cfg, self.meta)
        state.update(iteration=self.iteration, metrics=metrics, best_metric=name, ema_weights=use_ema)
        path = self.checkpoints.save_best(state)
        logger.info(f"new best {name} = {value:.4f} at iteration {self.iteration}: saved {path}")


def _targets_of(sample: Any) -> Instances:
    """The sample's targets; an image kept without annotations trains as pure background."""
    if sample.instances is not None:
        return sample.instances
    return Instances.empty((int(sample.image.shape[-2]), int(sample.image.shape[-1])))


def write_config(cfg: Config, output_dir: Path) -> Path:
    """Write the resolved config as ``config.yaml`` (atomically)."""
    text = config_to_yaml(cfg)
    return atomic_write(output_dir / "config.yaml", lambda f: f.write(text), mode="w")
