"""Temperature scaling: the fit, ECE/NLL, the reliability diagram and where the module keeps T."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torchmetrics.functional.classification import multiclass_calibration_error

from vdcnn_res.model import ModelConfig
from vdcnn_res.training.calibration import (
    N_BINS,
    T_MAX,
    T_MIN,
    LogitCollector,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
)
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.plotting import plot_reliability

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ece_of_a_hand_made_example():
    probs = torch.tensor([
        [0.95, 0.05],  # bin 14 ([14/15, 1]), correct
        [0.95, 0.05],  # bin 14, wrong
        [1.00, 0.00],  # a confidence of exactly 1 counts in the last bin, correct
        [0.30, 0.70],  # bin 10 ([10/15, 11/15)), correct
        [0.70, 0.30],  # bin 10, wrong
    ])  # fmt: skip
    labels = torch.tensor([0, 1, 0, 1, 1])
    bins = reliability_bins(probs, labels)
    assert bins.n_bins == N_BINS == 15
    assert bins.counts.tolist() == [0] * 10 + [2, 0, 0, 0, 3]
    assert bins.accuracy[14] == pytest.approx(2 / 3) and bins.confidence[14] == pytest.approx(2.9 / 3)
    assert bins.accuracy[10] == pytest.approx(0.5) and bins.confidence[10] == pytest.approx(0.7)
    # (3 x |2/3 - 0.9667| + 2 x |0.5 - 0.7|) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx((3 * 0.3 + 2 * 0.2) / 5)


def test_perfectly_calibrated_bins_have_zero_ece():
    probs = torch.tensor([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])  # 75 % right at confidence 0.75
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_agrees_with_torchmetrics():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(500, 5, generator=g)
    labels = torch.randint(0, 5, (500,), generator=g)
    probs = logits.double().softmax(-1)
    assert float(probs.max(-1).values.max()) < 1.0  # torchmetrics puts a confidence of exactly 1 in a bin of its own
    expected = float(multiclass_calibration_error(probs, labels, num_classes=5, n_bins=15, norm="l1"))
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)  # torchmetrics sums in float32


def _calibrated_logits(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): probabilities that are calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = 1.5 * torch.randn(n, classes, generator=g, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_fit_recovers_the_scale_of_over_or_under_confident_logits(scale):
    logits, labels = _calibrated_logits(20000, 4, seed=1)
    fitted = fit_temperature(scale * logits, labels)
    assert fitted == pytest.approx(scale, rel=0.08)


def test_temperature_lowers_the_nll_of_an_over_confident_model():
    logits, labels = _calibrated_logits(2000, 4, seed=2)
    confident = 5 * logits  # an over-confident model: same predictions, far sharper probabilities
    result = calibrate(confident, labels)
    assert result.temperature > 2
    assert result.nll_after < result.nll_before - 0.3
    assert result.ece_after < result.ece_before
    assert result.nll_after == pytest.approx(nll(confident, labels, result.temperature))
    # the fitted T is the NLL minimum: a little more or less is worse
    for t in (0.95 * result.temperature, 1.05 * result.temperature):
        assert nll(confident, labels, t) > result.nll_after


def test_fit_is_a_minimum_also_far_from_the_start():
    logits, labels = _calibrated_logits(3000, 3, seed=3)
    fitted = fit_temperature(12 * logits, labels)
    grid = torch.logspace(-1, 1.5, 200).tolist()
    best = min(grid, key=lambda t: nll(12 * logits, labels, t))
    assert nll(12 * logits, labels, fitted) <= nll(12 * logits, labels, best) + 1e-9


def test_an_optimum_at_a_bound_is_refused():
    """All right with a margin: the NLL falls as T -> 0; at chance it falls as T grows. Neither is a temperature."""
    perfect, labels = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 0])
    assert fit_temperature(perfect, labels) == pytest.approx(T_MIN)
    with pytest.raises(ValueError, match=r"lowest at the search bound T = 0.05 \(every text is classified right"):
        calibrate(perfect, labels)
    chance = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert fit_temperature(chance, torch.tensor([0, 1, 0, 1])) == pytest.approx(T_MAX)
    with pytest.raises(ValueError, match="no better than chance"):
        calibrate(chance, torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize(
    "logits, labels, words",
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no validation logits"),
        (torch.tensor([[math.nan, 0.0]]), torch.tensor([0]), "not all finite"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "must be (N, C)"),
    ],
)
def test_nothing_sound_to_fit_is_an_error(logits, labels, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        fit_temperature(logits, labels)


def test_summary_is_one_line_with_the_numbers():
    logits, labels = _calibrated_logits(500, 4, seed=4)
    result = calibrate(3 * logits, labels)
    line = result.summary()
    assert "\n" not in line and f"{result.temperature:.3f}" in line and "500 validation texts" in line
    assert set(result.to_dict()) == {"temperature", "texts", "nll_before", "nll_after", "ece_before", "ece_after", "n_bins"}


def test_logit_collector_concatenates_and_resets():
    collector = LogitCollector()
    collector.update(torch.ones(2, 3, dtype=torch.bfloat16), torch.tensor([0, 1]))
    collector.update(torch.zeros(1, 3), torch.tensor([2]))
    logits, labels = collector.compute()
    assert logits.dtype == torch.float32 and logits.shape == (3, 3) and labels.tolist() == [0, 1, 2]
    collector.reset()
    assert not collector.update_called


def test_reliability_diagram_png(tmp_path):
    logits, labels = _calibrated_logits(300, 4, seed=5)
    before = reliability_bins((4 * logits).softmax(-1), labels)
    after = reliability_bins(logits.softmax(-1), labels)
    path = plot_reliability([("uncalibrated", before), ("temperature 4", after)], tmp_path / "sub" / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the module


def _module() -> VDCNNClassifier:
    arch = ModelConfig(depth=9, num_classes=3, vocab_size=20, channels=(4, 4, 8, 8), hidden_size=8)
    return VDCNNClassifier(arch=arch)


def test_the_module_state_dict_keys_are_the_models_and_the_temperature():
    """The collectors keep no state in checkpoints; the temperature is the model's one new entry."""
    module = _module()
    keys = set(module.state_dict())
    assert keys == {f"model.{k}" for k in module.model.state_dict()}
    assert "model.temperature" in keys and float(module.model.temperature) == 1.0


