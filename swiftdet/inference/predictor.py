"""Run a trained detector on images: numpy arrays, tensors or files in, Instances out.

The predictor owns everything between a user's image and the detector contract: checking and
converting the input (grayscale, RGBA, 16-bit, float ranges), resizing to the test size, batching,
and moving results back to the CPU in original pixel coordinates.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from swiftdet.config.schema import Config
from swiftdet.data.loader import tta_resizes
from swiftdet.data.transforms import TestTransform, read_image
from swiftdet.errors import ConfigError, InputError, WeightsError
from swiftdet.model.detector import Detector
from swiftdet.model.layers import fuse_for_inference
from swiftdet.model.tta import TestTimeAugmentation
from swiftdet.structures import Instances
from swiftdet.weights.checkpoint import build_model_with_weights

__all__ = ["ImageInput", "Predictor", "build_model_with_weights", "resolve_device", "to_rgb_tensor"]


ImageInput = Union[np.ndarray, Tensor, str, os.PathLike]
logger = logging.getLogger("swiftdet")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, refusing CUDA where there is none."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"Unknown device '{device}'; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"Device '{device}' was asked for, but CUDA is not available on this machine "
                              "(no GPU or a CPU-only PyTorch build). Use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    elif dev.type != "cpu":
        raise ConfigError(f"Device '{device}' is not supported; use 'cpu' or 'cuda'.")
    return dev


def _array_to_chw(array: np.ndarray, name: str) -> Tensor:
    """(H, W), (H, W, 1|3|4) numpy image -> (3, H, W) tensor (uint8, or float in 0-255)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"{name} is a numpy array of shape {array.shape}; expected (H, W) grayscale or "
                         "(H, W, 3) RGB / (H, W, 4) RGBA with channels last.")
    return _normalise_channels(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), name)


