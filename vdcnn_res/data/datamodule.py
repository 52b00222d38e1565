"""Text classification data: files or a hub dataset -> tokenized splits -> padded batches.

:class:`TextDataModule` reads every split once with `datasets` (CSV, TSV, JSON/JSONL,
Parquet, or a hub dataset), joins the text columns, maps labels to ids, tokenizes with a
character tokenizer (cached by `datasets`), and serves length-bucketed batches:

    {"input_ids": LongTensor (B, L) right-padded with 0, "lengths": LongTensor (B,),
     "labels": LongTensor (B,) (-1 where unknown), "index": LongTensor (B,) row in its split}

``L`` is the batch's longest text rounded up to ``pad_multiple`` (``batching="bucket"``) or
``max_length`` (``batching="fixed"``, as in the paper). The model pads to its own minimum.

The attributes a model needs (``num_classes``, ``vocab_size``, ``padding_idx``,
``label_names``, ``tokenizer``) are computed on first access, so a CLI can link them right
after construction; ``state_dict`` carries the tokenizer into checkpoints (the label names
travel once, in the model's hyperparameters).

Under DDP the module shards its own batches (see :mod:`vdcnn_res.data.sampler`): run the Trainer
with ``use_distributed_sampler=False``.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import datasets
import numpy as np
from pytorch_lightning import LightningDataModule
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from vdcnn_res.data.batching import PadCollator, TokenizedSplit
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.data.sampler import LengthBucketBatchSampler, SortedSampler
from vdcnn_res.data.tokenizer import KINDS, PAD_ID, build_tokenizer, encode, load_tokenizer

__all__ = ["FORMATS", "TextDataModule"]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("csv", "tsv", "json", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_SPLITS = ("train", "valid", "test", "predict")
_DEFAULT_HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
_INT_LABEL = re.compile(r"^\s*[+-]?\d+\s*$")
# Bump when the cached tokenized layout changes, so old `datasets` cache files are not reused.
_CACHE_VERSION = 1


# ----------------------------------------------------------------------------- file loading


def _resolve_files(pattern: str, arg: str) -> list[str]:
    path = os.path.expanduser(pattern)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise MissingFileError(f"{arg}: no file matches the glob {pattern!r}")
        return [os.path.abspath(f) for f in files]
    if os.path.isdir(path):
        raise MissingFileError(f"{arg}: {pattern!r} is a folder; give a file or a glob such as '{pattern}/*.csv'")
    if not os.path.isfile(path):
        raise MissingFileError(f"{arg}: file not found: {pattern!r}")
    return [os.path.abspath(path)]


def _infer_format(files: list[str], arg: str) -> str:
    formats = set()
    for f in files:
        name = f.lower()
        for suffix in _COMPRESSIONS:
            name = name.removesuffix(suffix)
        fmt = _EXTENSIONS.get(os.path.splitext(name)[1])
        if fmt is None:
            raise UserError(
                f"{arg}: cannot tell the format of {f!r} from its extension; supported: "
                f"{', '.join(sorted(_EXTENSIONS))} (optionally {', '.join(_COMPRESSIONS)}), "
                f"or set data.file_format to one of {', '.join(FORMATS)}"
            )
        formats.add(fmt)
    if len(formats) > 1:
        raise UserError(f"{arg}: files of different formats ({', '.join(sorted(formats))}); use one format per split")
    return formats.pop()


class _NoRows(Exception):
    """The files hold no data rows (the caller names the split)."""


def _read_header(file: str, sep: str) -> list[str]:
    import pandas as pd

    try:
        return [str(c) for c in pd.read_csv(file, sep=sep, nrows=0).columns]
    except pd.errors.EmptyDataError as err:
        raise _NoRows from err
    except UnicodeDecodeError as err:
        raise UserError(_not_utf8(file, err)) from None


def _not_utf8(file: str, err: UnicodeDecodeError | Exception) -> str:
    where = f" (it holds byte {err.object[err.start]:#04x})" if isinstance(err, UnicodeDecodeError) else ""
    return (
        f"{file!r} is not UTF-8 text{where}: re-save it as UTF-8, "
        f"e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` (texts are never decoded with replacement characters)"
    )


def _load_files(
    files: list[str], fmt: str, column_names: list[str] | None, cache_dir: str | None, arg: str
) -> datasets.Dataset:
    if all(os.path.getsize(f) == 0 for f in files):
        raise _NoRows
    shown = files[0] if len(files) == 1 else str(files)  # how the UTF-8 messages name the file(s)
    kwargs: dict[str, Any] = {}
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        names = list(column_names) if column_names else _read_header(files[0], sep)
        if column_names:
            first = _read_header(files[0], sep)
            if first == names:
                raise UserError(f"{arg}: {files[0]!r} has a header row equal to data.column_names; drop data.column_names")
            kwargs["column_names"] = names
        # Every cell as a string: pandas would otherwise turn "NA", "null" or "" into missing
        # values and guess types per 10k-row chunk. Labels are parsed later.
        kwargs.update(sep=sep, keep_default_na=False, features=datasets.Features({n: datasets.Value("string") for n in names}))
        builder = "csv"
    elif column_names:
        raise UserError(f"{arg}: data.column_names names the columns of header-less CSV/TSV files, not {fmt}")
    else:
        builder = fmt
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as err:  # pandas / pyarrow parse errors come in many types
        if "corresponds to no data" in str(err):  # what `datasets` says about a split of 0 rows
            raise _NoRows from err
        cause = err
        while cause is not None and not isinstance(cause, UnicodeDecodeError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise UserError(f"{arg}: {_not_utf8(shown, cause)}") from err
        raise UserError(f"{arg}: could not read {fmt} file(s) {files if len(files) > 1 else files[0]!r}: {err}") from err
    if builder == "json":  # pyarrow's JSON reader keeps bytes that are not UTF-8 in string columns
        try:
            ds.data.table.validate(full=True)
        except Exception as err:
            raise UserError(f"{arg}: {_not_utf8(shown, err)}") from None
    return ds


# ----------------------------------------------------------------------------- labels


class _Labels:
    """Label names and the rule that maps raw label values of any split to ids."""

    def __init__(self, names: list[str], offset: int, source: str = "the training split") -> None:
        self.names = names
        self.offset = offset
        self.source = source
        self.index = {n: i for i, n in enumerate(names)}

    def lookup(self, ds: datasets.Dataset, column: str, where: str, trained: set[int] | None) -> dict[Any, int]:
        """Raw value -> id for every distinct value of ``ds[column]``; errors name the bad value."""
        feature = ds.features[column]
        uniques = ds.unique(column)
        if any(u is None for u in uniques):
            raise UserError(f"the {where} has rows without a label in column {column!r}")
        as_names = [feature.int2str(u) for u in uniques] if isinstance(feature, datasets.ClassLabel) else uniques
        ints = _int_labels(as_names) if not isinstance(feature, datasets.ClassLabel) else None
        table: dict[Any, int] = {}
        for raw, value in zip(uniques, ints if ints is not None else as_names):
            if ints is not None:
                label = value - self.offset
                if not 0 <= label < len(self.names):
                    raise UserError(
                        f"label {raw!r} in the {where} is outside the {len(self.names)} classes "
                        f"(ids 0..{len(self.names) - 1} after data.label_offset={self.offset}); "
                        "check data.label_offset or data.classes_file"
                    )
            elif str(value) in self.index:
                label = self.index[str(value)]
            else:
                shown = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
                if self.source == "the training split":
                    problem = f"never occurs in the training split (classes: {shown})"
                else:
                    problem = f"is none of the {len(self.names)} classes of {self.source} ({shown})"
                raise UserError(
                    f"label {value!r} in the {where} {problem}; fix the data or list every class in data.classes_file"
                )
            table[raw] = label
        if trained is not None:
            untrained = sorted({self.names[i] for i in table.values() if i not in trained})
            if untrained:
                warnings.warn(f"the {where} has classes with no training example: {', '.join(untrained)}", stacklevel=2)
        return table


def _int_labels(values: list[Any]) -> list[int] | None:
    """The values as ints if they all are integers (CSV cells arrive as digit strings), else None."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [int(v) for v in values]
    if all(isinstance(v, str) and _INT_LABEL.match(v) for v in values):
        return [int(v) for v in values]
    if any(isinstance(v, float) for v in values):
        raise UserError("labels are floats; use integer or string labels")
    return None


