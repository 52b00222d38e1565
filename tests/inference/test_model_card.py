"""The model card every export gets: README.md with the Hub's metadata, from what the model, its
checkpoint and its test run know, read back with huggingface_hub.ModelCard."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from fixtures.tiny import LABELS, QUIET, REPO, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.inference.model_card import build_model_card, read_test_run
from vdcnn_res.inference.model_files import CARD_FILE, LoadedModel, write_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tested_run(ckpt, tmp_path_factory):
    """The tiny checkpoint in a run folder of its own, tested on the whole bundled test split by `vdcnn-res test`."""
    import os

    run = tmp_path_factory.mktemp("card_run")
    path = run / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    shutil.copy(ckpt, path)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        main(["test", "--ckpt_path", str(path), "--data.test", "data/ag_news_sample/test.csv", *QUIET,
              "--trainer.precision=32-true"])
    finally:
        os.chdir(cwd)
    return path


def test_the_card_without_a_test_run_says_what_the_checkpoint_knows(ckpt, tmp_path):
    ckpt = shutil.copy(ckpt, tmp_path / "last.ckpt")  # a run folder no other test tests in
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "m"), "--language", "en"])
    card = ModelCard.load(tmp_path / "m" / CARD_FILE)
    data = card.data.to_dict()
    assert data["library_name"] == "vdcnn-res" and data["pipeline_tag"] == "text-classification"
    assert data["language"] == ["en"] and data["label_names"] == LABELS
    assert {"vdcnn-res", "text-classification", "safetensors", "char-level"} <= set(data["tags"])
    assert "datasets" not in data  # a local file is no Hub dataset
    assert "model-index" not in data and card.data.eval_results is None
    checkpoint = torch.load(ckpt, weights_only=True)
    temperature = float(checkpoint["state_dict"]["model.temperature"])
    assert data["calibration"]["temperature"] == round(temperature, 4)
    assert "Trained on the file `data/ag_news_sample/train.csv` (3 optimizer steps)" in card.text
    assert "No test run is recorded for this checkpoint" in card.text
    assert "18,552,776" not in card.text  # the tiny model's own size is counted, not the default's
    params = sum(p.numel() for p in Predictor.from_checkpoint(ckpt).model.parameters())
    assert f"{params:,} parameters, 4 labels" in card.text


def test_the_card_reports_the_checkpoints_test_run(tested_run, tmp_path):
    main(["export", "--ckpt_path", str(tested_run), "--out_dir", str(tmp_path / "m")])
    card = ModelCard.load(tmp_path / "m" / CARD_FILE)
    run = read_test_run(tested_run)
    assert run is not None and run["test_file"] == "data/ag_news_sample/test.csv" and run["texts"] == 800
    # the test accuracy, recomputed here from the Predictor on the same 800 texts
    texts, labels = sample_texts("test")
    predicted = [p["label"] for p in Predictor.from_checkpoint(tested_run, bf16=False).predict(texts)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels)]))
    assert run["metrics"]["test/acc"] == pytest.approx(accuracy, abs=1e-6)
    [acc, f1] = card.data.eval_results
    assert (acc.metric_type, acc.metric_value, acc.dataset_split) == ("accuracy", round(accuracy, 4), "test")
    assert acc.task_type == "text-classification" and acc.dataset_name == "data/ag_news_sample/test.csv"
    assert (f1.metric_type, f1.metric_name, f1.metric_value) == ("f1", "f1_macro", round(run["metrics"]["test/f1_macro"], 4))
    assert card.data.model_name == "m"
    assert "`vdcnn-res test` on 800 texts of `data/ag_news_sample/test.csv`" in card.text
    assert f"| acc | {accuracy:.4f} |" in card.text


def test_a_test_of_another_checkpoint_is_not_reported(tested_run, tmp_path):
    other = tested_run.with_name("best-epoch=00-step=3.ckpt")
    shutil.copy(tested_run, other)
    try:
        assert read_test_run(other) is None
    finally:
        other.unlink()


def test_save_pretrained_and_series_models_get_a_card_from_the_model_alone(ckpt, tmp_path):
    Predictor.from_checkpoint(ckpt).save_pretrained(tmp_path / "saved")
    card = ModelCard.load(tmp_path / "saved" / CARD_FILE)
    assert card.data.label_names == LABELS and card.data.library_name == "vdcnn-res"
    assert "The training data is not recorded with this model" in card.text

    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.model import ModelConfig, build_model

    config = ModelConfig(num_classes=2, input_channels=1, blocks_per_stage=(1, 1), channels=(8, 16), kernel_sizes=(8, 5, 3),
                         downsampling="none", head="global_avg", hidden_size=0)
    model, prep = build_model(config), SeriesPreprocessing("zscore", "zero", 40)
    card = build_model_card(LoadedModel(model, prep, ["up", "down"], 40), name="series")
    write_pretrained(tmp_path / "series", model, prep, ["up", "down"], None, card=card)
    series = ModelCard.load(tmp_path / "series" / CARD_FILE)
    assert series.data.pipeline_tag is None and "time-series-classification" in series.data.tags
    assert "series_array" in series.text and "tokenizer.json" not in series.text


def test_a_multilabel_card_lists_the_thresholds(ckpt):
    from vdcnn_res.inference.model_files import read_checkpoint, set_model_thresholds

    model = read_checkpoint(ckpt)
    set_model_thresholds(model.model, [0.2, 0.4, 0.6, 0.8])
    card = build_model_card(model, name="acme/tags")
    assert "multi-label-classification" in card.data.tags
    assert "`World` 0.20, `Sports` 0.40, `Business` 0.60, `Sci/Tech` 0.80" in card.text
    assert 'Predictor.from_pretrained("acme/tags")  # from the Hub (or its local cache)' in card.text
