"""The detector contract every architecture implements, and the shell that all of them share.

A detector is a tensor-only core inside a thin shell::

    images (list of (3, H_i, W_i) RGB 0-255)
      -> preprocess        -> ImageList: (B, 3, H, W) normalised, zero-padded batch + sizes
      -> core(batch, sizes) -> raw tensors (below): what export and compile trace
      -> unpack            -> per-image Instances in the resized images' coordinates
      -> postprocess       -> per-image Instances in the original images' coordinates

Raw detections (``core``'s output), for a batch of B images holding N detections in all:

    boxes           (N, 4) float32 xyxy, in the padded batch's pixels, clipped to each image
    scores          (N,) float32
    labels          (N,) int64 in [0, num_classes)
    num_detections  (B,) int64; detections are grouped by image, each image's by decreasing score
    mask_probs      (N, M, M) float32 mask probabilities of the detected class (mask models only)
    keypoints       (N, K, 3) float32 x, y (padded batch's pixels) and score of each keypoint (keypoint models only)

Subclasses provide ``core`` and ``losses`` and expose ``score_thresh`` (read and set by the
predictor) and ``num_classes``; the rest lives here once, so every architecture normalises, pads,
checks its inputs and maps results back the same way.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor, nn

from swiftdet.config.schema import ModelConfig
from swiftdet.errors import ConfigError, InputError
from swiftdet.model.postprocess import postprocess_instances
from swiftdet.structures import Boxes, ImageList, Instances, Keypoints
from swiftdet.utils.cpu import has_native_bf16

__all__ = ["PRECISIONS", "Detector", "check_compile_toolchain", "check_precision", "check_targets", "shell_settings",
           "unpack_detections"]

#: Inference precisions: float32, or the core under bfloat16 autocast (convolutions and matrix
#: products in bf16; the box predictor, decoding, NMS and all outputs in float32).
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError unless ``device`` runs ``precision`` natively (bf16 emulated in software would
    be many times slower than the float32 it is meant to beat)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bfloat16; "
                              "use --precision fp32.")
    elif device.type != "cpu" or not has_native_bf16():
        raise ConfigError("--precision bf16 needs a CPU with native bfloat16 (AVX512-BF16 or AMX; this one has "
                          "neither): PyTorch would emulate it, tens of times slower than float32. Use --precision fp32.")


def _cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use for CPU code (its ``cpp.cxx`` candidates, the first
    found on PATH; ``None`` entries stand for an opt-in conda download and are skipped), or None."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return next((c for c in candidates if c and shutil.which(c)), None)


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_compile_toolchain(device: torch.device) -> None:
    """ConfigError unless torch.compile's code generator (TorchInductor) can build kernels for
    ``device``: a C++ compiler on the CPU, triton on CUDA. Checked before compiling, since inductor
    would otherwise fail only on the first image, deep inside the compilation."""
    if device.type == "cuda":
        if not _has_triton():
            raise ConfigError("--compile on a GPU needs triton, TorchInductor's GPU code generator, which is not "
                              "installed: pip install triton (the version your PyTorch build names), or run without "
                              "--compile.")
    elif device.type == "cpu":
        if _cpp_compiler() is None:
            from torch._inductor import config

            tried = ", ".join(c for c in (config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else
                                          (config.cpp.cxx,)) if c)
            raise ConfigError(f"--compile on the CPU needs a C++ compiler for TorchInductor's generated code, and none "
                              f"was found on PATH (looked for: {tried or 'nothing'}; the CXX environment variable names "
                              "another): install one (Debian/Ubuntu: apt-get install g++; Fedora: dnf install gcc-c++; "
                              "macOS: the Xcode command line tools), or run without --compile.")
    else:
        raise ConfigError(f"--compile runs on the CPU or a CUDA GPU; the model is on {device}. Run without --compile.")


def shell_settings(cfg: ModelConfig, size_divisibility: int = 32) -> dict:
    """The :class:`Detector` keyword arguments a model config gives (for the builders)."""
    return dict(
        pixel_mean=tuple(cfg.pixel_mean),
        pixel_std=tuple(cfg.pixel_std),
        input_format=cfg.input_format,
        size_divisibility=size_divisibility,
        mask_threshold=cfg.mask_head.mask_threshold,
        convention=cfg.convention,
    )


def check_targets(targets: Sequence[Instances] | None, num_images: int, num_classes: int, *, needs_masks: bool = False,
                  num_keypoints: int = 0) -> list[Instances]:
    """Training targets: one Instances per image, with labels in [0, num_classes) and boxes of
    positive width and height (and masks when ``needs_masks``, ``num_keypoints`` keypoints per
    instance when it is > 0)."""
    if targets is None or len(targets) != num_images:
        got = "no targets" if targets is None else f"{len(targets)} targets"
        raise InputError(f"Training needs one target Instances per image: got {got} for {num_images} images.")
    for i, t in enumerate(targets):
        if t.labels is None:
            raise InputError("Every training target needs labels (Instances.labels).")
        if needs_masks and t.masks is None:
            raise InputError("Mask R-CNN training needs masks (Instances.masks) in every target; "
                             "set model.mask_on=false to train boxes only.")
        if num_keypoints and len(t) and t.keypoints is None:
            raise InputError("Keypoint R-CNN training needs keypoints (Instances.keypoints) in every target, but the "
                             "training data has none: train on a dataset whose categories list keypoints (e.g. COCO "
                             "person_keypoints_*.json), or set model.keypoint_on=false.")
        if num_keypoints and t.keypoints is not None and t.keypoints.tensor.shape[1] != num_keypoints:
            raise InputError(f"The training targets have {t.keypoints.tensor.shape[1]} keypoints per instance but "
                             f"model.keypoint_head.num_keypoints is {num_keypoints}: set it to the dataset's count.")
        if len(t) == 0:
            continue
        lo, hi = int(t.labels.min()), int(t.labels.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"Target labels span [{lo}, {hi}] but model.num_classes is {num_classes}: labels must be contiguous "
                "indices 0..num_classes-1. Check the dataset's category mapping or model.num_classes."
            )
        b = t.boxes.tensor
        degenerate = (b[:, 2:] <= b[:, :2]).any(dim=1)
        if bool(degenerate.any()):
            raise InputError(
                f"Target boxes of image {i} in the batch include a box with zero or negative width or height "
                f"({b[degenerate][0].tolist()}, xyxy); drop such annotations when loading the dataset."
            )
    return list(targets)


def unpack_detections(raw: dict[str, Tensor], image_sizes: Sequence[tuple[int, int]]) -> list[Instances]:
    """Raw detections (see the module docstring) -> one Instances per image (``mask_probs`` and
    ``keypoints`` kept)."""
    counts = raw["num_detections"].tolist()
    fields = {"boxes": raw["boxes"], "scores": raw["scores"], "labels": raw["labels"]}
    if "mask_probs" in raw:
        fields["mask_probs"] = raw["mask_probs"]
    if "keypoints" in raw:
        fields["keypoints"] = raw["keypoints"]
    split = {k: v.split(counts) for k, v in fields.items()}
    out = []
    for i, size in enumerate(image_sizes):
        per_image = {k: v[i] for k, v in split.items()}
        per_image["boxes"] = Boxes(per_image["boxes"])
        if "keypoints" in per_image:
            per_image["keypoints"] = Keypoints(per_image["keypoints"])
        out.append(Instances(tuple(int(s) for s in size), **per_image))
    return out


class Detector(nn.Module, ABC):
    """Shell of every detector: preprocess, forward (losses or detections), postprocess, predict.

    Args:
        num_classes: foreground classes (K).
        pixel_mean, pixel_std: per-channel normalisation of 0-255 pixels, in ``input_format`` order.
        input_format: "RGB" or "BGR": the channel order the weights expect (inputs are RGB).
        size_divisibility: the batch is padded to multiples of this.
        mask_threshold: a pasted mask pixel is foreground where its probability exceeds this
            (detectron2's convention: is at least this).
        convention: "torchvision" or "detectron2": whose normalisation and mapping back to the
            original image (mask pasting, removal of boxes clipped to nothing) the shell follows.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "RGB",
        size_divisibility: int = 32,
        mask_threshold: float = 0.5,
        convention: str = "torchvision",
    ):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if convention not in ("torchvision", "detectron2"):
            raise ValueError(f"convention must be 'torchvision' or 'detectron2', got {convention!r}")
        self.convention = convention
        self.num_classes = num_classes
        self.input_format = input_format
        self.size_divisibility = size_divisibility
        self.mask_threshold = mask_threshold
        # In 0-255 units and float64, so that the 0-1 values below round exactly as torchvision's
        # (its mean/std are Python floats in 0-1 units). Not part of the state dict.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float64).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float64).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    #: Inference precision, one of :data:`PRECISIONS` (set with :meth:`set_precision`).
    precision: str = "fp32"

    def set_precision(self, precision: str) -> None:
        """Run inference in ``precision`` from now on (checked against the model's device)."""
        check_precision(precision, self.device)
        self.precision = precision

    #: ``torch.compile`` of the architecture's ``core`` function (set with :meth:`set_compiled`), or None.
    _compiled_core = None

    @property
    def compiled(self) -> bool:
        """Whether inference runs the core through ``torch.compile`` (:meth:`set_compiled`)."""
        return self._compiled_core is not None

    def set_compiled(self, enabled: bool = True, *, mode: str | None = None, dynamic: bool | None = True,
                     backend: str = "inductor") -> None:
        """Run the eval-mode core through ``torch.compile`` from now on (``enabled=False``: eagerly again).

        Only the core is compiled (preprocessing, unpacking and postprocessing stay eager) and
        training never uses it. The unbound ``core`` function is compiled and called with the
        model as its first argument: the module is not wrapped (its ``state_dict`` keys stay as
        they are, no ``_orig_mod.``) and a copy of the model (``fuse_for_inference``) runs it too.
        The first image of each new size is slow while it compiles; the data-dependent parts
        (NMS, per-image top-k, ``tolist``) break the graph and run eagerly between compiled pieces.

        ``dynamic=True`` (default) compiles the image height and width as symbols: on a tiny
        Faster R-CNN (2-core CPU) 64x96, 96x64 then 128x128 took 61, 12 and 18 s to compile, where
        dynamic=None (static, then dynamic on a change) took 41, 24 and 35 s; an evaluation sees
        many sizes. ``mode`` and ``backend`` are torch.compile's (``backend="eager"`` captures the
        graphs without generating code, as a quick test of the capture does).
        """
        if not enabled:
            self._compiled_core = None
            return
        if backend == "inductor":
            check_compile_toolchain(self.device)
        self._compiled_core = torch.compile(type(self).core, mode=mode, dynamic=dynamic, backend=backend)

    # ------------------------------------------------------------------------ what subclasses give
    score_thresh: float  # detections scoring at most this are dropped before NMS and the top-k

    @abstractmethod
    def core(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised batch and its (B, 2) int64 (height, width) image sizes -> raw
        detections (module docstring). Tensors in, tensors out: this is what export traces."""

    @abstractmethod
    def losses(self, images: ImageList, targets: list[Instances]) -> dict[str, Tensor]:
        """Scalar training losses of a batch whose targets passed :func:`check_targets`."""

    def check_targets(self, targets: Sequence[Instances] | None, num_images: int) -> list[Instances]:
        return check_targets(targets, num_images, self.num_classes)

    # ------------------------------------------------------------------------------ the shell
    def preprocess(self, images: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None) -> ImageList:
        """(3, H_i, W_i) RGB 0-255 images -> normalised, zero-padded batch on the model's device.

        ``original_sizes``: the (h, w) each image had before resizing (default: as given);
        results are mapped back to them.

        Normalisation is done in 0-1 units, ``(x / 255 - mean / 255) / (std / 255)``: the same
        float32 operations as torchvision's GeneralizedRCNNTransform, so converted torchvision
        models see bit-identical inputs (a deep network amplifies even 1-ulp differences).
        """
        if len(images) == 0:
            raise InputError("preprocess got an empty list of images; pass at least one (3, H, W) image tensor.")
        if original_sizes is not None and len(original_sizes) != len(images):
            raise InputError(
                f"preprocess got {len(images)} images but {len(original_sizes)} original sizes; pass one "
                "(height, width) per image or none."
            )
        normalised = []
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise InputError(
                    f"Image {i} of the batch has shape {shape}; the model expects (3, H, W) RGB tensors with values "
                    "0-255. Convert grayscale or RGBA images to RGB and put channels first."
                )
            normalised.append(self.normalize(img.to(self.device, torch.float32, non_blocking=True)))
        return ImageList.from_tensors(normalised, self.size_divisibility, 0.0, original_sizes)

    def normalize(self, images: Tensor) -> Tensor:
        """(..., 3, H, W) float32 RGB 0-255 -> the network's input: channels in ``input_format``
        order, ``(x / 255 - mean / 255) / (std / 255)`` (see :meth:`preprocess`; export uses it too).
        detectron2's convention: ``(x - mean) / std`` in 0-255 units, its float32 operations."""
        if self.input_format == "BGR":
            images = images.flip(-3)
        if self.convention == "detectron2":
            return (images - self.pixel_mean.float()) / self.pixel_std.float()
        mean = (self.pixel_mean / 255.0).float()
        std = (self.pixel_std / 255.0).float()
        return (images / 255.0 - mean) / std

    def forward(self, images: ImageList, targets: Sequence[Instances] | None = None,
                proposals: tuple[Tensor, Tensor] | None = None):
        """Training: dict of scalar losses. Eval: per-image Instances in the resized images'
        coordinates (boxes, scores, labels, ``mask_probs`` for mask models, ``keypoints`` for
        keypoint models). ``proposals``: the batch's given proposals, for an architecture whose core
        takes them (Fast R-CNN, :meth:`check_proposals`); passed on to ``losses`` and ``core``."""
        extra = {} if proposals is None and not self.needs_proposals else {
            "proposals": self.check_proposals(proposals, len(images))}
        if self.training:
            targets = self.check_targets(targets, len(images))
            return self.losses(images, [t.to(self.device) for t in targets], **extra)
        sizes = torch.tensor(images.image_sizes, dtype=torch.int64, device=images.tensor.device).reshape(-1, 2)
        core = self.core if self._compiled_core is None else functools.partial(self._compiled_core, self)
        if self.precision == "fp32":
            return unpack_detections(core(images.tensor, sizes, **extra), images.image_sizes)
        with torch.autocast(images.tensor.device.type, dtype=torch.bfloat16):
            raw = core(images.tensor, sizes, **extra)
        raw = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
        return unpack_detections(raw, images.image_sizes)

    #: Whether the core takes a third input, the batch's proposals (Fast R-CNN).
    needs_proposals = False

    def check_proposals(self, proposals: tuple[Tensor, Tensor] | None, num_images: int) -> tuple[Tensor, Tensor]:
        """The given proposals, checked and on the model's device; refused by a model that makes its own."""
        raise InputError("This model makes its own proposals; pass proposals only to a Fast R-CNN "
                         "(model.proposal_generator 'precomputed').")

    def postprocess(self, results: Sequence[Instances], images: ImageList) -> list[Instances]:
        """Detections mapped to the original image sizes: boxes (and keypoints) scaled by float32
        per-axis ratios as torchvision does, masks pasted with those boxes, boxes clipped."""
        return [postprocess_instances(r, tuple(orig), self.mask_threshold, self.convention)
                for r, orig in zip(results, images.original_sizes)]

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None,
                proposals: tuple[Tensor, Tensor] | None = None) -> list[Instances]:
        """preprocess -> forward (eval) -> postprocess. Leaves the module's train/eval mode as it was.
        ``proposals`` as in :meth:`forward`, in the resized images' pixels."""
        was_training = self.training
        self.eval()
        try:
            batch = self.preprocess(images, original_sizes)
            return self.postprocess(self(batch, proposals=proposals), batch)
        finally:
            self.train(was_training)
