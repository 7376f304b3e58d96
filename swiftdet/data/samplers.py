"""Index streams: an infinite, sharded, resumable training stream, ordered inference shards, and
aspect-ratio grouped batches.

Positions: the training stream is one global sequence of (epoch permutation) indices; global
position g holds ``perm(epoch = g // size)[g % size]`` and rank r of W takes positions r, r + W,
r + 2W, ... The global position of a sample also seeds its augmentation, so a sample is augmented
the same way whatever the number of workers, and a resumed run repeats the uninterrupted one.

Repeat-factor sampling (LVIS, ``data.sampler="repeat_factor"``): epoch e lists image i
``floor(r_i)`` times plus once more with probability ``frac(r_i)`` (stochastic rounding, drawn from
the generator of (seed, 1, e)), then shuffles that list; epochs differ in length, so the stream
keeps the start of every epoch it has walked. The stream is still a function of (seed, position):
a resume recomputes the earlier epochs' lengths (N uniform draws per epoch, no images).
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np

__all__ = ["InferenceSampler", "TrainingSampler", "TrainBatchSampler", "group_batches", "repeat_factors_from_categories"]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def repeat_factors_from_categories(ann_offsets: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per-image repeat factors of LVIS (Gupta et al. 2019, appendix B.2; detectron2's
    ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`` with sqrt).

    f(c) is the fraction of images holding category c, r(c) = max(1, sqrt(threshold / f(c))), and an
    image repeats max(r(c)) over its categories (1 for an image without annotations).

    Args:
        ann_offsets: (N + 1,) int64, the annotations of image i are ``labels[ann_offsets[i]:ann_offsets[i+1]]``.
        labels: (A,) int64 category labels (every annotation counts, as in detectron2).
        threshold: the frequency below which a category's images are repeated (> 0).
    Returns:
        (N,) float64 factors, each >= 1.
    """
    if threshold <= 0:
        raise ValueError(f"repeat threshold must be > 0, got {threshold}")
    num_images = len(ann_offsets) - 1
    image_of = np.repeat(np.arange(num_images), np.diff(ann_offsets))
    num_labels = int(labels.max()) + 1 if len(labels) else 0
    # One (image, category) entry per category present in an image.
    pairs = np.unique(image_of * max(num_labels, 1) + labels) if len(labels) else np.zeros(0, dtype=np.int64)
    pair_image, pair_label = np.divmod(pairs, max(num_labels, 1))
    frequency = np.bincount(pair_label, minlength=num_labels) / max(num_images, 1)
    with np.errstate(divide="ignore"):
        category_factor = np.maximum(1.0, np.sqrt(threshold / frequency))
    factors = np.ones(num_images)
    np.maximum.at(factors, pair_image, category_factor[pair_label])
    return factors


