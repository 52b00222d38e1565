"""Branch weights: the CNN's and the n-gram bag's logits weighed by calibration, kept only when the
mix wins on held-out validation texts; where the model and the module keep them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.trainer.states import TrainerFn

from vdcnn_res.model import ModelConfig, build_model
from vdcnn_res.training.calibration import calibrate, fit_branch_weights
from vdcnn_res.training.module import VDCNNClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def _branches(n: int = 1200, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, C) logits: a CNN branch of loud noise and a bag that knows the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    bag = 2.0 * torch.nn.functional.one_hot(labels, classes).float() + torch.randn(n, classes, generator=g)
    cnn = 2.0 * torch.randn(n, classes, generator=g)
    return torch.stack([cnn, bag], dim=1), labels


def test_a_noisy_branch_is_weighed_down_and_the_mix_wins_on_held_out_texts():
    branches, labels = _branches()
    cal = calibrate(branches, labels)
    cnn_weight, bag_weight = cal.branch_weights
    assert cal.mixed and cnn_weight < 0.5 < 1.5 < bag_weight and cnn_weight + bag_weight == pytest.approx(2.0)
    assert cal.heldout_nll_mix < cal.heldout_nll_equal
    assert cal.accuracy_after > cal.accuracy_before + 0.05
    weighted = (cnn_weight * branches[:, 0] + bag_weight * branches[:, 1]) / cal.temperature
    assert cal.nll_after == pytest.approx(float(torch.nn.functional.cross_entropy(weighted.double(), labels)))
    assert cal.nll_after < cal.nll_before
    assert "branch weights (cnn/ngrams)" in cal.summary() and "kept" in cal.summary()


def test_branches_that_say_the_same_keep_equal_weights():
    branches, labels = _branches()
    same = torch.stack([branches[:, 1], branches[:, 1]], dim=1)
    weights, temperature, heldout_mix, heldout_equal = fit_branch_weights(same, labels)
    assert weights == [1.0, 1.0]
    assert heldout_mix == pytest.approx(heldout_equal)
    cal = calibrate(same, labels)
    assert not cal.mixed and cal.accuracy_after == cal.accuracy_before and "not kept" in cal.summary()


@pytest.mark.parametrize("given", [[1.0, 0.0], [0.0, 1.0], [0.5, 1.5]])
def test_given_weights_are_kept_and_only_the_temperature_of_their_mix_is_fitted(given):
    branches, labels = _branches()
    branches[:, 0] += torch.nn.functional.one_hot(labels, branches.shape[-1])  # a CNN that knows a little (pure noise has no temperature)
    cal = calibrate(branches, labels, given)
    mix = given[0] * branches[:, 0] + given[1] * branches[:, 1]
    assert cal.branch_weights == given and cal.heldout_nll_mix is None and cal.heldout_nll_equal is None
    assert cal.temperature == pytest.approx(calibrate(mix, labels).temperature)  # the mix's own temperature scaling
    assert cal.nll_before == pytest.approx(float(torch.nn.functional.cross_entropy(mix.double(), labels)))
    assert cal.nll_after == pytest.approx(float(torch.nn.functional.cross_entropy(mix.double() / cal.temperature, labels)))
    equal = branches.sum(1)
    assert cal.accuracy_before == pytest.approx(float((equal.argmax(1) == labels).double().mean()))
    assert f"branch weights (cnn/ngrams) {given[0]:.2f}/{given[1]:.2f}, given: accuracy " in cal.summary()
    assert "heldout_nll_mix" not in cal.to_dict() and cal.to_dict()["branch_weights"] == given


@pytest.mark.parametrize("given", [[0.0, 0.0], [1.0, -1.0], [1.0, float("inf")], [1.0]])
def test_given_weights_that_leave_no_sound_mix_are_an_error(given):
    branches, labels = _branches()
    with pytest.raises(ValueError, match="branch weights must be two finite numbers >= 0, not both 0"):
        calibrate(branches, labels, given)


def test_one_branch_is_plain_temperature_scaling_and_stores_no_branch_entries():
    branches, labels = _branches()
    one = calibrate(branches[:, 1:], labels)
    plain = calibrate(branches[:, 1], labels)
    assert one == plain and one.branch_weights is None and not one.mixed
    assert not {"branch_weights", "heldout_nll_mix", "accuracy_after"} & set(plain.to_dict())


def test_too_few_texts_for_two_halves_is_an_error_not_a_guess():
    branches, labels = _branches(n=1)
    with pytest.raises(ValueError, match="too few"):
        calibrate(branches, labels)


def _model_with_bag():
    arch = ModelConfig(depth=9, num_classes=3, vocab_size=20, channels=(4, 4, 8, 8), hidden_size=8, ngram_orders=(1, 2))
    return arch, build_model(arch)


def test_the_model_weighs_each_branch_then_divides_by_the_temperature():
    _, model = _model_with_bag()
    model.eval()
    ids = torch.randint(1, 20, (4, 30))
    with torch.no_grad():
        branches = model.branch_logits(model.forward_features(ids))
        torch.testing.assert_close(model(ids), branches["cnn"] + branches["ngrams"])  # all ones: the plain sum
        model.branch_weights.copy_(torch.tensor([0.0, 2.0]))
        model.temperature.fill_(4.0)
        torch.testing.assert_close(model(ids), branches["ngrams"] / 2.0)


def test_weights_from_before_branch_weights_load_as_equal():
    _, model = _model_with_bag()
    old = {k: v for k, v in model.state_dict().items() if k != "branch_weights"}
    _, fresh = _model_with_bag()
    fresh.branch_weights.fill_(3.0)
    fresh.load_state_dict(old)
    assert fresh.branch_weights.tolist() == [1.0, 1.0]
    arch = ModelConfig(depth=9, num_classes=3, vocab_size=20, channels=(4, 4, 8, 8), hidden_size=8)
    assert build_model(arch).branch_weights.tolist() == [1.0]  # no bag: one branch


def test_a_checkpoint_stores_the_weights_of_its_own_step_and_fitting_resets_them():
    arch, _ = _model_with_bag()
    module = VDCNNClassifier(arch=arch)
    branches, labels = _branches(classes=3)
    module.calibration, module._calibration_step = calibrate(branches, labels), 7
    saved = {"global_step": 7, "state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(saved)
    assert saved["state_dict"]["model.branch_weights"].tolist() == pytest.approx(module.calibration.branch_weights)
    assert saved["calibration"]["branch_weights"] == module.calibration.branch_weights
    assert module.model.branch_weights.tolist() == [1.0, 1.0]  # the live model trains on the plain sum
    later = {"global_step": 8, "state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(later)
    assert later["state_dict"]["model.branch_weights"].tolist() == [1.0, 1.0]

    for fn, kept in [(TrainerFn.FITTING, False), (TrainerFn.TESTING, True)]:
        checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": dict(saved["state_dict"])}
        module._trainer = SimpleNamespace(state=SimpleNamespace(fn=fn))
        try:
            module.on_load_checkpoint(checkpoint)
        finally:
            module._trainer = None
        expected = module.calibration.branch_weights if kept else [1.0, 1.0]
        assert checkpoint["state_dict"]["model.branch_weights"].tolist() == pytest.approx(expected)


def test_a_large_split_is_fitted_on_a_seeded_sample_and_measured_on_all(monkeypatch):
    import vdcnn_res.training.calibration as calibration

    branches, labels = _branches(n=1200)
    monkeypatch.setattr(calibration, "MAX_FIT_LOGITS", 500 * 5)  # 500 texts of 5 classes
    sampled = calibrate(branches, labels)
    assert sampled.texts == 1200 and sampled.mixed  # the numbers cover every text ...
    rows = calibration._fit_rows(1200, 5)
    assert len(rows) == 500 and torch.equal(rows, calibration._fit_rows(1200, 5))  # ... the fit a fixed sample
    assert sampled.branch_weights == calibrate(branches[rows], labels[rows]).branch_weights