def _read_classes(path: str) -> list[str]:
    if not os.path.isfile(os.path.expanduser(path)):
        raise MissingFileError(f"data.classes_file: file not found: {path!r}")
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise UserError(f"data.classes_file {path!r} must list >= 2 distinct, non-empty class names, one per line")
    return names


def _stratified_split(labels: Sequence[Any], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, valid): ``round(fraction * n_c)`` random rows of each class go to valid."""
    _, inverse = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    rng = np.random.default_rng(seed)
    valid: list[np.ndarray] = []
    for c in range(inverse.max() + 1):
        rows = np.flatnonzero(inverse == c)
        valid.append(rng.permutation(rows)[: int(round(fraction * len(rows)))])
    valid_rows = np.sort(np.concatenate(valid))
    if len(valid_rows) == 0:
        valid_rows = np.sort(rng.permutation(len(labels))[:1])
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[valid_rows] = False
    return np.flatnonzero(train_mask), valid_rows


# ----------------------------------------------------------------------------- data module


class TextDataModule(LightningDataModule):
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
        label_column: integer or string labels (a `ClassLabel` feature keeps its names).
        label_offset: subtracted from integer labels (1 for 1-based files).
        classes_file: class names, one per line (line 1 = id 0); otherwise names come
            from the ClassLabel feature or the sorted distinct training labels.
        tokenizer: char | learned | byte, or a path to a saved ``tokenizer.json`` to reuse.
        lowercase, max_vocab, min_frequency: tokenizer settings (see `build_tokenizer`).
        max_length: texts are truncated to this many ids (the paper: 1024).
        batching: ``bucket`` pads each batch to its longest text (rounded up to
            ``pad_multiple``); ``fixed`` pads every batch to ``max_length`` like the paper.
        pool_batches: ``bucket`` sorts this many batches' worth of random samples together.
        cache_dir: the `datasets` cache (None: its default, ``HF_HOME``).
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
        classes_file: str | None = None,
        valid_fraction: float = 0.1,
        seed: int = 42,
        tokenizer: str = "char",
        lowercase: bool | None = None,
        max_vocab: int | None = None,
        min_frequency: int = 1,
        max_length: int = 1024,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        batching: Literal["bucket", "fixed"] = "bucket",
        pad_multiple: int = 8,
        pool_batches: int = 20,
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
        if not 0.0 <= valid_fraction < 1.0:
            raise UserError(f"data.valid_fraction must be in [0, 1), got {valid_fraction}")
        if batching not in ("bucket", "fixed"):
            raise UserError(f"data.batching must be 'bucket' or 'fixed', got {batching!r}")
        if file_format is not None and file_format not in FORMATS:
            raise UserError(f"data.file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
        if max_length < 1 or batch_size < 1 or pad_multiple < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UserError("data.max_length, data.batch_size, data.eval_batch_size and data.pad_multiple must be >= 1")
        unknown_splits = set(hub_splits or {}) - set(_SPLITS)
        if unknown_splits:
            raise UserError(f"data.hub_splits: unknown keys {sorted(unknown_splits)}; use {', '.join(_SPLITS)}")
        self.paths = {"train": train, "valid": valid, "test": test, "predict": predict}
        self.hub_dataset = hub_dataset
        self.hub_config = hub_config
        self.hub_splits = {**_DEFAULT_HUB_SPLITS, **(hub_splits or {})}
        self.file_format = file_format
        self.column_names = list(column_names) if column_names else None
        self.text_columns = list(text_columns)
        self.text_separator = text_separator
        self.label_column = label_column
        self.label_offset = label_offset
        self.classes_file = classes_file
        self.valid_fraction = valid_fraction
        self.seed = seed
        self.tokenizer_spec = tokenizer
        self.lowercase = lowercase
        self.max_vocab = max_vocab
        self.min_frequency = min_frequency
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.batching = batching
        self.pad_multiple = pad_multiple
        self.pool_batches = pool_batches
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self._hub: datasets.DatasetDict | None = None
        self._raw: dict[str, datasets.Dataset | None] = {}
        self._tokenizer: Tokenizer | None = None
        self._labels: _Labels | None = None
        self._trained_ids: set[int] | None = None
        self._tokenized: dict[str, TokenizedSplit] = {}

    # ------------------------------------------------------------------ linked attributes

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer (built or learned from the training split on first access)."""
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    @property
    def label_names(self) -> list[str]:
        """Class names, index = label id."""
        return list(self._label_info().names)

    @property
    def num_classes(self) -> int:
        return len(self._label_info().names)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def padding_idx(self) -> int:
        return PAD_ID

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
        self._labels = _Labels(names, self.label_offset, "the given label names")
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
        _ = (self.tokenizer, self._label_info())

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ["train", "valid"],
            "validate": ["valid"],
            "test": ["test"],
            "predict": ["predict"],
            None: [s for s in _SPLITS if self._has_source(s)],
        }[stage]
        for split in wanted:
            # An optional split without data (no validation, no test in a hub dataset) is skipped;
            # an explicitly requested one raises in its dataloader.
            if (stage is None or split == "valid") and self._raw_split(split) is None:
                continue
            self._split(split)

    def train_dataloader(self) -> DataLoader:
        # Lightning cannot see that our batch sampler shuffles; with overfit_batches it must not.
        overfit = self.trainer is not None and bool(getattr(self.trainer, "overfit_batches", 0))
        return self._loader("train", shuffle=not overfit)

    def val_dataloader(self) -> DataLoader | list:
        if self._raw_split("valid") is None:
            return []  # valid_fraction=0 and no valid split: Lightning skips validation
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = self._split("predict")
        replicas, rank = self._replicas(predicting=True)
        sampler = SortedSampler(split.lengths, num_replicas=replicas, rank=rank)
        # A plain sampler + batch_size (not our batch sampler): Lightning's predict loop
        # re-creates the BatchSampler to track indices, which only works for the stock class.
        return DataLoader(
            split,
            sampler=sampler,
            batch_size=self.eval_batch_size,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
        )

    def texts_dataloader(self, texts: Sequence[str]) -> DataLoader:
        """A predict loader over in-memory texts, encoded and padded like every other split."""
        split = TokenizedSplit.from_ids(encode(self.tokenizer, list(texts), self.max_length))
        return DataLoader(
            split, sampler=SortedSampler(split.lengths), batch_size=self.eval_batch_size, collate_fn=self._collator()
        )

    # ------------------------------------------------------------------ loaders

    def _collator(self) -> PadCollator:
        return PadCollator(self.pad_multiple, self.max_length if self.batching == "fixed" else None)

    def _replicas(self, predicting: bool = False) -> tuple[int, int]:
        """(world size, rank) to shard by; (1, 0) outside a Trainer or when Lightning shards."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False):
            if predicting:  # Lightning wraps our sampler in an unrepeated distributed one
                return 1, 0
            raise UserError(
                "TextDataModule shards its own length-bucketed batches across processes; "
                "set trainer.use_distributed_sampler=false"
            )
        return trainer.world_size, trainer.global_rank

    def _loader(self, split_name: str, shuffle: bool) -> DataLoader:
        split = self._split(split_name)
        replicas, rank = self._replicas()
        sampler = LengthBucketBatchSampler(
            split.lengths,
            self.batch_size if shuffle else self.eval_batch_size,
            bucket=self.batching == "bucket",
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            pool_batches=self.pool_batches,
        )
        return DataLoader(
            split,
            batch_sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    # ------------------------------------------------------------------ raw splits

    def _has_source(self, split: str) -> bool:
        if self.paths[split] is not None:
            return True
        if self.hub_dataset is None or split not in self.hub_splits:
            return False
        return split in ("train", "valid") or self.hub_splits[split] in self._hub_dict()

    def _hub_dict(self) -> datasets.DatasetDict:
        if self._hub is None:
            try:
                loaded = datasets.load_dataset(self.hub_dataset, self.hub_config, cache_dir=self.cache_dir)
            except Exception as err:  # offline, unknown name, bad config: many exception types
                raise UserError(
                    f"could not load hub dataset {self.hub_dataset!r}"
                    f"{f' (config {self.hub_config!r})' if self.hub_config else ''}: the hub is unreachable "
                    f"or the name is wrong ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    "to use local files instead set data.train=path/to/train.csv (and data.valid, data.test)"
                ) from err
            if not isinstance(loaded, datasets.DatasetDict):
                raise UserError(f"hub dataset {self.hub_dataset!r} did not load as a dict of splits")
            self._hub = loaded
        return self._hub

    def _source(self, split: str) -> str:
        if self.paths[split] is not None:
            return f"data.{split}={self.paths[split]!r}"
        return f"hub dataset {self.hub_dataset!r} split {self.hub_splits.get(split)!r}"

    def _load(self, split: str) -> datasets.Dataset | None:
        """The split as loaded, or None when it has no source."""
        if self.paths[split] is not None:
            arg = f"data.{split}"
            files = _resolve_files(self.paths[split], arg)
            fmt = self.file_format or _infer_format(files, arg)
            if split == "valid" and self.paths["test"] is not None:
                if files == _resolve_files(self.paths["test"], "data.test"):
                    raise UserError("data.valid and data.test are the same file(s); validate on a split other than test")
            try:
                names = self._predict_column_names(files, fmt) if split == "predict" else self.column_names
                return _load_files(files, fmt, names, self.cache_dir, arg)
            except _NoRows:
                raise UserError(f"the {split} split ({self._source(split)}) has no rows") from None
        if self.hub_dataset is None or split not in self.hub_splits:
            return None
        hub = self._hub_dict()
        name = self.hub_splits[split]
        if split == "valid" and name == self.hub_splits.get("test"):
            raise UserError("data.hub_splits maps valid and test to the same split; validate on a split other than test")
        if name not in hub:
            if split == "train":
                raise UserError(
                    f"hub dataset {self.hub_dataset!r} has no split {name!r} (it has {', '.join(hub)}); set data.hub_splits"
                )
            return None
        return hub[name]

    def _predict_column_names(self, files: list[str], fmt: str) -> list[str] | None:
        """data.column_names for a predict file, which may lack the label column.

        A header-less CSV/TSV with one field fewer than data.column_names gets the names
        without the label; JSON and Parquet files name their own columns.
        """
        names = self.column_names
        if not names or fmt not in ("csv", "tsv"):
            return None
        n_fields = len(_read_header(files[0], "," if fmt == "csv" else "\t"))
        if self.label_column in names and n_fields == len(names) - 1:
            return [n for n in names if n != self.label_column]
        return names

    def _check_columns(self, ds: datasets.Dataset, split: str) -> None:
        needed = [("data.text_columns", c) for c in self.text_columns]
        if split != "predict":
            needed.append(("data.label_column", self.label_column))
        for arg, column in needed:
            if column not in ds.column_names:
                raise UserError(
                    f"{arg}: no column {column!r} in the {split} split ({self._source(split)}); its columns are: "
                    f"{', '.join(map(str, ds.column_names))} (for header-less CSV/TSV files set data.column_names)"
                )
        if len(ds) == 0:
            raise UserError(f"the {split} split ({self._source(split)}) has no rows")

    def _raw_split(self, split: str) -> datasets.Dataset | None:
        """The raw split, checked; train and valid after carving valid out of train if needed."""
        if split in self._raw:
            return self._raw[split]
        if split in ("train", "valid"):
            train = self._load("train")
            valid = self._load("valid")
            if train is not None:
                self._check_columns(train, "train")
                if valid is None and self.valid_fraction > 0:
                    labels = train[self.label_column]
                    if any(v is None for v in labels):
                        raise UserError(f"the train split has rows without a label in column {self.label_column!r}")
                    train_rows, valid_rows = _stratified_split(list(labels), self.valid_fraction, self.seed)
                    if len(train_rows) == 0:
                        raise UserError("data.valid_fraction leaves no training rows; lower it or give data.valid")
                    log.info("validation: %d of %d training rows (seed %d)", len(valid_rows), len(train), self.seed)
                    train, valid = train.select(train_rows), train.select(valid_rows)
            if valid is not None:
                self._check_columns(valid, "valid")
            self._raw["train"], self._raw["valid"] = train, valid
        else:
            ds = self._load(split)
            if ds is not None:
                self._check_columns(ds, split)
            self._raw[split] = ds
        return self._raw[split]

    def _require(self, split: str) -> datasets.Dataset:
        ds = self._raw_split(split)
        if ds is None:
            hint = {"valid": "data.valid or data.valid_fraction > 0"}.get(split, f"data.{split}=path/to/{split}.csv")
            raise UserError(f"no {split} split: set {hint}")
        return ds

    # ------------------------------------------------------------------ vocabulary

    def _texts(self, batch: Mapping[str, list[Any]]) -> list[str]:
        columns = [batch[c] for c in self.text_columns]
        if len(columns) == 1:
            return ["" if v is None else str(v) for v in columns[0]]
        sep = self.text_separator
        return [sep.join("" if v is None else str(v) for v in row) for row in zip(*columns)]

    def _build_tokenizer(self) -> Tokenizer:
        spec = self.tokenizer_spec
        if spec not in KINDS:
            if os.path.exists(os.path.expanduser(spec)):
                return load_tokenizer(os.path.expanduser(spec))
            raise UserError(f"data.tokenizer: {spec!r} is neither a kind ({', '.join(KINDS)}) nor an existing tokenizer.json")
        texts = None
        if spec == "learned":
            if self._raw_split("train") is None:
                raise UserError(
                    "the 'learned' tokenizer is learned from the training split: set data.train (or data.hub_dataset), "
                    "or data.tokenizer=path/to/tokenizer.json"
                )
            train = self._require("train")
            # Count characters the model will see: each text up to max_length.
            texts = (t[: self.max_length] for batch in train.iter(batch_size=1000) for t in self._texts(batch))
        return build_tokenizer(
            spec, texts, lowercase=self.lowercase, max_vocab=self.max_vocab, min_frequency=self.min_frequency
        )

    def _label_info(self) -> _Labels:
        if self._labels is not None:
            return self._labels
        names = _read_classes(self.classes_file) if self.classes_file else None
        train = self._raw_split("train") if self._has_source("train") else None
        if train is None:
            if names is None:
                raise UserError(
                    "the label names are unknown without a training split: set data.train (or data.hub_dataset), "
                    "data.classes_file, or load them from a checkpoint"
                )
            self._labels = _Labels(names, self.label_offset, f"data.classes_file {self.classes_file!r}")
            return self._labels
        source = f"data.classes_file {self.classes_file!r}" if names else "the training split"
        feature = train.features[self.label_column]
        uniques = train.unique(self.label_column)
        if any(u is None for u in uniques):
            raise UserError(f"the train split has rows without a label in column {self.label_column!r}")
        if isinstance(feature, datasets.ClassLabel):
            if self.label_offset:
                raise UserError(f"data.label_offset must be 0: column {self.label_column!r} is a ClassLabel (0-based)")
            if names is None:
                names, source = list(feature.names), f"the ClassLabel feature {self.label_column!r}"
        elif names is None:
            ints = _int_labels(uniques)
            if ints is not None:
                ids = sorted(i - self.label_offset for i in ints)
                missing = sorted(set(range(ids[-1] + 1)) - set(ids))
                if ids[0] < 0 or missing:
                    raise UserError(
                        f"integer labels must be 0..K-1 after data.label_offset={self.label_offset}, "
                        f"found {ids[0] + self.label_offset}..{ids[-1] + self.label_offset}"
                        f"{f' without {missing[:10]}' if missing else ''}; set data.label_offset or data.classes_file"
                    )
                names = [str(i + self.label_offset) for i in range(ids[-1] + 1)]
            else:
                names = sorted(str(u) for u in uniques)
        labels = _Labels(names, self.label_offset, source)
        table = labels.lookup(train, self.label_column, "train split", None)
        trained = set(table.values())
        if len(trained) < 2:
            raise UserError(
                f"the training split has a single class ({labels.names[trained.pop()]!r}); a classifier needs at least two"
            )
        self._labels, self._trained_ids = labels, trained
        return labels

    # ------------------------------------------------------------------ tokenized splits

    def _split(self, split: str) -> TokenizedSplit:
        """The split tokenized (cached by `datasets` and in memory)."""
        if split in self._tokenized:
            return self._tokenized[split]
        ds = self._require(split)
        tokenizer = self.tokenizer
        labels = self._label_info()
        has_labels = self.label_column in ds.column_names
        table = labels.lookup(ds, self.label_column, f"{split} split", self._trained_ids) if has_labels else None
        fingerprint = datasets.fingerprint.Hasher.hash(
            [
                _CACHE_VERSION,
                ds._fingerprint,
                tokenizer.to_str(),
                self.max_length,
                self.text_columns,
                self.text_separator,
                self.label_column,
                sorted(table.items(), key=repr) if table else None,
            ]
        )
        label_column = self.label_column

        def tokenize(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            texts = self._texts(batch)
            ids = encode(tokenizer, texts, self.max_length)
            label_ids = [table[v] for v in batch[label_column]] if table is not None else [-1] * len(texts)
            return {"input_ids": ids, "labels": label_ids}

        mapped = ds.map(
            tokenize,
            batched=True,
            remove_columns=ds.column_names,
            features=datasets.Features(
                {"input_ids": datasets.List(datasets.Value("int32")), "labels": datasets.Value("int64")}
            ),
            new_fingerprint=fingerprint,
            desc=f"tokenizing {split}",
        )
        tokenized = TokenizedSplit(mapped.data.column("input_ids"), mapped.data.column("labels").to_numpy())
        self._tokenized[split] = tokenized
        return tokenized
