"""Time-series classification data: files or a hub dataset -> checked, normalised series -> padded batches.

:class:`SeriesDataModule` is the numeric counterpart of
:class:`~vdcnn_res.data.datamodule.TextDataModule` and shares its file reading
(:mod:`~vdcnn_res.data.files`), split sources and validation hold-out
(:mod:`~vdcnn_res.data.sources`), label table (:mod:`~vdcnn_res.data.labels`) and
length-bucketed, DDP-aware, resumable batching (:mod:`~vdcnn_res.data.sampler`). Each row holds
one series in ``series_column`` (JSONL / Parquet list column: ``[[ch1 ...], [ch2 ...]]`` or a
flat list for one channel) and a label. Preprocessing is :class:`~vdcnn_res.data.series.SeriesPreprocessing`.

The attributes a model needs (``num_classes``, ``input_channels``, ``label_names``, and
``vocab_size = padding_idx = 0`` for the links the text module shares) are computed on first
access; ``state_dict`` carries the channel count into checkpoints, so `test` / `predict`
work from a checkpoint alone. Selected with the top-level config key ``data_kind: series``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import datasets
import numpy as np
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from vdcnn_res.data.base import BucketedDataModule
from vdcnn_res.data.labels import LabelTable, label_ids
from vdcnn_res.data.series import (
    MISSING_KINDS,
    NORMALIZE_KINDS,
    SCALE_SPREAD_LIMIT,
    SeriesCollator,
    SeriesPreprocessing,
    SeriesSplit,
    as_series,
    scale_spread,
)
from vdcnn_res.errors import UserError

__all__ = ["AUTO_BATCH", "AUTO_NORMALIZE", "SeriesDataModule", "auto_batch_size"]

AUTO_BATCH = "auto"
AUTO_NORMALIZE = "auto"

_LIST_FEATURES = tuple(
    t for t in (getattr(datasets, name, None) for name in ("List", "LargeList", "Sequence")) if isinstance(t, type)
)


class SeriesDataModule(BucketedDataModule):
    """Time-series classification data (C channels, any length) from local files or a hub dataset.

    Args:
        train, valid, test, predict, hub_dataset, hub_config, hub_splits, file_format,
            label_column, label_offset, missing_labels, classes_file, valid_fraction, seed,
            batch_size, eval_batch_size, batching, pad_multiple, pool_batches, num_workers,
            cache_dir: as in :class:`~vdcnn_res.data.datamodule.TextDataModule` (without
            ``valid``, ``valid_fraction`` of train is held out, stratified and seeded).
        series_column: the column holding each row's series.
        batch_size: series per training batch, or ``"auto"``: ``min(16, max(1, n // 10))`` for
            n training series (the published time-series ResNet's rule: a set of 36 series
            trains in batches of 3, so even tiny sets get several updates per epoch).
        train_as_valid: validate on the training split itself (in eval mode) when there is no
            validation split (``valid_fraction: 0`` and no ``valid``): ``val/loss`` is then the
            training loss and ``checkpoint.monitor: val/loss`` keeps the model with the lowest
            one, the published ResNet's choice for sets too small to hold series out.
        normalize: ``auto`` (the default, as in the series recipe), ``zscore`` (per series and
            channel) or ``none``. ``auto`` is ``zscore`` when the training series' scales differ
            by more than ``SCALE_SPREAD_LIMIT`` (1,000x between the 10th and 90th percentile of
            their standard deviations, in some channel), else ``none``
            (levels and scales can tell classes apart; z-scores would erase them). The choice is
            logged and recorded in checkpoints and exports.
        missing: null / NaN values: ``interpolate`` (linear, per channel) or ``zero`` (0 after
            normalisation).
        max_length: keep the first ``max_length`` values of a series (None: all).
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
        file_format: Literal["json", "parquet"] | None = None,
        series_column: str = "series",
        label_column: str = "label",
        label_offset: int = 0,
        missing_labels: Literal["error", "drop"] = "error",
        classes_file: str | None = None,
        valid_fraction: float = 0.1,
        seed: int = 42,
        normalize: Literal["zscore", "none", "auto"] = "auto",
        missing: Literal["interpolate", "zero"] = "interpolate",
        max_length: int | None = None,
        batch_size: int | Literal["auto"] = 16,
        eval_batch_size: int | None = None,
        batching: Literal["bucket", "fixed"] = "bucket",
        pad_multiple: int = 1,
        pool_batches: int = 20,
        num_workers: int = 0,
        cache_dir: str | None = None,
        train_as_valid: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.check_shared_settings()
        if batching == "fixed" and max_length is None:
            raise UserError("data.batching=fixed pads every batch to data.max_length; set data.max_length")
        self.check_file_format()
        if normalize not in (*NORMALIZE_KINDS, AUTO_NORMALIZE):
            raise UserError(f"data.normalize must be one of {', '.join((*NORMALIZE_KINDS, AUTO_NORMALIZE))}, got {normalize!r}")
        if missing not in MISSING_KINDS:
            raise UserError(f"data.missing must be one of {', '.join(MISSING_KINDS)}, got {missing!r}")
        if batch_size != AUTO_BATCH and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise UserError(f"data.batch_size must be a positive int or 'auto', got {batch_size!r}")
        if train_as_valid and (valid is not None or valid_fraction > 0 or hub_dataset is not None):
            raise UserError(
                "data.train_as_valid validates on the training split when there is no validation split; "
                "set data.valid_fraction=0 and leave data.valid and data.hub_dataset unset, or drop data.train_as_valid"
            )
        if (batch_size != AUTO_BATCH and batch_size < 1) or pad_multiple < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise UserError("data.batch_size, data.eval_batch_size and data.pad_multiple must be >= 1 (batch_size: or 'auto')")
        self._preprocessing = None if normalize == AUTO_NORMALIZE else SeriesPreprocessing(normalize, missing, max_length)
        self._sources = self.split_sources(column_names=None, text_columns=[series_column], column_arg="data.series_column")
        self._channels: int | None = None
        self._splits: dict[str, SeriesSplit] = {}

    # ------------------------------------------------------------------ linked attributes

    @property
    def preprocessing(self) -> SeriesPreprocessing:
        """How raw series become inputs; ``normalize: auto`` is decided from the training split."""
        if self._preprocessing is None:
            if not self._sources.has("train"):
                raise UserError(
                    "data.normalize=auto decides from the training split; set data.train, load a checkpoint, "
                    "or set data.normalize to zscore or none"
                )
            self._split("train")  # resolves it
        assert self._preprocessing is not None
        return self._preprocessing

    def _resolve_normalize(self, raw: Sequence[np.ndarray]) -> None:
        """``normalize: auto`` -> zscore or none from the raw training series (recorded in the hyperparameters)."""
        hp = self.hparams
        spread = scale_spread(raw)
        hp.normalize = "zscore" if spread > SCALE_SPREAD_LIMIT else "none"
        self._preprocessing = SeriesPreprocessing(hp.normalize, hp.missing, hp.max_length)
        relation = "more than" if hp.normalize == "zscore" else "within"
        rank_zero_info(
            f"data.normalize=auto: {hp.normalize} (the training series' scales differ {spread:,.0f}x between "
            f"the 10th and 90th percentile, {relation} {SCALE_SPREAD_LIMIT:,.0f}x)"
        )

    @property
    def input_channels(self) -> int:
        """Channels per series: from the first training series (or a checkpoint)."""
        if self._channels is None:
            if self._sources.get("train") is None:
                raise UserError(
                    "the number of channels is unknown without a training split: set data.train "
                    "(or data.hub_dataset), or load it from a checkpoint"
                )
            self._channels = self._split("train").series[0].shape[0]
        return self._channels

    @property
    def vocab_size(self) -> int:
        """0: a series model has no token embedding (the link the text module shares)."""
        return 0

    @property
    def padding_idx(self) -> int:
        return 0

    def set_checkpoint_state(
        self, input_channels: int, label_names: Sequence[str] | None, preprocessing: dict[str, Any] | None = None
    ) -> None:
        """Use a checkpoint's channel count, label names and (for ``normalize: auto``) its
        preprocessing: test / predict without training data."""
        if self._channels != input_channels:
            self._splits.clear()
        if self.hparams.normalize == AUTO_NORMALIZE and isinstance(preprocessing, dict):
            self._preprocessing = SeriesPreprocessing.from_dict(preprocessing, "the checkpoint")
            self.hparams.normalize = self._preprocessing.normalize
            self._splits.clear()
        self._channels = int(input_channels)
        if label_names is not None:
            self._labels = LabelTable([str(n) for n in label_names], self.hparams.label_offset, "the checkpoint's label names")
            self._trained_ids = None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs besides the hyperparameters: the channel count (labels: the model's hparams)."""
        return {"input_channels": self.input_channels, "preprocessing": self.preprocessing.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if isinstance(state_dict.get("input_channels"), int):
            self.set_checkpoint_state(state_dict["input_channels"], None, state_dict.get("preprocessing"))

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Load the training data, its labels and channel count, once, before setup."""
        _ = (self._label_table(), self.input_channels)

    # ------------------------------------------------------------------ loaders

    def val_dataloader(self) -> Any:
        if self.hparams.train_as_valid:
            return self._loader("train", shuffle=False)
        return super().val_dataloader()

    def _loader(self, split_name: str, shuffle: bool) -> Any:
        self._resolve_batch_size()
        return super()._loader(split_name, shuffle)

    def predict_dataloader(self) -> Any:
        self._resolve_batch_size()
        return super().predict_dataloader()

    def _resolve_batch_size(self) -> None:
        """Replace ``batch_size: auto`` by its value (recorded in the checkpoint's hyperparameters)."""
        hp = self.hparams
        if hp.batch_size != AUTO_BATCH:
            return
        if not self._sources.has("train"):  # evaluating without training data: any size gives the same logits
            hp.batch_size = 16
            return
        num_train = len(self._split("train"))
        hp.batch_size = auto_batch_size(num_train)
        rank_zero_info(f"data.batch_size=auto: {hp.batch_size} ({num_train} training series)")

    def _collator(self) -> SeriesCollator:
        hp = self.hparams
        return SeriesCollator(hp.pad_multiple, hp.max_length if hp.batching == "fixed" else None)

    # ------------------------------------------------------------------ labels and series

    def _where(self, split: str, ds: datasets.Dataset, row: int) -> str:
        """The series of a row, for messages: its file and data row when known."""
        indices = getattr(ds, "_indices", None)  # rows selected by the validation hold-out
        if indices is not None:
            row = int(indices.column(0)[row].as_py())
        try:
            return f"the series in {self._sources.locate(split if indices is None else 'train', row)}"
        except (IndexError, KeyError):
            return f"the series in row {row + 1} of the {split} split ({self._sources.describe(split)})"

    def _split(self, split: str) -> SeriesSplit:
        """The split read, checked and preprocessed (cached in memory)."""
        if split in self._splits:
            return self._splits[split]
        hp = self.hparams
        ds = self._sources.require(split)
        label_table = self._label_table() if split != "predict" or self._labels is not None else None
        column = hp.series_column
        _check_column_type(ds, column, split, self._sources.describe(split))
        if self._preprocessing is None and split != "train":
            _ = self.preprocessing  # normalize: auto is decided on the training split first
        raws = []
        for row, value in enumerate(ds[column]):
            where = f"<series {row}>"  # replaced by the file and row in a message (locating rows costs)
            try:
                raws.append(as_series(value, where))
            except UserError as err:
                raise UserError(str(err).replace(where, self._where(split, ds, row))) from None
        if self._preprocessing is None:
            self._resolve_normalize(raws)
        series = []
        with_missing = 0
        for row, raw in enumerate(raws):
            where = f"<series {row}>"
            try:
                with_missing += bool(np.isnan(raw).any())
                series.append(self.preprocessing.apply(raw, where))
            except UserError as err:
                raise UserError(str(err).replace(where, self._where(split, ds, row))) from None
        del raws
        channels = {s.shape[0] for s in series}
        expected = self._channels if self._channels is not None else series[0].shape[0]
        if channels != {expected}:
            odd = next(i for i, s in enumerate(series) if s.shape[0] != expected)
            raise UserError(
                f"{self._where(split, ds, odd)} has {series[odd].shape[0]} channels, but the model reads {expected} "
                f"({'the checkpoint' if split != 'train' else 'the first training series'}); every series needs the same channels"
            )
        if with_missing:
            how = "linear interpolation" if hp.missing == "interpolate" else "0 after normalisation"
            warnings.warn(
                f"the {split} split ({self._sources.describe(split)}): {with_missing} of {len(series)} series have "
                f"missing values (null or NaN), filled by {how} (data.missing)",
                stacklevel=2,
            )
        labels = None
        if label_table is not None and hp.label_column in ds.column_names:
            table = label_table.lookup(ds, hp.label_column, f"{split} split", self._trained_ids)
            is_classlabel = isinstance(ds.features[hp.label_column], datasets.ClassLabel)
            labels = label_ids(ds[hp.label_column], table, is_classlabel)
        self._splits[split] = SeriesSplit(series, labels)
        return self._splits[split]


def auto_batch_size(num_train: int) -> int:
    """The published time-series ResNet's batch size for ``num_train`` training series: min(16, n // 10), at least 1."""
    return max(1, min(16, num_train // 10))


def _check_column_type(ds: datasets.Dataset, column: str, split: str, source: str) -> None:
    """Refuse a series column whose values are not lists of numbers (e.g. strings), in one line."""
    feature = ds.features[column]
    inner = feature
    while isinstance(inner, (*_LIST_FEATURES, list)):
        inner = inner[0] if isinstance(inner, list) else inner.feature
    if isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string", "binary"):
        raise UserError(
            f"data.series_column {column!r} in the {split} split ({source}) holds strings; a series holds numbers "
            "(or null for missing values) only"
        )
    if inner is feature:
        raise UserError(
            f"data.series_column {column!r} in the {split} split ({source}) is not a list column ({feature}); "
            "each row needs a list of numbers or a list of channels"
        )
