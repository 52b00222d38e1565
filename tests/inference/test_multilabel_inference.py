"""Multi-label prediction: the Predictor's label sets, exported folders (format 4), ONNX metadata
and the prediction writer (issue 17.1). Untrained tiny models: only the plumbing is under test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vdcnn_res import Predictor
from vdcnn_res.data.tokenizer import build_tokenizer
from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import CONFIG_FILE, MULTILABEL_FORMAT_VERSION, TEXT_FORMAT_VERSION, read_pretrained
from vdcnn_res.inference.writer import _write_sets
from vdcnn_res.model import ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAMES = ["World", "Sports", "Business"]
TEXTS = ["Stocks fell.", "A late goal.", ""]


def tiny_predictor(thresholds=(0.4, 0.5, 0.6)) -> Predictor:
    torch.manual_seed(0)
    tokenizer = build_tokenizer("char")
    config = ModelConfig(num_classes=3, vocab_size=tokenizer.get_vocab_size(), blocks_per_stage=(1, 1), channels=(8, 16), hidden_size=8)
    return Predictor(build_model(config), tokenizer, NAMES, max_length=64, bf16=False,
                     thresholds=None if thresholds is None else list(thresholds))


def test_predict_returns_the_label_set_at_the_thresholds():
    predictor = tiny_predictor()
    assert predictor.task == "multilabel"
    probs = predictor.predict_proba(TEXTS)
    assert probs.shape == (3, 3) and not np.allclose(probs.sum(1), 1.0)  # sigmoids, not a softmax
    for text, p, result in zip(TEXTS, probs, predictor.predict(TEXTS)):
        expected = [n for n, q, t in zip(NAMES, p, (0.4, 0.5, 0.6)) if q >= t]
        assert result["labels"] == expected and "top_k" not in result
        assert result["probabilities"] == pytest.approx({n: float(p[NAMES.index(n)]) for n in expected})
    one = predictor.predict(TEXTS[0], top_k=2, threshold=0.0)
    assert one["labels"] == NAMES  # threshold 0: every label
    assert [name for name, _ in one["top_k"]] == [NAMES[j] for j in np.argsort(-probs[0], kind="stable")[:2]]
    assert predictor.predict(TEXTS[0], threshold=[1.0, 1.0, 1.0])["labels"] == []


@pytest.mark.parametrize("threshold", [1.5, -0.01, [0.5, 0.5], [0.5, 2, 0.5], "high"])
def test_bad_thresholds_are_one_line(threshold):
    with pytest.raises(UserError, match="threshold must be") as err:
        tiny_predictor().predict("x", threshold=threshold)
    assert "\n" not in str(err.value)


def test_a_single_label_model_refuses_a_threshold_and_keeps_its_output():
    predictor = tiny_predictor(thresholds=None)
    assert predictor.task == "multiclass" and set(predictor.predict("x")) == {"label", "probability", "top_k"}
    with pytest.raises(UserError, match="threshold applies to multi-label models"):
        predictor.predict("x", threshold=0.5)


def test_explain_is_refused_for_a_multilabel_model():
    with pytest.raises(UserError, match="explanations are for single-label models"):
        tiny_predictor().explain("x")


def test_export_round_trip_carries_task_and_thresholds(tmp_path):
    predictor = tiny_predictor()
    predictor.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert config["format_version"] == MULTILABEL_FORMAT_VERSION
    assert config["task"] == "multilabel" and config["thresholds"] == [0.4, 0.5, 0.6]
    loaded = Predictor.from_pretrained(tmp_path / "m", bf16=False)
    assert loaded.thresholds == [0.4, 0.5, 0.6]
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), predictor.predict_proba(TEXTS), atol=1e-6)
    tiny_predictor(thresholds=None).save_pretrained(tmp_path / "single")  # single-label files stay format 1
    single = json.loads((tmp_path / "single" / CONFIG_FILE).read_text())
    assert single["format_version"] == TEXT_FORMAT_VERSION and "task" not in single


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(thresholds=[0.5, 1.5, 0.5]), r"every threshold must be a probability in \[0, 1\]"),
        (lambda c: c.update(thresholds=[0.5]), "thresholds must be a list of 3 numbers"),
        (lambda c: c.update(task="ranking"), "task must be 'multilabel'"),
        (lambda c: c.pop("thresholds"), "missing \\['thresholds'\\]"),
    ],
)
def test_tampered_multilabel_config_is_one_line(tmp_path, change, message):
    tiny_predictor().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    change(config)
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError, match=message):
        read_pretrained(tmp_path / "m")


def test_onnx_graph_carries_task_and_thresholds(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from vdcnn_res.inference.onnx import export_onnx, onnx_task

    predictor = tiny_predictor()
    path = export_onnx(predictor.model, tmp_path / "model.onnx")
    assert onnx_task(path) == ("multilabel", [0.4, 0.5, 0.6])
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert meta["vdcnn_res.task"] == "multilabel" and json.loads(meta["vdcnn_res.label_thresholds"]) == [0.4, 0.5, 0.6]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_writer_writes_label_lists(tmp_path, fmt):
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.1, 0.1]], dtype=np.float32)
    labels = np.array([[1, 0, 1], [0, 0, 0]])
    path = tmp_path / f"p.{fmt}"
    _write_sets(path, fmt, np.array([0, 1]), probs, labels, NAMES, 2, np.array([0.5, 0.5, 0.5]))
    if fmt == "jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows[0] == {"row": 0, "labels": ["World", "Business"], "probabilities": {"World": 0.9, "Business": 0.7},
                           "top_k": [{"label": "World", "probability": 0.9}, {"label": "Business", "probability": 0.7}],
                           "true_labels": ["World", "Business"]}
        assert rows[1]["labels"] == [] and rows[1]["true_labels"] == []
    else:
        lines = path.read_text().splitlines()
        assert lines[0] == "row,labels,probabilities,label_1,probability_1,label_2,probability_2,true_labels"
        assert lines[1] == "0,World|Business,0.900000|0.700000,World,0.900000,Business,0.700000,World|Business"
