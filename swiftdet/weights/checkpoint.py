"""Load weights into a model and say exactly what was loaded, skipped or left out.

Accepted files: swiftdet checkpoints (``{"format": "swiftdet-checkpoint/1", "model": ..., "config":
..., "meta": ...}``, training checkpoints included), and bare state_dicts (also wrapped in a dict
under "model" or "state_dict"). A checkpoint trained with another number of classes loads
everything except the class-dependent predictor tensors, which are reported as skipped; a file for
another architecture is refused with a :class:`WeightsError` naming what does not fit.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from swiftdet.errors import WeightsError
from swiftdet.weights.download import cached_path

if TYPE_CHECKING:
    from swiftdet.config.schema import Config, ModelConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadReport",
    "extract_state_dict",
    "is_checkpoint",
    "make_checkpoint",
    "load_backbone_imagenet",
    "class_dependent_keys",
    "config_for_weights",
    "load_checkpoint",
    "build_model_with_weights",
    "load_initial_weights",
    "match_state_dict",
    "read_checkpoint",
    "read_weights_file",
]

CHECKPOINT_FORMAT = "swiftdet-checkpoint/1"
logger = logging.getLogger("swiftdet")
# Below this fraction of the model's tensors found in the file, the file is for another model.
_MIN_MATCHED_FRACTION = 0.5


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did.

    Attributes:
        source: the path or URL given.
        loaded: model keys whose values came from the file.
        missing: model keys the file lacks (left as initialised).
        unexpected: file keys the model does not have (ignored).
        skipped: class-dependent keys left as initialised because the file was trained with
            another number of classes, as "key: file shape -> model shape".
        num_classes_in_file: the file's number of classes when it differs from the model's.
        config: the config dict stored in the checkpoint (None for a bare state_dict).
        meta: the checkpoint's meta (class names, category ids, ...), empty when absent.
        iteration: the training iteration a swiftdet training checkpoint was written at, else None.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    num_classes_in_file: int | None = None
    config: dict | None = None
    meta: dict = field(default_factory=dict)
    iteration: int | None = None

    @property
    def complete(self) -> bool:
        """Every model tensor came from the file and every file tensor was used."""
        return not (self.missing or self.unexpected or self.skipped)

    def summary(self) -> str:
        lines = [f"Loaded {len(self.loaded)} tensors from {self.source}."]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} class-dependent tensors (file has {self.num_classes_in_file} "
                         f"classes): {', '.join(self.skipped)}.")
        if self.missing:
            lines.append(f"Missing from the file (kept as initialised): {_short_list(self.missing)}.")
        if self.unexpected:
            lines.append(f"In the file but not in the model (ignored): {_short_list(self.unexpected)}.")
        return " ".join(lines)


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_weights_file(path_or_url: str | os.PathLike, *, sha256: str | None = None, allow_pickle: bool = False,
                      allow_pickle_hint: str = "allow_pickle=True where Python loads it") -> Any:
    """``torch.load`` of a local file or URL on CPU, with user-facing errors.

    Only tensors and plain containers are unpickled unless ``allow_pickle`` (which runs the
    file's pickled code: use it only for files you trust, e.g. a whole pickled model).
    ``allow_pickle_hint`` is how the caller lets its user allow that (a command line that has the
    flag passes "--allow-pickle"), so that an error never suggests a flag the user's command lacks.
    """
    path = cached_path(path_or_url, sha256=sha256)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        message = str(e)
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
        if match is None or allow_pickle:
            raise WeightsError(
                f"Weights file '{path}' cannot be read: it is truncated or not a PyTorch file. Download or save it "
                f"again{_other_run_checkpoints(path)}."
            ) from None
        raise WeightsError(
            f"Weights file '{path}' holds pickled Python objects ({match.group(1)}), not only tensors and plain "
            "containers, so it was not unpickled. If you trust the file (e.g. a whole model saved with "
            f"torch.save(model)), allow pickled objects ({allow_pickle_hint}), or save its weights alone once: "
            f"torch.save(torch.load({str(path)!r}, weights_only=False).state_dict(), 'weights.pth')."
        ) from None
    except Exception as e:  # a corrupt file can make the unpickler raise nearly anything (IndexError, KeyError, ...)
        raise WeightsError(
            f"Weights file '{path}' cannot be read ({' '.join(str(e).split())[:200]}). It is truncated or not a "
            f"PyTorch file; download or save it again{_other_run_checkpoints(path)}."
        ) from None


def _other_run_checkpoints(path: str | os.PathLike) -> str:
    """For a file in a run's checkpoints folder: the other checkpoints there, as a hint to use one;
    else nothing (a downloaded or converted file has no older copy to point at)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # last.pth is a hard link to the newest model_*.pth: that one is the same broken file.
        others = sorted(n for n in os.listdir(folder) if re.fullmatch(r"model_\d{7,}\.pth", n)
                        and not os.path.samefile(os.path.join(folder, n), path))
    except OSError:
        return ""
    if not others:
        return ""
    return f", or use another checkpoint of that run: {', '.join(os.path.join(folder, n) for n in others[-3:])}"


def is_checkpoint(obj: Any) -> bool:
    """True if ``obj`` (what :func:`read_weights_file` returned) is a swiftdet model file."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A swiftdet checkpoint (:func:`make_checkpoint`'s dict, plus a run's state when a trainer
    wrote it), read with tensors and plain values only; any other file is refused."""
    data = read_weights_file(path)
    if not is_checkpoint(data) or "model" not in data:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise WeightsError(
            f"'{path}' is not a swiftdet checkpoint (expected format '{CHECKPOINT_FORMAT}', found {found!r}). "
            "Use a file written by swiftdet train, or convert foreign weights with swiftdet's weights tools."
        )
    return data


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, Tensor], dict | None, dict]:
    """(state_dict, config dict or None, meta) from what :func:`read_weights_file` returned."""
    config, meta = None, {}
    if isinstance(obj, nn.Module):
        return obj.state_dict(), None, {}
    if is_checkpoint(obj):
        config, meta = obj.get("config"), dict(obj.get("meta") or {})
        obj = obj.get("model")
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("model", "state_dict"):
            if key in obj and (_is_state_dict(obj[key]) or isinstance(obj[key], nn.Module)):
                inner = obj[key]
                obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
                break
    if not _is_state_dict(obj):
        what = type(obj).__name__
        keys = f" with keys {list(obj)[:6]}" if isinstance(obj, dict) else ""
        raise WeightsError(
            f"Weights file '{source}' is a {what}{keys}, not a state_dict or a swiftdet checkpoint: expected a dict "
            "of tensors, or a dict holding one under 'model' or 'state_dict'."
        )
    return dict(obj), config, meta


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def _class_counts(model_dim: int, file_dim: int, num_classes: int) -> set[int]:
    """Class counts C' for which a first dimension of k*(C+e) in the model is k*(C'+e) in the file.

    Class-dependent tensors have a first dimension proportional to num_classes (mask predictor,
    dense heads: k*C) or num_classes + 1 (background first: k*(C+1)).
    """
    counts = set()
    for extra in (0, 1):
        if model_dim % (num_classes + extra) == 0:
            k = model_dim // (num_classes + extra)
            if file_dim % k == 0 and file_dim // k - extra >= 1:
                counts.add(file_dim // k - extra)
    return counts


def class_dependent_keys(model: nn.Module, cfg: "ModelConfig") -> set[str]:
    """Keys of ``model``'s tensors whose shape depends on ``cfg.num_classes`` (``model`` being the
    detector ``cfg`` builds).

    Found by building the same architecture with one class more on the meta device (no memory,
    no initialisation) and comparing shapes.
    """
    from swiftdet.model.build import build_model

    with torch.device("meta"):
        other = build_model(dataclasses.replace(cfg, num_classes=cfg.num_classes + 1)).state_dict()
    own = model.state_dict()
    return {k for k, v in own.items() if k in other and tuple(other[k].shape) != tuple(v.shape)}


def match_state_dict(
    own: dict[str, Tensor],
    state_dict: dict[str, Tensor],
    source: str,
    *,
    num_classes: int | None,
    class_keys: set[str] = frozenset(),
    strict_arch: bool = True,
    file_num_classes: int | None = None,
) -> LoadReport:
    """Decide which tensors of ``state_dict`` fit a model whose state_dict is ``own``.

    ``report.loaded`` lists the keys to copy. Shape mismatches are class-dependent when every one
    of them is explained by one other class count (see :func:`_class_counts`; ``file_num_classes``
    pins it when the file states it). Only keys in ``class_keys`` (see :func:`class_dependent_keys`)
    may differ that way; any other mismatch does not fit.

    Raises:
        WeightsError (strict_arch): fewer than half of ``own`` in the file, or shape mismatches
            outside the class-dependent layers.
    """
    report = LoadReport(source=source)
    matched = [k for k in own if k in state_dict]
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    if strict_arch and len(matched) < _MIN_MATCHED_FRACTION * len(own):
        raise WeightsError(
            f"Weights file '{source}' does not fit this model: only {len(matched)} of the model's {len(own)} tensors "
            f"are in the file (e.g. missing {_short_list(report.missing, 3)}; the file has "
            f"{_short_list(report.unexpected, 3)}). It is for another architecture; check the config (model.arch), "
            "or convert the file first (swiftdet convert)."
        )
    mismatched = [k for k in matched if tuple(own[k].shape) != tuple(state_dict[k].shape)]
    by_class: list[str] = []
    other: list[str] = []
    candidates: set[int] | None = {file_num_classes} if file_num_classes is not None else None
    for k in mismatched:
        a, b = own[k].shape, state_dict[k].shape
        counts = set()
        if k in class_keys and num_classes is not None and len(a) == len(b) > 0 and a[1:] == b[1:]:
            counts = _class_counts(a[0], b[0], num_classes)
        joint = counts if candidates is None else counts & candidates
        if joint:
            candidates = joint
            by_class.append(k)
        else:
            other.append(k)
    if by_class:
        report.num_classes_in_file = min(candidates)
    if other and strict_arch:
        details = "; ".join(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in other[:4])
        raise WeightsError(
            f"Weights file '{source}' has {len(other)} tensors whose shapes do not fit this model outside the "
            f"class-dependent layers ({details}). It was trained for another architecture or backbone; check the "
            "config (model: depth, heads, norm) against the file."
        )
    skip = set(by_class) | set(other)
    report.skipped = [f"{k}: {tuple(state_dict[k].shape)} -> {tuple(own[k].shape)}" for k in by_class + other]
    report.loaded = [k for k in matched if k not in skip]
    return report


def load_checkpoint(model: nn.Module, path_or_url: str | os.PathLike, *, model_cfg: "ModelConfig | None" = None,
                    strict_arch: bool = True, sha256: str | None = None, allow_pickle: bool = False) -> LoadReport:
    """Load a swiftdet checkpoint or a bare state_dict into ``model``.

    Args:
        model: the model to fill (in place).
        path_or_url: local file or URL (downloaded into the cache, see :func:`cached_path`).
        model_cfg: the config ``model`` was built from. With it, the class-dependent layers of a
            file trained with another number of classes are skipped (fine-tuning); without it
            every shape must match.
        strict_arch: refuse files for another architecture: fewer than half of the model's tensors
            in the file, or shape mismatches outside the class-dependent layers. With False,
            whatever fits is loaded and the rest reported.
        sha256: expected SHA-256 of the file.
        allow_pickle: unpickle arbitrary objects (trusted files only).

    Returns:
        A :class:`LoadReport`; class-dependent tensors of a file trained with another number of
        classes are in ``report.skipped`` (left as initialised).

    Raises:
        WeightsError: missing/unreadable file, not a state_dict, or (strict_arch) another architecture.
    """
    source = os.fspath(path_or_url)
    obj = read_weights_file(source, sha256=sha256, allow_pickle=allow_pickle)
    state_dict, config, meta = extract_state_dict(obj, source)
    file_classes = None
    if isinstance(config, dict):
        file_classes = (config.get("model") or {}).get("num_classes")
    num_classes = model_cfg.num_classes if model_cfg is not None else getattr(model, "num_classes", None)
    class_keys = class_dependent_keys(model, model_cfg) if model_cfg is not None else set()
    report = match_state_dict(model.state_dict(), state_dict, source, num_classes=num_classes,
                              class_keys=class_keys, strict_arch=strict_arch, file_num_classes=file_classes)
    model.load_state_dict({k: state_dict[k] for k in report.loaded}, strict=False)
    report.config, report.meta = config, meta
    if is_checkpoint(obj) and "iteration" in obj:
        report.iteration = int(obj["iteration"])
    return report


def load_backbone_imagenet(model: nn.Module, path_or_url: str | os.PathLike, *, sha256: str | None = None) -> LoadReport:
    """Initialise ``model.backbone`` from a torchvision ImageNet ResNet/ResNeXt or MobileNetV3-Large checkpoint.

    The file's keys are mapped with the backbone's ``resnet_state_dict_from_torchvision`` (or
    ``mobilenet_v3_state_dict_from_torchvision`` when the backbone is a MobileNetV3); in the
    C4 layout, whose res5 stage lives in the box head (``roi_heads.box_head.res5``), ``layer4.*``
    goes there. Only backbone tensors are considered: the report's ``missing`` lists backbone
    (and res5) tensors the file lacks, ``unexpected`` file tensors that found no place.

    Raises:
        WeightsError: unreadable file, or a file that is not a ResNet of this depth/width.
    """
    from swiftdet.model.backbone.mobilenet import MobileNetV3, mobilenet_v3_state_dict_from_torchvision
    from swiftdet.model.backbone.resnet import resnet_state_dict_from_torchvision
    from swiftdet.model.backbone.vgg import VGG16, vgg16_state_dict_from_torchvision

    source = os.fspath(path_or_url)
    obj = read_weights_file(source, sha256=sha256)
    state_dict, _, _ = extract_state_dict(obj, source)
    if isinstance(getattr(model, "backbone", None), MobileNetV3):
        mapped = mobilenet_v3_state_dict_from_torchvision(state_dict)
    elif isinstance(getattr(model, "backbone", None), VGG16):  # SSD300: torchvision's vgg16 classifier file
        mapped = vgg16_state_dict_from_torchvision(state_dict)
    else:
        mapped = resnet_state_dict_from_torchvision(state_dict)
    own = model.state_dict()
    target: dict[str, Tensor] = {}
    for key, value in mapped.items():
        name = f"backbone.{key}"
        if name not in own and key.startswith("layer4.") and f"roi_heads.box_head.res5.{key[len('layer4.'):]}" in own:
            name = f"roi_heads.box_head.res5.{key[len('layer4.'):]}"
        target[name] = value
    # Judge the fit against the backbone's tensors only (the heads stay randomly initialised).
    scope = {k: v for k, v in own.items() if k.startswith(("backbone.", "roi_heads.box_head.res5."))}
    # FrozenBatchNorm keeps no batch counter: torchvision's num_batches_tracked has no place there.
    target = {k: v for k, v in target.items() if k in scope or not k.endswith("num_batches_tracked")}
    report = match_state_dict(scope, target, source, num_classes=None, strict_arch=True)
    model.load_state_dict({k: target[k] for k in report.loaded}, strict=False)
    return report


def make_checkpoint(model: nn.Module | dict[str, Tensor], config: "Config | dict", meta: dict | None = None) -> dict:
    """The swiftdet model-file dict (``format``, ``model``, ``config``, ``meta``) of ``model`` (a module or
    its state_dict; tensors copied to the CPU) with its config (a Config or its dict) and meta.

    Training checkpoints are this dict plus the run's state (see swiftdet.engine.checkpoint)."""
    from swiftdet.config.core import config_to_dict

    state = model.state_dict() if isinstance(model, nn.Module) else model
    config_dict = config if isinstance(config, dict) else config_to_dict(config)
    return {"format": CHECKPOINT_FORMAT, "model": {k: v.detach().cpu() for k, v in state.items()},
            "config": config_dict, "meta": dict(meta or {})}


def load_initial_weights(model: nn.Module, cfg: "ModelConfig", weights: str | os.PathLike | None = None, *,
                         require_complete: bool = False) -> LoadReport | None:
    """Give a freshly built ``model`` its initial weights: the one rule of train, eval, demo and predict.

    1. A whole-model file, ``weights`` if given else ``cfg.weights`` (path or URL; a swiftdet
       checkpoint or a bare state_dict), through :func:`load_checkpoint`. Class-dependent layers of a
       file trained with another number of classes keep their initialisation (fine-tuning).
    2. Else the ImageNet backbone file ``cfg.backbone.weights``, through :func:`load_backbone_imagenet`.
    3. Else nothing: the model keeps its random initialisation, and None is returned.

    Args:
        require_complete: the file must fill every tensor of the model and nothing else (evaluating
            or drawing a trained model); a partial fit is an error rather than a warning.

    Raises:
        WeightsError: unreadable file, another architecture, or (require_complete) a partial fit.
    """
    source = weights or cfg.weights
    if source:
        report = load_checkpoint(model, source, model_cfg=cfg)
        if require_complete and report.num_classes_in_file is not None:
            # Evaluating or drawing with random class layers gives noise (or labels without a category id).
            raise WeightsError(
                f"Weights '{source}' were trained for {report.num_classes_in_file} classes, but this model has "
                f"{cfg.num_classes} (model.num_classes={cfg.num_classes}): its class layers would stay random. Use "
                f"the config the weights were trained with, or set model.num_classes={report.num_classes_in_file}."
            )
        if require_complete and not report.complete:
            raise WeightsError(
                f"Weights '{source}' do not fill this model exactly: {report.summary()} Use the config the weights "
                "were trained with (its model section: classes, architecture, heads)."
            )
    elif cfg.backbone.weights:
        report = load_backbone_imagenet(model, cfg.backbone.weights)
    else:
        logger.info("no model.weights or model.backbone.weights: the model starts from random initialisation")
        return None
    logger.info(report.summary())
    if report.skipped or report.missing:
        logger.warning("the weights did not cover the whole model: %s", report.summary())
    return report


def build_model_with_weights(cfg: "Config", weights: str | os.PathLike | None = None, *,
                             require_complete: bool = False) -> tuple[nn.Module, LoadReport | None]:
    """The model of a run's config with its initial weights: what train, eval, demo and predict build.

    The model pads its batches to ``cfg.input.size_divisibility``; the weights follow
    :func:`load_initial_weights` (``weights``, else ``cfg.model.weights``, else
    ``cfg.model.backbone.weights``, else random).

    Returns:
        (model on the CPU, report of the load or None when no weights were configured).
    """
    from swiftdet.model.build import build_model

    model = build_model(cfg.model, size_divisibility=cfg.input.size_divisibility)
    return model, load_initial_weights(model, cfg.model, weights, require_complete=require_complete)


def _stored_config(path: str) -> dict | None:
    """The config dict a swiftdet checkpoint at local ``path`` holds, else None. Memory-maps the file
    where it can, so that reading the config does not load the tensors a second time."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old-format or unreadable file: read_weights_file says what is wrong
        obj = read_weights_file(path)
    if is_checkpoint(obj) and isinstance(obj.get("config"), dict):
        return obj["config"]
    return None


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    return {prefix: tree}


def config_for_weights(cfg: "Config", weights: str | os.PathLike | None = None,
                       overrides: list[str] | tuple[str, ...] = ()) -> tuple["Config", str | None]:
    """The config to evaluate or predict with the model file ``weights`` (else ``cfg.model.weights``).

    A swiftdet checkpoint stores the config it was trained with; its ``model`` and ``input``
    sections (architecture, classes, test sizes and thresholds) replace ``cfg``'s, so that a
    built-in config name given for a run's checkpoint does not silently run other test sizes.
    ``overrides`` (the command line's ``key=value``) are applied again on top: what the user set
    explicitly wins. ``cfg``'s initialisation files (``model.weights``, ``model.backbone.weights``)
    are kept. A bare state_dict, or a checkpoint without a config, leaves ``cfg`` as it is.

    Returns:
        (the config, a one-line note saying what differs from ``cfg``, or None when nothing does).
    """
    import copy

    from swiftdet.config.core import apply_overrides, config_from_dict, config_to_dict, validate_config
    from swiftdet.config.schema import InputConfig, ModelConfig
    from swiftdet.errors import ConfigError

    source = weights or cfg.model.weights
    if not source:
        return cfg, None
    stored = _stored_config(cached_path(source))
    if stored is None:
        return cfg, None
    try:
        model = config_from_dict(ModelConfig, stored.get("model") or {}, "model")
        inputs = config_from_dict(InputConfig, stored.get("input") or {}, "input")
    except ConfigError as e:
        return cfg, (f"The config stored in '{source}' does not fit this swiftdet version ({' '.join(str(e).split())}); "
                     "using the given config as it is.")
    model.weights, model.backbone.weights = cfg.model.weights, cfg.model.backbone.weights
    merged = copy.deepcopy(cfg)
    merged.model, merged.input = model, inputs
    merged = validate_config(apply_overrides(merged, list(overrides)))
    before, after = config_to_dict(cfg), config_to_dict(merged)
    # Input first: the test sizes are what a user least expects to change.
    old = {**_flat(before["input"], "input"), **_flat(before["model"], "model")}
    new = {**_flat(after["input"], "input"), **_flat(after["model"], "model")}
    diffs = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    if not diffs:
        return merged, None
    shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    return merged, f"Using the model and input settings stored in '{source}', which differ from the given config: {shown}."
