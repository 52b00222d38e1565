"""Length-bucketed batch sampler: coverage, bucketing, seeding, DDP shards."""

import numpy as np
import pytest
from lightning_fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from vdcnn_res.data.sampler import (
    LengthBucketBatchSampler,
    ResumableDataLoader,
    SortedSampler,
    num_batches_per_replica,
)


def lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 500, size=n)


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n,batch_size", [(1000, 32), (37, 8), (5, 16), (64, 1)])
def test_every_sample_exactly_once_per_epoch(bucket, shuffle, n, batch_size):
    sampler = LengthBucketBatchSampler(lengths(n), batch_size, bucket=bucket, shuffle=shuffle, pool_batches=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(flat(batches)) == list(range(n))
        assert len(batches) == len(sampler) == num_batches_per_replica(n, batch_size)
        assert all(1 <= len(b) <= batch_size for b in batches)


def test_buckets_hold_similar_lengths():
    lens = lengths(4096)
    # One pool spanning the whole epoch: batches are consecutive runs of the sorted lengths.
    batches = list(LengthBucketBatchSampler(lens, 64, pool_batches=1000))
    spans = sorted((lens[b].min(), lens[b].max()) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    # Smaller pools: far less padding than random batches, though not the minimum.
    def padded(batches):
        return sum(len(b) * lens[b].max() for b in batches)

    bucketed = padded(list(LengthBucketBatchSampler(lens, 64, pool_batches=8)))
    random = padded(list(LengthBucketBatchSampler(lens, 64, bucket=False)))
    assert bucketed < 0.75 * random


def test_eval_order_is_sorted_longest_first_and_fixed():
    lens = lengths(300)
    sampler = LengthBucketBatchSampler(lens, 32, shuffle=False)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first
    order = flat(first)
    assert list(lens[order]) == sorted(lens, reverse=True)


def test_shuffling_is_seeded_and_changes_every_epoch():
    lens = lengths(500)

    def epoch(seed, e, **kw):
        s = LengthBucketBatchSampler(lens, 16, seed=seed, pool_batches=4, **kw)
        s.set_epoch(e)
        return list(s)

    assert epoch(1, 0) == epoch(1, 0)
    assert epoch(1, 0) != epoch(1, 1)
    assert epoch(1, 0) != epoch(2, 0)
    assert epoch(1, 0, bucket=False) != epoch(1, 1, bucket=False)


def test_lightning_reaches_set_epoch():
    # Lightning calls set_epoch on dataloader.sampler and dataloader.batch_sampler.sampler only.
    sampler = LengthBucketBatchSampler(lengths(200), 16)
    loader = DataLoader(list(range(200)), batch_sampler=sampler)
    before = list(sampler)
    _set_sampler_epoch(loader, 3)
    assert sampler.sampler.epoch == 3 and list(sampler) != before


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n,batch_size", [(1001, 32), (9, 4), (130, 64), (7, 1), (4, 16)])
def test_ddp_shards_are_disjoint_complete_and_equally_long(replicas, bucket, shuffle, n, batch_size):
    lens = lengths(n)
    for epoch in (0, 1):
        shards = []
        for rank in range(replicas):
            s = LengthBucketBatchSampler(
                lens, batch_size, bucket=bucket, shuffle=shuffle, num_replicas=replicas, rank=rank, pool_batches=2
            )
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) and all(batches)
            # Only batch_size 1 with an uneven split may need a batch of two.
            assert max(map(len, batches)) <= max(batch_size, 2 if batch_size == 1 else 1)
            shards.append(flat(batches))
        assert len({len(list(LengthBucketBatchSampler(lens, batch_size, num_replicas=replicas, rank=r)))
                    for r in range(replicas)}) == 1
        everything = [i for shard in shards for i in shard]
        assert sorted(everything) == list(range(n))  # disjoint and complete


def test_ddp_ranks_step_through_similar_lengths():
    lens = lengths(4096)
    ranks = [list(LengthBucketBatchSampler(lens, 32, num_replicas=2, rank=r, pool_batches=16)) for r in (0, 1)]
    gaps = [abs(np.median(lens[a]) - np.median(lens[b])) for a, b in zip(*ranks)]
    assert np.median(gaps) < 20  # lengths range over 0..500


def test_fewer_samples_than_ranks_is_an_error():
    with pytest.raises(ValueError, match="cannot be shared among 3 processes"):
        LengthBucketBatchSampler([1, 2], 4, num_replicas=3, rank=0)


def test_sorted_sampler_shards():
    lens = lengths(11)
    full = list(SortedSampler(lens))
    assert list(lens[full]) == sorted(lens, reverse=True)
    parts = [list(SortedSampler(lens, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(11)) and not set(parts[0]) & set(parts[1])
    assert [len(SortedSampler(lens, num_replicas=2, rank=r)) for r in (0, 1)] == [6, 5]


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("bucket", [True, False])
def test_state_dict_resumes_after_the_batches_already_yielded(replicas, bucket):
    lens = lengths(203)
    for rank in range(replicas):
        def make():
            return LengthBucketBatchSampler(lens, 8, bucket=bucket, num_replicas=replicas, rank=rank, pool_batches=3)

        full = make()
        full.set_epoch(3)
        next_epoch = list(full)
        full.set_epoch(2)
        epoch = list(full)
        for k in (0, 1, 7, len(epoch) - 1):
            interrupted = make()
            interrupted.set_epoch(2)
            it = iter(interrupted)
            head = [next(it) for _ in range(k)]
            state = interrupted.state_dict()
            assert state == {"epoch": 2, "batches": k, "num_batches": len(epoch)}
            resumed = make()
            resumed.load_state_dict(state)
            resumed.set_epoch(2)  # what Lightning does before iterating
            assert head + list(resumed) == epoch
            resumed.set_epoch(3)  # the next epoch is whole again
            assert list(resumed) == next_epoch


def test_state_of_a_finished_epoch_resumes_with_the_next_one():
    lens = lengths(50)
    done = LengthBucketBatchSampler(lens, 8)
    list(done)
    resumed = LengthBucketBatchSampler(lens, 8)
    resumed.load_state_dict(done.state_dict())
    nxt = LengthBucketBatchSampler(lens, 8)
    nxt.set_epoch(1)
    assert resumed.sampler.epoch == 1 and list(resumed) == list(nxt)


def test_state_from_other_batches_restarts_the_epoch_with_a_warning():
    state = LengthBucketBatchSampler(lengths(50), 8).state_dict() | {"batches": 3}
    resumed = LengthBucketBatchSampler(lengths(50), 4)
    with pytest.warns(UserWarning, match="13 batches per epoch, the checkpoint 7: epoch 0 restarts"):
        resumed.load_state_dict(state)
    assert len(list(resumed)) == 13


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resumable_loader_counts_the_batches_it_returned(num_workers):
    """Workers draw indices ahead of the training loop; the loader's count is the loop's."""
    lens = lengths(120)

    def loader():
        return ResumableDataLoader(list(range(120)), batch_sampler=LengthBucketBatchSampler(lens, 8),
                                   num_workers=num_workers)

    epoch = [b.tolist() for b in loader()]
    interrupted = loader()
    it = iter(interrupted)
    head = [next(it).tolist() for _ in range(5)]
    state = interrupted.state_dict()
    del it
    assert state == {"epoch": 0, "batches": 5, "num_batches": len(epoch)}
    resumed = loader()
    resumed.load_state_dict(state)
    assert resumed.state_dict()["batches"] == 5
    assert head + [b.tolist() for b in resumed] == epoch
