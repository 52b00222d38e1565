"""Numeric series: parsing and checks, missing values, normalisation, SeriesDataModule on JSONL/Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vdcnn_res.data.series import SCALE_SPREAD_LIMIT, SeriesCollator, SeriesPreprocessing, SeriesSplit, as_series, scale_spread
from vdcnn_res.data.series_module import SeriesDataModule, auto_batch_size
from vdcnn_res.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def series_rows(n: int, channels: int, lengths: tuple[int, ...] = (20,), seed: int = 0, flat: bool = False) -> list[dict]:
    """Two classes told apart by the sign of a ramp; lengths cycle through `lengths`; `flat`: one
    channel as a flat list (a JSON file keeps one layout: pyarrow refuses a column that mixes them)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        length = lengths[i % len(lengths)]
        base = np.linspace(-1, 1, length) * (1 if label else -1)
        values = base[None] + 0.1 * rng.standard_normal((channels, length))
        series = values[0].tolist() if flat else values.tolist()
        rows.append({"series": series, "label": ["down", "up"][label]})
    return rows


# --------------------------------------------------------------------------- one series


def test_flat_lists_nested_lists_and_arrays_become_channels_by_length():
    assert as_series([1, 2, 3], "s").shape == (1, 3)
    assert as_series([[1, 2, 3], [4, 5, 6]], "s").shape == (2, 3)
    assert as_series(np.arange(5), "s").shape == (1, 5)
    assert as_series(np.ones((3, 4), dtype=np.float32), "s").shape == (3, 4)
    assert np.isnan(as_series([1, None, 3], "s")[0, 1])


@pytest.mark.parametrize(
    "value, words",
    [
        ([[1, 2, 3], [4, 5]], "channels of different lengths (2, 3)"),
        ([1, "a", 3], "holds a string"),
        ([[1, 2], [3, "x"]], "channel 2, holds a string"),
        ("1 2 3", "is a string"),
        ([], "zero length"),
        ([[], []], "zero-length"),
        (np.zeros((2, 0)), "zero-length"),
        (None, "is null"),
        (np.zeros((2, 2, 2)), "one series is (length,) or (channels, length)"),
        ([True, False], "holds a bool"),
    ],
)
def test_bad_series_are_one_line_user_errors(value, words):
    with pytest.raises(UserError, match="the series") as err:
        as_series(value, "the series")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_all_missing_series_is_an_error_but_one_missing_channel_is_zero():
    prep = SeriesPreprocessing()
    with pytest.raises(UserError, match="no valid value"):
        prep.apply(as_series([None, None], "s"), "s")
    out = prep.apply(as_series([[1, 2, 3], [None, None, None]], "s"), "s")
    np.testing.assert_array_equal(out[1], 0.0)


