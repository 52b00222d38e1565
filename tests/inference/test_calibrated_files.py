"""A calibrated model's temperature and branch weights travel with it: checkpoint, exported folder,
ONNX, Predictor; an uncalibrated one (and every file from before calibration) keeps temperature 1,
equal weights and its old format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fixtures.tiny import SAMPLE, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.data.batching import texts_to_batches
from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import (
    BRANCH_WEIGHTS_FORMAT_VERSION,
    CALIBRATED_FORMAT_VERSION,
    CONFIG_FILE,
    ONNX_FILE,
    TEXT_FORMAT_VERSION,
    WEIGHTS_FILE,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_0_1_0"
TEMPERATURE = 3.0


def _with_temperature(ckpt: Path, path: Path, temperature: float) -> Path:
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["model.temperature"] = torch.tensor(temperature)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def calibrated(ckpt, tmp_path_factory):
    """(checkpoint with temperature 3, its export with ONNX, the same checkpoint with temperature 1)."""
    root = tmp_path_factory.mktemp("calibrated")
    hot = _with_temperature(ckpt, root / "t3.ckpt", TEMPERATURE)
    plain = _with_temperature(ckpt, root / "t1.ckpt", 1.0)
    main(["export", "--ckpt_path", str(hot), "--out_dir", str(root / "export"), "--onnx"])
    return hot, root / "export", plain


def test_export_folder_and_onnx_give_the_predictors_calibrated_probabilities(calibrated):
    import onnxruntime as ort

    hot, export, plain = calibrated
    texts, _ = sample_texts(n=30)
    texts += ["", "z" * 500]
    from_ckpt = Predictor.from_checkpoint(hot, bf16=False)
    from_folder = Predictor.from_pretrained(export, bf16=False)
    assert from_ckpt.temperature == from_folder.temperature == TEMPERATURE
    probs = from_ckpt.predict_proba(texts)
    np.testing.assert_array_equal(from_folder.predict_proba(texts), probs)
    uncalibrated = Predictor.from_checkpoint(plain, bf16=False).predict_proba(texts)
    assert np.abs(probs - uncalibrated).max() > 1e-3  # the temperature really changed them ...
    np.testing.assert_array_equal(probs.argmax(1), uncalibrated.argmax(1))  # ... and never the prediction

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(export / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    for batch in texts_to_batches(from_folder.tokenizer, texts, max_length=from_folder.max_length, batch_size=8):
        logits = session.run(None, {"input_ids": batch["input_ids"].numpy(), "lengths": batch["lengths"].numpy()})[0]
        onnx_probs = torch.from_numpy(logits).softmax(-1).numpy()
        np.testing.assert_allclose(onnx_probs, probs[batch["index"].numpy()], rtol=0, atol=1e-5)


def test_a_calibrated_export_is_version_3_with_the_temperature_tensor(calibrated):
    _, export, _ = calibrated
    assert json.loads((export / CONFIG_FILE).read_text())["format_version"] == CALIBRATED_FORMAT_VERSION
    assert float(load_file(export / WEIGHTS_FILE)["temperature"]) == TEMPERATURE


def test_an_uncalibrated_export_keeps_the_old_format(calibrated, tmp_path):
    """No temperature tensor and format_version 1: older vdcnn-res versions read it as before."""
    _, _, plain = calibrated
    Predictor.from_checkpoint(plain).save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / CONFIG_FILE).read_text())["format_version"] == TEXT_FORMAT_VERSION
    assert not {"temperature", "branch_weights"} & set(load_file(tmp_path / "plain" / WEIGHTS_FILE))
    assert Predictor.from_pretrained(tmp_path / "plain").temperature == 1.0


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), float("inf")])
def test_a_temperature_that_is_not_positive_and_finite_is_refused(calibrated, tmp_path, bad):
    hot, _, _ = calibrated
    path = _with_temperature(hot, tmp_path / "bad.ckpt", bad)
    with pytest.raises(UserError, match="temperature must be a positive finite number"):
        read_checkpoint(path)


def _with_branch_weights(ckpt: Path, path: Path, weights: list[float]) -> Path:
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["state_dict"]["model.branch_weights"] = torch.tensor(weights)
    torch.save(checkpoint, path)
    return path


def test_branch_weights_travel_to_the_export_the_onnx_graph_and_test(calibrated, tmp_path, monkeypatch, capsys):
    import onnxruntime as ort

    hot, _, plain = calibrated
    weighted = _with_branch_weights(hot, tmp_path / "weighted.ckpt", [0.5, 1.5])
    main(["export", "--ckpt_path", str(weighted), "--out_dir", str(tmp_path / "export"), "--onnx"])
    export = tmp_path / "export"
    assert json.loads((export / CONFIG_FILE).read_text())["format_version"] == BRANCH_WEIGHTS_FORMAT_VERSION
    assert load_file(export / WEIGHTS_FILE)["branch_weights"].tolist() == [0.5, 1.5]
    texts, _ = sample_texts(n=30)
    from_ckpt = Predictor.from_checkpoint(weighted, bf16=False)
    assert from_ckpt.branch_weights == {"cnn": 0.5, "ngrams": 1.5}
    assert Predictor.from_checkpoint(hot, bf16=False).branch_weights == {"cnn": 1.0, "ngrams": 1.0}
    probs = from_ckpt.predict_proba(texts)
    np.testing.assert_array_equal(Predictor.from_pretrained(export, bf16=False).predict_proba(texts), probs)
    assert np.abs(probs - Predictor.from_checkpoint(hot, bf16=False).predict_proba(texts)).max() > 1e-4  # they count
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(export / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    for batch in texts_to_batches(from_ckpt.tokenizer, texts, max_length=from_ckpt.max_length, batch_size=8):
        logits = session.run(None, {"input_ids": batch["input_ids"].numpy(), "lengths": batch["lengths"].numpy()})[0]
        np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), probs[batch["index"].numpy()], rtol=0, atol=1e-5)

    # The CNN alone, set from Python: the same as a file holding those weights.
    cnn_alone = Predictor.from_checkpoint(weighted, bf16=False)
    cnn_alone.branch_weights = {"cnn": 1, "ngrams": 0}
    assert cnn_alone.branch_weights == {"cnn": 1.0, "ngrams": 0.0}
    np.testing.assert_allclose(
        cnn_alone.predict_proba(texts),
        Predictor.from_checkpoint(_with_branch_weights(hot, tmp_path / "cnn.ckpt", [1.0, 0.0]), bf16=False).predict_proba(texts),
        rtol=0, atol=1e-6,
    )  # fmt: skip
    for bad, message in [({"cnn": 1}, "one weight for each of \\['cnn', 'ngrams'\\]"), ({"cnn": -1, "ngrams": 1}, "finite numbers >= 0"),
                         ({"cnn": 0, "ngrams": 0}, "all 0 leave no logits")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            cnn_alone.branch_weights = bad

    monkeypatch.chdir(tmp_path)
    main(["test", "--ckpt_path", str(weighted), "--data.test", str(SAMPLE / "test.csv"), "--trainer.limit_test_batches=2",
          "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "Branch weights (cnn/ngrams) 0.50/1.50, fitted on the validation split: accuracy " in printed
    assert "(equal weights: " in printed


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_branch_weights_that_are_negative_or_not_finite_are_refused(calibrated, tmp_path, bad):
    hot, _, _ = calibrated
    with pytest.raises(UserError, match="branch weights must be finite and not negative"):
        read_checkpoint(_with_branch_weights(hot, tmp_path / "bad.ckpt", [1.0, bad]))


def test_legacy_files_load_uncalibrated_and_predict_bit_for_bit_as_without_a_temperature():
    """Files from before calibration get temperature 1, and dividing by 1 changes no bit."""
    expected = json.loads((LEGACY / "expected.json").read_text(encoding="utf-8"))
    for predictor in (Predictor.from_checkpoint(LEGACY / "tiny.ckpt", bf16=False),
                      Predictor.from_pretrained(LEGACY / "export", bf16=False)):  # fmt: skip
        assert predictor.temperature == 1.0
        model = predictor.model
        for batch in texts_to_batches(predictor.tokenizer, expected["texts"], max_length=predictor.max_length, batch_size=4):
            with torch.no_grad():
                features = model.forward_features(batch["input_ids"], batch["lengths"])
                torch.testing.assert_close(model.forward_head(features), model.head(features), rtol=0, atol=0)
        np.testing.assert_allclose(predictor.predict_proba(expected["texts"]), expected["probs"], rtol=0, atol=1e-6)
