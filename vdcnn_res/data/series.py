"""Numeric time series: checking, missing values, normalisation, splits and padded batches.

Shared by training (:class:`~vdcnn_res.data.series_module.SeriesDataModule`) and prediction
(the Predictor, without Lightning). One series is an array ``(C, L)``: C channels of L values
(``(L,)`` or a flat list for one channel). Files hold one series per row in a list column:
``[[ch1 ...], [ch2 ...]]`` or ``[v1, v2, ...]``.

Preprocessing (:class:`SeriesPreprocessing`), in this order, per series:

1. ``max_length``: keep the first ``max_length`` values (None keeps all).
2. missing values (null, NaN): ``missing="interpolate"`` fills them linearly between the
   nearest valid values of the same channel (before the first / after the last valid value:
   that value); ``missing="zero"`` sets them to 0 after normalisation (the channel's mean
   under z-score). A channel without any valid value becomes 0; a series without any valid
   value is an error.
3. ``normalize="zscore"``: each channel minus its mean, divided by its standard deviation
   (a constant channel is only centred); ``none`` keeps the values. (The data module's
   ``normalize="auto"`` picks one of the two from the training series with :func:`scale_spread`.)

A batch is ``{"input_ids": FloatTensor (B, C, L) right-padded with 0, "lengths": (B,),
"labels": (B,) (-1 where unknown), "index": (B,)}``. The key is ``input_ids`` because the
training module feeds ``batch["input_ids"]`` to the model whatever the input kind.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset

from vdcnn_res.data.batching import PadCollator
from vdcnn_res.data.sampler import SortedSampler
from vdcnn_res.errors import UserError

__all__ = [
    "MISSING_KINDS",
    "NORMALIZE_KINDS",
    "SeriesCollator",
    "SeriesPreprocessing",
    "SeriesSplit",
    "SCALE_SPREAD_LIMIT",
    "as_series",
    "scale_spread",
    "series_to_batches",
]

Normalize = Literal["zscore", "none"]
Missing = Literal["interpolate", "zero"]
NORMALIZE_KINDS: tuple[str, ...] = ("zscore", "none")
MISSING_KINDS: tuple[str, ...] = ("interpolate", "zero")
_EPS = 1e-8
# normalize="auto" z-scores each series when, in some channel, the 90th percentile of the
# training series' standard deviations exceeds the 10th by more than this factor: BatchNorm's
# statistics of a batch are then set by its loudest series (docs/results.md §13).
SCALE_SPREAD_LIMIT = 1000.0


def scale_spread(series: Sequence[np.ndarray]) -> float:
    """How far per-series scales differ: the largest, over channels, of the ratio between the 90th
    and the 10th percentile of the series' standard deviations (valid values; constant and empty
    channels left out). 1.0 for sets stored z-normalised; 1.0 when a channel has no two scales."""
    if not series:
        return 1.0
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: nanstd warns, gives NaN
        sds = [np.nanstd(s, axis=1) for s in series]
    spread = 1.0
    for c in range(max(len(sd) for sd in sds)):  # a series with fewer channels is an error reported later
        channel = np.array([sd[c] for sd in sds if len(sd) > c])
        scales = channel[np.isfinite(channel) & (channel > _EPS)]
        if len(scales) >= 2:
            low, high = np.percentile(scales, [10, 90])
            spread = max(spread, float(high / low))
    return spread


@dataclass(frozen=True)
class SeriesPreprocessing:
    """How raw series become model inputs; saved with a series model (checkpoint and export)."""

    normalize: Normalize = "zscore"
    missing: Missing = "interpolate"
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_KINDS:
            raise UserError(f"normalize must be one of {', '.join(NORMALIZE_KINDS)}, got {self.normalize!r}")
        if self.missing not in MISSING_KINDS:
            raise UserError(f"missing must be one of {', '.join(MISSING_KINDS)}, got {self.missing!r}")
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 1
        ):
            raise UserError(f"max_length must be a positive int or null, got {self.max_length!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SeriesPreprocessing:
        """Strict: exactly the known keys (an exported config.json's ``series`` object)."""
        known = {"normalize", "missing", "max_length"}
        if not isinstance(data, dict) or set(data) != known:
            raise UserError(f"{where}: series must be an object with exactly the keys {sorted(known)}, got {data!r:.100}")
        try:
            return cls(**data)
        except UserError as err:
            raise UserError(f"{where}: series.{err}") from None

    def apply(self, values: np.ndarray, where: str) -> np.ndarray:
        """A checked raw series (C, L) with NaN where missing -> the model's input (C, L') float32."""
        x = np.array(values[:, : self.max_length] if self.max_length else values, dtype=np.float64)
        missing = np.isnan(x)
        if missing.all():
            raise UserError(f"{where} has no valid value (all null or NaN); drop it or fill it in")
        if missing.any() and self.missing == "interpolate":
            x = _interpolate(x, missing)
            missing = np.isnan(x)  # channels without any valid value
        if self.normalize == "zscore":
            with np.errstate(invalid="ignore"):
                valid_any = ~missing.all(axis=1)
                mean = np.zeros(x.shape[0])
                std = np.ones(x.shape[0])
                if valid_any.any():
                    mean[valid_any] = np.nanmean(x[valid_any], axis=1)
                    std[valid_any] = np.nanstd(x[valid_any], axis=1)
                std[std < _EPS] = 1.0
            x = (x - mean[:, None]) / std[:, None]
        x[missing] = 0.0
        return x.astype(np.float32)


def _interpolate(x: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Linear interpolation of NaNs per channel; constant beyond the ends; all-NaN channels stay NaN."""
    positions = np.arange(x.shape[1])
    for c in range(x.shape[0]):
        gaps = missing[c]
        if gaps.any() and not gaps.all():
            x[c, gaps] = np.interp(positions[gaps], positions[~gaps], x[c, ~gaps])
    return x


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def _bad_value(items: Sequence[Any], where: str) -> UserError:
    bad = next(v for v in items if not _is_number(v))
    kind = "a string" if isinstance(bad, (str, bytes)) else f"a {type(bad).__name__}"
    return UserError(f"{where} holds {kind} ({str(bad)[:30]!r}); a series holds numbers (or null for missing values) only")


def as_series(value: Any, where: str) -> np.ndarray:
    """One raw series as a float64 array (C, L), NaN where missing; UserError naming ``where`` otherwise.

    Accepts an ndarray (L,) or (C, L), a flat list of numbers (one channel) or a list of C
    equally long lists. Refused: null, zero length, ragged channels, strings or other values.
    """
    if value is None:
        raise UserError(f"{where} is null; every row needs a series")
    if isinstance(value, (str, bytes)):
        raise UserError(f"{where} is a string ({value[:30]!r}); a series is a list of numbers or of channels")
    if isinstance(value, np.ndarray) or torch.is_tensor(value):
        arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value)
        if arr.dtype.kind not in "fiu":
            if arr.dtype.kind == "O":
                return as_series(arr.tolist(), where)
            raise UserError(f"{where} is an array of {arr.dtype}; a series holds numbers only")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise UserError(f"{where} has shape {arr.shape}; one series is (length,) or (channels, length)")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise UserError(f"{where} has shape {arr.shape}: a zero-length series; every series needs at least one value")
        return arr.astype(np.float64)
    if not isinstance(value, Sequence):
        raise UserError(f"{where} is a {type(value).__name__}; a series is a list of numbers or of channels")
    if len(value) == 0:
        raise UserError(f"{where} is empty (zero length); every series needs at least one value")
    if all(_is_number(v) for v in value):
        return np.array([value], dtype=np.float64)  # None -> NaN
    channels = []
    for c, channel in enumerate(value):
        if isinstance(channel, np.ndarray):
            channel = channel.tolist()
        if isinstance(channel, (str, bytes)) or not isinstance(channel, Sequence):
            raise _bad_value(value, where)
        if not all(_is_number(v) for v in channel):
            raise _bad_value(channel, f"{where}, channel {c + 1},")
        channels.append(channel)
    lengths = sorted({len(ch) for ch in channels})
    if len(lengths) > 1:
        raise UserError(
            f"{where} has channels of different lengths ({', '.join(map(str, lengths))}); "
            "every channel of one series needs the same length (pad with null for missing values)"
        )
    if lengths[0] == 0:
        raise UserError(f"{where} has zero-length channels; every series needs at least one value")
    return np.array(channels, dtype=np.float64)


class SeriesSplit(Dataset):
    """Preprocessed series (each (C, L_i) float32), labels and row indices of one split.

    Items are ``(values, label, index)``; :class:`SeriesCollator` makes batches.
    """

    def __init__(self, series: list[np.ndarray], labels: np.ndarray | Sequence[int] | None = None) -> None:
        self.series = series
        self.lengths = np.fromiter((s.shape[1] for s in series), dtype=np.int64, count=len(series))
        self.labels = np.full(len(series), -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if len(self.labels) != len(self.series):
            raise ValueError(f"{len(self.labels)} labels for {len(self.series)} series")

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        index = int(index)
        return self.series[index], int(self.labels[index]), index


class SeriesCollator(PadCollator):
    """Right-pad ``(values (C, L), label, index)`` items with 0 into a batch dict.

    Pads to the longest series rounded up to ``pad_multiple``, or to exactly ``fixed_length``
    (longer series are cut to it). The values go under "input_ids", like token ids.
    """

    @staticmethod
    def length(values: np.ndarray) -> int:
        return values.shape[1]

    @staticmethod
    def pad(rows: list[np.ndarray], width: int) -> np.ndarray:
        """(B, C, width) float32, right-padded with 0, longer series cut."""
        values = np.zeros((len(rows), rows[0].shape[0], width), dtype=np.float32)
        for row, v in enumerate(rows):
            values[row, :, : v.shape[1]] = v[:, :width]
        return values


def series_to_batches(
    series: Sequence[np.ndarray], *, batch_size: int = 64, pad_multiple: int = 8
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of preprocessed series (prediction from Python), longest first; ``index`` = position."""
    split = SeriesSplit(list(series))
    collate = SeriesCollator(pad_multiple)
    for batch in BatchSampler(SortedSampler(split.lengths), batch_size, drop_last=False):
        yield collate([split[i] for i in batch])