class TrainingSampler:
    """Infinite stream of (global position, dataset index) for one rank.

    Args:
        size: number of images in the dataset.
        seed: epoch e is shuffled by a generator seeded with (seed, 0, e).
        rank, world_size: this process takes global positions rank, rank + world_size, ...
        shuffle: False walks 0..size-1 every epoch.
        start: number of samples this rank already consumed (resume point).
        repeat_factors: (size,) factors >= 1 (:func:`repeat_factors_from_categories`): each epoch
            lists image i floor(r_i) times, plus once with probability frac(r_i); None: once each.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, start: int = 0,
                 repeat_factors: np.ndarray | None = None):
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        _check_rank(rank, world_size)
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size = int(size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shuffle = bool(shuffle)
        self.position = int(start)  # samples of this rank consumed so far
        self._epoch = -1
        self._perm = np.arange(self.size)
        self.repeat_factors = None
        if repeat_factors is not None:
            factors = np.asarray(repeat_factors, dtype=np.float64)
            if factors.shape != (self.size,) or not np.all(factors >= 1) or not np.all(np.isfinite(factors)):
                raise ValueError(f"repeat_factors must be ({self.size},) finite values >= 1")
            self.repeat_factors = factors
            self._whole = np.floor(factors).astype(np.int64)
            self._fraction = factors - self._whole
            self._epoch_starts = [0]  # global position of the first sample of epochs 0, 1, ...

    def global_position(self, local_position: int) -> int:
        return local_position * self.world_size + self.rank

    def _repeat_counts(self, rng: np.random.Generator) -> np.ndarray:
        """(size,) times each image appears in an epoch: the epoch's first draws from ``rng``."""
        return self._whole + (rng.random(self.size) < self._fraction)

    def _repeat_epoch(self, global_position: int) -> tuple[int, int]:
        """(epoch, offset in it) of a global position of a repeat-factor stream."""
        starts = self._epoch_starts
        while starts[-1] <= global_position:  # walk the epochs' lengths up to the position
            rng = np.random.Generator(np.random.PCG64([self.seed % 2**64, 1, len(starts) - 1]))
            starts.append(starts[-1] + int(self._repeat_counts(rng).sum()))
        epoch = int(np.searchsorted(starts, global_position, side="right")) - 1
        return epoch, global_position - starts[epoch]

    def index_at(self, global_position: int) -> int:
        """Dataset index at a global position of the stream."""
        if self.repeat_factors is not None:
            epoch, offset = self._repeat_epoch(global_position)
            if epoch != self._epoch:
                rng = np.random.Generator(np.random.PCG64([self.seed % 2**64, 1, epoch]))
                indices = np.repeat(np.arange(self.size), self._repeat_counts(rng))
                self._perm = indices[rng.permutation(len(indices))] if self.shuffle else indices
                self._epoch = epoch
            return int(self._perm[offset])
        epoch, offset = divmod(global_position, self.size)
        if self.shuffle and epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed % 2**64, 0, epoch]))
            self._perm = rng.permutation(self.size)
            self._epoch = epoch
        return int(self._perm[offset]) if self.shuffle else offset

    def __iter__(self) -> Iterator[tuple[int, int]]:
        while True:
            g = self.global_position(self.position)
            index = self.index_at(g)
            self.position += 1
            yield g, index

    def _factors_digest(self) -> str:
        if self.repeat_factors is None:
            return ""
        return hashlib.sha256(self.repeat_factors.tobytes()).hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "size": self.size, "world_size": self.world_size, "shuffle": self.shuffle,
                "repeat_factors": self._factors_digest()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; the stream must be the same (size, seed, world size, repeat factors)."""
        mine = (self.size, self.seed, self.world_size, self.shuffle, self._factors_digest())
        theirs = (state["size"], state["seed"], state["world_size"], state["shuffle"], state.get("repeat_factors", ""))
        if mine != theirs:
            raise ValueError(f"sampler state is for (size, seed, world_size, shuffle, repeat factors digest) = {theirs}, "
                             f"this sampler has {mine}")
        self.position = int(state["position"])


def group_batches(
    stream: Iterator[tuple[int, int]], batch_size: int, group_of: np.ndarray | None
) -> Iterator[list[tuple[int, int]]]:
    """Batches of ``batch_size`` consecutive stream items; with ``group_of`` ((size,) int group per
    dataset index, e.g. landscape/portrait), items wait in their group's bucket until it is full,
    so each batch holds one group. Deterministic given the stream."""
    if group_of is None:
        batch: list[tuple[int, int]] = []
        for item in stream:
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        return
    buckets: dict[int, list[tuple[int, int]]] = {}
    for item in stream:
        bucket = buckets.setdefault(int(group_of[item[1]]), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield list(bucket)
            bucket.clear()


class TrainBatchSampler:
    """Infinite batches of (global position, index) for one rank, starting at batch ``start_iter``.

    Without grouping the sampler simply starts at sample ``start_iter * batch_size``. With
    aspect-ratio grouping, which batch comes k-th depends on the bucket contents, so the stream is
    replayed from the beginning through the grouping (indices only, no images: about a second per
    million samples) to land exactly on the batch the uninterrupted run produced.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        group_of: np.ndarray | None = None,
        start_iter: int = 0,
        repeat_factors: np.ndarray | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.group_of = group_of
        self.start_iter = int(start_iter)
        self.repeat_factors = repeat_factors  # (size,) or None: see TrainingSampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.group_of is None:
            sampler = TrainingSampler(self.size, seed=self.seed, rank=self.rank, world_size=self.world_size,
                                      shuffle=self.shuffle, start=self.start_iter * self.batch_size,
                                      repeat_factors=self.repeat_factors)
            yield from group_batches(iter(sampler), self.batch_size, None)
            return
        sampler = TrainingSampler(self.size, seed=self.seed, rank=self.rank, world_size=self.world_size, shuffle=self.shuffle,
                                  repeat_factors=self.repeat_factors)
        batches = group_batches(iter(sampler), self.batch_size, self.group_of)
        for _ in range(self.start_iter):
            next(batches)
        yield from batches


class InferenceSampler:
    """Dataset indices of one rank for inference: contiguous, ordered shards that together cover
    every index exactly once (shard sizes differ by at most one)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        _check_rank(rank, world_size)
        self.size = int(size)
        self.begin = self.size * rank // world_size
        self.end = self.size * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin
