"""`vdcnn-res calibrate`: a temperature fitted on a validation split, written into the checkpoint; and
`vdcnn-res test` reporting NLL/ECE before and after with a reliability diagram."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch

from conftest import run_cli
from fixtures.tiny import QUIET, REPO, SAMPLE, TINY, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

VALID = str(SAMPLE / "valid.csv")


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def overconfident(ckpt, tmp_path):
    """The tiny checkpoint, uncalibrated, with its classifier's logits scaled by 5: an over-confident model."""
    checkpoint = torch.load(ckpt, weights_only=True)
    state = checkpoint["state_dict"]
    for key in ("model.head.fc.weight", "model.head.fc.bias", "model.ngram_head.fc.weight", "model.ngram_head.fc.bias"):
        if key in state:
            state[key] = 5 * state[key]
    state["model.temperature"] = torch.tensor(1.0)
    checkpoint.pop("calibration", None)
    path = tmp_path / "run" / "overconfident.ckpt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def agreeing_valid(overconfident, tmp_path):
    """The sample's validation texts labelled with the model's own prediction for 60 % of them (a 3-step
    model is at chance on the real labels, where no temperature can be fitted): right 60 % of the time
    with near-certain probabilities."""
    texts, _ = sample_texts("valid")
    predicted = Predictor.from_checkpoint(overconfident, bf16=False).predict_proba(texts).argmax(1)
    rng = np.random.default_rng(0)
    labels = [int(p) if rng.random() < 0.6 else int((p + rng.integers(1, 4)) % 4) for p in predicted]
    path = tmp_path / "valid.csv"
    with open(SAMPLE / "valid.csv", newline="", encoding="utf-8") as f, open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        for row, label in zip(csv.reader(f), labels):
            writer.writerow([label + 1, *row[1:]])
    return path, np.array(labels)


def _valid_nll(predictor: Predictor, truth: np.ndarray) -> float:
    texts, _ = sample_texts("valid")
    probs = predictor.predict_proba(texts)
    return float(-np.log(probs[np.arange(len(truth)), truth]).mean())


def test_without_a_validation_split_it_is_one_line_and_nothing_is_written(overconfident, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _digest(overconfident)
    code, err = run_cli(["calibrate", "--ckpt_path", overconfident, "--trainer.enable_progress_bar=false"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("vdcnn-res: error: calibrate: no validation texts to fit the temperature on; give the split with --data.valid")
    assert _digest(overconfident) == before
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["run", "run/overconfident.ckpt"]


def test_calibrate_lowers_the_validation_nll_of_an_overconfident_model(overconfident, agreeing_valid, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    valid, truth = agreeing_valid
    before = _digest(overconfident)
    out = tmp_path / "calibrated.ckpt"
    main(["calibrate", "--ckpt_path", str(overconfident), "--data.valid", str(valid), "--out", str(out),
          "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    printed = capsys.readouterr().out
    assert _digest(overconfident) == before  # --out: the source stays as it was
    saved = torch.load(out, weights_only=True)
    temperature = float(saved["state_dict"]["model.temperature"])
    weights = saved["state_dict"]["model.branch_weights"].tolist()  # the tiny model has the n-gram bag
    assert saved["calibration"]["temperature"] == pytest.approx(temperature)
    assert saved["calibration"]["branch_weights"] == pytest.approx(weights) and sum(weights) == pytest.approx(2.0)
    assert saved["calibration"]["texts"] == 400 and saved["calibration"]["nll_after"] < saved["calibration"]["nll_before"]
    assert f"temperature {temperature:.3f}" in printed and f"Written to {out}" in printed

    hot, cool = Predictor.from_checkpoint(overconfident, bf16=False), Predictor.from_checkpoint(out, bf16=False)
    assert cool.temperature == pytest.approx(temperature)
    assert _valid_nll(cool, truth) < _valid_nll(hot, truth) - 0.1
    texts, _ = sample_texts("valid")  # the logits were scaled by 5: calibrated, the model is less sure of itself
    assert cool.predict_proba(texts).max(1).mean() < hot.predict_proba(texts).max(1).mean() - 0.1
    assert _valid_nll(cool, truth) == pytest.approx(saved["calibration"]["nll_after"], abs=1e-4)  # Predictor = Trainer in fp32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.ckpt", "run", "valid.csv"]  # no logs, no config.yaml

    # test: NLL and ECE before -> after, the reliability diagram beside the confusion matrix
    main(["test", "--ckpt_path", str(out), "--data.test", str(SAMPLE / "test.csv"), "--trainer.limit_test_batches=4",
          "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    printed = capsys.readouterr().out
    assert f"Calibration (temperature {temperature:.3f}, fitted on the validation split): NLL " in printed
    outputs = tmp_path / "test" / "calibrated"
    assert (outputs / "confusion_matrix_test.png").is_file()
    assert (outputs / "reliability_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_in_place_replaces_the_checkpoint_atomically(overconfident, agreeing_valid, capsys):
    main(["calibrate", "--ckpt_path", str(overconfident), "--data.valid", str(agreeing_valid[0]),
          "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    saved = torch.load(overconfident, weights_only=True)
    assert float(saved["state_dict"]["model.temperature"]) == pytest.approx(saved["calibration"]["temperature"])
    assert saved["calibration"]["nll_after"] < saved["calibration"]["nll_before"]
    assert sorted(p.name for p in overconfident.parent.iterdir()) == ["overconfident.ckpt"]  # no temporary file left
    assert "Written to" in capsys.readouterr().out


def test_an_existing_out_file_is_refused_before_anything_runs(overconfident, tmp_path, capsys):
    taken = tmp_path / "taken.ckpt"
    taken.write_bytes(b"mine")
    code, err = run_cli(["calibrate", "--ckpt_path", overconfident, "--data.valid", VALID, "--out", taken], capsys)
    assert code == 2 and err == [f"vdcnn-res: error: --out {str(taken)!r} exists; choose another path or pass --overwrite"]
    assert taken.read_bytes() == b"mine"


def test_an_uncalibrated_checkpoint_says_so_in_test(overconfident, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    main(["test", "--ckpt_path", str(overconfident), "--data.test", str(SAMPLE / "test.csv"),
          "--trainer.limit_test_batches=2", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Calibration: none (temperature 1): NLL " in printed and "vdcnn-res calibrate" in printed
    assert (overconfident.parent / "test" / "overconfident" / "reliability_test.png").is_file()


def test_given_branch_weights_are_kept_and_only_their_temperature_is_fitted(overconfident, agreeing_valid, tmp_path, capsys):
    """--branch_weights '{cnn: 1, ngrams: 0}': the checkpoint predicts with the CNN alone, and its
    temperature is the one that minimises the validation NLL of the CNN's own logits."""
    valid, truth = agreeing_valid
    out = tmp_path / "cnn.ckpt"
    main(["calibrate", "--ckpt_path", str(overconfident), "--data.valid", str(valid), "--out", str(out),
          "--branch_weights", "{cnn: 1, ngrams: 0}", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    printed = capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["state_dict"]["model.branch_weights"].tolist() == [1.0, 0.0]
    assert saved["calibration"]["branch_weights"] == [1.0, 0.0] and "heldout_nll_mix" not in saved["calibration"]
    assert "branch weights (cnn/ngrams) 1.00/0.00, given: accuracy " in printed

    cnn = Predictor.from_checkpoint(out, bf16=False)
    assert cnn.branch_weights == {"cnn": 1.0, "ngrams": 0.0}
    fitted = cnn.temperature
    assert fitted == pytest.approx(saved["calibration"]["temperature"]) and fitted != pytest.approx(1.0, abs=0.05)
    # The same CNN-alone model at other temperatures: the fitted one has the lowest validation NLL.
    nll_at = {}
    for factor in (0.8, 1.0, 1.25):
        cnn.model.temperature.fill_(fitted * factor)
        nll_at[factor] = _valid_nll(cnn, truth)
    assert nll_at[1.0] < nll_at[0.8] and nll_at[1.0] < nll_at[1.25]
    uncalibrated = Predictor.from_checkpoint(overconfident, bf16=False)
    uncalibrated.branch_weights = {"cnn": 1, "ngrams": 0}  # the CNN alone at the file's temperature (1)
    assert nll_at[1.0] < _valid_nll(uncalibrated, truth)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("cnn=1", "--branch_weights must be a mapping of branch to weight, e.g. '{cnn: 1, ngrams: 0}'; got 'cnn=1'"),
        ("{cnn: 1}", "--branch_weights: branch weights need one weight for each of ['cnn', 'ngrams']"),
        ("{cnn: 0, ngrams: 0}", "--branch_weights: branch weights all 0 leave no logits"),
        ("{cnn: -1, ngrams: 1}", "--branch_weights: branch weights must be finite numbers >= 0"),
    ],
)
def test_bad_given_branch_weights_are_one_line_and_nothing_is_written(overconfident, weights, message, capsys):
    before = _digest(overconfident)
    code, err = run_cli(["calibrate", "--ckpt_path", overconfident, "--data.valid", VALID, "--branch_weights", weights,
                         "--trainer.enable_progress_bar=false"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and err[0].startswith(f"vdcnn-res: error: {message}"), err
    assert _digest(overconfident) == before


def test_given_branch_weights_on_a_model_without_the_bag_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    main(["fit", *TINY, *QUIET, "--model.arch.ngram_orders=[]", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
          "--trainer.limit_val_batches=1", "--trainer.logger=false", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    capsys.readouterr()
    cnn_only = tmp_path / "checkpoints" / "last.ckpt"
    before = _digest(cnn_only)
    code, err = run_cli(["calibrate", "--ckpt_path", cnn_only, "--data.valid", VALID, "--branch_weights", "{cnn: 1}",
                         "--trainer.enable_progress_bar=false"], capsys)  # fmt: skip
    assert code == 2 and err == ["vdcnn-res: error: --branch_weights: this model has one branch (the CNN, no n-gram bag), so it has no branch weights"], err
    assert _digest(cnn_only) == before
