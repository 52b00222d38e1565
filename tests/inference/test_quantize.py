"""int8 CPU inference (inference/quantize.py): `vdcnn-res export --int8`, Predictor.from_pretrained(int8=True), use_int8."""

from __future__ import annotations

import numpy as np
import pytest

from fixtures.tiny import sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.errors import UserError
from vdcnn_res.inference.quantize import INT8_ONNX_FILE, Int8Session

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """The tiny checkpoint exported with --int8, calibrated on 64 texts of its own training file
    (no --calibration: the checkpoint names data/ag_news_sample/train.csv, relative to the repository)."""
    import os

    from fixtures.tiny import REPO

    out = tmp_path_factory.mktemp("int8") / "export"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out), "--int8", "--calibration_texts", "64"])
    finally:
        os.chdir(cwd)
    return out


def test_every_convolution_and_linear_layer_has_int8_weights(exported) -> None:
    import onnx
    from torch import nn

    graph = onnx.load(str(exported / INT8_ONNX_FILE)).graph
    int8_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    model = Predictor.from_pretrained(exported).model
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    assert len(int8_weights) >= len(layers) > 0
    assert any(n.op_type == "DequantizeLinear" for n in graph.node) and any(n.op_type == "QuantizeLinear" for n in graph.node)


def test_int8_predictor_agrees_with_float(exported) -> None:
    texts, _ = sample_texts("test", 200)
    float_probs = Predictor.from_pretrained(exported, bf16=False).predict_proba(texts)
    predictor = Predictor.from_pretrained(exported, int8=True)
    assert isinstance(predictor.int8, Int8Session)
    probs = predictor.predict_proba(texts)
    assert probs.shape == float_probs.shape and np.allclose(probs.sum(1), 1, atol=1e-5)
    # a 3-step model of 8-16 channels: compare probabilities, not labels (its top-2 margins can be
    # tiny); the accuracy of a trained model against float is measured in docs/performance.md
    assert np.abs(probs - float_probs).max() < 0.1
    assert not np.allclose(probs, float_probs, atol=1e-6)  # it really ran the int8 graph
    one = predictor.predict(texts[3], top_k=2)  # the rest of the API goes through the same path
    alone = predictor.predict_proba([texts[3]])[0]  # (padded to its own length, as predict pads it)
    assert one["label"] == predictor.label_names[int(alone.argmax())] and one["probability"] == pytest.approx(float(alone.max()))


def test_use_int8_in_memory_matches_the_exported_file(exported) -> None:
    from fixtures.tiny import SAMPLE

    calibration, _ = sample_texts("train")
    calibration = calibration[:: len(calibration) // 64][:64]  # the export's choice: 64 spread over the file
    texts, _ = sample_texts("test", 50)
    from_file = Predictor.from_pretrained(exported, int8=True).predict_proba(texts)
    in_memory = Predictor.from_pretrained(exported, bf16=False).use_int8(calibration).predict_proba(texts)
    assert SAMPLE.is_dir() and np.allclose(in_memory, from_file, atol=1e-6)


def test_missing_int8_file_is_one_line_naming_the_fix(exported, tmp_path) -> None:
    import shutil

    folder = tmp_path / "plain"
    shutil.copytree(exported, folder)
    (folder / INT8_ONNX_FILE).unlink()
    with pytest.raises(UserError, match="export --int8"):
        Predictor.from_pretrained(folder, int8=True)
    assert Predictor.from_pretrained(folder).int8 is None


def test_empty_calibration_is_refused(exported) -> None:
    with pytest.raises(UserError, match="calibration texts"):
        Predictor.from_pretrained(exported).use_int8([])


def test_export_flag_errors_are_one_line_and_write_nothing(ckpt, tmp_path, capsys, monkeypatch) -> None:
    cases = [
        (["--calibration", "x.csv"], "--calibration and --calibration_texts only apply with --int8"),
        (["--int8", "--calibration_texts", "0"], "--calibration_texts must be >= 1, got 0"),
        # run outside the repository, the checkpoint's relative training file is not there
        (["--int8"], "--int8 needs calibration texts: the checkpoint's training file"),
    ]
    monkeypatch.chdir(tmp_path)
    for flags, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(f"vdcnn-res: error: {message}")
        assert not (tmp_path / "out").exists()
