import numpy as np
import pytest
import torch

from vdcnn_res.data.batching import PadCollator, TokenizedSplit, texts_to_batches
from vdcnn_res.errors import UserError
from vdcnn_res.data.tokenizer import PAD_ID, build_tokenizer, encode


def _items(lengths: list[int]) -> list[tuple[np.ndarray, int, int]]:
    return [(np.arange(1, n + 1, dtype=np.int32), i % 3, 10 + i) for i, n in enumerate(lengths)]


def test_pads_to_the_longest_text_rounded_up_to_the_multiple():
    batch = PadCollator(8)(_items([3, 9, 5]))
    assert batch["input_ids"].shape == (3, 16)
    assert batch["lengths"].tolist() == [3, 9, 5]
    assert batch["labels"].tolist() == [0, 1, 2] and batch["index"].tolist() == [10, 11, 12]
    assert batch["input_ids"][0, :3].tolist() == [1, 2, 3]
    assert (batch["input_ids"][0, 3:] == PAD_ID).all() and batch["input_ids"].dtype == torch.long


def test_fixed_length_pads_every_batch_to_it():
    assert PadCollator(8, fixed_length=100)(_items([3, 9]))["input_ids"].shape == (2, 100)


def test_empty_texts_get_one_multiple_of_padding():
    batch = PadCollator(8)([(np.zeros(0, dtype=np.int32), 0, 3)])
    assert batch["input_ids"].shape == (1, 8) and batch["lengths"].tolist() == [0] and batch["index"].tolist() == [3]


def test_pad_multiple_must_be_positive():
    with pytest.raises(UserError, match="pad_multiple"):
        PadCollator(0)


def test_tokenized_split_from_ids():
    split = TokenizedSplit.from_ids([[5, 6], [], [7, 8, 9]], labels=[1, 0, 2])
    assert len(split) == 3 and split.lengths.tolist() == [2, 0, 3]
    ids, label, index = split[2]
    assert ids.tolist() == [7, 8, 9] and label == 2 and index == 2
    assert TokenizedSplit.from_ids([[1]])[0][1] == -1  # no labels: -1


def test_texts_to_batches_covers_every_text_once_longest_first():
    tokenizer = build_tokenizer("char")
    texts = ["a" * n for n in (5, 40, 1, 17, 0, 33, 8)]
    batches = list(texts_to_batches(tokenizer, texts, max_length=30, batch_size=3))
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(texts)))
    firsts = [b["lengths"].max().item() for b in batches]
    assert firsts == sorted(firsts, reverse=True) and firsts[0] == 30  # truncated to max_length
    expected = encode(tokenizer, texts, 30)
    for b in batches:
        for row, i in enumerate(b["index"].tolist()):
            n = len(expected[i])
            assert b["input_ids"][row, :n].tolist() == expected[i] and b["lengths"][row] == n
            assert b["labels"][row] == -1
