"""Class-balanced sampling (data.sampling=balanced): equal classes per epoch, still bucketed, DDP-safe."""

import csv
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from vdcnn_res.data import TextDataModule
from vdcnn_res.data.sampler import (
    ClassBalancedDraw,
    LengthBucketBatchSampler,
    num_batches_per_replica,
)
from vdcnn_res.errors import UserError


def imbalanced_labels(counts=(300, 60, 6)) -> np.ndarray:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return np.random.default_rng(0).permutation(labels)


def lengths(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 500, size=n)


def flat(batches):
    return [i for b in batches for i in b]


def test_every_class_is_drawn_equally_often_and_rare_texts_repeat_evenly():
    labels = imbalanced_labels()
    draw = ClassBalancedDraw(labels, seed=3)
    for epoch in range(3):
        draw.set_epoch(epoch)
        order = draw.order()
        assert len(order) == len(labels) == len(draw)
        per_class = Counter(labels[order].tolist())
        assert max(per_class.values()) - min(per_class.values()) <= 1  # 366 draws: 122 per class
        uses = Counter(order.tolist())
        for c, n in enumerate((300, 60, 6)):
            members = np.flatnonzero(labels == c)
            times = [uses[i] for i in members]
            # never one text twice before every text of its class once
            assert max(times) - min(times) <= 1, (c, Counter(times))
        assert max(uses[i] for i in np.flatnonzero(labels == 0)) == 1  # the frequent class is subsampled


def test_draws_are_seeded_and_change_every_epoch():
    labels = imbalanced_labels()

    def order(seed, epoch):
        d = ClassBalancedDraw(labels, seed=seed)
        d.set_epoch(epoch)
        return d.order().tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


def test_frequent_class_shows_different_texts_across_epochs():
    labels = imbalanced_labels()
    d = ClassBalancedDraw(labels, seed=0)
    seen = set()
    for epoch in range(4):
        d.set_epoch(epoch)
        seen.update(i for i in d.order().tolist() if labels[i] == 0)
    assert len(seen) > 250  # 122 per epoch, different ones: most of the 300 after 4 epochs


def test_balanced_batches_keep_the_epoch_length_and_the_length_buckets():
    labels = imbalanced_labels()
    lens = lengths(len(labels))
    natural = LengthBucketBatchSampler(lens, 16, pool_batches=4)
    balanced = LengthBucketBatchSampler(lens, 16, pool_batches=4, balance_labels=labels)
    batches = list(balanced)
    assert len(batches) == len(balanced) == len(natural) == num_batches_per_replica(len(labels), 16)
    assert sorted(flat(batches)) == sorted(balanced.sampler.order().tolist())

    def padded(bs):
        return sum(len(b) * lens[b].max() for b in bs)

    unbucketed = LengthBucketBatchSampler(lens, 16, bucket=False, balance_labels=labels)
    assert padded(batches) < 0.75 * padded(list(unbucketed))


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("bucket", [True, False])
def test_ddp_shards_partition_the_epochs_draws(replicas, bucket):
    labels = imbalanced_labels((101, 20, 3))
    lens = lengths(len(labels))
    for epoch in (0, 1):
        shards, sizes = [], set()
        for rank in range(replicas):
            s = LengthBucketBatchSampler(lens, 8, bucket=bucket, num_replicas=replicas, rank=rank, pool_batches=2,
                                         balance_labels=labels, seed=5)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) and all(batches) and max(map(len, batches)) <= 8
            sizes.add(len(batches))
            shards.append(flat(batches))
        assert len(sizes) == 1  # every rank steps the same number of times
        global_draws = ClassBalancedDraw(labels, seed=5)
        global_draws.set_epoch(epoch)
        # Each draw goes to exactly one rank: the shards together are the epoch's draws, as a multiset.
        assert sorted(i for shard in shards for i in shard) == sorted(global_draws.order().tolist())


