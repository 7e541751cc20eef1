"""Samplers: class-balanced draws, the mix of training sources, shards across DDP ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from limbscan.data.samplers import ShardedSampler, SourceMixSampler, class_balanced_sampler, shard, source_counts
from limbscan.errors import LimbscanError


# -- sampling ------------------------------------------------------------------------------
def test_sampler_balances_classes():
    labels = [0] * 90 + [1] * 10
    sampler = class_balanced_sampler(labels, num_samples=4000, generator=torch.Generator().manual_seed(0))
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 4000
    share = np.mean([labels[i] for i in drawn])
    assert 0.45 < share < 0.55
    assert len(class_balanced_sampler(labels, None, torch.Generator().manual_seed(0))) == 100


def test_sampler_is_deterministic_per_seed():
    labels = [0, 0, 0, 1, 1, 0, 0, 0, 0, 1] * 5

    def draw(seed):
        return list(class_balanced_sampler(labels, None, torch.Generator().manual_seed(seed)))

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampler_rejects_empty_labels():
    with pytest.raises(LimbscanError, match="no training labels"):
        class_balanced_sampler([], None, torch.Generator())


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3)])
def test_shards_cover_the_draw_with_equal_counts(n, world):
    labels = [0] * (n - 2) + [1, 1]

    def base():
        return class_balanced_sampler(labels, None, torch.Generator().manual_seed(4))

    draw = list(base())
    shards = [list(ShardedSampler(base(), rank, world)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ShardedSampler(base(), 0, world))
    interleaved = [s[i] for i in range(len(shards[0])) for s in shards]
    assert interleaved[:n] == draw  # together, exactly the single-process draw (plus wrap-around)
    assert shard(list(range(5)), 1, 2) == [1, 3, 0]
    with pytest.raises(ValueError):
        shard([1, 2], 2, 2)


# -- several sources (auxiliary training data) -----------------------------------------------
def test_source_counts_give_the_share_and_keep_main_draws():
    assert source_counts([80, 200], None) == [80, 200]  # natural: every item once
    assert source_counts([80, 200], 0.2) == [80, 20]  # an epoch: as many main draws as main items
    assert source_counts([75, 10, 30], 0.5) == [75, 19, 56]  # auxiliary draws split by size
    assert sum(source_counts([75, 10, 30], 0.5)[1:]) == 75
    assert source_counts([5, 1], 0.001) == [5, 1]  # never no auxiliary draw at all
    assert source_counts([5, 0], 0.5) == [5, 0]
    with pytest.raises(LimbscanError, match="main dataset gives no training item"):
        source_counts([0, 4], 0.5)


def _mix(labels, sizes, share, balanced, seed=0):
    return SourceMixSampler(labels, sizes, share, balanced, torch.Generator().manual_seed(seed))


def test_mix_sampler_draws_each_source_in_its_share_classes_balanced_within():
    # main: 1000 items, 10 % abnormal; auxiliary: 3000 items, 50 % abnormal (1 = abnormal)
    labels = [1] * 100 + [0] * 900 + [0, 1] * 1500
    sampler = _mix(labels, [1000, 3000], 0.3, balanced=True)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 1429  # 1000 / 0.7
    aux = [i for i in drawn if i >= 1000]
    assert len(aux) == 429  # exactly the share over the epoch...
    batches = [drawn[i : i + 16] for i in range(0, len(drawn) - 15, 16)]
    per_batch = [sum(i >= 1000 for i in b) / 16 for b in batches]
    assert 0.2 < float(np.mean(per_batch[:40])) < 0.4  # ... and about it in batches, in a random order
    main = [labels[i] for i in drawn if i < 1000]
    assert 0.4 < float(np.mean(main)) < 0.6  # main's 10 % abnormal balanced within main
    assert drawn == list(_mix(labels, [1000, 3000], 0.3, balanced=True))  # a function of the seed
    assert drawn != list(_mix(labels, [1000, 3000], 0.3, balanced=True, seed=1))


def test_mix_sampler_unbalanced_natural_share_is_a_shuffle():
    labels = [0] * 7 + [1] * 5
    drawn = list(_mix(labels, [7, 5], None, balanced=False))
    assert sorted(drawn) == list(range(12)) and drawn != list(range(12))
    more = list(_mix(labels, [7, 5], 0.75, balanced=False))  # 21 draws: auxiliary passes repeated
    assert len(more) == 28 and sorted(i for i in more if i < 7) == list(range(7))
    assert sorted(more.count(i) for i in range(7, 12)) == [4, 4, 4, 4, 5]  # whole passes first
    with pytest.raises(ValueError, match="do not add up"):
        _mix(labels, [7, 6], None, balanced=False)
