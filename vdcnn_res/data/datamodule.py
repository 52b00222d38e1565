"""Text classification data: files or a hub dataset -> tokenized splits -> padded batches.

:class:`TextDataModule` reads every split once with `datasets` (CSV, TSV, JSON/JSONL,
Parquet, or a hub dataset), joins the text columns, maps labels to ids, tokenizes with a
character tokenizer (cached by `datasets`), and serves length-bucketed batches:

    {"input_ids": LongTensor (B, L) right-padded with 0, "lengths": LongTensor (B,),
     "labels": LongTensor (B,) (-1 where unknown), "index": LongTensor (B,) row in its split}

``L`` is the batch's longest text rounded up to ``pad_multiple`` (``batching="bucket"``) or
``max_length`` (``batching="fixed"``, as in the paper). The model pads to its own minimum.

With ``task="multilabel"`` every row holds a label set and ``labels`` is an int8 multi-hot
tensor (B, n_labels) (-1 in every column where unknown); see :mod:`vdcnn_res.data.labels` for
how cells become sets.

The attributes a model needs (``num_classes``, ``vocab_size``, ``padding_idx``,
``label_names``, ``task``, ``tokenizer``) are computed on first access, so a CLI can link them right
after construction; ``state_dict`` carries the tokenizer into checkpoints (the label names
travel once, in the model's hyperparameters).

Under DDP the module shards its own batches (see :mod:`vdcnn_res.data.sampler`): run the Trainer
with ``use_distributed_sampler=False``.

Reading files is :mod:`vdcnn_res.data.files`, the label table :mod:`vdcnn_res.data.labels`,
where each split comes from :mod:`vdcnn_res.data.sources`; this module tokenizes and batches.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from vdcnn_res.data.base import BucketedDataModule
from vdcnn_res.data.batching import PadCollator, TokenizedSplit
from vdcnn_res.data.files import FORMATS
from vdcnn_res.data.labels import LabelSetError, LabelTable, label_ids, label_sets, read_classes
from vdcnn_res.data.sampler import SortedSampler
from vdcnn_res.data.texts import join_texts, odd_text_summary
from vdcnn_res.data.tokenizer import KINDS, PAD_ID, build_tokenizer, encode, load_tokenizer
from vdcnn_res.errors import UserError

__all__ = ["FORMATS", "TASKS", "TextDataModule"]

TASKS = ("multiclass", "multilabel")

# Bump when the cached tokenized layout changes, so old `datasets` cache files are not reused.
_CACHE_VERSION = 2


class TextDataModule(BucketedDataModule):
    """Text classification data from local files or a hub dataset, tokenized per character.

    Args:
        train, valid, test, predict: a file path or glob per split (local files win over
            the hub). Without ``valid``, ``valid_fraction`` of train is held out (stratified,
            seeded); the test split is never used for validation.
        hub_dataset: a `datasets.load_dataset` name (or local dataset folder); ``hub_config``
            its config; ``hub_splits`` maps train/valid/test/predict to its split names
            (default train/validation/test).
        file_format: csv | tsv | json | parquet; None infers it from the extension.
        column_names: column names of header-less CSV/TSV files (Zhang et al. layout:
            ``[label, title, description]``).
        text_columns: the text column(s); several are joined with ``text_separator``.
        label_column: integer or string labels (a `ClassLabel` feature keeps its names);
            surrounding whitespace is stripped.
        label_offset: subtracted from integer labels (1 for 1-based files).
        missing_labels: rows of train/valid/test without a label (empty cell, null, missing
            key): ``error`` names the file, the count and the first row; ``drop`` skips them
            and says how many. Prediction files need no labels.
        classes_file: class names, one per line (line 1 = id 0); otherwise names come
            from the ClassLabel feature or the sorted distinct training labels.
        task: ``multiclass`` (one label per text, softmax) or ``multilabel`` (a set of labels
            per text, possibly empty: one sigmoid per label). Linked into the model, and
            taken from the checkpoint by test/predict.
        label_separator: multi-label only: splits a label cell that is a string (CSV/TSV)
            into its labels; JSON/Parquet lists need none.
        tokenizer: char | learned | byte, or a path to a saved ``tokenizer.json`` to reuse.
        lowercase, max_vocab, min_frequency: tokenizer settings (see `build_tokenizer`).
        max_length: texts are truncated to this many ids (default 512, the recommended recipe;
            the paper: 1024).
        batch_size: training batch size (default 32, the recommended recipe; the paper: 128);
            ``eval_batch_size`` defaults to it.
        batching: ``bucket`` pads each batch to its longest text (rounded up to
            ``pad_multiple``); ``fixed`` pads every batch to ``max_length`` like the paper.
        pool_batches: ``bucket`` sorts this many batches' worth of random samples together.
        sampling: ``natural`` trains on a permutation of the training split each epoch;
            ``balanced`` draws as many texts per epoch with every class equally often
            (rare classes repeat, frequent ones are subsampled), still length-bucketed and
            sharded across processes. Every class must have training texts.
        cache_dir: the `datasets` cache (None: its default, ``HF_HOME``).

    The settings stay in ``self.hparams`` (saved in checkpoints as the data hyperparameters).
    """

    def __init__(
        self,
        train: str | None = None,
        valid: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        hub_dataset: str | None = None,
        hub_config: str | None = None,
        hub_splits: dict[str, str] | None = None,
        file_format: Literal["csv", "tsv", "json", "parquet"] | None = None,
        column_names: list[str] | None = None,
        text_columns: list[str] | None = None,
        text_separator: str = " ",
        label_column: str = "label",
        label_offset: int = 0,
        missing_labels: Literal["error", "drop"] = "error",
        classes_file: str | None = None,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        label_separator: str = "|",
        valid_fraction: float = 0.1,
        seed: int = 42,
        tokenizer: str = "char",
        lowercase: bool | None = None,
        max_vocab: int | None = None,
        min_frequency: int = 1,
        max_length: int = 512,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        batching: Literal["bucket", "fixed"] = "bucket",
        pad_multiple: int = 8,
        pool_batches: int = 20,
        sampling: Literal["natural", "balanced"] = "natural",
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if text_columns is None:
            text_columns = ["text"]
        elif isinstance(text_columns, str):
            text_columns = [text_columns]
        if not text_columns:
            raise UserError("data.text_columns is empty; name at least one text column")
        self.check_shared_settings()
        if sampling not in ("natural", "balanced"):
            raise UserError(f"data.sampling must be 'natural' or 'balanced', got {sampling!r}")
        if task not in TASKS:
            raise UserError(f"data.task must be one of {', '.join(TASKS)}, got {task!r}")
        if not isinstance(label_separator, str) or not label_separator or not label_separator.strip():
            raise UserError(f"data.label_separator must be a non-blank string such as '|', got {label_separator!r}")
        if task == "multilabel" and label_offset:
            raise UserError("data.label_offset applies to single-label integer labels; multi-label labels are names: drop it")
        if task == "multilabel" and sampling == "balanced":
            raise UserError("data.sampling=balanced draws classes of single-label data; for multi-label data use "
                            "data.sampling=natural (and model.class_weights for rare labels)")
        self.check_file_format()
        if max_length < 1 or batch_size < 1 or pad_multiple < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UserError("data.max_length, data.batch_size, data.eval_batch_size and data.pad_multiple must be >= 1")
        self._sources = self.split_sources(
            column_names=list(column_names) if column_names else None,
            text_columns=list(text_columns),
            multilabel=task == "multilabel",
            label_separator=label_separator,
        )
        self._tokenizer: Tokenizer | None = None
        self._tokenized: dict[str, TokenizedSplit] = {}

    # ------------------------------------------------------------------ linked attributes

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer (built or learned from the training split on first access)."""
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def padding_idx(self) -> int:
        return PAD_ID

    @property
    def task(self) -> str:
        """``multiclass`` or ``multilabel`` (data.task), linked into the model."""
        return self.hparams.task

    @property
    def multilabel(self) -> bool:
        return self.hparams.task == "multilabel"

    @property
    def class_counts(self) -> np.ndarray:
        """Training examples per class (index = label id); multi-label: texts that have each label."""
        if not self.multilabel:
            return super().class_counts
        return np.clip(self._split("train").labels, 0, None).sum(axis=0).astype(np.int64)

    @property
    def num_train_texts(self) -> int:
        """Texts in the training split (with class_counts: each label's negatives, for positive weights)."""
        return len(self._split("train"))

    def set_tokenizer(self, tokenizer: Tokenizer | str) -> None:
        """Use a saved tokenizer (object, JSON string or path), e.g. a checkpoint's."""
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        if self._tokenizer is None or tok.to_str() != self._tokenizer.to_str():
            self._tokenized.clear()
        self._tokenizer = tok

    def set_vocabulary(self, tokenizer: Tokenizer | str, label_names: Sequence[str]) -> None:
        """Use a saved tokenizer (object, JSON string or path) and label names, e.g. a checkpoint's."""
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        names = [str(n) for n in label_names]
        changed = (
            self._tokenizer is None
            or self._labels is None
            or tok.to_str() != self._tokenizer.to_str()
            or names != self._labels.names
        )
        self._tokenizer = tok
        self._labels = LabelTable(names, self.hparams.label_offset, "the given label names")
        if changed:
            self._trained_ids = None
            self._tokenized.clear()

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to encode texts exactly as in training (label names: the model's hparams)."""
        return {"tokenizer": self.tokenizer.to_str()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("tokenizer"):
            self.set_tokenizer(state_dict["tokenizer"])

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Load (download) the training data and learn the vocabulary, once, before setup."""
        _ = (self.tokenizer, self._label_table())

    def texts_dataloader(self, texts: Sequence[str]) -> DataLoader:
        """A predict loader over in-memory texts, encoded and padded like every other split."""
        split = TokenizedSplit.from_ids(encode(self.tokenizer, list(texts), self.hparams.max_length))
        return DataLoader(
            split, sampler=SortedSampler(split.lengths), batch_size=self._eval_batch_size, collate_fn=self._collator()
        )

    # ------------------------------------------------------------------ loaders

    def _collator(self) -> PadCollator:
        hp = self.hparams
        collator = _LabelSetCollator if self.multilabel else PadCollator
        return collator(hp.pad_multiple, hp.max_length if hp.batching == "fixed" else None)

    # ------------------------------------------------------------------ multi-label

    def _label_table(self) -> LabelTable:
        if not self.multilabel or self._labels is not None:
            return super()._label_table()
        hp = self.hparams
        classes = read_classes(hp.classes_file) if hp.classes_file else None
        train = self._sources.get("train") if self._sources.has("train") else None
        if train is None:
            return super()._label_table()  # classes_file or an error saying what to set
        sets, feature_names = self._label_sets(train, "train")
        if classes is None and feature_names is not None:
            classes, source = feature_names, f"the ClassLabel feature of {hp.label_column!r}"
        else:
            source = f"data.classes_file {hp.classes_file!r}"
        self._labels, self._trained_ids = LabelTable.from_label_sets(sets, hp.label_separator, classes, source)
        untrained = [n for i, n in enumerate(self._labels.names) if i not in self._trained_ids]
        if untrained:
            warnings.warn(f"labels with no training text: {', '.join(untrained[:20])}", stacklevel=2)
        return self._labels

    def _label_sets(self, ds: datasets.Dataset, split: str) -> tuple[list[list[str] | None], list[str] | None]:
        """The label set of every row of a split, and the label names of a list-of-ClassLabel column."""
        column = self.hparams.label_column
        feature = ds.features[column]
        inner = getattr(feature, "feature", None)
        values = ds[column]
        names = None
        if isinstance(inner, datasets.ClassLabel):
            names = list(inner.names)
            values = [None if v is None else [inner.int2str(int(i)) for i in v] for v in values]
        elif isinstance(feature, datasets.ClassLabel):
            raise UserError(f"data.task=multilabel: column {column!r} is a ClassLabel (one label per text); use data.task=multiclass")
        try:
            return label_sets(values, self.hparams.label_separator), names
        except LabelSetError as err:
            raise UserError(
                f"{err.problem} in the {split} split ({self._sources.locate(split, err.row)}); fix the data"
            ) from None

    def _multilabel_split(self, split: str) -> TokenizedSplit:
        hp = self.hparams
        ds = self._sources.require(split)
        self.tokenizer  # noqa: B018 - built (or refused) before the labels are read, as for single-label data
        table = self._label_table()
        if hp.label_column in ds.column_names:
            sets, _ = self._label_sets(ds, split)
            hot = table.multi_hot(sets, f"{split} split", hp.label_separator)
            if split != "train" and self._trained_ids is not None:
                untrained = sorted({table.names[i] for i in np.flatnonzero(hot.max(axis=0, initial=0) > 0)} - {table.names[i] for i in self._trained_ids})
                if untrained:
                    warnings.warn(f"the {split} split has labels with no training text: {', '.join(untrained)}", stacklevel=2)
        else:
            hot = np.full((len(ds), len(table.names)), -1, dtype=np.int8)
        mapped = self._encode(ds, split, key=["texts only"])
        tokenized = _LabelSetSplit(mapped.data.column("input_ids"), hot)
        self._tokenized[split] = tokenized
        return tokenized

    # ------------------------------------------------------------------ vocabulary and labels

    def _build_tokenizer(self) -> Tokenizer:
        hp = self.hparams
        spec = hp.tokenizer
        if spec not in KINDS:
            if os.path.exists(os.path.expanduser(spec)):
                return load_tokenizer(os.path.expanduser(spec))
            raise UserError(f"data.tokenizer: {spec!r} is neither a kind ({', '.join(KINDS)}) nor an existing tokenizer.json")
        texts = None
        if spec == "learned":
            if self._sources.get("train") is None:
                raise UserError(
                    "the 'learned' tokenizer is learned from the training split: set data.train (or data.hub_dataset), "
                    "or data.tokenizer=path/to/tokenizer.json"
                )
            train = self._sources.require("train")
            # Count characters the model will see: each text up to max_length.
            columns, sep = self._sources.text_columns, hp.text_separator
            texts = (t[: hp.max_length] for batch in train.iter(batch_size=1000) for t in join_texts(batch, columns, sep))
        return build_tokenizer(spec, texts, lowercase=hp.lowercase, max_vocab=hp.max_vocab, min_frequency=hp.min_frequency)

    # ------------------------------------------------------------------ tokenized splits

    def _encode(
        self, ds: datasets.Dataset, split: str, key: list[Any],
        batch_labels: Callable[[dict[str, list[Any]], int], list[int]] | None = None,
    ) -> datasets.Dataset:
        """``ds`` tokenized to ``input_ids`` (and ``labels`` from ``batch_labels``), cached by
        `datasets` under a fingerprint of the data, tokenizer, text settings and ``key``."""
        hp = self.hparams
        tokenizer, text_columns = self.tokenizer, self._sources.text_columns
        odd = odd_text_summary(ds, text_columns)
        if odd:
            warnings.warn(f"the {split} split ({self._sources.describe(split)}): {odd}", stacklevel=2)
        fingerprint = datasets.fingerprint.Hasher.hash(
            [_CACHE_VERSION, ds._fingerprint, tokenizer.to_str(), hp.max_length, text_columns, hp.text_separator, *key]
        )
        features = {"input_ids": datasets.List(datasets.Value("int32"))}
        if batch_labels is not None:
            features["labels"] = datasets.Value("int64")

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            ids = encode(tokenizer, join_texts(batch, text_columns, hp.text_separator), hp.max_length)
            return {"input_ids": ids} if batch_labels is None else {"input_ids": ids, "labels": batch_labels(batch, len(ids))}

        return ds.map(
            tokenize,
            batched=True,
            remove_columns=ds.column_names,
            features=datasets.Features(features),
            new_fingerprint=fingerprint,
            desc=f"tokenizing {split}",
        )

    def _split(self, split: str) -> TokenizedSplit:
        """The split tokenized (cached by `datasets` and in memory)."""
        if split in self._tokenized:
            return self._tokenized[split]
        if self.multilabel:
            return self._multilabel_split(split)
        hp = self.hparams
        ds = self._sources.require(split)
        self.tokenizer  # noqa: B018 - built (or refused) before the labels are read
        label_table = self._label_table()
        label_column = hp.label_column
        has_labels = label_column in ds.column_names
        table = label_table.lookup(ds, label_column, f"{split} split", self._trained_ids) if has_labels else None
        is_classlabel = has_labels and isinstance(ds.features[label_column], datasets.ClassLabel)

        def batch_labels(batch: dict[str, list[Any]], n: int) -> list[int]:
            return label_ids(batch[label_column], table, is_classlabel) if table is not None else [-1] * n

        key = [label_column, sorted(table.items(), key=repr) if table else None]
        mapped = self._encode(ds, split, key, batch_labels)
        tokenized = TokenizedSplit(mapped.data.column("input_ids"), mapped.data.column("labels").to_numpy())
        self._tokenized[split] = tokenized
        return tokenized


class _LabelSetSplit(TokenizedSplit):
    """A tokenized split whose ``labels`` are multi-hot rows ``(n, n_labels)`` int8 (-1: unknown);
    items are ``(ids, label row, index)``."""

    def __init__(self, ids: pa.ChunkedArray | pa.Array, labels: np.ndarray) -> None:
        super().__init__(ids, np.zeros(len(labels), dtype=np.int64))
        self.labels = np.asarray(labels, dtype=np.int8)

    def _label(self, index: int) -> np.ndarray:
        return self.labels[index]


class _LabelSetCollator(PadCollator):
    """PadCollator for items whose label is a multi-hot row: ``labels`` (B, n_labels) int8."""

    def __call__(self, items: Sequence[tuple[np.ndarray, Any, int]]) -> dict[str, torch.Tensor]:
        batch = super().__call__([(ids, -1, index) for ids, _, index in items])
        rows = [np.asarray(label, dtype=np.int8) for _, label, _ in items]
        if rows and all(row.ndim == 1 for row in rows):
            batch["labels"] = torch.from_numpy(np.stack(rows))
        return batch
