"""`vdcnn-res export`: safetensors + JSON folders that load without pickle, strict config checks, ONNX."""

from __future__ import annotations

import json
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

from fixtures.tiny import LABELS, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.data.batching import texts_to_batches
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.inference.model_files import (
    CALIBRATED_FORMAT_VERSION,
    CARD_FILE,
    CONFIG_FILE,
    ONNX_FILE,
    TEXT_FORMAT_VERSION,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """The tiny checkpoint exported through the command line, with ONNX."""
    out = tmp_path_factory.mktemp("export") / "model"
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out), "--onnx"])
    return out


@pytest.fixture
def copy(exported, tmp_path):
    """A scratch copy of the exported folder (without the ONNX file) to break on purpose."""
    target = tmp_path / "model"
    shutil.copytree(exported, target, ignore=shutil.ignore_patterns(ONNX_FILE))
    return target


def edit_config(folder, change) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text())
    change(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


def test_export_writes_safetensors_config_and_tokenizer(exported, ckpt):
    assert sorted(p.name for p in exported.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, CARD_FILE, ONNX_FILE])
    config = json.loads((exported / CONFIG_FILE).read_text())
    # format_version 1 stays readable by older versions; a calibrated model's export is version 3
    # (both are tested with explicit temperatures in tests/inference/test_calibrated_files.py)
    calibrated = float(torch.load(ckpt, weights_only=True)["state_dict"]["model.temperature"]) != 1.0
    assert config["format_version"] == (CALIBRATED_FORMAT_VERSION if calibrated else TEXT_FORMAT_VERSION)
    assert config["label_names"] == LABELS and config["max_length"] == 128
    assert config["architecture"]["channels"] == [8, 8, 16, 16] and config["architecture"]["num_classes"] == 4
    assert set(config) == {"format_version", "architecture", "label_names", "max_length"}


def test_from_pretrained_predicts_exactly_like_the_checkpoint(exported, ckpt):
    texts, _ = sample_texts(n=50)
    texts += ["", "日本語 café", "z" * 5000]
    from_ckpt = Predictor.from_checkpoint(ckpt).predict_proba(texts)
    np.testing.assert_array_equal(Predictor.from_pretrained(exported).predict_proba(texts), from_ckpt)


