"""Series through the command line: data_kind selection, the series configs, and (slow) fit, test and
predict from the checkpoint alone, export with ONNX, Predictor.from_checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixtures.tiny import QUIET, REPO
from vdcnn_res.cli import main
from vdcnn_res.cli.lightning import data_kind_of
from vdcnn_res.errors import UserError

SERIES_CONFIGS = sorted((REPO / "configs" / "series").glob("*.yaml"))
RECIPE = REPO / "configs" / "series" / "recipe.yaml"
TINY_SERIES = ["--model.arch.channels=[8, 16, 16]", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1"]


def write_sets(folder: Path, channels: int = 2) -> dict[str, str]:
    """Tiny train/test/predict JSONL files: 2 classes (a rising or falling ramp), unequal lengths."""
    rng = np.random.default_rng(0)
    paths = {}
    for split, n in (("train", 24), ("test", 10), ("predict", 5)):
        rows = []
        for i in range(n):
            length = 10 + (i * 7) % 23
            sign = 1 if i % 2 else -1
            series = (sign * np.linspace(-1, 1, length)[None] + 0.1 * rng.standard_normal((channels, length))).tolist()
            rows.append({"series": series} if split == "predict" else {"series": series, "label": ["down", "up"][i % 2]})
        paths[split] = str(folder / f"{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def test_data_kind_is_read_from_flags_configs_and_checkpoints(tmp_path):
    text_config = tmp_path / "t.yaml"
    text_config.write_text("data_kind: text\n")
    assert data_kind_of(["fit"]) == "text"
    assert data_kind_of(["fit", "--config", str(RECIPE)]) == "series"
    assert data_kind_of(["fit", "--config", str(RECIPE), "--config", str(text_config)]) == "text"  # the last wins
    assert data_kind_of(["fit", "--config", str(RECIPE), "--data_kind=text"]) == "text"
    assert data_kind_of(["fit", "--data_kind", "series"]) == "series"
    with pytest.raises(UserError, match="data_kind must be one of text, series"):
        data_kind_of(["fit", "--data_kind", "audio"])
    ckpt = tmp_path / "s.ckpt"
    torch.save({"SeriesDataModule": {"input_channels": 2}, "hyper_parameters": {}}, ckpt)
    assert data_kind_of(["test", "--ckpt_path", str(ckpt)]) == "series"
    assert data_kind_of(["fit", "--ckpt_path", str(ckpt)]) == "text"  # fit resumes what its config says


SET_CONFIGS = [c for c in SERIES_CONFIGS if c != RECIPE]


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("config", SET_CONFIGS, ids=[c.name for c in SET_CONFIGS])
def test_series_configs_compose_with_the_recipe(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(RECIPE), "--config", str(config), "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data_kind"] == "series" and printed["data"]["train"].endswith(f"{config.stem}/train.jsonl")
    # every set says how its labels are numbered: none inherits another set's label_offset
    assert printed["data"]["label_offset"] == yaml.safe_load(config.read_text())["data"]["label_offset"]
    assert printed["model"]["arch"]["head"] == "global_avg" and printed["model"]["arch"]["kernel_sizes"] == [8, 5, 3]
    assert "input_channels" not in printed["model"]["arch"]  # linked from the data, never typed
    assert "series_column" in printed["data"] and "tokenizer" not in printed["data"]
    assert printed["data"]["batch_size"] == "auto" and printed["data"]["train_as_valid"] is True
    assert printed["data"]["valid_fraction"] == 0 and printed["checkpoint"]["monitor"] == "val/loss"


def test_the_recipe_holds_no_per_dataset_values():
    """A data file composed with the recipe (or none) must not inherit one set's paths or label numbering."""
    data = yaml.safe_load(RECIPE.read_text())["data"]
    assert not set(data) & {"train", "valid", "test", "predict", "label_offset", "label_column", "series_column",
                            "classes_file", "hub_dataset"}, sorted(data)


def test_per_set_configs_hold_only_paths_and_labels():
    """One recipe for every set: a set's file must not tune it (normalisation, budget, model, ...)."""
    for config in SERIES_CONFIGS:
        if config == RECIPE:
            continue
        loaded = yaml.safe_load(config.read_text())
        assert set(loaded) == {"data_kind", "data"}, config.name
        assert set(loaded["data"]) <= {"train", "test", "label_offset", "label_column", "series_column"}, config.name


