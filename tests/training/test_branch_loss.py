"""Branch losses (VDCNNClassifier(branch_loss={branch: w})): the CNN or the n-gram bag also trained on its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vdcnn_res.errors import UserError
from vdcnn_res.model import ModelConfig
from vdcnn_res.training.module import DISTILL_TEMPERATURE, VDCNNClassifier, distillation_loss

TINY = {"num_classes": 3, "vocab_size": 20, "blocks_per_stage": (1, 1), "channels": (8, 16), "hidden_size": 8}
BAG = ModelConfig(**TINY, ngram_orders=(1, 2), ngram_buckets=101, ngram_dim=4)

pytestmark = pytest.mark.usefixtures("one_thread")


def batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (4, 40))
    return {"input_ids": ids, "lengths": torch.tensor([40, 33, 20, 9]), "labels": torch.tensor([0, 1, 2, 1])}


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("weights", [{"ngrams": 0.5}, {"cnn": 0.5, "ngrams": 2.0}, {"sum": 0, "cnn": 1, "ngrams": 1},
                                     {"sum": 0.5, "ngrams": 1}])
def test_objective_adds_each_branch_loss_and_progress_sees_the_model_loss(task, weights):
    torch.manual_seed(0)
    module = VDCNNClassifier(arch=BAG, branch_loss=weights, task=task, label_smoothing=0.0).eval()  # no dropout
    data = batch()
    if task == "multilabel":
        data["labels"] = F.one_hot(data["labels"], 3).to(torch.int8)
    out = module.training_step(data, 0)
    model = module.model
    branches = model.branch_logits(model.forward_features(data["input_ids"], data["lengths"]))
    expected_model = module._loss(branches["cnn"] + branches["ngrams"], data["labels"])
    own = {name: w for name, w in weights.items() if name != "sum"}
    expected = weights.get("sum", 1.0) * expected_model + sum(
        w * module._loss(branches[name], data["labels"]) for name, w in own.items()
    )
    assert float(out["model_loss"]) == pytest.approx(float(expected_model), rel=1e-4)
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-4)
    assert out["loss"].requires_grad and not out["model_loss"].requires_grad
    # What the chance warning reads: each branch's own loss, for the branches that have one.
    assert set(out["branch_losses"]) == set(own)
    for name, part in out["branch_losses"].items():
        assert float(part) == pytest.approx(float(module._loss(branches[name], data["labels"])), rel=1e-4)
        assert not part.requires_grad


def test_off_by_default_returns_the_plain_loss_and_keeps_the_hyperparameters():
    module = VDCNNClassifier(arch=BAG)
    assert isinstance(module.training_step(batch(), 0), torch.Tensor)
    assert "branch_loss" not in module.hparams
    assert "branch_loss" not in VDCNNClassifier(arch=BAG, branch_loss={"ngrams": 0}).hparams  # zero = off
    assert VDCNNClassifier(arch=BAG, branch_loss={"ngrams": 1}).hparams.branch_loss == {"ngrams": 1.0}
    assert "branch_loss" not in VDCNNClassifier(arch=BAG, branch_loss={"sum": 1}).hparams  # the default weight
    separate = VDCNNClassifier(arch=BAG, branch_loss={"sum": 0, "cnn": 1, "ngrams": 1})
    assert separate.hparams.branch_loss == {"sum": 0.0, "cnn": 1.0, "ngrams": 1.0}
    reloaded = VDCNNClassifier(**separate.hparams)  # as load_from_checkpoint rebuilds it
    assert (reloaded.sum_weight, reloaded.branch_loss) == (0.0, {"cnn": 1.0, "ngrams": 1.0})


@pytest.mark.parametrize(
    "value, message",
    [
        (1.0, "must map branch names"),
        ({"bag": 1.0}, "unknown branch 'bag'; valid: \\['cnn', 'ngrams', 'sum', 'distill'\\]"),
        ({"sum": 0}, "sum 0 with no branch weighted trains nothing"),
        ({"sum": 0, "distill": 1}, "sum 0 with no branch weighted trains nothing"),
        ({"distill": -1}, "branch_loss.distill must be a number >= 0"),
        ({"ngrams": -1.0}, "branch_loss.ngrams must be a number >= 0"),
        ({"ngrams": True}, "branch_loss.ngrams must be a number >= 0"),
        ({"ngrams": float("nan")}, "branch_loss.ngrams must be a number >= 0"),
    ],
)
def test_bad_weights_are_one_line(value, message):
    with pytest.raises(UserError, match=message):
        VDCNNClassifier(arch=BAG, branch_loss=value)


def test_needs_the_bag():
    with pytest.raises(UserError, match="branch_loss weighs the CNN's and the n-gram bag's own losses"):
        VDCNNClassifier(arch=ModelConfig(**TINY), branch_loss={"cnn": 1.0})


def test_sum_detach_trains_the_bag_only_on_its_own_loss():
    """With ``sum_detach=["ngrams"]`` the sum's loss reaches only the CNN; the objective's value is unchanged."""
    grads = {}
    for detach in ([], ["ngrams"]):
        torch.manual_seed(0)
        module = VDCNNClassifier(arch=BAG, branch_loss={"ngrams": 1.0}, sum_detach=detach, label_smoothing=0.0).eval()
        out = module.training_step(batch(), 0)
        out["loss"].backward()
        grads[tuple(detach)] = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
        if detach:
            assert module.hparams.sum_detach == ["ngrams"]
            assert VDCNNClassifier(**module.hparams).sum_detach == ["ngrams"]  # as load_from_checkpoint rebuilds it
            # the bag's gradient is now that of its own loss alone
            module.zero_grad()
            model = module.model
            bag = model.branch_logits(model.forward_features(batch()["input_ids"], batch()["lengths"]))["ngrams"]
            module._loss(bag, batch()["labels"]).backward()
            for name, p in model.named_parameters():
                if name.startswith(("ngrams.", "ngram_head.")):
                    torch.testing.assert_close(grads[("ngrams",)][name], p.grad)
        else:
            assert "sum_detach" not in module.hparams
    cnn = "head.fc.weight"
    torch.testing.assert_close(grads[()][cnn], grads[("ngrams",)][cnn])  # the CNN sees the same sum's loss
    assert not torch.allclose(grads[()]["ngram_head.fc.weight"], grads[("ngrams",)]["ngram_head.fc.weight"])


@pytest.mark.parametrize(
    "branch_loss, value, message",
    [
        ({"ngrams": 1}, "ngrams", "must be a list of branch names"),
        ({"ngrams": 1}, ["bag"], "unknown branch 'bag'"),
        (None, ["ngrams"], "'ngrams' would learn nothing"),
        ({"cnn": 1, "ngrams": 1}, ["cnn", "ngrams"], "with every branch detached the sum's loss trains nothing"),
    ],
)
def test_bad_sum_detach_is_one_line(branch_loss, value, message):
    with pytest.raises(UserError, match=message):
        VDCNNClassifier(arch=BAG, branch_loss=branch_loss, sum_detach=value)


def test_distillation_loss_is_the_softened_kl_and_zero_when_the_branches_agree():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = DISTILL_TEMPERATURE
    q = F.softmax(teacher / t, dim=1)
    expected = (q * (q.log() - F.log_softmax(student / t, dim=1))).sum(1).mean() * t * t
    assert float(distillation_loss(student, teacher)) == pytest.approx(float(expected), rel=1e-5)
    assert float(distillation_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)
    # Shifting every logit of a row by one constant changes no distribution.
    assert float(distillation_loss(teacher + 3.0, teacher)) == pytest.approx(0.0, abs=1e-5)


def test_distill_teaches_the_cnn_the_bags_predictions_and_leaves_the_bag_alone():
    """``distill`` adds the CNN's loss against the bag's softened predictions; the bag gets no gradient from it."""
    weights = {"sum": 0, "cnn": 1, "ngrams": 1, "distill": 0.5}
    grads = {}
    for with_distill in (False, True):
        torch.manual_seed(0)
        given = weights if with_distill else {k: w for k, w in weights.items() if k != "distill"}
        module = VDCNNClassifier(arch=BAG, branch_loss=given, label_smoothing=0.0).eval()  # no dropout
        data = batch()
        out = module.training_step(data, 0)
        model = module.model
        branches = model.branch_logits(model.forward_features(data["input_ids"], data["lengths"]))
        expected = module._loss(branches["cnn"], data["labels"]) + module._loss(branches["ngrams"], data["labels"])
        if with_distill:
            expected = expected + 0.5 * distillation_loss(branches["cnn"], branches["ngrams"])
            assert module.hparams.branch_loss == weights
            assert VDCNNClassifier(**module.hparams).branch_loss == {"cnn": 1.0, "ngrams": 1.0, "distill": 0.5}
        assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-4)
        assert set(out["branch_losses"]) == {"cnn", "ngrams"}  # the chance warning's: losses against the labels
        out["loss"].backward()
        grads[with_distill] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name in grads[True]:
        if name.startswith(("ngrams.", "ngram_head.")):
            torch.testing.assert_close(grads[True][name], grads[False][name])
    assert not torch.allclose(grads[True]["head.fc.weight"], grads[False]["head.fc.weight"])


def test_distill_needs_one_softmax():
    with pytest.raises(UserError, match="branch_loss.distill softens one softmax .* data.task=multiclass"):
        VDCNNClassifier(arch=BAG, branch_loss={"ngrams": 1, "distill": 1}, task="multilabel")