def test_from_pretrained_never_unpickles(exported, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle anything")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, forbidden)
    p = Predictor.from_pretrained(exported)
    assert p.label_names == LABELS and p.predict("Stocks rallied.")["label"] in LABELS


def test_save_pretrained_round_trips(ckpt, tmp_path):
    p = Predictor.from_checkpoint(ckpt)
    p.save_pretrained(tmp_path / "again")
    texts, _ = sample_texts(n=10)
    np.testing.assert_array_equal(Predictor.from_pretrained(tmp_path / "again").predict_proba(texts), p.predict_proba(texts))


def _drop(key):
    return lambda c: c.pop(key)


def _set(*path_and_value):
    *path, value = path_and_value

    def change(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "change, words",
    [
        (_set("extra", 1), "unknown key(s) ['extra']"),
        (_drop("label_names"), "missing ['label_names']"),
        (_set("format_version", 99), "newer than this vdcnn-res"),
        (_set("format_version", "1"), "format_version must be a positive int"),
        (_set("architecture", "vdcnn9"), "must be a JSON object"),
        (_set("architecture", "width", 3), "unknown architecture key(s) ['width']"),
        (_set("architecture", "channels", "8,8,16,16"), "architecture.channels must be"),
        (_set("architecture", "channels", [8, 8, 16.0, 16]), "architecture.channels must be"),
        (_set("architecture", "num_classes", "4"), "architecture.num_classes must be int"),
        (_set("architecture", "shortcut", "yes"), "architecture.shortcut must be bool"),
        (_set("architecture", "dropout", None), "architecture.dropout must be float"),
        (_set("architecture", "block", "fancy"), "architecture.block must be one of 'basic'"),
        (_set("architecture", "depth", 10), "unknown depth 10"),
        (_set("label_names", ["World", "Sports", "Business"]), "3 label names for architecture.num_classes=4"),
        (_set("label_names", ["a", "a", "b", "c"]), "must be distinct"),
        (_set("label_names", [1, 2, 3, 4]), "label_names must be a list of strings"),
        (_set("max_length", 0), "max_length must be a positive int"),
        (_set("max_length", 1024.0), "max_length must be a positive int"),
        # Valid configs that describe another network than the weights hold:
        (_set("architecture", "channels", [16, 16, 16, 16]), "do not match the architecture"),
        (_set("architecture", "hidden_size", 32), "shape mismatch head.fc1.weight"),
        (_set("architecture", "shortcut", False), "unexpected tensors"),
    ],
)
def test_config_json_is_validated_strictly(copy, change, words):
    edit_config(copy, change)
    with pytest.raises(UserError) as err:
        Predictor.from_pretrained(copy)
    assert words in str(err.value)
    assert str(copy) in str(err.value)  # names the folder or file at fault


def test_a_config_json_without_a_newer_field_loads_with_its_default(copy):
    """Files written before a ModelConfig field existed keep loading (ModelConfig.from_dict)."""
    edit_config(copy, lambda c: c["architecture"].pop("zero_init_residual"))
    assert Predictor.from_pretrained(copy).model.config.zero_init_residual is False


def test_broken_or_missing_files_are_user_errors(copy, tmp_path):
    with pytest.raises(MissingFileError, match="not a folder"):
        Predictor.from_pretrained(tmp_path / "nothing")
    (copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        Predictor.from_pretrained(copy)
    (copy / CONFIG_FILE).unlink()
    with pytest.raises(MissingFileError, match="has no config.json"):
        Predictor.from_pretrained(copy)


def test_truncated_or_incomplete_weights_are_user_errors(copy):
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / WEIGHTS_FILE)
    weights.pop("head.fc.bias")
    save_file(weights, copy / WEIGHTS_FILE)
    with pytest.raises(UserError, match=r"missing tensors \['head.fc.bias'\]"):
        Predictor.from_pretrained(copy)
    (copy / WEIGHTS_FILE).write_bytes((copy / WEIGHTS_FILE).read_bytes()[:100])
    with pytest.raises(UserError, match="cannot be read as safetensors"):
        Predictor.from_pretrained(copy)


def test_tokenizer_must_fit_the_embedding(copy):
    from vdcnn_res.data.tokenizer import build_tokenizer

    build_tokenizer("byte").save(str(copy / TOKENIZER_FILE))
    with pytest.raises(UserError, match="tokenizer has 258 ids but architecture.vocab_size is 72"):
        Predictor.from_pretrained(copy)


def test_export_refuses_to_overwrite_unless_asked(ckpt, exported, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(exported)])
    assert exit_.value.code == 2
    assert "--overwrite" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_readme_in_the_target_folder_is_not_replaced_unless_asked(ckpt, tmp_path, capsys):
    """The model card is README.md: a folder that has one (a user's notes) is refused like the model files."""
    (tmp_path / CARD_FILE).write_text("my notes")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "already holds ['README.md']; choose another --out_dir or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / CARD_FILE).read_text() == "my notes" and not (tmp_path / WEIGHTS_FILE).exists()


def test_export_command_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--out_dir", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vdcnn-res: error: checkpoint {str(tmp_path / 'missing.ckpt')!r} does not exist; pass the path of a .ckpt file"]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- ONNX


def test_onnx_matches_pytorch_on_real_texts_of_many_lengths(exported):
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(exported / ONNX_FILE)).graph
    assert [i.name for i in graph.input] == ["input_ids", "lengths"]
    assert all(d.dim_param for i in graph.input for d in i.type.tensor_type.shape.dim)  # batch and length dynamic

    p = Predictor.from_pretrained(exported)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(exported / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    texts, _ = sample_texts(n=40)
    # Titles only (short), full texts, texts cut to assorted lengths, an empty one, one over max_length.
    cuts = [t[: n] for t, n in zip(texts, [0, 1, 5, 9, 31, 63, 64, 65, 100, 127, 128, 129, 300] * 4)]
    texts = [t.split(". ")[0][:40] for t in texts[:10]] + texts + cuts + ["", "x" * 1000]
    seen_shapes = set()
    for batch_size in (1, 7, 64):
        for batch in texts_to_batches(p.tokenizer, texts, max_length=p.max_length, batch_size=batch_size):
            ids, lengths = batch["input_ids"], batch["lengths"]
            seen_shapes.add(tuple(ids.shape))
            with torch.no_grad():
                expected = p.model(ids, lengths).numpy()
            got = session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert len({s[0] for s in seen_shapes}) > 2 and len({s[1] for s in seen_shapes}) > 5


def test_onnx_sort_keeps_the_stable_tie_order_of_kmax_pooling(tmp_path):
    """k-max pooling relies on a stable sort (ties: earliest position first); ONNX TopK must agree."""
    import onnxruntime as ort

    from vdcnn_res.inference.onnx import _sort_stable
    from vdcnn_res.model.layers import kmax_pool1d

    class KMax(torch.nn.Module):
        def forward(self, x):
            return kmax_pool1d(x, 4)

    x = torch.tensor([[[0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 2.0]], [[3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0]]])
    x = torch.cat([x, x.flip(-1)], dim=1)  # (2, 2, 9): ties everywhere
    path = tmp_path / "kmax.onnx"
    torch.onnx.export(KMax(), (x,), str(path), dynamo=True, verbose=False, opset_version=18,
                      custom_translation_table={torch.ops.aten.sort.stable: _sort_stable})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, kmax_pool1d(x, 4).numpy())


