"""model.class_weights: explicit or 'balanced' (from the training split's counts) weights of the training loss."""

import csv

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from fixtures.tiny import QUIET, TINY

from vdcnn_res.cli import main
from vdcnn_res.data import TextDataModule
from vdcnn_res.errors import UserError
from vdcnn_res.model.config import ModelConfig
from vdcnn_res.training.module import VDCNNClassifier, balanced_class_weights

ARCH = {"num_classes": 3, "vocab_size": 20, "channels": (8, 8, 16, 16), "hidden_size": 16}


def module(**kwargs) -> VDCNNClassifier:
    return VDCNNClassifier(arch=ModelConfig(**ARCH), **kwargs)


def batch(n: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.tensor([0] * 8 + [1] * 3 + [2])


def test_explicit_weights_weight_the_training_loss_only():
    m = module(class_weights=[1, 2, 4.5], label_smoothing=0.0)
    logits, labels = batch()
    expected = F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 2.0, 4.5]))
    torch.testing.assert_close(m._loss(logits, labels, weighted=True), expected)
    torch.testing.assert_close(m._loss(logits, labels), F.cross_entropy(logits, labels))  # validation / test
    assert m.hparams.class_weights == [1.0, 2.0, 4.5]
    assert "loss_weights" not in m.state_dict()  # hparams carry them; old checkpoints load strictly


def test_hparams_rebuild_the_module_with_its_weights():
    m = module(class_weights=[1, 2, 3])
    again = VDCNNClassifier(**dict(m.hparams))
    assert again.loss_weights.tolist() == [1.0, 2.0, 3.0]
    assert VDCNNClassifier(**dict(module(class_weights="balanced").hparams)).hparams.class_weights == "balanced"


def test_balanced_weights_formula():
    # n / (n_classes * count_c), as sklearn's class_weight='balanced'
    assert balanced_class_weights([80, 16, 4], ["a", "b", "c"]) == pytest.approx([100 / 240, 100 / 48, 100 / 12])
    assert balanced_class_weights([5, 5], ["a", "b"]) == [1.0, 1.0]


@pytest.mark.parametrize(
    "weights, words",
    [
        ([1, 2], r"model.class_weights has 2 weights for 3 classes; give one per class"),
        ([1, -2, 3], r"must all be positive and finite, got \[1.0, -2.0, 3.0\]"),
        ([1, 0, 3], r"must all be positive and finite"),
        ([1, float("nan"), 3], r"must all be positive and finite"),
        ("inverse", r"must be 'balanced' or a list of 3 weights, got 'inverse'"),
        ([1, "x", 3], r"must be numbers"),
    ],
)
def test_bad_weights_are_one_clear_error(weights, words):
    with pytest.raises(UserError, match=words):
        module(class_weights=weights)


def test_balanced_with_a_class_without_training_texts_is_refused():
    with pytest.raises(UserError, match=r"classes \['c'\] have no training texts, so no weight can balance them"):
        balanced_class_weights([10, 3, 0], ["a", "b", "c"])


def test_balanced_without_a_data_module_says_what_to_do():
    m = module(class_weights="balanced")
    m.trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(UserError, match=r"needs the training label counts from a data module.*explicit weights"):
        m.setup("fit")


def write_train(path, labels):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([[label, f"{label} text {i}"] for i, label in enumerate(labels)])
    return str(path)


def test_fit_derives_balanced_weights_from_the_training_split(tmp_path, one_thread):
    train = write_train(tmp_path / "train.csv", ["a"] * 24 + ["b"] * 6 + ["c"] * 2)
    dm = TextDataModule(train=train, valid_fraction=0.0, batch_size=8, max_length=32)
    m = VDCNNClassifier(
        arch=ModelConfig(num_classes=dm.num_classes, vocab_size=dm.vocab_size, channels=(8, 8, 16, 16), hidden_size=16),
        class_weights="balanced",
    )
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(m, datamodule=dm)
    assert m.loss_weights.tolist() == pytest.approx([32 / 72, 32 / 18, 32 / 6])


def test_cli_refuses_weights_of_the_wrong_length_on_one_line(tmp_path, in_repo, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *TINY, *QUIET, "--model.class_weights=[1, 2]", "--trainer.max_steps=1",
              "--trainer.logger=false", "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("vdcnn-res: error: model.class_weights has 2 weights for 4 classes; "
                       "give one per class in label-id order, or use 'balanced'")
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing half-written
