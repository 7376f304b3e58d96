"""Test-time augmentation: a detector run at several sizes (and mirrored), its detections merged.

detectron2's ``GeneralizedRCNNWithTTA``, for every detector with the shell that resizes by the short
side (R-CNN, RetinaNet, FCOS). For one image at its original size:

1. each resize (one per ``test.aug.min_sizes`` entry) and, with ``flip``, its mirror image runs
   through the detector (mask heads off); each view's detections are mapped back to the original
   image as the shell maps them (rescaled, clipped) and mirrored back where the view was;
2. the union of all views' detections goes through class-wise NMS at the model's own NMS
   threshold and keeps the model's ``detections_per_image`` best (detectron2's
   ``_merge_detections``); for dense detectors this union + NMS is all;
3. mask models: the mask head runs again on the merged boxes in every view (mapped into it), the
   (M, M) probabilities of mirrored views are mirrored back, all views' probabilities are averaged
   and pasted at the original size as the shell pastes them (detectron2's ``_reduce_pred_masks``);
4. keypoint models (sizes only: a mirrored image swaps left and right keypoints, so ``flip`` is
   refused for them): each merged detection keeps the keypoints of the view it came from.

A single view (one size, no flip) is the plain model at that size: its detections already went
through the same NMS and cap, so nothing is merged and the result is exactly ``model.predict``.

The resizes are passed in (``data.loader.tta_resizes``: the test-time ``TestTransform`` at
each size), so that this module resizes exactly as evaluation and the predictor do.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from swiftdet.errors import ConfigError, InputError
from swiftdet.model.detector import Detector
from swiftdet.model.nms import class_wise_nms
from swiftdet.model.postprocess import postprocess_instances, rescale_instances
from swiftdet.model.proposal_network import ProposalNetwork
from swiftdet.model.rcnn import GeneralizedRCNN
from swiftdet.structures import CroppedMasks, Instances

__all__ = ["TestTimeAugmentation"]


class TestTimeAugmentation(nn.Module):
    """A detector with test-time augmentation; ``predict`` takes images at their ORIGINAL size.

    Args:
        model: a :class:`Detector` (R-CNN, RetinaNet, FCOS); not an RPN alone.
        resizes: each a function (3, H, W) float 0-255 image -> (3, h, w) resized image (the test
            transform at one size); every resize is one view, two with ``flip``.
        flip: also run each resized image mirrored left-right.

    ``num_classes``, ``score_thresh`` and ``device`` are the wrapped model's.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, model: Detector, resizes: Sequence[Callable[[Tensor], Tensor]], flip: bool = True):
        super().__init__()
        if isinstance(model, ProposalNetwork):
            raise ConfigError("Test-time augmentation merges detections; an RPN alone (model.arch='rpn') gives "
                              "proposals. Set test.aug.enabled=false.")
        if len(resizes) == 0:
            raise ConfigError("Test-time augmentation needs at least one size (test.aug.min_sizes).")
        heads = model.roi_heads if isinstance(model, GeneralizedRCNN) else model
        if not hasattr(heads, "nms_thresh") or not hasattr(heads, "detections_per_image"):
            raise ConfigError(f"Test-time augmentation does not support {type(model).__name__}: it merges with the "
                              "model's nms_thresh and detections_per_image, which this model does not have.")
        self.keypoint_on = isinstance(model, GeneralizedRCNN) and model.roi_heads.keypoint_on
        if flip and self.keypoint_on:
            raise ConfigError("test.aug.flip=true with a keypoint model: a mirrored image swaps left and right "
                              "keypoints, which test-time augmentation does not map back. Set test.aug.flip=false.")
        self.model = model
        self.resizes = list(resizes)
        self.flip = bool(flip)
        self.mask_on = isinstance(model, GeneralizedRCNN) and model.roi_heads.mask_on

    # ------------------------------------------------------------------- the wrapped model's
    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def score_thresh(self) -> float:
        return self.model.score_thresh

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        self.model.score_thresh = value

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _merge_settings(self) -> tuple[float, int]:
        """(NMS threshold, detections per image) of the model: its RoI heads' for an R-CNN."""
        heads = self.model.roi_heads if isinstance(self.model, GeneralizedRCNN) else self.model
        return float(heads.nms_thresh), int(heads.detections_per_image)

    @property
    def num_views(self) -> int:
        return len(self.resizes) * (2 if self.flip else 1)

    # ---------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, images: Sequence[Tensor], original_sizes: Sequence[tuple[int, int]] | None = None) -> list[Instances]:
        """Merged detections of each (3, H, W) RGB 0-255 image AT ITS ORIGINAL SIZE, in its pixels
        (boxes, scores, labels; masks as :class:`CroppedMasks`, keypoints), as ``Detector.predict``.

        ``original_sizes``, when given, must be the images' own sizes (the images are not resized
        beforehand: every view resizes the original). Leaves the train/eval mode as it was.
        """
        if original_sizes is not None:
            for i, (image, size) in enumerate(zip(images, original_sizes)):
                if tuple(int(s) for s in size) != (int(image.shape[-2]), int(image.shape[-1])):
                    raise InputError(
                        f"Image {i} of the batch is {tuple(image.shape[-2:])} but its original size is {tuple(size)}: "
                        "test-time augmentation takes the images at their original size (it resizes each one "
                        "itself); build the test loader with original_images=True."
                    )
        was_training = self.model.training
        self.model.eval()
        try:
            return [self._predict_one(image) for image in images]
        finally:
            self.model.train(was_training)

    def _views(self, image: Tensor) -> Iterator[tuple[list[Tensor], list[bool]]]:
        """Per resize: its views (the resized image, and its mirror with ``flip``) and which are mirrored."""
        for resize in self.resizes:
            resized = resize(image)
            if self.flip:
                yield [resized, resized.flip(-1)], [False, True]
            else:
                yield [resized], [False]

    def _predict_one(self, image: Tensor) -> Instances:
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise InputError(f"Test-time augmentation got an image of shape {shape}; expected (3, H, W) RGB 0-255.")
        model = self.model
        size = (int(image.shape[1]), int(image.shape[2]))
        image = image.to(model.device, torch.float32)
        if self.num_views == 1:  # the plain model at that size (see the module docstring)
            return model.predict([self.resizes[0](image)], [size])[0]
        detections = []
        with self._mask_head_off():
            for views, flipped in self._views(image):
                batch = model.preprocess(views, [size] * len(views))
                for instances, mirrored in zip(model(batch), flipped):
                    # Boxes (and keypoints) in the original image, as the shell maps them back.
                    instances = postprocess_instances(instances.with_fields(mask_probs=None), size,
                                                      model.mask_threshold, model.convention)
                    if mirrored:
                        instances = instances.with_fields(boxes=instances.boxes.hflip(size[1]))
                    detections.append(instances)
        merged = self._merge(Instances.cat(detections))
        if not self.mask_on:
            return merged
        if len(merged) == 0:
            empty = CroppedMasks([], torch.zeros((0, 2), dtype=torch.int64), size)
            return merged.with_fields(masks=empty)
        merged = merged.with_fields(mask_probs=self._average_mask_probs(image, merged))
        # The shell's pasting (the boxes are already in the original image: a rescale by 1).
        return postprocess_instances(merged, size, model.mask_threshold, model.convention)

    def _merge(self, detections: Instances) -> Instances:
        """Class-wise NMS over all views' detections at the model's threshold, its best
        ``detections_per_image`` kept, by decreasing score (detectron2's ``_merge_detections``)."""
        nms_thresh, detections_per_image = self._merge_settings()
        keep = class_wise_nms(detections.boxes.tensor, detections.scores, detections.labels, nms_thresh)
        return detections[keep[:detections_per_image]]

    def _average_mask_probs(self, image: Tensor, merged: Instances) -> Tensor:
        """(N, M, M) mask probabilities of the merged detections, averaged over all views: the
        mask head runs on each merged box mapped into each view; mirrored views' masks mirrored back."""
        model, heads = self.model, self.model.roi_heads
        size = merged.image_size
        slots = merged.labels + 1  # the mask head's class slots are 1-based (0: background)
        total = None
        for views, flipped in self._views(image):
            batch = model.preprocess(views, [size] * len(views))
            features = {k: v.contiguous() for k, v in model.extract_features(batch.tensor).items()}
            rois = []
            for index, ((h, w), mirrored) in enumerate(zip(batch.image_sizes, flipped)):
                boxes = merged.boxes.hflip(size[1]) if mirrored else merged.boxes
                boxes = rescale_instances(Instances(size, boxes=boxes), size, (h, w)).boxes.tensor
                rois.append(torch.cat([torch.full_like(boxes[:, :1], index), boxes], dim=1))
            probs = heads._mask_probs(features, torch.cat(rois), slots.repeat(len(views)))
            for mirrored, view_probs in zip(flipped, probs.split(len(merged))):
                view_probs = view_probs.flip(-1) if mirrored else view_probs
                total = view_probs if total is None else total + view_probs
        return total / self.num_views

    @contextmanager
    def _mask_head_off(self) -> Iterator[None]:
        """The R-CNN's mask head switched off (its masks are computed on the merged boxes instead)."""
        if not self.mask_on:
            yield
            return
        heads = self.model.roi_heads
        mask_head = heads.mask_head
        heads.mask_head = None
        try:
            yield
        finally:
            heads.mask_head = mask_head
