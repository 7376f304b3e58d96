"""Training and test loaders: batches of :class:`Sample` (resized image + targets).

Each sample is decoded and augmented by a plain function of (dataset, index, global position), so
a batch does not depend on which worker made it: 0 or N workers give identical batches, and
``start_iter=k`` gives exactly the batches an uninterrupted run gave from iteration k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from swiftdet.config.schema import Config
from swiftdet.data.augment import OtherImages, check_moves_proposals
from swiftdet.data.proposals import finish_proposals, image_proposals
from swiftdet.data.samplers import InferenceSampler, TrainBatchSampler, repeat_factors_from_categories
from swiftdet.data.storage import DetectionDataset, ImageRecord
from swiftdet.data.transforms import (
    TestTransform,
    TrainTransform,
    apply_augmentation,
    augmentation_rng,
    read_image,
    record_to_instances,
    transform_instances,
)
from swiftdet.errors import DatasetError, InputError, SwiftdetError
from swiftdet.structures import Instances, flip_indices

__all__ = ["Sample", "SampleMapper", "read_record_image", "TestLoader", "TrainLoader", "build_test_loader", "build_train_loader",
           "tta_resizes"]


@dataclass
class Sample:
    """One image ready for ``model.preprocess``.

    Attributes:
        image: (3, H, W) float32 RGB in 0-255, already resized (not normalised, not padded); at
            its size on disk from a test loader with ``original_images`` (test-time augmentation).
        image_id: dataset image id.
        file_name: path of the image file (image_root joined with the json's file_name).
        original_size: (h, w) of the image on disk.
        instances: targets in the resized image's coordinates (boxes, int64 labels, masks,
            keypoints), crowd annotations excluded; None when the loader was asked for none.
        proposals: a Fast R-CNN's precomputed proposals (dataset loaded with a proposals file):
            ``boxes`` (P, 4) xyxy in the resized image's pixels and ``scores`` (P,) objectness, moved
            with the image, clipped, empty ones dropped, the top-k kept; None otherwise.
    """

    image: Tensor
    image_id: int
    file_name: str
    original_size: tuple[int, int]
    instances: Instances | None
    proposals: Instances | None = None


def read_record_image(dataset: DetectionDataset, record: ImageRecord) -> Tensor:
    """(3, H, W) uint8 image of a record; DatasetError naming the file and image id if it cannot be
    decoded or its size differs from the annotations'."""
    try:
        image = read_image(record.file_name)
    except InputError as e:
        raise DatasetError(f"{dataset.load_summary.source} (image id {record.image_id}): {e}") from None
    h, w = int(image.shape[1]), int(image.shape[2])
    if (h, w) != (record.height, record.width):
        raise DatasetError(
            f"{dataset.load_summary.source} (image id {record.image_id}): the annotations say the image is "
            f"{record.height}x{record.width} (height x width) but '{record.file_name}' is {h}x{w} after applying its "
            "EXIF orientation. Fix 'height'/'width' in the annotations (and check the boxes) or replace the file."
        )
    return image