@pytest.mark.usefixtures("in_repo")
def test_text_configs_print_data_kind_text(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstart.yaml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data_kind"] == "text" and "tokenizer" in printed["data"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fit_test_predict_export_from_the_checkpoint_alone(tmp_path, capsys):
    from vdcnn_res import Predictor

    data = write_sets(tmp_path)
    root = ["--trainer.default_root_dir", str(tmp_path)]
    main(["fit", "--config", str(RECIPE), *TINY_SERIES, *QUIET, *root, "--data.train", data["train"],
          "--data.test", data["test"], "--data.label_offset=0", "--trainer.precision=32-true"])  # fmt: skip
    run = tmp_path / "lightning_logs" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and yaml.safe_load((run / "config.yaml").read_text())["data_kind"] == "series"
    # The recipe validates on the training split: no temperature is fitted there.
    assert "Calibration of the best checkpoint: none, temperature 1 (validation is the training split" in capsys.readouterr().out

    main(["test", "--ckpt_path", str(last), "--data.test", data["test"], *QUIET])  # the checkpoint alone
    assert "Test error:" in (out := capsys.readouterr().out) and "on 10 series)" in out
    main(["predict", "--ckpt_path", str(last), "--data.predict", data["predict"], *QUIET])
    written = next((run / "predict").rglob("predictions.jsonl"))
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(5)) and {r["label"] for r in rows} <= {"down", "up"}

    with pytest.raises(SystemExit):  # a text checkpoint's kind cannot be overridden
        main(["test", "--ckpt_path", str(last), "--data.test", data["test"], "--data_kind=text", *QUIET])
    assert "was trained on series data" in capsys.readouterr().err

    main(["export", "--ckpt_path", str(last), "--out_dir", str(tmp_path / "export"), "--onnx"])
    from_ckpt = Predictor.from_checkpoint(last, bf16=False)
    from_export = Predictor.from_pretrained(tmp_path / "export", bf16=False)
    series = [json.loads(line)["series"] for line in Path(data["predict"]).read_text().splitlines()]
    np.testing.assert_allclose(from_ckpt.predict_proba(series), from_export.predict_proba(series), atol=1e-6)
    assert [r["label"] for r in from_ckpt.predict(series)] == [r["label"] for r in rows]

    # A second fit (another seed) and the two checkpoints as one ensemble: the mean of their probabilities.
    main(["fit", "--config", str(RECIPE), *TINY_SERIES, *QUIET, "--trainer.default_root_dir", str(tmp_path / "seed1"),
          "--seed_everything=1", "--data.train", data["train"], "--data.label_offset=0", "--trainer.precision=32-true"])  # fmt: skip
    other = Predictor.from_checkpoint(tmp_path / "seed1" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", bf16=False)
    ensemble = Predictor.ensemble([from_ckpt, other])
    expected = (from_ckpt.predict_proba(series) + other.predict_proba(series)) / 2
    np.testing.assert_allclose(ensemble.predict_proba(series), expected, atol=1e-6)
    assert not np.allclose(other.predict_proba(series), from_ckpt.predict_proba(series), atol=1e-4)


@pytest.mark.usefixtures("in_repo")
def test_a_normalisation_other_than_the_checkpoints_is_refused_in_one_line(tmp_path, capsys):
    """test/predict preprocess series as the model was trained; a contradicting setting is an error, not a silent change."""
    data = write_sets(tmp_path)
    ckpt = tmp_path / "s.ckpt"
    torch.save({"SeriesDataModule": {"input_channels": 2, "preprocessing": {"normalize": "zscore", "missing": "interpolate",
                                                                            "max_length": None}},
                "datamodule_hyper_parameters": {"normalize": "zscore"}, "hyper_parameters": {}}, ckpt)  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["test", "--ckpt_path", str(ckpt), "--data.test", data["test"], "--data.normalize", "none", *QUIET])
    assert exit_.value.code == 2
    assert "data.normalize='none' but the checkpoint was trained on series preprocessed with 'zscore'" in capsys.readouterr().err