def _normalise_channels(image: Tensor, name: str) -> Tensor:
    """(C, H, W) with C in 1, 3, 4 -> (3, H, W): gray repeated, alpha dropped; dtype checked."""
    channels = image.shape[0]
    if channels == 1:
        image = image.expand(3, -1, -1)
    elif channels == 4:
        image = image[:3]
    elif channels != 3:
        raise InputError(f"{name} has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise InputError(f"{name} is empty ({image.shape[1]}x{image.shape[2]} pixels).")
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        return ((image.to(torch.int32) + 128) // 257).to(torch.uint8)
    if image.dtype.is_floating_point:
        image = image.float()
        if not torch.isfinite(image).all():
            raise InputError(f"{name} contains NaN or infinite values.")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 255:
            raise InputError(
                f"{name} is a float image with values in [{lo:.3g}, {hi:.3g}]; expected RGB values in 0-255. "
                "Scale it (e.g. image * 255 for images in 0-1) or pass uint8."
            )
        return image
    raise InputError(f"{name} has pixel type {image.dtype}; expected uint8, 16-bit, or float in 0-255.")


def to_rgb_tensor(image: ImageInput, name: str = "image") -> Tensor:
    """One user image as a (3, H, W) RGB tensor with values in 0-255 (uint8 or float32).

    Accepts a file path (read with EXIF orientation; gray, RGBA and 16-bit PNG handled), a numpy
    (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA array, or a torch (3, H, W) / (1, H, W) /
    (4, H, W) / (H, W) tensor; uint8, uint16, or float in 0-255.

    Raises:
        InputError: anything else, naming the input.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:
            return _uint16_array(image, name)
        return _array_to_chw(image, name)
    if isinstance(image, Tensor):
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3:
            raise InputError(f"{name} is a tensor of shape {tuple(image.shape)}; expected (3, H, W) RGB "
                             "(channels first), (1, H, W) or (H, W) grayscale.")
        return _normalise_channels(image.detach().cpu(), name)
    raise InputError(f"{name} is a {type(image).__name__}; expected a file path, a numpy HxWx3 RGB array or a "
                     "(3, H, W) torch tensor.")


def _uint16_array(array: np.ndarray, name: str) -> Tensor:
    # torch has limited uint16 support: scale to 8 bits in numpy (round(v / 257)), as read_image does.
    return _array_to_chw(((array.astype(np.int32) + 128) // 257).astype(np.uint8), name)


class Predictor:
    """A detector ready for inference on user images.

    Args:
        cfg: the full config (model, and input.min_size_test / max_size_test: its TestTransform).
        weights: checkpoint path or URL (ours or a bare state_dict); None uses cfg.model.weights.
        device: 'cpu' or 'cuda[:N]'.
        score_thresh: keep detections scoring at least this (sets the architecture's score
            threshold, so it also applies before the per-image top-k); None keeps the config's.
        batch_size: images per forward pass.
        fast: run the model with norms folded into the convs and channels-last weights
            (:func:`swiftdet.model.layers.fuse_for_inference`): the same detections within float
            rounding, in less time. ``False`` runs the model exactly as trained.
        precision: "fp32", or "bf16" (bfloat16 autocast where the device has it natively, see
            :meth:`swiftdet.model.detector.Detector.set_precision`).
        compile: run the model's core through ``torch.compile`` (after the fusion of ``fast``;
            :meth:`swiftdet.model.detector.Detector.set_compiled`): the first images of each size
            are slow while it compiles.

    The predictor holds one copy of the weights: with ``fast`` the model it built from the file is
    fused in place (no trained copy is kept beside it; :attr:`source_model` builds that again from
    the file when asked for).
    """

    def __init__(
        self,
        cfg: Config,
        weights: str | None = None,
        device: str | torch.device = "cpu",
        score_thresh: float | None = None,
        batch_size: int = 1,
        fast: bool = True,
        precision: str = "fp32",
        compile: bool = False,
    ):
        if batch_size < 1:  # before the model is built, which takes a while
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        cfg = copy.deepcopy(cfg)
        if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
            raise ConfigError(f"score_thresh must be in [0, 1], got {score_thresh}.")
        if not (weights or cfg.model.weights):
            raise ConfigError("No weights to predict with: pass a checkpoint (--weights PATH_OR_URL) or set "
                              "model.weights in the config. Predictions of a randomly initialised model are noise.")
        device = resolve_device(device)
        # The whole model must come from the file: random layers would draw noise.
        model, report = build_model_with_weights(cfg, weights, require_complete=True)
        if score_thresh is not None:
            model.score_thresh = score_thresh
        model = model.to(device).eval()
        model.set_precision(precision)
        self.load_report = report
        # This model is the predictor's own: fused in place, so the weights are held once, not twice
        # (a trained copy beside the fused one doubled inference's memory). source_model rebuilds it.
        self._weights, self._score_thresh = weights, score_thresh
        self._source_model = None if fast else model
        model = fuse_for_inference(model, inplace=True) if fast else model
        model.set_compiled(compile)  # after the fusion: the fused model is what is compiled
        self._setup(cfg, model, dict(report.meta) if report is not None else {}, device, batch_size, None,
                    f"Weights '{weights or cfg.model.weights}'")

    @property
    def source_model(self):
        """The model as trained (unfused: what saves, exports or trains weights), in eval mode on
        the predictor's device. With ``fast=False`` (and for :meth:`from_model`) it is
        :attr:`model` itself; with ``fast`` the predictor keeps only the fused model, so each read
        builds the trained model again from the weights file: keep the result where it is used
        more than once."""
        if self._source_model is not None:
            return self._source_model
        model, _ = build_model_with_weights(self.cfg, self._weights, require_complete=True)
        if self._score_thresh is not None:
            model.score_thresh = self._score_thresh
        return model.to(self.device).eval()

    def _setup(self, cfg: Config, model, meta: dict, device: torch.device, batch_size: int,
               min_score: float | None, source: str) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        self.cfg = cfg
        self.test_transform = TestTransform.from_config(cfg)
        self.device = device
        self.batch_size = batch_size
        self.model = model
        # Test-time augmentation (cfg.test.aug): the wrapper resizes each original image itself.
        self.tta = None
        if cfg.test.aug.enabled and isinstance(model, Detector):
            self.tta = TestTimeAugmentation(model, tta_resizes(cfg), cfg.test.aug.flip)
        elif cfg.test.aug.enabled:
            logger.warning(f"test.aug.enabled is ignored for {type(model).__name__}: test-time augmentation runs "
                           "swiftdet detectors, not exported files.")
        self.min_score = min_score
        self.meta: dict = meta
        for key in ("category_ids", "class_names"):
            listed = self.meta.get(key)
            if listed and len(listed) != model.num_classes:
                # Else a label without a category id fails only after the first image has run.
                raise WeightsError(f"{source} list {len(listed)} {key} in their meta, but the model has "
                                   f"{model.num_classes} classes. Save the checkpoint again with one entry per class.")

    @classmethod
    def from_model(cls, cfg: Config, model, *, meta: dict | None = None, batch_size: int = 1,
                   min_score: float | None = None, device: str | torch.device = "cpu") -> "Predictor":
        """A predictor around a ready model with the Detector's ``predict(images, original_sizes)``
        and ``num_classes`` (e.g. an exported one, swiftdet.export.runtime); ``cfg`` gives its test
        resize, ``meta`` its class names and category ids, ``min_score`` drops lower detections.
        The model runs as given: it is the caller's, so it is neither fused nor copied."""
        predictor = cls.__new__(cls)
        predictor._source_model = model
        predictor.load_report = None
        predictor._setup(copy.deepcopy(cfg), model, dict(meta or {}), resolve_device(device), batch_size, min_score,
                         "The model's meta")
        return predictor

    @classmethod
    def from_config(
        cls,
        name_or_path: str,
        weights: str | None = None,
        overrides: Sequence[str] = (),
        device: str | torch.device = "cpu",
        **kwargs,
    ) -> "Predictor":
        """Predictor of a named config (or a .py config file, or a run's ``config.yaml``) with ``key=value``
        overrides; ``weights`` may be a run's ``model_final.pth`` or any of its checkpoints."""
        from swiftdet.config.core import load_config
        from swiftdet.weights.checkpoint import config_for_weights

        # A checkpoint's own model and input settings, the overrides on top (see config_for_weights).
        cfg, note = config_for_weights(load_config(name_or_path, list(overrides)), weights, overrides)
        if note:
            logger.warning(note)
        return cls(cfg, weights, device, **kwargs)

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def category_ids(self) -> list[int]:
        """Dataset category id of each label: the checkpoint's, else label + 1."""
        ids = self.meta.get("category_ids")
        return list(ids) if ids else list(range(1, self.model.num_classes + 1))

    def prepare(self, image: ImageInput, name: str = "image") -> tuple[Tensor, tuple[int, int]]:
        """(resized (3, H', W') float tensor on the device, original (H, W)) of one input, through
        the config's test transform (the one evaluation uses); with test-time augmentation the
        image stays at its original size (each augmentation resizes it)."""
        rgb = to_rgb_tensor(image, name)
        original = (int(rgb.shape[1]), int(rgb.shape[2]))
        if self.tta is not None:
            return rgb.to(self.device).float(), original
        return self.test_transform(rgb.to(self.device).float()), original

    @torch.no_grad()
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> list[Instances]:
        """Detections for one image or a list of images, in original pixel coordinates, on the CPU.

        A single image gives a one-element list; an empty list gives an empty list.
        """
        if isinstance(images, (np.ndarray, Tensor, str, os.PathLike)):
            images = [images]
        elif not isinstance(images, (list, tuple)):
            raise InputError(f"Predictor expects an image or a list of images, got a {type(images).__name__}.")
        results: list[Instances] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            prepared = [self.prepare(img, self._name(img, start + i)) for i, img in enumerate(chunk)]
            model = self.tta if self.tta is not None else self.model
            outputs = model.predict([p[0] for p in prepared], [p[1] for p in prepared])
            if self.min_score is not None:
                outputs = [r[r.scores >= self.min_score] for r in outputs]
            results.extend(r.to("cpu") for r in outputs)
        return results

    @staticmethod
    def _name(image: ImageInput, index: int) -> str:
        if isinstance(image, (str, os.PathLike)):
            return f"Image file '{os.fspath(image)}'"
        return f"Image {index} of the input"