def test_balanced_sampler_resumes_mid_epoch():
    labels = imbalanced_labels()
    lens = lengths(len(labels))

    def make():
        return LengthBucketBatchSampler(lens, 8, pool_batches=3, balance_labels=labels)

    full = make()
    full.set_epoch(2)
    epoch = list(full)
    interrupted = make()
    interrupted.set_epoch(2)
    it = iter(interrupted)
    head = [next(it) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    resumed.set_epoch(2)
    assert head + list(resumed) == epoch


def test_balance_labels_are_checked():
    with pytest.raises(ValueError, match="shuffle=True"):
        LengthBucketBatchSampler([1, 2, 3], 2, shuffle=False, balance_labels=[0, 1, 0])
    with pytest.raises(ValueError, match="one label per sample"):
        LengthBucketBatchSampler([1, 2, 3], 2, balance_labels=[0, 1])
    with pytest.raises(ValueError, match="non-negative"):
        ClassBalancedDraw([0, -1, 1])


# ----------------------------------------------------------------------------- the data module


def write_train(path, labels):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([[label, f"text {i} " + "x" * (i % 13)] for i, label in enumerate(labels)])
    return str(path)


def attach(dm, world_size=1, rank=0):
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank,
                                 _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))


def test_datamodule_counts_and_balances_the_training_split(tmp_path):
    train = write_train(tmp_path / "train.csv", ["a"] * 80 + ["b"] * 16 + ["c"] * 4)
    dm = TextDataModule(train=train, valid_fraction=0.0, batch_size=10, sampling="balanced")
    assert dm.class_counts.tolist() == [80, 16, 4]
    attach(dm)
    labels = [label for batch in dm.train_dataloader() for label in batch["labels"].tolist()]
    assert len(labels) == 100 and sorted(Counter(labels).values()) == [33, 33, 34]
    natural = TextDataModule(train=train, valid_fraction=0.0, batch_size=10)
    attach(natural)
    assert Counter(label for b in natural.train_dataloader() for label in b["labels"].tolist()) == {0: 80, 1: 16, 2: 4}


def test_counts_are_those_of_the_training_part_after_carving_validation(tmp_path):
    train = write_train(tmp_path / "train.csv", ["a"] * 80 + ["b"] * 20)
    dm = TextDataModule(train=train, valid_fraction=0.1)
    assert dm.class_counts.sum() == 90 and dm.class_counts.tolist() == [72, 18]


def test_evaluation_loaders_are_not_rebalanced(tmp_path):
    train = write_train(tmp_path / "train.csv", ["a"] * 30 + ["b"] * 6)
    dm = TextDataModule(train=train, valid=train, batch_size=8, sampling="balanced")
    attach(dm)
    assert sorted(i for b in dm.val_dataloader() for i in b["index"].tolist()) == list(range(36))


def test_balanced_sampling_with_a_class_absent_from_training_is_one_clear_error(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\nweather\n")
    train = write_train(tmp_path / "train.csv", ["a"] * 10 + ["b"] * 5)
    dm = TextDataModule(train=train, valid_fraction=0.0, classes_file=str(tmp_path / "classes.txt"), sampling="balanced")
    attach(dm)
    with pytest.raises(UserError, match=r"data.sampling=balanced: class\(es\) \['weather'\] have no training texts"):
        dm.train_dataloader()


def test_unknown_sampling_is_refused():
    with pytest.raises(UserError, match="data.sampling must be 'natural' or 'balanced'"):
        TextDataModule(train="x.csv", sampling="oversample")


# ----------------------------------------------------------------------------- the imbalanced benchmark split


def test_make_imbalanced_is_deterministic_and_keeps_rows_byte_for_byte(tmp_path):
    import importlib.util
    import subprocess
    import sys

    from fixtures.tiny import REPO

    script = REPO / "benchmarks" / "imbalance" / "make_imbalanced.py"
    source = tmp_path / "train.csv"
    rows = [f'"{1 + i % 4}","title {i}","a, ""quoted"" description {i}"\r\n' for i in range(400)]
    source.write_bytes("".join(rows).encode("utf-8"))
    outs = []
    for name in ("a.csv", "b.csv"):
        out = tmp_path / name
        subprocess.run([sys.executable, str(script), "--source", str(source), "--out", str(out),
                        "--minority", "3", "4", "--fraction", "0.1"], check=True, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    kept = outs[0].decode("utf-8").splitlines(keepends=True)
    assert all(line in rows for line in kept) and kept == sorted(kept, key=rows.index)  # file order, bytes as they were
    spec = importlib.util.spec_from_file_location("make_imbalanced", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Counter(module.label_of(line) for line in kept) == {"1": 100, "2": 100, "3": 10, "4": 10}
