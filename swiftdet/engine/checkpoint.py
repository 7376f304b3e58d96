"""Training checkpoints that never lose a run.

Layout under ``OUTPUT/checkpoints/``::

    model_0005000.pth   the last ``keep_last`` periodic checkpoints (full training state)
    last.pth            the newest of them (a hard link, or a copy where links are unsupported)
    best.pth            model file of the best evaluation so far by ``test.best_metric``

Every file is written with :func:`swiftdet.utils.io.atomic_torch_save` (temp file, fsync, rename), and
older checkpoints are pruned only after the new one is safely on disk, so a kill or a full disk at any
moment leaves the previous checkpoint readable.

A checkpoint is the model-file dict of :func:`swiftdet.weights.make_checkpoint` (``format``,
``model``, ``config``, ``meta``) plus ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``iteration``,
``rng`` and ``loader``; :func:`swiftdet.weights.read_checkpoint` reads it back.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swiftdet.errors import ConfigError, SwiftdetError, WeightsError
from swiftdet.utils.io import atomic_torch_save

__all__ = [
    "CheckpointManager",
    "CheckpointWriteError",
    "capture_rng_state",
    "check_resume_solver_config",
    "check_same_model_config",
    "load_training_buffers",
    "restore_rng_state",
    "training_buffers",
]

_PERIODIC = re.compile(r"^model_(\d{7,})\.pth$")


class CheckpointWriteError(SwiftdetError, OSError):
    """A checkpoint could not be written (disk full, folder removed, permissions); older ones are intact."""


def capture_rng_state() -> dict[str, Any]:
    """Every random generator a training step can draw from: python, numpy, torch CPU and CUDA.

    Only tensors and plain Python values, so that checkpoints load with ``weights_only=True``
    like every other weights file (numpy's state array is stored as a tensor).
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        # A run resumed on fewer/more GPUs restores the devices both runs have.
        for index in range(min(len(saved), torch.cuda.device_count())):
            torch.cuda.set_rng_state(saved[index], index)


def _model_relevant(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that decides the weights' shapes and meaning: ``model`` minus its init weights."""
    model = dict(config.get("model", {}))
    model.pop("weights", None)
    if isinstance(model.get("backbone"), dict):
        model["backbone"] = {k: v for k, v in model["backbone"].items() if k not in ("weights", "freeze_at")}
    return model


def _differences(a: Any, b: Any, prefix: str, defaults: Any = None) -> list[str]:
    """Where config ``a`` and checkpoint config ``b`` differ. A key ``b`` lacks (a checkpoint of an
    older swiftdet, before the field existed) stands for the field's value in ``defaults``: the
    model that checkpoint trained, so a run started before an upgrade still resumes."""
    if isinstance(a, dict) and isinstance(b, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for key in sorted(set(a) | set(b)):
            theirs = b[key] if key in b else defaults.get(key)
            out += _differences(a.get(key), theirs, f"{prefix}.{key}", defaults.get(key))
        return out
    return [] if a == b else [f"{prefix}: checkpoint {b!r}, config {a!r}"]


def _model_defaults() -> dict[str, Any]:
    from swiftdet.config.core import config_to_dict
    from swiftdet.config.schema import Config

    return _model_relevant(config_to_dict(Config()))


def training_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's non-persistent buffers by name: state that training changes but weight files
    leave out (detectron2 RetinaNet's loss normaliser), which a run's checkpoints carry so that a
    resume continues from it exactly."""
    out = {}
    for path, module in model.named_modules():
        for name in module._non_persistent_buffers_set:
            value = module._buffers.get(name)
            if value is not None:
                out[f"{path}.{name}" if path else name] = value.detach().cpu().clone()
    return out


def load_training_buffers(model: torch.nn.Module, saved: dict[str, torch.Tensor], path: str | Path) -> None:
    """Copy :func:`training_buffers` of a checkpoint back into ``model`` (the same model config)."""
    own = {f"{p}.{n}" if p else n: (m, n) for p, m in model.named_modules() for n in m._non_persistent_buffers_set}
    for key, value in saved.items():
        if key not in own:
            raise WeightsError(f"Checkpoint '{path}' holds training state '{key}' that this model does not have.")
        module, name = own[key]
        module._buffers[name].copy_(value)


def check_same_model_config(config: dict[str, Any], checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raise WeightsError when ``checkpoint`` was trained with another model config than ``config``."""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        raise WeightsError(f"Checkpoint '{path}' holds no config, so it cannot be checked against this run's config.")
    diffs = _differences(_model_relevant(config), _model_relevant(saved), "model", _model_defaults())
    if diffs:
        shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
        raise WeightsError(
            f"Checkpoint '{path}' was trained with another model config ({shown}). Resume with the config the run "
            "was started with (its copy is config.yaml in the output folder), or use another --output folder."
        )


# Settings a resumed run cannot honour, so --resume refuses a change of them: the restored optimizer
# keeps the checkpoint's own hyper-parameters (its lr, momentum and weight decay would silently win),
# the data stream continues at a position counted in the checkpoint's batches (another batch size
# would skip or repeat images), its state belongs to its optimizer and its AMP loss scaler, and the
# data order is drawn from the seed.
RESUME_REFUSED = (
    "solver.optimizer", "solver.base_lr", "solver.momentum", "solver.weight_decay", "solver.weight_decay_norm",
    "solver.weight_decay_bias", "solver.ims_per_batch", "solver.reference_batch_size", "solver.accumulate_steps",
    "solver.amp", "seed", "data.sampler", "data.repeat_threshold", "data.aspect_ratio_grouping",
)
# The data settings that decide the order of the training stream (compared like the solver's).
_STREAM_DATA = ("sampler", "repeat_threshold", "aspect_ratio_grouping")
# Settings that decide only what is written, not what is trained.
RESUME_BOOKKEEPING = ("solver.checkpoint_period", "solver.keep_last", "solver.log_period", "solver.max_minutes")


def check_resume_solver_config(config: dict[str, Any], checkpoint: dict[str, Any], path: str | Path) -> list[str]:
    """Compare the training settings of ``config`` with those ``checkpoint`` was trained with.

    Raises ConfigError for a change in :data:`RESUME_REFUSED`. Other changes of the schedule
    (``max_iter``, ``steps``, warmup, clipping, EMA: extending a run is a common wish) are allowed,
    and returned as lines to log loudly, since the resumed losses no longer match an uninterrupted
    run of either config. Settings the checkpoint does not record are not compared.
    """
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        return []
    def stream(cfg: dict) -> dict:
        data = cfg.get("data", {})
        return {k: data[k] for k in _STREAM_DATA if k in data}

    ours = {"solver": config.get("solver", {}), "seed": config.get("seed"), "data": stream(config)}
    theirs = {"solver": saved.get("solver", {}), "seed": saved.get("seed"), "data": stream(saved)}
    changed = [(key, text) for key, text in _keyed_differences(ours, theirs, "") if _holds(theirs, key)]
    refused = [text for key, text in changed if key in RESUME_REFUSED]
    if refused:
        raise ConfigError(
            f"--resume from '{path}' with changed training settings ({'; '.join(refused)}). A resumed run continues "
            "the checkpoint's optimizer and data stream, which these settings are part of: the new values would be "
            "ignored or would skip and repeat images. Resume with the settings the run was started with (its copy "
            f"is config.yaml in the output folder), or start a new run in another --output folder from these weights "
            f"with model.weights={path}. Nothing was changed."
        )
    schedule = [text for key, text in changed if key not in RESUME_BOOKKEEPING]
    bookkeeping = [text for key, text in changed if key in RESUME_BOOKKEEPING]
    notes = []
    if schedule:
        notes.append(
            f"--resume with changed training settings: {'; '.join(schedule)}. The run continues from "
            f"iteration {checkpoint.get('iteration', '?')} with the new values, so from there on its losses are not "
            "those of an uninterrupted run of either config (resume is no longer exact)."
        )
    if bookkeeping:
        notes.append(f"--resume with changed output settings ({'; '.join(bookkeeping)}); the training is unchanged.")
    return notes


def _keyed_differences(a: Any, b: Any, prefix: str) -> list[tuple[str, str]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _keyed_differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [(prefix, f"{prefix}: checkpoint {b!r}, config {a!r}")]


def _holds(saved: dict[str, Any], key: str) -> bool:
    """Whether the saved config has ``key`` (a checkpoint of an older swiftdet may lack newer fields)."""
    node: Any = saved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            return False
        node = node[part]
    return True


class CheckpointManager:
    """Writes, lists and prunes the checkpoints of one run (only rank 0 should write)."""

    def __init__(self, directory: str | Path, keep_last: int):
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)

    @property
    def last_path(self) -> Path:
        return self.directory / "last.pth"

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pth"

    def periodic_checkpoints(self) -> list[tuple[int, Path]]:
        """(iteration, path) of the periodic checkpoints present, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _PERIODIC.match(entry.name)
            if match:
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the newest periodic one (``last.pth`` if only it is left).

        The newest ``model_*.pth`` is complete whenever it exists (atomic write), even if a kill came
        before ``last.pth`` was pointed at it.
        """
        periodic = self.periodic_checkpoints()
        if periodic:
            return periodic[-1][1]
        return self.last_path if self.last_path.is_file() else None

    def save(self, state: dict[str, Any], iteration: int) -> Path:
        """Write ``model_{iteration}.pth``, point ``last.pth`` at it, then prune beyond ``keep_last``."""
        path = self.directory / f"model_{iteration:07d}.pth"
        self._write(state, path)
        self._link_last(path)
        for _, old in self.periodic_checkpoints()[: -self.keep_last]:
            old.unlink()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        self._write(state, self.best_path)
        return self.best_path

    def _write(self, state: dict[str, Any], path: Path) -> None:
        try:
            atomic_torch_save(state, path)
        except OSError as error:
            previous = self.latest()
            kept = (
                f"The previous checkpoint {previous} is intact; resume from it with --resume"
                if previous is not None
                else "No earlier checkpoint of this run exists"
            )
            hint = "free some disk space" if error.errno == errno.ENOSPC else "make the folder writable"
            raise CheckpointWriteError(
                f"Could not write checkpoint {path}: {error.strerror or error}. {kept} once you {hint}."
            ) from error

    def _link_last(self, target: Path) -> None:
        """Replace ``last.pth`` atomically by a hard link to ``target`` (no second copy on disk)."""
        fd, tmp = tempfile.mkstemp(prefix=".last.pth.", suffix=".tmp", dir=self.directory)
        os.close(fd)
        os.unlink(tmp)
        try:
            try:
                os.link(target, tmp)
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # Filesystems without hard links (some network/FAT mounts) get a copy instead.
                shutil.copyfile(target, tmp)
            os.replace(tmp, self.last_path)
        except OSError as error:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise CheckpointWriteError(
                f"Wrote checkpoint {target} but could not update {self.last_path}: {error.strerror or error}. "
                f"Resume works from {target} (the newest model_*.pth is used when last.pth is stale)."
            ) from error
