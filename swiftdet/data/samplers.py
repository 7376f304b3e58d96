"""Index streams: an infinite, sharded, resumable training stream, ordered inference shards, and
aspect-ratio grouped batches.

Positions: the training stream is one global sequence of (epoch permutation) indices; global
position g holds ``perm(epoch = g // size)[g % size]`` and rank r of W takes positions r, r + W,
r + 2W, ... The global position of a sample also seeds its augmentation, so a sample is augmented
the same way whatever the number of workers, and a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["InferenceSampler", "TrainingSampler", "TrainBatchSampler", "group_batches"]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


class TrainingSampler:
    """Infinite stream of (global position, dataset index) for one rank.

    Args:
        size: number of images in the dataset.
        seed: epoch e is shuffled by a generator seeded with (seed, 0, e).
        rank, world_size: this process takes global positions rank, rank + world_size, ...
        shuffle: False walks 0..size-1 every epoch.
        start: number of samples this rank already consumed (resume point).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, start: int = 0):
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

    def global_position(self, local_position: int) -> int:
        return local_position * self.world_size + self.rank

    def index_at(self, global_position: int) -> int:
        """Dataset index at a global position of the stream."""
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

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "size": self.size, "world_size": self.world_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; the stream must be the same (size, seed, world size)."""
        mine = (self.size, self.seed, self.world_size, self.shuffle)
        theirs = (state["size"], state["seed"], state["world_size"], state["shuffle"])
        if mine != theirs:
            raise ValueError(f"sampler state is for (size, seed, world_size, shuffle) = {theirs}, this sampler has {mine}")
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

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.group_of is None:
            sampler = TrainingSampler(self.size, seed=self.seed, rank=self.rank, world_size=self.world_size,
                                      shuffle=self.shuffle, start=self.start_iter * self.batch_size)
            yield from group_batches(iter(sampler), self.batch_size, None)
            return
        sampler = TrainingSampler(self.size, seed=self.seed, rank=self.rank, world_size=self.world_size, shuffle=self.shuffle)
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