def test_onnx_without_its_packages_is_a_user_error_before_anything_is_written(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "out"), "--onnx"])
    assert exit_.value.code == 2
    assert "pip install 'vdcnn-res[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- series models


def _series_model(channels: int = 2):
    from vdcnn_res.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(num_classes=3, input_channels=channels, blocks_per_stage=(1, 1), channels=(8, 16),
                         kernel_sizes=(8, 5, 3), downsampling="none", head="global_avg", hidden_size=0)  # fmt: skip
    return build_model(config).eval()


def test_series_export_is_version_2_with_its_preprocessing_and_no_tokenizer(tmp_path):
    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.inference.model_files import read_pretrained, write_pretrained

    prep = SeriesPreprocessing("zscore", "zero", 50)
    write_pretrained(tmp_path, _series_model(), prep, ["a", "b", "c"], None)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["format_version"] == 2 and config["series"] == {"normalize": "zscore", "missing": "zero", "max_length": 50}
    assert "max_length" not in config and not (tmp_path / TOKENIZER_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])  # no card given, none written
    loaded = read_pretrained(tmp_path)
    assert loaded.tokenizer == prep and loaded.max_length == 50 and loaded.model.config.input_channels == 2
    with pytest.raises(UserError, match="saved with its SeriesPreprocessing"):
        write_pretrained(tmp_path / "x", _series_model(), build_tokenizer_char(), ["a", "b", "c"], 10)


def build_tokenizer_char():
    from vdcnn_res.data.tokenizer import build_tokenizer

    return build_tokenizer("char")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c.pop("series"), "missing ['series']"),
        (lambda c: c.update(max_length=10), "unknown key(s) ['max_length']"),
        (lambda c: c["series"].update(normalize="minmax"), "series.normalize must be one of"),
        (lambda c: c["series"].pop("missing"), "exactly the keys"),
    ],
)
def test_series_config_json_is_validated_strictly(tmp_path, change, words):
    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.inference.model_files import read_pretrained, write_pretrained

    write_pretrained(tmp_path, _series_model(), SeriesPreprocessing(), ["a", "b", "c"], None)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    change(config)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        read_pretrained(tmp_path)
    assert words in str(err.value)


def test_series_onnx_has_dynamic_batch_and_length_and_fixed_channels(tmp_path):
    import onnxruntime as ort

    from vdcnn_res.inference.onnx import export_onnx

    model = _series_model(channels=3)
    path = export_onnx(model, tmp_path / ONNX_FILE)  # verifies against PyTorch on two other shapes itself
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    series, lengths = session.get_inputs()
    assert series.name == "series" and series.shape == ["batch", 3, "length"] and lengths.shape == ["batch"]
    rng = np.random.default_rng(0)
    for batch, length in ((1, 1), (5, 300)):
        x = rng.standard_normal((batch, 3, length)).astype(np.float32)
        n = rng.integers(1, length + 1, batch)
        n[0] = length
        x[np.arange(length)[None, None, :] >= n[:, None, None].repeat(3, 1)] = 0
        got = session.run(None, {"series": x, "lengths": n.astype(np.int64)})[0]
        with torch.no_grad():
            expected = model(torch.from_numpy(x), torch.from_numpy(n)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
