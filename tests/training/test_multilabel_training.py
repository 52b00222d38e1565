"""Multi-label training pieces: BCE loss, positive-class weights, threshold checks and tuning (issue 17.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vdcnn_res.errors import UserError
from vdcnn_res.model import ModelConfig
from vdcnn_res.training.calibration import check_threshold, tune_thresholds
from vdcnn_res.training.module import VDCNNClassifier, balanced_positive_weights

TINY = ModelConfig(num_classes=3, vocab_size=20, blocks_per_stage=(1, 1), channels=(8, 16), hidden_size=8)


def test_tune_thresholds_finds_the_separating_threshold_per_label():
    probs = torch.tensor([[0.9, 0.35, 0.1], [0.7, 0.30, 0.2], [0.2, 0.10, 0.3], [0.1, 0.05, 0.4]])
    labels = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    tuned = tune_thresholds(probs, labels, default=0.5)
    assert tuned.thresholds[0] == 0.5  # label 0 separates at 0.5 already: the tie nearest the default
    assert 0.1 < tuned.thresholds[1] <= 0.3  # label 1 needs a lower threshold than 0.5
    assert tuned.thresholds[2] == 0.5  # no positive text: the default stays
    assert tuned.f1_micro_before == pytest.approx(2 * 2 / (2 * 2 + 2)) and tuned.f1_micro_after == 1.0


def test_tune_thresholds_refuses_nothing_to_tune_on():
    with pytest.raises(ValueError, match="no validation texts"):
        tune_thresholds(torch.zeros(0, 2), torch.zeros(0, 2))


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", True])
def test_thresholds_out_of_range_are_one_line(value):
    with pytest.raises(UserError, match=r"model.threshold must be a probability in \[0, 1\]"):
        check_threshold(value, "model.threshold")
    with pytest.raises(UserError, match="must be a probability in"):
        VDCNNClassifier(arch=TINY, task="multilabel", threshold=value)


def test_threshold_needs_the_multilabel_task():
    with pytest.raises(UserError, match="model.threshold is the decision threshold of multi-label models"):
        VDCNNClassifier(arch=TINY, threshold=0.3)


def test_single_label_hyperparameters_and_state_are_unchanged():
    module = VDCNNClassifier(arch=TINY)
    assert set(module.hparams) == {"arch", "optim", "label_smoothing", "label_names", "class_weights"}
    assert not any(k.startswith("label_thresholds") for k in module.state_dict())


def test_multilabel_loss_is_bce_with_smoothed_targets_and_positive_weights():
    module = VDCNNClassifier(arch=TINY, task="multilabel", label_smoothing=0.1, class_weights=[1.0, 2.0, 3.0])
    assert module.hparams.task == "multilabel" and module.label_thresholds.tolist() == [0.5, 0.5, 0.5]
    logits, labels = torch.randn(4, 3), torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.int8)
    targets = labels.float() * 0.9 + 0.05
    assert module._loss(logits, labels) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=torch.tensor([1.0, 2.0, 3.0]))
    assert module._loss(logits, labels, weighted=True) == pytest.approx(float(expected))


def test_balanced_positive_weights():
    assert balanced_positive_weights([10, 50, 100], 100, ["a", "b", "c"]) == [9.0, 1.0, 0.01]
    with pytest.raises(UserError, match=r"labels \['b'\] have no training texts"):
        balanced_positive_weights([10, 0, 5], 100, ["a", "b", "c"])


def test_a_checkpoint_of_the_other_task_is_refused():
    from vdcnn_res.training.module import _check_compatible

    multi = VDCNNClassifier(arch=TINY, task="multilabel")
    with pytest.raises(UserError, match="the checkpoint is a multiclass model but data.task='multilabel'"):
        _check_compatible(dict(VDCNNClassifier(arch=TINY).hparams), multi.hparams)