class SampleMapper:
    """Turns (dataset index, global stream position) into a :class:`Sample`.

    Args:
        training: apply ``train_transform`` with the generator of (seed, position); otherwise
            apply ``test_transform``. Mosaic and copy-paste load other images of the dataset
            (:meth:`load`) at indices drawn from that same generator, so a sample stays a function
            of (seed, position) whatever the workers or a resume.
        with_targets: build ``Sample.instances``.
        proposal_topk: the best proposals kept per image (``data.proposal_topk_train`` / ``_test``),
            when the dataset carries proposals.
        original_images: test samples keep the image at its size on disk (no ``test_transform``):
            test-time augmentation resizes each image itself (:func:`tta_resizes`).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        *,
        training: bool,
        train_transform: TrainTransform | None = None,
        test_transform: TestTransform | None = None,
        seed: int = 0,
        keypoint_flip_map: Sequence[tuple[str, str]] = (),
        with_targets: bool = True,
        original_images: bool = False,
        proposal_topk: int = 1000,
    ):
        if training and train_transform is None:
            raise ValueError("a training SampleMapper needs its train_transform")
        if not training and test_transform is None:
            raise ValueError("a test SampleMapper needs its test_transform")
        self.dataset = dataset
        self.training = training
        self.train_transform = train_transform
        self.test_transform = test_transform
        self.seed = int(seed)
        self.with_targets = with_targets
        self.original_images = original_images and not training
        self.proposal_topk = int(proposal_topk)
        if dataset.proposals is not None and training:
            check_moves_proposals(train_transform.mosaic, train_transform.copy_paste, train_transform.random_crop)
        names = dataset.meta.keypoint_names
        flip_map = tuple(keypoint_flip_map) or dataset.meta.keypoint_flip_map
        try:
            self.flip_index = flip_indices(names, flip_map) if names else None
        except ValueError as e:
            raise DatasetError(f"{dataset.load_summary.source}: data.keypoint_flip_map does not fit the keypoints: {e}.") from None
        self.others = None
        if training and train_transform.needs_other_images:
            if train_transform.copy_paste is not None and with_targets and not dataset.has_masks:
                raise DatasetError(
                    f"{dataset.load_summary.source}: input.copy_paste.prob={train_transform.copy_paste.prob} pastes "
                    "instance masks, but this dataset has no segmentations. Set input.copy_paste.prob=0, or train "
                    "on a dataset with masks."
                )
            self.others = OtherImages(len(dataset), self.load)

    def load(self, index: int) -> tuple[Tensor, Instances | None]:
        """(3, H, W) uint8 image of dataset index ``index`` and its targets in its own pixels (None
        without ``with_targets``)."""
        ds = self.dataset
        record = ds.get(index)
        image = read_record_image(ds, record)
        instances = None
        if self.with_targets:
            instances = record_to_instances(record, with_masks=ds.has_masks, with_keypoints=ds.has_keypoints)
        return image, instances

    def __call__(self, index: int, position: int) -> Sample:
        record = self.dataset.get(index)
        image, instances = self.load(index)
        h, w = int(image.shape[1]), int(image.shape[2])
        proposals = None
        if self.dataset.proposals is not None:  # Fast R-CNN: moved with the image like the boxes
            proposals = image_proposals(self.dataset.proposals, record.image_id, (h, w))
        if self.training:
            rng = augmentation_rng(self.seed, position)
            if proposals is None:
                image, instances = self.train_transform(image, instances, rng, self.flip_index, others=self.others)
            else:
                image, instances, proposals = self.train_transform.with_proposals(image, instances, proposals, rng,
                                                                                  self.flip_index)
        elif self.original_images:
            image = image.float()
        else:
            image, instances = apply_augmentation(image.float(), instances, self.test_transform.augmentation, self.flip_index)
            if proposals is not None:
                proposals = transform_instances(proposals, (int(image.shape[-2]), int(image.shape[-1])))
        if proposals is not None:
            proposals = finish_proposals(proposals, self.proposal_topk)
        return Sample(image=image, image_id=record.image_id, file_name=record.file_name, original_size=(h, w), instances=instances,
                      proposals=proposals)


@dataclass
class _Failure:
    """A user error raised in a worker, carried back whole (DataLoader would wrap it in a traceback)."""

    error_type: type
    message: str


class _MappedDataset(Dataset):
    """Map-style view whose keys are (global position, dataset index) pairs."""

    def __init__(self, mapper: SampleMapper):
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.mapper.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample | _Failure:
        position, index = key
        try:
            return self.mapper(index, position)
        except SwiftdetError as e:
            return _Failure(type(e), str(e))


def _collate_list(batch: list) -> list:
    return batch


def _worker_init(_worker_id: int) -> None:
    # Workers decode and resize one image at a time; more threads per worker only contend.
    torch.set_num_threads(1)


def _unwrap(batch: list) -> list[Sample]:
    for item in batch:
        if isinstance(item, _Failure):
            raise item.error_type(item.message)
    return batch


def _make_loader(dataset: Dataset, batch_sampler, num_workers: int, seed: int = 0) -> DataLoader:
    # Every iterator of a DataLoader draws a base seed for its workers from ``generator``, or from
    # torch's global generator when none is given. A loader of its own keeps that draw out of the
    # global stream that training draws from (e.g. the RPN/RoI samplers' randperm), so creating a
    # loader (a resumed run does, an uninterrupted one does not) shifts no random number of training.
    # The workers' seeds do not matter for the samples: augmentation is seeded by stream position.
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=_collate_list,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed) % 2**63),
    )


class TrainLoader:
    """Infinite iterable of ``list[Sample]`` (this process's batch).

    ``iteration`` counts the batches handed out (starting at ``start_iter``); ``state_dict()``
    holds it, and ``build_train_loader(..., start_iter=state["iteration"])`` resumes exactly.
    Iterating again continues from ``iteration``.
    """

    def __init__(self, mapper: SampleMapper, batch_sampler: TrainBatchSampler, num_workers: int):
        self.mapper = mapper
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.batch_size = batch_sampler.batch_size
        self.iteration = batch_sampler.start_iter
        self._loader: DataLoader | None = None

    def __iter__(self) -> Iterator[list[Sample]]:
        # Not a generator function: the DataLoader iterator (and its workers) starts here, in the
        # caller's ``iter(loader)``, not at the first ``next()``, so a caller can isolate its setup.
        self.batch_sampler.start_iter = self.iteration
        if self._loader is None:
            self._loader = _make_loader(_MappedDataset(self.mapper), self.batch_sampler, self.num_workers,
                                        seed=self.batch_sampler.seed)
        return self._batches(iter(self._loader))

    def _batches(self, batches: Iterator[list]) -> Iterator[list[Sample]]:
        for batch in batches:
            batch = _unwrap(batch)
            self.iteration += 1
            yield batch

    def state_dict(self) -> dict:
        s = self.batch_sampler
        return {"iteration": self.iteration, "seed": s.seed, "batch_size": s.batch_size, "world_size": s.world_size}


class TestLoader:
    """Finite iterable of ``list[Sample]`` in dataset order (this rank's contiguous shard)."""

    def __init__(self, mapper: SampleMapper, sampler: InferenceSampler, batch_size: int, num_workers: int):
        self.mapper = mapper
        self.sampler = sampler
        self.batch_size = batch_size
        indices = list(sampler)
        self._batches = [[(i, i) for i in indices[k : k + batch_size]] for k in range(0, len(indices), batch_size)]
        self._loader = _make_loader(_MappedDataset(mapper), self._batches, num_workers)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[list[Sample]]:
        for batch in self._loader:
            yield _unwrap(batch)


def _num_workers(cfg: Config, num_workers: int | None) -> int:
    n = cfg.data.num_workers if num_workers is None else num_workers
    if n < 0:
        raise DatasetError(f"data.num_workers must be >= 0, got {n}.")
    return int(n)


def build_train_loader(
    cfg: Config,
    dataset: DetectionDataset,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    start_iter: int = 0,
    num_workers: int | None = None,
) -> TrainLoader:
    """Infinite training batches for one process.

    Args:
        cfg: uses ``seed``, ``input`` (:meth:`TrainTransform.from_config`),
            ``data.aspect_ratio_grouping``, ``data.num_workers``, ``data.keypoint_flip_map``,
            ``data.sampler`` and ``data.repeat_threshold`` (repeat-factor sampling, LVIS).
        dataset: typically ``load_dataset(cfg.data.train, training=True)``.
        batch_size: images per batch in this process (``solver.ims_per_batch // world_size``).
        start_iter: first iteration to produce (exact resume).
        num_workers: overrides ``cfg.data.num_workers``.
    """
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.load_summary.source}: no training images left after loading; see the load summary above.")
    mapper = SampleMapper(
        dataset,
        training=True,
        train_transform=TrainTransform.from_config(cfg),
        seed=cfg.seed,
        keypoint_flip_map=cfg.data.keypoint_flip_map,
        proposal_topk=cfg.data.proposal_topk_train,
    )
    group_of = None
    if cfg.data.aspect_ratio_grouping:
        group_of = (dataset.images.widths > dataset.images.heights).astype(np.int64)
    sampler, threshold = cfg.data.sampler, cfg.data.repeat_threshold
    repeat_factors = None
    if sampler == "repeat_factor":
        repeat_factors = repeat_factors_from_categories(dataset.images.ann_offsets, dataset.annotations.labels, threshold)
    batch_sampler = TrainBatchSampler(
        len(dataset), batch_size, seed=cfg.seed, rank=rank, world_size=world_size,
        group_of=group_of, start_iter=start_iter, repeat_factors=repeat_factors,
    )
    return TrainLoader(mapper, batch_sampler, _num_workers(cfg, num_workers))


def build_test_loader(
    cfg: Config,
    dataset: DetectionDataset,
    *,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    with_targets: bool = True,
    original_images: bool = False,
) -> TestLoader:
    """Ordered, finite batches through the config's :class:`TestTransform`; this rank gets a
    contiguous shard, all ranks together every image exactly once. With ``original_images`` the
    images (and targets) stay at their size on disk, for test-time augmentation."""
    mapper = SampleMapper(
        dataset,
        training=False,
        test_transform=TestTransform.from_config(cfg),
        keypoint_flip_map=cfg.data.keypoint_flip_map,
        with_targets=with_targets,
        original_images=original_images,
        proposal_topk=cfg.data.proposal_topk_test,
    )
    return TestLoader(mapper, InferenceSampler(len(dataset), rank, world_size), batch_size, _num_workers(cfg, num_workers))


def tta_resizes(cfg: Config) -> list[TestTransform]:
    """The resizes of test-time augmentation (``cfg.test.aug``): one :class:`TestTransform` per
    ``min_sizes`` entry, long side at most ``max_size``, in that order."""
    aug = cfg.test.aug
    return [TestTransform(int(size), int(aug.max_size)) for size in aug.min_sizes]