def test_zscore_per_channel_and_constant_channels_are_only_centred():
    x = as_series([[1, 2, 3, 4], [5, 5, 5, 5]], "s")
    out = SeriesPreprocessing("zscore").apply(x, "s")
    np.testing.assert_allclose(out[0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(out[0].std(), 1, atol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(SeriesPreprocessing("none").apply(x, "s"), x.astype(np.float32))
    assert out.dtype == np.float32


def test_missing_values_interpolated_linearly_or_zero_after_normalisation():
    x = as_series([None, 2.0, None, 4.0, None], "s")
    filled = SeriesPreprocessing("none", "interpolate").apply(x, "s")
    np.testing.assert_allclose(filled[0], [2, 2, 3, 4, 4])  # ends: the nearest valid value
    zero = SeriesPreprocessing("zscore", "zero").apply(x, "s")
    np.testing.assert_allclose(zero[0], [0, -1, 0, 1, 0], atol=1e-6)  # mean 3, sd 1 of the valid values


def test_max_length_keeps_the_first_values():
    out = SeriesPreprocessing("none", max_length=3).apply(as_series(list(range(10)), "s"), "s")
    np.testing.assert_array_equal(out, [[0, 1, 2]])


def test_preprocessing_settings_are_checked():
    with pytest.raises(UserError, match="normalize"):
        SeriesPreprocessing("minmax")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="max_length"):
        SeriesPreprocessing(max_length=0)
    with pytest.raises(UserError, match="exactly the keys"):
        SeriesPreprocessing.from_dict({"normalize": "zscore"}, "config.json")


def test_collator_pads_with_zeros_and_keeps_lengths():
    split = SeriesSplit([np.ones((2, 3), np.float32), np.full((2, 5), 2, np.float32)], [0, 1])
    batch = SeriesCollator(pad_multiple=4)([split[0], split[1]])
    assert batch["input_ids"].shape == (2, 2, 8) and batch["input_ids"].dtype == torch.float32
    assert batch["lengths"].tolist() == [3, 5] and batch["labels"].tolist() == [0, 1]
    assert (batch["input_ids"][0, :, 3:] == 0).all() and (batch["input_ids"][1, :, :5] == 2).all()


# --------------------------------------------------------------------------- data module


def test_module_reads_univariate_flat_lists_with_unequal_lengths(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", series_rows(40, 1, lengths=(12, 20, 31), flat=True))
    data = SeriesDataModule(train=train, valid_fraction=0.25, batch_size=8, seed=1)
    assert data.input_channels == 1 and data.label_names == ["down", "up"] and data.num_classes == 2
    assert data.vocab_size == 0 and data.padding_idx == 0
    data.setup("fit")
    assert len(data._split("train")) == 30 and len(data._split("valid")) == 10  # stratified: 5 per class
    assert sorted(data._split("valid").labels.tolist()) == [0] * 5 + [1] * 5
    batches = list(data.train_dataloader())
    assert sum(len(b["labels"]) for b in batches) == 30
    for b in batches:
        assert b["input_ids"].shape[1] == 1 and b["input_ids"].shape[2] == int(b["lengths"].max())
    assert data.state_dict()["input_channels"] == 1


def test_module_reads_multivariate_parquet(tmp_path):
    import pandas as pd

    rows = series_rows(12, 3)
    path = tmp_path / "train.parquet"
    pd.DataFrame(rows).to_parquet(path)
    data = SeriesDataModule(train=str(path), valid_fraction=0.0)
    assert data.input_channels == 3
    data.setup("fit")
    assert data._split("train").series[0].shape == (3, 20)


def test_missing_values_are_filled_and_reported_once(tmp_path):
    rows = series_rows(10, 2)
    rows[3]["series"][0][5] = None
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    data = SeriesDataModule(train=train, valid_fraction=0.0)
    with pytest.warns(UserWarning, match=r"1 of 10 series have missing values .* linear interpolation"):
        data.setup("fit")
    assert np.isfinite(data._split("train").series[3]).all()


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda rows: rows[4].update(series=[[1.0, 2.0], [3.0]]), "channels of different lengths"),
        (lambda rows: rows[4].update(series=[None, None, None]), "no valid value"),
        (lambda rows: rows[4].update(series=[]), "zero length"),
        (lambda rows: rows[4].update(series=[[1.0, 2.0]] * 3), "has 3 channels, but the model reads 2"),
    ],
)
@pytest.mark.parametrize("normalize", ["auto", "zscore", "none"])
def test_bad_rows_name_the_file_and_row(tmp_path, change, words, normalize):
    rows = series_rows(10, 2)
    change(rows)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError) as err:  # auto measures the scales first: a bad row must not break that
        SeriesDataModule(train=train, valid_fraction=0.0, normalize=normalize).setup("fit")
    message = str(err.value)
    assert words in message and "data row 5 of" in message and "train.jsonl" in message and "\n" not in message


def test_a_file_mixing_flat_and_nested_lists_is_a_one_line_error(tmp_path):
    rows = series_rows(4, 1, flat=True) + series_rows(4, 1)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match="could not read json") as err:
        _ = SeriesDataModule(train=train).input_channels
    assert "\n" not in str(err.value)


