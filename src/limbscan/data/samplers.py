"""Which training items an epoch draws: class-balanced weights, the mix of training sources
(:class:`SourceMixSampler`), and any sampler split across DDP ranks (:class:`ShardedSampler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from limbscan.errors import LimbscanError


# -- sampling ------------------------------------------------------------------------------
def class_weights(labels: Sequence[int]) -> dict[int, float]:
    """scikit-learn's "balanced" weights, n / (k * n_class), for the classes present."""
    # Imported here: scikit-learn takes about a second to import, and DataLoader workers
    # started by spawn import this module without ever drawing a sample.
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise LimbscanError("cannot weight classes: no training labels")
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def class_balanced_sampler(
    labels: Sequence[int], num_samples: int | None, generator: torch.Generator
) -> WeightedRandomSampler:
    """Draw with replacement so each class comes up about equally often.

    ``num_samples`` defaults to ``len(labels)`` (one epoch's worth). The draw depends only on
    the generator's state, and each pass advances it: for an order that is a function of
    (seed, epoch), seed a fresh generator per epoch. Under DDP, give every rank the same
    seed and wrap the sampler in :class:`ShardedSampler`.
    """
    weights = class_weights(labels)
    per_sample = torch.tensor([weights[int(y)] for y in labels], dtype=torch.float64)
    n = len(labels) if num_samples is None else int(num_samples)
    if n < 1:
        raise LimbscanError(f"num_samples must be at least 1, got {n}")
    return WeightedRandomSampler(per_sample, n, replacement=True, generator=generator)


def source_counts(sizes: Sequence[int], share: float | None) -> list[int]:
    """Draws per source in one epoch: the first source (main) ``1 - share`` of them, the others
    ``share`` together, split by their sizes; an epoch holds as many main draws as main items.
    ``share`` None: every item once (each source its natural share)."""
    sizes = [int(n) for n in sizes]
    if not sizes or sizes[0] < 1:
        raise LimbscanError("no training data: the main dataset gives no training item")
    aux_total = sum(sizes[1:])
    if share is None or aux_total == 0:
        return sizes
    if not 0 < share < 1:
        raise LimbscanError(f"auxiliary share {share!r} must lie in (0, 1)")
    total = max(round(sizes[0] / (1 - share)), sizes[0] + 1)
    n_aux = min(max(round(total * share), 1), total - 1)
    # Largest remainder: the auxiliary draws split by size, summing exactly to n_aux.
    exact = [n_aux * n / aux_total for n in sizes[1:]]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n_aux - sum(counts)]:
        counts[i] += 1
    return [total - n_aux, *counts]


class SourceMixSampler(Sampler[int]):
    """Indices into sources laid end to end (a :class:`~limbscan.data.datasets.JoinedDataset`), each
    source drawn :func:`source_counts` times in a random order: about ``share`` of a batch is auxiliary.

    Within a source: ``balanced`` draws classes about equally (with replacement), else each item once
    per pass. The draw depends only on the generator: seed a fresh one per epoch, the same on every
    DDP rank, and wrap the sampler in :class:`ShardedSampler`.
    """

    def __init__(
        self, labels: Sequence[int], sizes: Sequence[int], share: float | None, balanced: bool,
        generator: torch.Generator,
    ):
        if sum(sizes) != len(labels):
            raise ValueError(f"source sizes {list(sizes)} do not add up to {len(labels)} labels")
        self.labels, self.sizes = list(labels), [int(n) for n in sizes]
        self.counts = source_counts(self.sizes, share)
        self.balanced, self.generator = balanced, generator

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[int]:
        drawn, start = [], 0
        for size, count in zip(self.sizes, self.counts, strict=True):
            if count:
                drawn.append(start + self._draw(self.labels[start : start + size], count))
            start += size
        order = torch.cat(drawn)
        return iter(order[torch.randperm(len(order), generator=self.generator)].tolist())

    def _draw(self, labels: list[int], count: int) -> torch.Tensor:
        if self.balanced:
            weights = class_weights(labels)
            per_sample = torch.tensor([weights[int(y)] for y in labels], dtype=torch.float64)
            return torch.multinomial(per_sample, count, replacement=True, generator=self.generator)
        passes = [torch.randperm(len(labels), generator=self.generator) for _ in range(-(-count // len(labels)))]
        return torch.cat(passes)[:count]


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices``: every ``world_size``-th from ``rank``, padded by
    wrapping around so every rank gets the same count (DDP hangs on uneven batches)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    indices = list(indices)
    if not indices:
        return []
    per_rank = math.ceil(len(indices) / world_size)
    padded = indices + indices[: per_rank * world_size - len(indices)]
    return padded[rank::world_size]


class ShardedSampler(Sampler[int]):
    """Any sampler split across DDP ranks, like DistributedSampler does for a plain dataset.

    Every rank draws the same sequence from ``base`` (same generator seed on all ranks) and
    keeps its :func:`shard` of it, so the ranks together see one epoch's draw exactly once.
    """

    def __init__(self, base: Sampler[int], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.base, self.rank, self.world_size = base, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(shard(list(self.base), self.rank, self.world_size))

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.world_size)
