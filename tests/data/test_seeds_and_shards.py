"""One seed function and one shard-and-pad for every loader and sampler: the numbers they give
are the ones earlier runs drew (so old runs resume exactly) and DistributedSampler's."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from imgcls.data.sampling import BalancedSampler, shard_order, shard_size
from imgcls.runtime import rank_epoch_seed, stream_seed


def test_stream_seeds_are_the_ones_runs_drew_before():
    assert stream_seed(3, 5) == 3 * 1_000_003 + 5
    assert rank_epoch_seed(3, 1, 2, 5) == (3 * 1_000_003 + 5) * 2 + 1
    assert stream_seed(1, 0) != stream_seed(0, 1)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n,replicas", [(10, 1), (10, 3), (11, 4), (3, 4), (8, 2)])
def test_one_shard_rule_matches_distributed_sampler(n, replicas, drop_last):
    order = torch.arange(n)
    for rank in range(replicas):
        theirs = DistributedSampler(range(n), num_replicas=replicas, rank=rank, shuffle=False,
                                    drop_last=drop_last)
        assert shard_size(n, replicas, drop_last) == len(theirs)
        assert shard_order(order, replicas, rank, drop_last).tolist() == list(theirs)
        balanced = BalancedSampler([i % 2 for i in range(n)], num_replicas=replicas, rank=rank,
                                   drop_last=drop_last)
        assert len(balanced) == len(list(balanced)) == len(theirs)