def test_a_string_series_column_is_a_user_error(tmp_path):
    rows = [{"series": ["a", "b"], "label": i % 2} for i in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(UserError, match="holds strings; a series holds numbers"):
        SeriesDataModule(train=train, valid_fraction=0.0).setup("fit")


def test_auto_batch_size_is_a_tenth_of_train_capped_at_16():
    assert [auto_batch_size(n) for n in (1, 9, 36, 50, 67, 160, 270, 10_000)] == [1, 1, 3, 5, 6, 16, 16, 16]


def test_batch_size_auto_resolves_from_the_training_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", series_rows(40, 2))
    data = SeriesDataModule(train=train, valid_fraction=0.0, batch_size="auto")
    data.setup("fit")
    sizes = [len(b["labels"]) for b in data.train_dataloader()]
    assert sizes == [4] * 10 and data.hparams.batch_size == 4  # the checkpoint records the number
    test = write_jsonl(tmp_path / "test.jsonl", series_rows(6, 2))
    evaluating = SeriesDataModule(test=test, batch_size="auto", normalize="zscore")  # no training data: any size
    evaluating.set_checkpoint_state(2, ["down", "up"])
    evaluating.setup("test")
    assert sum(len(b["labels"]) for b in evaluating.test_dataloader()) == 6


@pytest.mark.parametrize("size", ["big", 0, True, 2.5])
def test_a_bad_batch_size_is_a_user_error(size):
    with pytest.raises(UserError, match="data.batch_size"):
        SeriesDataModule(train="x.jsonl", batch_size=size)


def test_train_as_valid_validates_on_every_training_series_in_order(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", series_rows(12, 1, lengths=(8, 15)))
    data = SeriesDataModule(train=train, valid_fraction=0.0, batch_size=5, train_as_valid=True)
    data.setup("fit")
    seen = [i for b in data.val_dataloader() for i in b["index"].tolist()]
    assert sorted(seen) == list(range(12))
    assert seen == [i for b in data.val_dataloader() for i in b["index"].tolist()]  # no shuffling
    assert SeriesDataModule(train=train, valid_fraction=0.0).val_dataloader() == []  # off: no validation


@pytest.mark.parametrize("split", [{"valid_fraction": 0.2}, {"valid": "v.jsonl", "valid_fraction": 0.0}])
def test_train_as_valid_with_a_validation_split_is_a_user_error(split):
    with pytest.raises(UserError, match="data.train_as_valid validates on the training split"):
        SeriesDataModule(train="x.jsonl", train_as_valid=True, **split)


def test_a_missing_series_column_names_the_setting(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"values": [1.0, 2.0], "label": i % 2} for i in range(4)])
    with pytest.raises(UserError, match="data.series_column: no column 'series'"):
        _ = SeriesDataModule(train=train).input_channels


def test_checkpoint_state_serves_test_and_predict_without_training_data(tmp_path):
    rows = series_rows(6, 2)
    test = write_jsonl(tmp_path / "test.jsonl", rows)
    predict = write_jsonl(tmp_path / "predict.jsonl", [{"series": r["series"]} for r in rows])
    data = SeriesDataModule(test=test, predict=predict, normalize="zscore")
    with pytest.raises(UserError, match="channels is unknown without a training split"):
        _ = data.input_channels
    data.set_checkpoint_state(2, ["down", "up"])
    data.setup("test")
    assert data._split("test").labels.tolist() == [0, 1, 0, 1, 0, 1]
    data.setup("predict")
    assert next(iter(data.predict_dataloader()))["labels"].tolist() == [-1] * 6
    data.set_checkpoint_state(3, ["down", "up"])
    with pytest.raises(UserError, match="has 2 channels, but the model reads 3"):
        data.setup("test")


@pytest.mark.shared("data/series")
@pytest.mark.parametrize("name, channels, classes", [("JapaneseVowels", 12, 9), ("BasicMotions", 6, 4)])
def test_shared_sets_load(name, channels, classes, shared_dir):
    offset = 1 if name == "JapaneseVowels" else 0
    data = SeriesDataModule(train=str(shared_dir / "data" / "series" / name / "train.jsonl"), label_offset=offset,
                            valid_fraction=0.2)  # fmt: skip
    assert data.input_channels == channels and data.num_classes == classes


# --------------------------------------------------------------------------- normalize: auto


