"""Precomputed proposal files: Fast R-CNN's input (``model.proposal_generator=precomputed``).

Two formats are read:

* detectron2's (what its COCOEvaluator writes as ``box_proposals.pkl`` and its model zoo ships): a
  pickle of a dict with ``ids`` (image ids), ``boxes`` (one (N, 4) array per id), ``objectness_logits``
  (one (N,) array per id) and optionally ``bbox_mode`` (0 = XYXY_ABS, the default, or 1 = XYWH_ABS);
  Detectron's older names ``indexes`` / ``scores`` are accepted as detectron2 accepts them.
* mmdetection's: a pickle of a list with one (N, 5) array (x0, y0, x1, y1, score) per image, in the
  order of the dataset json's ``images`` (the full list, before any filtering).

Boxes are in the original image's pixels. Each image's proposals are ranked by decreasing score
(stable), as detectron2's ``load_proposals_into_dataset`` does. A dataset loaded with a proposal file
(:func:`swiftdet.data.sources.load_dataset`) carries it; the loader's samples carry each image's
proposals (:func:`image_proposals`) through the same transforms as the image, then
:func:`finish_proposals` clips them, drops the empty ones and keeps the top-k (detectron2's
``transform_proposals``: after the transforms, in that order); :func:`batch_proposals` pads a batch's
for the model (``model(images, targets, proposals=...)``).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from swiftdet.errors import DatasetError
from swiftdet.structures import Boxes, Instances

__all__ = ["ProposalFile", "batch_proposals", "finish_proposals", "image_proposals", "read_proposal_file"]

_XYXY_ABS, _XYWH_ABS = 0, 1


@dataclass
class ProposalFile:
    """Proposals by image id: (N, 4) float32 xyxy boxes in the original image's pixels and (N,) float32
    scores, each image's sorted by decreasing score. ``format`` is "detectron2" or "mmdetection"."""

    source: str
    format: str
    boxes: dict
    scores: dict

    def check_covers(self, image_ids: Sequence[Any], field: str) -> None:
        """DatasetError naming the first image ids of ``image_ids`` the file has no proposals for."""
        missing = [i for i in image_ids if i not in self.boxes]
        if missing:
            shown = ", ".join(repr(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DatasetError(f"{field} {self.source!r} has no proposals for {len(missing)} image id(s) of the dataset "
                               f"({shown}): use the proposal file made for this dataset's json.")


def _load_pickle(path: str, field: str) -> Any:
    if not os.path.isfile(path):
        raise DatasetError(f"{field}: proposal file {path!r} does not exist.")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # latin1: Detectron's Python 2 pickles
    except Exception as error:  # any unpickling failure means "not a proposal file"
        raise DatasetError(f"{field}: {path!r} is not a readable pickle of proposals ({type(error).__name__}: {error}); "
                           "expected detectron2's proposal dict or mmdetection's list of (N, 5) arrays.") from None


def _array(value: Any, cols: int | None, what: str, source: str) -> np.ndarray:
    a = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
    if a.size == 0:
        a = a.reshape((0,) if cols is None else (0, cols))
    if (cols is None and a.ndim != 1) or (cols is not None and (a.ndim != 2 or a.shape[1] != cols)):
        want = "(N,)" if cols is None else f"(N, {cols})"
        raise DatasetError(f"Proposal file {source!r}: {what} has shape {a.shape}, expected {want}.")
    return a


def _ranked(boxes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def read_proposal_file(path: str | os.PathLike, image_ids: Sequence[Any], *, field: str = "proposal file",
                       json_order: Callable[[], Sequence[Any]] | None = None) -> ProposalFile:
    """Read a detectron2 or mmdetection proposal file (module docstring) for a dataset of the images
    ``image_ids``. ``json_order()``: every image id of the dataset's json in its order, which
    mmdetection's lists follow (default: ``image_ids``). ``field``: what messages call the file (the
    setting that named it).

    Raises:
        DatasetError: the file does not exist, is not a proposal file of either format, has arrays of
        the wrong shape, an mmdetection list of another length than the json's images, an unknown
        bbox_mode, or an image of ``image_ids`` has no proposals in it.
    """
    source = str(path)
    data = _load_pickle(source, field)
    boxes, scores = {}, {}
    if isinstance(data, dict):
        fmt = "detectron2"
        data = dict(data)
        for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
            if old in data and new not in data:
                data[new] = data.pop(old)
        missing = [k for k in ("ids", "boxes", "objectness_logits") if k not in data]
        if missing:
            raise DatasetError(f"{field}: {source!r} is a dict without {missing}; a detectron2 proposal file has 'ids', "
                               "'boxes', 'objectness_logits' (and 'bbox_mode').")
        mode = int(data.get("bbox_mode", _XYXY_ABS))
        if mode not in (_XYXY_ABS, _XYWH_ABS):
            raise DatasetError(f"{field}: {source!r} has bbox_mode {mode}; supported: 0 (XYXY_ABS) and 1 (XYWH_ABS).")
        ids, all_boxes, all_scores = list(data["ids"]), list(data["boxes"]), list(data["objectness_logits"])
        if not len(ids) == len(all_boxes) == len(all_scores):
            raise DatasetError(f"{field}: {source!r} has {len(ids)} ids, {len(all_boxes)} box arrays and "
                               f"{len(all_scores)} objectness arrays; they must be as many.")
        # detectron2 matches ids as strings (its files may hold str or int ids): so do we.
        by_str = {str(i): i for i in image_ids}
        for i, b, s in zip(ids, all_boxes, all_scores):
            if str(i) not in by_str:
                continue
            b = _array(b, 4, f"boxes of image {i!r}", source)
            s = _array(s, None, f"objectness_logits of image {i!r}", source)
            if len(b) != len(s):
                raise DatasetError(f"Proposal file {source!r}: image {i!r} has {len(b)} boxes but {len(s)} scores.")
            if mode == _XYWH_ABS:
                b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
            boxes[by_str[str(i)]], scores[by_str[str(i)]] = _ranked(b, s)
    elif isinstance(data, (list, tuple)):
        fmt = "mmdetection"
        order = list(json_order()) if json_order is not None else list(image_ids)
        if len(data) != len(order):
            raise DatasetError(f"{field}: {source!r} is an mmdetection proposal list of {len(data)} images but the "
                               f"dataset json lists {len(order)}: it must have one (N, 5) array per image, in "
                               "the json's order.")
        for i, a in zip(order, data):
            a = _array(a, 5, f"entry of image {i!r}", source)
            boxes[i], scores[i] = _ranked(a[:, :4], a[:, 4])
    else:
        raise DatasetError(f"{field}: {source!r} holds a {type(data).__name__}; expected detectron2's proposal dict "
                           "or mmdetection's list of (N, 5) arrays.")
    result = ProposalFile(source, fmt, boxes, scores)
    result.check_covers(image_ids, field)
    return result


def image_proposals(proposals: ProposalFile, image_id: Any, image_size: tuple[int, int]) -> Instances:
    """All proposals of one image as Instances of its original ``image_size`` = (h, w): ``boxes``
    (P, 4) xyxy and ``scores`` (P,) objectness, by decreasing score; the transforms move them."""
    return Instances(tuple(image_size), boxes=Boxes(torch.as_tensor(proposals.boxes[image_id])),
                     scores=torch.as_tensor(proposals.scores[image_id]))


def finish_proposals(proposals: Instances, topk: int) -> Instances:
    """Transformed proposals clipped to their image, empty boxes dropped, then the ``topk`` best
    (detectron2's ``transform_proposals``, min size 0; the order by score is kept from the file)."""
    boxes = proposals.boxes.clip(proposals.image_size)
    keep = boxes.nonempty().nonzero().squeeze(1)[:topk]
    return proposals.with_fields(boxes=Boxes(boxes.tensor[keep]), scores=proposals.scores[keep])


def batch_proposals(samples: Sequence[Any], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The proposals of a batch of samples (``sample.proposals``: Instances in the resized image's
    pixels) as the model takes them: a (B, P, 4) float32 batch zero-padded to the most proposals P of
    an image, and the (B,) int64 counts."""
    missing = [getattr(s, "image_id", i) for i, s in enumerate(samples) if getattr(s, "proposals", None) is None]
    if missing:
        raise DatasetError(f"The samples of images {missing[:5]} carry no proposals: a Fast R-CNN "
                           "(model.proposal_generator=precomputed) needs a dataset loaded with its proposals file "
                           "(data.train.proposals / data.test.proposals).")
    boxes = [s.proposals.boxes.tensor.to(torch.float32) for s in samples]
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
    padded = torch.zeros((len(boxes), max(len(b) for b in boxes), 4), dtype=torch.float32)
    for i, b in enumerate(boxes):
        padded[i, : len(b)] = b
    return padded.to(device), counts.to(device)