def _checkpoint(module: VDCNNClassifier, step: int) -> dict:
    return {"global_step": step, "state_dict": dict(module.state_dict())}


def test_a_checkpoint_stores_the_temperature_of_its_own_step_only():
    module = _module()
    logits, labels = _calibrated_logits(400, 3, seed=6)
    module.calibration, module._calibration_step = calibrate(3 * logits, labels), 10
    saved = _checkpoint(module, 10)
    module.on_save_checkpoint(saved)
    assert float(saved["state_dict"]["model.temperature"]) == pytest.approx(module.calibration.temperature)
    assert saved["calibration"]["temperature"] == module.calibration.temperature
    assert float(module.model.temperature) == 1.0  # the live model trains on uncalibrated
    other = _checkpoint(module, 11)  # weights after the validation the temperature was fitted on
    module.on_save_checkpoint(other)
    assert float(other["state_dict"]["model.temperature"]) == 1.0 and "calibration" not in other


def test_a_checkpoint_of_a_validation_without_a_temperature_says_why():
    module = _module()
    module.calibration, module.calibration_error, module._calibration_step = None, "the predictions are no better than chance", 4
    saved = _checkpoint(module, 4)
    module.on_save_checkpoint(saved)
    assert float(saved["state_dict"]["model.temperature"]) == 1.0
    assert saved["calibration"] == {"error": "the predictions are no better than chance"}


@pytest.mark.parametrize("fn, kept", [(TrainerFn.FITTING, False), (TrainerFn.TESTING, True), (TrainerFn.VALIDATING, True)])
def test_loading_for_training_resets_the_temperature(fn, kept):
    module = _module()
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": dict(module.state_dict())}
    checkpoint["state_dict"]["model.temperature"] = torch.tensor(2.5)
    module._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn))
    try:
        module.on_load_checkpoint(checkpoint)
    finally:
        module._trainer = None
    assert float(checkpoint["state_dict"]["model.temperature"]) == (2.5 if kept else 1.0)


def test_the_temperature_divides_the_logits_and_never_changes_the_prediction():
    model = _module().model.eval()
    ids = torch.randint(1, 20, (5, 40))
    with torch.no_grad():
        plain = model(ids)
        model.temperature.fill_(2.0)
        scaled = model(ids)
    torch.testing.assert_close(scaled, plain / 2.0)
    assert torch.equal(scaled.argmax(-1), plain.argmax(-1))
    assert not torch.allclose(F.softmax(scaled, -1), F.softmax(plain, -1))