def scaled_rows(scales: list[float], channels: int = 2, seed: int = 0) -> list[dict]:
    """series_rows whose i-th series is multiplied by scales[i % len(scales)] (in its first channel)."""
    rows = series_rows(2 * len(scales), channels, lengths=(12, 20), seed=seed)
    for i, row in enumerate(rows):
        values = np.array(row["series"])
        values[0] *= scales[i % len(scales)]
        row["series"] = values.tolist()
    return rows


def test_scale_spread_is_the_widest_10th_to_90th_percentile_ratio_of_series_scales():
    rng = np.random.default_rng(0)
    znormed = [rng.standard_normal((2, 30)) for _ in range(20)]
    znormed = [(s - s.mean(1, keepdims=True)) / s.std(1, keepdims=True) for s in znormed]
    assert scale_spread(znormed) == pytest.approx(1.0)
    spread = [np.stack([s[0] * 10.0 ** (i % 6), s[1]]) for i, s in enumerate(znormed)]  # channel 0: 1 .. 1e5
    scales = [10.0 ** (i % 6) for i in range(20)]
    assert scale_spread(spread) == pytest.approx(np.percentile(scales, 90) / np.percentile(scales, 10))
    flat = [np.ones((1, 5)), np.full((1, 5), 3.0), np.array([[np.nan, 1.0, 2.0]])]
    assert scale_spread(flat) == 1.0  # constant series carry no scale; fewer than two scales: no spread
    assert scale_spread([np.full((1, 4), np.nan), np.array([[0.0, 2.0]])]) == 1.0 and scale_spread([]) == 1.0


@pytest.mark.parametrize("setting", [{"normalize": "auto"}, {}], ids=["set", "default"])
@pytest.mark.parametrize("scales, chosen", [([1.0, 2.0, 0.5], "none"), ([1e-3, 1.0, 1e3], "zscore")])
def test_normalize_auto_decides_on_the_training_split_and_records_it(tmp_path, scales, chosen, setting, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", scaled_rows(scales))
    test = write_jsonl(tmp_path / "test.jsonl", scaled_rows([1e3], seed=1))
    data = SeriesDataModule(train=train, test=test, valid_fraction=0.0, **setting)  # auto is the default
    with caplog.at_level("INFO"):
        data.setup("test")  # the test split first: the training split decides all the same
    assert data.hparams.normalize == chosen and data.state_dict()["preprocessing"]["normalize"] == chosen
    assert f"data.normalize=auto: {chosen}" in caplog.text
    first = np.array(json.loads(Path(test).read_text().splitlines()[0])["series"], dtype=np.float32)
    expected = SeriesPreprocessing(chosen).apply(first.astype(np.float64), "x")
    np.testing.assert_allclose(data._split("test").series[0], expected, rtol=1e-6)
    assert (abs(data._split("test").series[0][0]).max() > 100) == (chosen == "none")


def test_normalize_auto_threshold_is_a_thousandfold_spread():
    assert SCALE_SPREAD_LIMIT == 1000.0
    below = [np.array([[0.0, 1.0, 0.0, -1.0]]) * s for s in [1.0] * 10 + [900.0] * 10]
    above = [np.array([[0.0, 1.0, 0.0, -1.0]]) * s for s in [1.0] * 10 + [1100.0] * 10]
    assert scale_spread(below) < SCALE_SPREAD_LIMIT < scale_spread(above)


def test_normalize_auto_without_training_data_takes_the_checkpoints_choice(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", scaled_rows([1e3]))
    data = SeriesDataModule(test=test, normalize="auto")
    with pytest.raises(UserError, match="data.normalize=auto decides from the training split"):
        _ = data.preprocessing
    data.set_checkpoint_state(2, ["down", "up"], {"normalize": "zscore", "missing": "interpolate", "max_length": None})
    data.setup("test")
    assert data.hparams.normalize == "zscore" and abs(data._split("test").series[0]).max() < 10
    fixed = SeriesDataModule(test=test, normalize="none")  # a concrete setting is the user's, not the checkpoint's
    fixed.set_checkpoint_state(2, ["down", "up"], {"normalize": "zscore", "missing": "interpolate", "max_length": None})
    assert fixed.preprocessing.normalize == "none"
