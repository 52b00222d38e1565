"""Length-bucketed, DDP-aware batch sampling.

Texts vary a lot in length (AG News: median 231 characters, CLINC150: 38); padding every
batch to ``max_length`` wastes most of the compute. Batches of similar lengths, each padded
to its own longest text, do not.

Under DDP every process builds the same global order from ``(seed, epoch)`` and keeps its own
strided shard, so shards are disjoint and together hold every sample exactly once; every
process cuts its shard into the *same number* of batches (batch sizes may differ by one), so
no process waits forever at a collective.

Lightning calls ``set_epoch`` on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
but not on the batch sampler itself; :class:`LengthBucketBatchSampler` therefore keeps its
epoch in its ``sampler`` attribute (an :class:`EpochPermutation`), where Lightning finds it.

Resuming mid-epoch: Lightning (2.x) saves ``state_dict()`` of every training loader that has
one in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and calls its
``load_state_dict`` before iterating again when it restarts an unfinished epoch. A
:class:`ResumableDataLoader` records the epoch and how many batches the training loop took;
restored, its batch sampler skips them, so the resumed run sees exactly the batches the
interrupted one had not seen.

Class-balanced sampling (``balance_labels``): each epoch is ``n`` draws from a
:class:`ClassBalancedDraw` instead of a permutation, every class equally often; the draws then
go through the same pools, length buckets and strided shards, so the batch counts and the DDP
properties hold for the draws (each draw is taken by exactly one rank), and resuming works as is.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from vdcnn_res.errors import UserError

__all__ = [
    "ClassBalancedDraw",
    "EpochPermutation",
    "LengthBucketBatchSampler",
    "ResumableDataLoader",
    "SortedSampler",
    "num_batches_per_replica",
]


def _check_replicas(n: int, num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
    if n < num_replicas:
        raise UserError(f"a split of {n} samples cannot be shared among {num_replicas} processes; use more data or fewer devices")


def num_batches_per_replica(n: int, batch_size: int, num_replicas: int = 1) -> int:
    """Batches every process gets so that each is non-empty and none exceeds ``batch_size``.

    ``ceil(n / (num_replicas * batch_size))``; only when ``batch_size`` is 1 and ``n`` is not a
    multiple of ``num_replicas`` is it capped at ``n // num_replicas`` (some batches then hold 2).
    """
    return min(math.ceil(n / (num_replicas * batch_size)), n // num_replicas)


def _split_sizes(n: int, k: int) -> np.ndarray:
    """``n`` items as ``k`` near-equal batch sizes (the first ``n % k`` one larger)."""
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    return sizes


class EpochPermutation(Sampler[int]):
    """A seeded permutation of ``range(n)``, different every epoch (or ``range(n)`` unshuffled)."""

    def __init__(self, n: int, *, shuffle: bool = True, seed: int = 0) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.n


class ClassBalancedDraw(EpochPermutation):
    """``n = len(labels)`` indices per epoch in which every class present is drawn equally often.

    Each class gets ``n / n_classes`` slots (the remainder to classes picked at random); a
    class fills its slots by cycling through fresh permutations of its members, so a rare class
    repeats its texts as evenly as possible (never one text twice before all once) and a
    frequent class shows a different subset each epoch. The draws are shuffled; the whole is
    seeded by ``(seed, epoch)`` like :class:`EpochPermutation`, so every DDP rank draws the same.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, *, seed: int = 0) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or (len(labels) and labels.min() < 0):
            raise ValueError("class-balanced sampling needs one non-negative label per sample")
        super().__init__(len(labels), shuffle=True, seed=seed)
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]

    def order(self) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.epoch, 2])
        k = len(self.members)
        slots = np.full(k, self.n // k, dtype=np.int64)
        slots[rng.permutation(k)[: self.n % k]] += 1
        draws = []
        for members, wanted in zip(self.members, slots):
            cycles = -(-int(wanted) // len(members))
            draws.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:wanted])
        return rng.permutation(np.concatenate(draws))


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of indices into a dataset whose items have the given lengths.

    - ``bucket=True, shuffle=True`` (training): the epoch's random order is cut into pools of
      ``pool_batches`` batches; each pool is sorted by length and cut into batches; the batch
      order is then shuffled. Seeded by ``(seed, epoch)``; call ``set_epoch`` every epoch.
    - ``bucket=True, shuffle=False`` (evaluation): all samples sorted by length, longest first.
    - ``bucket=False``: plain batches in random (``shuffle``) or file order, for fixed-length
      padding as in the paper.

    With ``num_replicas > 1`` this process (``rank``) sees a disjoint shard and exactly
    ``len(self)`` batches, the same on every rank.

    ``balance_labels`` (training only: ``shuffle=True``): draw each epoch class-balanced from
    these per-sample labels (:class:`ClassBalancedDraw`) instead of permuting the samples.

    ``state_dict()`` is ``{"epoch", "batches" (yielded so far this epoch), "num_batches"}``;
    after ``load_state_dict`` the next iteration of that epoch starts after those batches.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        bucket: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pool_batches: int = 20,
        balance_labels: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        n = len(self.lengths)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if pool_batches < 1:
            raise ValueError(f"pool_batches must be >= 1, got {pool_batches}")
        _check_replicas(n, num_replicas, rank)
        self.batch_size = batch_size
        self.bucket = bucket
        self.num_replicas = num_replicas
        self.rank = rank
        self.pool_batches = pool_batches
        if balance_labels is None:
            self.sampler = EpochPermutation(n, shuffle=shuffle, seed=seed)
        else:
            if not shuffle or len(balance_labels) != n:
                raise ValueError("balance_labels needs shuffle=True and one label per sample")
            self.sampler = ClassBalancedDraw(balance_labels, seed=seed)
        self._num_batches = num_batches_per_replica(n, batch_size, num_replicas)
        shard_size = len(range(rank, n, num_replicas))
        self._sizes = _split_sizes(shard_size, self._num_batches)
        self._yielded = 0  # batches of the current epoch handed out, skipped ones included
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip) from load_state_dict

    @property
    def shuffle(self) -> bool:
        return self.sampler.shuffle

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self._num_batches

    def pending_skip(self) -> int:
        """Batches the next iteration skips: those of a restored epoch already consumed, else 0."""
        if self._resume is None or self._resume[0] != self.epoch:
            return 0
        return self._resume[1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._yielded, "num_batches": self._num_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its first ``state["batches"]`` batches.

        A finished epoch continues with the next one; if the number of batches per epoch changed
        (other data, batch size or process count) the saved epoch restarts from its first batch.
        """
        epoch, done = int(state["epoch"]), int(state["batches"])
        if int(state.get("num_batches", self._num_batches)) != self._num_batches:
            warnings.warn(
                f"the training data gives {self._num_batches} batches per epoch, the checkpoint "
                f"{state['num_batches']}: epoch {epoch} restarts from its first batch",
                stacklevel=2,
            )
            done = 0
        if done >= self._num_batches:
            epoch, done = epoch + 1, 0
        self.set_epoch(epoch)
        self._resume = (epoch, done)

    def _cut(self, indices: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        return np.split(indices, np.cumsum(sizes)[:-1])

    def __iter__(self) -> Iterator[list[int]]:
        if self.bucket and not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
        else:
            order = self.sampler.order()
        # Strided shards: with a length-sorted order every rank gets the same length profile.
        shard = order[self.rank :: self.num_replicas]
        if not (self.bucket and self.shuffle):
            batches = self._cut(shard, self._sizes)
        else:
            batches = []
            start = 0
            for p in range(0, self._num_batches, self.pool_batches):
                sizes = self._sizes[p : p + self.pool_batches]
                pool = shard[start : start + sizes.sum()]
                start += sizes.sum()
                pool = pool[np.argsort(self.lengths[pool], kind="stable")]
                batches.extend(self._cut(pool, sizes))
            # Same permutation on every rank: at each step all ranks hold batches from the same
            # place in their pools, i.e. of similar lengths, so no rank waits on a longer one.
            rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch, 1])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._yielded = self.pending_skip()
        self._resume = None
        for batch in batches[self._yielded :]:
            self._yielded += 1
            yield batch.tolist()


class SortedSampler(Sampler[int]):
    """Indices sorted by length, longest first; this rank's strided shard (for prediction).

    Used with a plain ``BatchSampler`` so that Lightning's predict loop can wrap it as usual.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, *, num_replicas: int = 1, rank: int = 0) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) > 0:
            _check_replicas(len(self.lengths), num_replicas, rank)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        order = np.argsort(-self.lengths, kind="stable")
        return iter(order[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, len(self.lengths), self.num_replicas))


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`LengthBucketBatchSampler` whose position Lightning checkpoints.

    ``state_dict()`` counts the batches this loader has returned in the current epoch (exact
    also with worker processes, which draw indices ahead); ``load_state_dict`` hands the
    position to the batch sampler. Iteration starts lazily, at the first batch, so the sampler
    sees the epoch Lightning sets just before it.
    """

    def __iter__(self) -> Iterator[Any]:
        sampler = self.batch_sampler
        epoch, done = sampler.epoch, sampler.pending_skip()
        self._position = {"epoch": epoch, "batches": done}
        for batch in super().__iter__():
            done += 1
            self._position = {"epoch": epoch, "batches": done}
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches" (returned so far this epoch), "num_batches"}``."""
        sampler = self.batch_sampler
        position = getattr(self, "_position", None) or {"epoch": sampler.epoch, "batches": sampler.pending_skip()}
        return {**position, "num_batches": len(self.batch_sampler)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the saved epoch after the batches already returned (see the sampler's)."""
        self.batch_sampler.load_state_dict(state)
