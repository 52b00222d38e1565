"""Tokenized splits and padded batches, shared by training (`TextDataModule`) and prediction.

A batch is ``{"input_ids": LongTensor (B, L) right-padded with PAD_ID, "lengths": (B,),
"labels": (B,) (-1 where unknown), "index": (B,) row in its split}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tokenizers import Tokenizer
from torch.utils.data import BatchSampler, Dataset

from vdcnn_res.errors import UserError
from vdcnn_res.data.sampler import SortedSampler
from vdcnn_res.data.tokenizer import PAD_ID, encode

__all__ = ["PadCollator", "TokenizedSplit", "texts_to_batches"]


class TokenizedSplit(Dataset):
    """Token ids (ragged, read in place from Arrow buffers), labels and row indices of one split.

    Items are ``(ids: int32 array, label: int, index: int)``; :class:`PadCollator` makes batches.
    """

    def __init__(self, ids: pa.ChunkedArray | pa.Array, labels: np.ndarray) -> None:
        chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
        chunks = [c for c in chunks if len(c)]
        # `.values` is the whole child buffer and `.offsets` index into it, also for sliced arrays.
        self._values = [c.values.to_numpy(zero_copy_only=False) for c in chunks]
        self._offsets = [c.offsets.to_numpy(zero_copy_only=False) for c in chunks]
        self._starts = np.cumsum([0] + [len(c) for c in chunks])
        self.lengths = (
            np.concatenate([np.diff(o) for o in self._offsets]) if chunks else np.zeros(0, dtype=np.int64)
        ).astype(np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.lengths):
            raise ValueError(f"{len(self.labels)} labels for {len(self.lengths)} texts")

    @classmethod
    def from_ids(cls, ids: Sequence[Sequence[int]], labels: Sequence[int] | None = None) -> TokenizedSplit:
        """An in-memory split from already encoded texts (labels default to -1)."""
        array = pa.array(ids, type=pa.list_(pa.int32()))
        return cls(array, np.full(len(ids), -1) if labels is None else np.asarray(labels))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        chunk = int(np.searchsorted(self._starts, index, side="right")) - 1
        offsets = self._offsets[chunk]
        row = index - self._starts[chunk]
        return self._values[chunk][offsets[row] : offsets[row + 1]], self._label(index), index

    def _label(self, index: int) -> Any:
        """The label of item ``index`` as a batch wants it (a class id here)."""
        return int(self.labels[index])


class PadCollator:
    """Right-pad a list of ``(ids, label, index)`` items with ``PAD_ID`` into a batch dict.

    Pads to the batch's longest text rounded up to ``pad_multiple`` (at least one multiple),
    or to exactly ``fixed_length`` when given (longer items must already be truncated).
    """

    def __init__(self, pad_multiple: int = 8, fixed_length: int | None = None) -> None:
        if pad_multiple < 1:
            raise UserError(f"pad_multiple must be >= 1, got {pad_multiple}")
        self.pad_multiple = pad_multiple
        self.fixed_length = fixed_length

    def __call__(self, items: Sequence[tuple[np.ndarray, int, int]]) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((self.length(x) for x, _, _ in items), dtype=np.int64, count=len(items))
        if self.fixed_length is not None:
            width = self.fixed_length
        else:
            m = self.pad_multiple
            width = max(1, -(-int(lengths.max(initial=0)) // m)) * m
        return batch_dict(self.pad([x for x, _, _ in items], width), lengths, width, items)

    @staticmethod
    def length(ids: np.ndarray) -> int:
        return len(ids)

    @staticmethod
    def pad(rows: list[np.ndarray], width: int) -> np.ndarray:
        """(B, width) int64 ids, right-padded with PAD_ID, longer rows cut."""
        input_ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = ids[:width]
        return input_ids


def batch_dict(inputs: np.ndarray, lengths: np.ndarray, width: int, items: Sequence[tuple]) -> dict[str, torch.Tensor]:
    """The batch every model input shares: inputs padded to `width`, lengths, labels, row indices."""
    return {
        "input_ids": torch.from_numpy(inputs),
        "lengths": torch.from_numpy(np.minimum(lengths, width)),
        "labels": torch.tensor([label for _, label, _ in items], dtype=torch.long),
        "index": torch.tensor([index for _, _, index in items], dtype=torch.long),
    }


def texts_to_batches(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_length: int = 1024,
    batch_size: int = 128,
    pad_multiple: int = 8,
    fixed_length: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches for in-memory texts (prediction from Python), sorted by length, longest first.

    Same encoding and padding as the data module; ``batch["index"]`` gives each row's position
    in ``texts`` so results can be put back in order. ``labels`` are -1.
    """
    split = TokenizedSplit.from_ids(encode(tokenizer, list(texts), max_length))
    collate = PadCollator(pad_multiple, max_length if fixed_length else None)
    for batch in BatchSampler(SortedSampler(split.lengths), batch_size, drop_last=False):
        yield collate([split[i] for i in batch])
