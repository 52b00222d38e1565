"""Predictor: raw texts in, labels and probabilities out, in input order; safe checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.tiny import LABELS, QUIET, REPO, TINY, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.model import create_model
from vdcnn_res.data.tokenizer import build_tokenizer

MAX_LENGTH = 96

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """Known weights (seeded init, randomised BatchNorm statistics, a small output layer), char tokenizer."""
    torch.manual_seed(0)
    model = create_model("vdcnn9", num_classes=4, channels=(8, 8, 16, 16), hidden_size=16)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        model.head.fc.weight.mul_(0.01)  # keep the probabilities away from 0 and 1, where texts would look alike
    return Predictor(model, build_tokenizer("char"), LABELS, max_length=MAX_LENGTH, bf16=False)  # exact fp32


MIXED = [
    "Stocks rallied.",
    "",
    "   \t\n ",
    "The striker scored twice as the home team won the final. " * 4,
    "日本語のニュース — café, naïve, emoji 🚀",
    "x" * 100_000,
    "Rebels and troops agreed to a ceasefire.",
]


def test_one_string_gives_one_result_a_list_gives_a_list(predictor):
    one = predictor.predict("Stocks rallied after the Fed decision.", top_k=3)
    assert set(one) == {"label", "probability", "top_k"}
    assert one["label"] in LABELS and one["top_k"][0] == (one["label"], one["probability"])
    probs = [p for _, p in one["top_k"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)
    many = predictor.predict(["a", "b"])
    assert isinstance(many, list) and len(many) == 2 and all(len(r["top_k"]) == 1 for r in many)
    assert predictor.predict([]) == []
    assert predictor.predict_proba([]).shape == (0, 4)


def test_results_come_back_in_input_order_whatever_the_batching(predictor):
    # Batches are sorted by length internally; every text's row must still be its own.
    alone = np.stack([predictor.predict_proba(t)[0] for t in MIXED])
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(predictor.predict_proba(MIXED, batch_size=batch_size), alone, atol=1e-5)
    reversed_probs = predictor.predict_proba(MIXED[::-1])
    np.testing.assert_allclose(reversed_probs[::-1], alone, atol=1e-5)
    assert len({tuple(np.round(row, 4)) for row in alone}) > 3  # the texts really differ


def test_every_text_gets_a_prediction_long_ones_truncated(predictor):
    probs = predictor.predict_proba(MIXED)
    assert probs.shape == (len(MIXED), 4) and probs.dtype == np.float32
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # A very long text is cut to the model's max_length: same prediction as its first MAX_LENGTH characters.
    long = "Markets " * 50_000
    np.testing.assert_allclose(predictor.predict_proba(long), predictor.predict_proba(long[:MAX_LENGTH]), atol=1e-6)
    assert not np.allclose(predictor.predict_proba(long), predictor.predict_proba(long[: MAX_LENGTH // 2]), atol=1e-4)


@pytest.mark.parametrize("bad", [None, 5, b"bytes", {"text": "a"}, ["fine", None], ["fine", 3.0], [b"bytes"]])
def test_wrong_input_types_raise_type_error(predictor, bad):
    with pytest.raises(TypeError, match="string"):
        predictor.predict(bad)
    with pytest.raises(TypeError, match="string"):
        predictor.predict_proba(bad)


def test_other_iterables_of_strings_are_accepted(predictor):
    expected = predictor.predict_proba(["a b", "c"])
    np.testing.assert_allclose(predictor.predict_proba(("a b", "c")), expected)
    np.testing.assert_allclose(predictor.predict_proba(np.array(["a b", "c"])), expected)


@pytest.mark.parametrize("kwargs", [{"top_k": 0}, {"top_k": 5}, {"top_k": True}, {"batch_size": 0}])
def test_bad_settings_are_user_errors(predictor, kwargs):
    with pytest.raises(UserError, match="top_k|batch_size"):
        predictor.predict(["a"], **kwargs)


def test_runs_in_eval_mode_and_leaves_batchnorm_statistics_alone(predictor):
    predictor.model.train()
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    fresh = Predictor(predictor.model, predictor.tokenizer, LABELS, max_length=MAX_LENGTH)
    assert not fresh.model.training
    fresh.predict_proba(MIXED)
    after = predictor.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bf16_on_cpu_is_close_to_fp32(predictor):
    texts, _ = sample_texts(n=32)
    fp32 = predictor.predict_proba(texts)
    bf16 = Predictor(predictor.model, predictor.tokenizer, LABELS, max_length=MAX_LENGTH, bf16=True).predict_proba(texts)
    assert not np.array_equal(bf16, fp32)  # autocast really ran
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


def test_bf16_is_the_default_exactly_where_the_device_has_native_bf16(predictor, monkeypatch):
    from vdcnn_res.inference import predictor as predict_module

    for native in (True, False):
        monkeypatch.setattr(predict_module, "native_bf16", lambda device, native=native: native)
        assert Predictor(predictor.model, predictor.tokenizer, LABELS).bf16 is native
        assert Predictor(predictor.model, predictor.tokenizer, LABELS, bf16=not native).bf16 is (not native)
    monkeypatch.undo()
    assert predict_module.native_bf16(torch.device("meta")) is False
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert predict_module.native_bf16(torch.device("cpu")) == any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def test_device_is_selectable_and_checked(predictor):
    assert Predictor(predictor.model, predictor.tokenizer, LABELS, device="cpu").device.type == "cpu"
    with pytest.raises(UserError, match="device"):
        Predictor(predictor.model, predictor.tokenizer, LABELS, device="no-such-device")


def test_label_count_must_match_the_model(predictor):
    with pytest.raises(UserError, match="3 label names"):
        Predictor(predictor.model, predictor.tokenizer, LABELS[:3])


# ----------------------------------------------------------------------------- checkpoints


def test_from_checkpoint_reads_model_tokenizer_labels_and_max_length(ckpt):
    p = Predictor.from_checkpoint(ckpt)
    assert p.label_names == LABELS and p.max_length == 128
    assert p.model.config.channels == (8, 8, 16, 16) and not p.model.training
    texts, _ = sample_texts(n=20)
    results = p.predict(texts, top_k=4)
    assert [sorted(lbl for lbl, _ in r["top_k"]) for r in results] == [sorted(LABELS)] * 20


def test_checkpoint_errors_name_the_problem(tmp_path, ckpt):
    with pytest.raises(MissingFileError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(MissingFileError, match="from_pretrained"):
        Predictor.from_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(UserError, match="cannot read checkpoint"):
        Predictor.from_checkpoint(garbage)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(UserError, match="not a vdcnn-res checkpoint"):
        Predictor.from_checkpoint(other)
    # Weights that do not fit the stored architecture: a clear message, not a load_state_dict trace.
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["arch"]["hidden_size"] = 32
    resized = tmp_path / "resized.ckpt"
    torch.save(checkpoint, resized)
    with pytest.raises(UserError, match="do not match the architecture.*shape mismatch"):
        Predictor.from_checkpoint(resized)


def test_malicious_checkpoint_is_refused_by_the_predictor(malicious):
    path, marker = malicious
    with pytest.raises(UserError, match="refusing to load checkpoint .*pickled Python objects"):
        Predictor.from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_malicious_checkpoint_is_refused_by_the_cli(malicious, subcommand, tmp_path, capsys):
    path, marker = malicious
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, *TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(path),
              "--data.predict", "data/ag_news_sample/test.csv"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vdcnn-res: error: refusing to load checkpoint") and "pickled" in err[-1], err
    assert not any(line.startswith("Traceback") for line in err)
    assert not marker.exists()


def test_cli_tells_lightning_weights_only_even_if_the_environment_says_otherwise(malicious, tmp_path, monkeypatch):
    """Second line of defence: with our pre-check and LightningCLI's own hparams read switched off,
    and torch's default flipped by TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, Lightning's load must still refuse."""
    from pytorch_lightning.cli import LightningCLI

    from vdcnn_res.cli import lightning

    path, marker = malicious
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setattr(lightning, "load_checkpoint_safely", lambda path: None)
    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", lambda self: None)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        main(["predict", *TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(path),
              "--data.predict", "data/ag_news_sample/test.csv", "--trainer.logger=false"])
    assert not marker.exists()


# --------------------------------------------------------------------------- series models


@pytest.fixture(scope="module")
def series_predictor() -> Predictor:
    """A 3-channel series model with known weights and z-score preprocessing."""
    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.model import ModelConfig, build_model

    torch.manual_seed(0)
    config = ModelConfig(
        num_classes=3, input_channels=3, blocks_per_stage=(1, 1), channels=(8, 16), kernel_sizes=(8, 5, 3),
        downsampling="none", head="global_avg", hidden_size=0,
    )  # fmt: skip
    model = build_model(config)
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 1.0)  # distinct probabilities per series
    return Predictor(model, SeriesPreprocessing(), ["a", "b", "c"], bf16=False)


def _series(n: int, length: int, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((channels, length + 7 * i)) for i in range(n)]


def test_series_one_array_one_result_a_list_a_list_any_lengths(series_predictor):
    items = _series(5, 10)
    one = series_predictor.predict(items[0], top_k=2)
    assert set(one) == {"label", "probability", "top_k"} and len(one["top_k"]) == 2
    many = series_predictor.predict(items)
    assert isinstance(many, list) and len(many) == 5
    probs = series_predictor.predict_proba(items)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # In input order, each as if alone; lists of channel lists and tensors work like arrays.
    for i, x in enumerate(items):
        np.testing.assert_allclose(series_predictor.predict_proba(x)[0], probs[i], atol=1e-5)
    np.testing.assert_allclose(series_predictor.predict_proba(items[1].tolist()), probs[1:2], atol=1e-6)
    np.testing.assert_allclose(series_predictor.predict_proba(torch.from_numpy(items[2])), probs[2:3], atol=1e-6)
    same = np.stack([x[:, :10] for x in items])  # (N, C, L): a batch of series
    assert series_predictor.predict_proba(same).shape == (5, 3)
    assert series_predictor.predict([]) == []


def test_series_are_normalised_and_filled_as_in_training(series_predictor):
    x = _series(1, 30)[0]
    expected = series_predictor.predict_proba(x)
    np.testing.assert_allclose(series_predictor.predict_proba(5 * x + 3), expected, atol=1e-5)  # z-score per channel
    holey = x.copy()
    holey[1, 4] = np.nan
    assert np.isfinite(series_predictor.predict_proba(holey)).all()


def test_univariate_inputs_of_a_one_channel_model():
    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.model import ModelConfig, build_model

    model = build_model(ModelConfig(num_classes=2, input_channels=1, blocks_per_stage=(1,), channels=(8,),
                                    head="global_avg", hidden_size=0, downsampling="none"))  # fmt: skip
    p = Predictor(model, SeriesPreprocessing(), ["x", "y"], bf16=False)
    assert isinstance(p.predict([0.1, 0.5, 0.2]), dict)  # one flat list: one series
    assert isinstance(p.predict(np.array([0.1, 0.5, 0.2])), dict)  # (L,)
    assert len(p.predict([[0.1, 0.5], [1.0, 2.0, 3.0]])) == 2  # a list of flat lists: several series
    with pytest.raises(UserError, match="has 3 channel"):
        p.predict(np.zeros((3, 10)))  # a 2-D array is one (C, L) series


@pytest.mark.parametrize(
    "bad, words",
    [
        ([[0.1, 0.2, 0.3], [0.1, 0.2], [0.3, 0.4, 0.5]], "channels of different lengths"),
        ([[0.1, "x"], [0.1, 0.2], [0.3, 0.4]], "holds a string"),
        (np.full((3, 5), np.nan), "no valid value"),
        (np.zeros((3, 0)), "zero-length"),
        ("a text", "series model (3 channel(s)): give numeric arrays, not strings"),
        (["a", "b"], "not strings"),
        (np.zeros((2, 5)), "has 2 channel(s)"),
        ({"series": [1]}, "takes an array"),
    ],
)
def test_bad_series_inputs_are_one_line_user_errors(series_predictor, bad, words):
    with pytest.raises(UserError) as err:
        series_predictor.predict(bad)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [np.zeros((2, 5)), torch.zeros(3), [[0.1, 0.2]], [0.5, 0.7]])
def test_a_text_model_given_arrays_is_a_user_error(predictor, bad):
    with pytest.raises(UserError, match="this is a text model"):
        predictor.predict(bad)


def test_series_model_and_preprocessing_must_match(predictor, series_predictor):
    with pytest.raises(UserError, match="needs its SeriesPreprocessing"):
        Predictor(series_predictor.model, build_tokenizer("char"), ["a", "b", "c"])
    with pytest.raises(UserError, match="needs its SeriesPreprocessing"):
        Predictor(predictor.model, series_predictor.tokenizer, LABELS)


def test_series_save_pretrained_round_trips(series_predictor, tmp_path):
    from vdcnn_res.inference.model_files import TOKENIZER_FILE

    paths = series_predictor.save_pretrained(tmp_path / "s")
    assert not (tmp_path / "s" / TOKENIZER_FILE).exists() and len(paths) == 3  # weights, config, model card
    loaded = Predictor.from_pretrained(tmp_path / "s", bf16=False)
    assert loaded.is_series and loaded.tokenizer == series_predictor.tokenizer
    items = _series(4, 12, seed=3)
    np.testing.assert_allclose(loaded.predict_proba(items), series_predictor.predict_proba(items), atol=1e-6)


# --------------------------------------------------------------------------- ensembles


def _text_member(seed: int, **kw) -> Predictor:
    torch.manual_seed(seed)
    model = create_model("vdcnn9", num_classes=4, channels=(8, 8, 16, 16), hidden_size=16)
    kw = {"max_length": MAX_LENGTH, "bf16": False, **kw}
    return Predictor(model, kw.pop("tokenizer", build_tokenizer("char")), kw.pop("labels", LABELS), **kw)


def _series_member(seed: int, **kw) -> Predictor:
    from vdcnn_res.data.series import SeriesPreprocessing
    from vdcnn_res.model import ModelConfig, build_model

    torch.manual_seed(seed)
    config = ModelConfig(
        num_classes=3, input_channels=3, blocks_per_stage=(1,), channels=(8,), kernel_sizes=(8, 5, 3),
        downsampling="none", head="global_avg", hidden_size=0,
    )  # fmt: skip
    model = build_model(config)
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 1.0)
    return Predictor(model, kw.pop("preprocessing", SeriesPreprocessing()), ["a", "b", "c"], bf16=False)


def test_an_ensemble_predicts_its_members_mean_probabilities():
    members = [_text_member(seed) for seed in range(3)]
    ensemble = Predictor.ensemble(members)
    texts = MIXED[:5]
    expected = np.mean([m.predict_proba(texts) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(texts), expected, atol=1e-6)
    best = ensemble.predict(texts, top_k=2)
    assert [r["label"] for r in best] == [LABELS[i] for i in expected.argmax(1)]
    assert ensemble.members == members and ensemble.label_names == LABELS and not ensemble.is_series


def test_a_series_ensemble_predicts_arrays_of_any_length():
    members = [_series_member(seed) for seed in range(2)]
    ensemble = Predictor.ensemble(members)
    items = _series(3, 10, seed=5)
    expected = np.mean([m.predict_proba(items) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(items), expected, atol=1e-6)
    assert ensemble.predict(items[0])["label"] == ["a", "b", "c"][expected[0].argmax()]
    with pytest.raises(UserError, match="give numeric arrays"):
        ensemble.predict("a text")


def test_ensemble_members_must_read_and_predict_alike():
    from vdcnn_res.data.series import SeriesPreprocessing

    with pytest.raises(UserError, match="non-empty list of Predictors"):
        Predictor.ensemble([])
    with pytest.raises(UserError, match="member 1 predicts the labels"):
        Predictor.ensemble([_text_member(0), _text_member(1, labels=["w", "s", "b", "t"])])
    with pytest.raises(UserError, match="member 1 reads its input with another tokenizer or max_length"):
        Predictor.ensemble([_text_member(0), _text_member(1, max_length=MAX_LENGTH + 1)])
    with pytest.raises(UserError, match="member 1 reads its input with another tokenizer"):
        Predictor.ensemble([_text_member(0), _text_member(1, tokenizer=build_tokenizer("byte"))])
    with pytest.raises(UserError, match="member 1 reads its input with another preprocessing"):
        Predictor.ensemble([_series_member(0), _series_member(1, preprocessing=SeriesPreprocessing(normalize="none"))])
    with pytest.raises(UserError, match="member 1 is multi-label"):
        Predictor.ensemble([_text_member(0), _text_member(1, thresholds=[0.5] * 4)])
    with pytest.raises(UserError, match="member 1 is an ensemble already"):
        Predictor.ensemble([_text_member(0), Predictor.ensemble([_text_member(1)])])


def test_an_ensemble_says_how_to_save_explain_or_read_one_model(tmp_path):
    ensemble = Predictor.ensemble([_text_member(0), _text_member(1)])
    for call, words in [
        (lambda: ensemble.save_pretrained(tmp_path / "e"), r"save each member \(predictor.members"),
        (lambda: ensemble.explain("Stocks rallied."), "explained member by member"),
        (lambda: ensemble.use_int8(["Stocks rallied."]), "quantize a member"),
        (lambda: ensemble.temperature, "one temperature per member"),
        (lambda: ensemble.branch_weights, "branch weights per member"),
    ]:
        with pytest.raises(UserError, match=words):
            call()
    assert not (tmp_path / "e").exists()
    paths = ensemble.members[0].save_pretrained(tmp_path / "m0")  # the members stay ordinary Predictors
    assert paths and ensemble.members[1].temperature == 1.0
