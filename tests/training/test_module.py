import csv

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from vdcnn_res.model.config import ModelConfig
from vdcnn_res.training.module import VDCNNClassifier, branch_accuracies
from vdcnn_res.training.optim import OptimConfig

TINY = dict(num_classes=3, vocab_size=20, channels=(8, 8, 16, 16), hidden_size=16)


def _batch(n: int = 12, length: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, length + 1, (n,), generator=g)
    ids = torch.randint(2, 20, (n, length), generator=g)
    ids[torch.arange(length)[None, :] >= lengths[:, None]] = 0
    return {"input_ids": ids, "lengths": lengths, "labels": torch.arange(n) % 3, "index": torch.arange(n)}


def _module(**kwargs) -> VDCNNClassifier:
    return VDCNNClassifier(arch=ModelConfig(**TINY), **kwargs)


def test_learns_a_fixed_batch():
    torch.manual_seed(0)
    module = _module(optim=OptimConfig(name="adamw", lr=3e-3, schedule="constant"), label_smoothing=0.0)
    batch = _batch()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = module._loss(module(batch["input_ids"], batch["lengths"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_hparams_are_plain_data_and_rebuild_the_module():
    module = _module(label_names=["a", "b", "c"], label_smoothing=0.1)
    hp = dict(module.hparams)
    assert isinstance(hp["arch"], dict) and isinstance(hp["optim"], dict)
    again = VDCNNClassifier(**hp)
    assert again.arch == module.arch and again.label_names == ["a", "b", "c"]


@pytest.mark.parametrize("vocab_size, width", [(20, 16), (4459, 64)])
def test_hparams_hold_the_embedding_width_auto_chose(vocab_size, width):
    module = VDCNNClassifier(arch=ModelConfig(**{**TINY, "vocab_size": vocab_size}))
    assert module.hparams["arch"]["embedding_dim"] == width == module.model.embedding.embedding_dim
    assert VDCNNClassifier(**dict(module.hparams)).model.embedding.embedding_dim == width  # reloads the same


def test_a_fit_says_when_auto_widened_the_embedding(caplog):
    wide = VDCNNClassifier(arch=ModelConfig(**{**TINY, "vocab_size": 4459}))
    with caplog.at_level("INFO"):
        wide.setup("fit")
    assert "model.arch.embedding_dim=auto: 64 (a vocabulary of 4,459 symbols, more than 256" in caplog.text
    caplog.clear()
    for quiet in (_module(), VDCNNClassifier(**dict(wide.hparams))):  # the paper's width; a reloaded checkpoint
        with caplog.at_level("INFO"):
            quiet.setup("fit")
        assert "embedding_dim=auto" not in caplog.text


def test_label_names_must_match_num_classes():
    with pytest.raises(ValueError, match="label names"):
        _module(label_names=["a", "b"])


def test_label_smoothing_is_checked():
    with pytest.raises(ValueError, match="label_smoothing"):
        _module(label_smoothing=1.0)


def test_default_label_names_are_indices():
    assert _module().label_names == ["0", "1", "2"]


def test_predict_step_returns_probabilities_in_label_order():
    module = _module().eval()
    out = module.predict_step(_batch(), 0)
    assert out["probs"].shape == (12, 3)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(12))
    assert torch.equal(out["index"], torch.arange(12))


@pytest.mark.parametrize(
    "field, value, words",
    [("num_classes", 5, "num_classes=3"), ("vocab_size", 30, "vocab_size=20")],
)
def test_refuses_checkpoint_of_another_vocabulary_or_class_count(field, value, words):
    saved = _module()
    checkpoint = {"hyper_parameters": dict(saved.hparams)}
    checkpoint["hyper_parameters"]["arch"] = {**saved.hparams["arch"], field: value}
    with pytest.raises(ValueError, match=words):
        _module().on_load_checkpoint(checkpoint)


def test_refuses_checkpoint_of_other_labels():
    module = _module(label_names=["a", "b", "c"])
    other_labels = {"hyper_parameters": {**module.hparams, "label_names": ["x", "y", "z"]}}
    with pytest.raises(ValueError, match="labels"):
        module.on_load_checkpoint(other_labels)
    module.on_load_checkpoint({"hyper_parameters": dict(module.hparams)})  # same labels: fine


class _Batches(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.batches = [_batch(seed=i) for i in range(3)]

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self):
        return DataLoader(self.batches[:1], batch_size=None)

    def test_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


def test_fit_and_test_write_checkpoint_and_confusion_matrix(tmp_path, capsys):
    pl.seed_everything(7)
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False,
                         enable_model_summary=False, log_every_n_steps=1)
    module = _module(optim=OptimConfig(name="adamw", lr=1e-3, schedule="cosine", warmup_fraction=0.2),
                     label_names=["x", "y", "z"])
    trainer.fit(module, datamodule=_Batches())
    ckpt = trainer.checkpoint_callback.best_model_path
    loaded = torch.load(ckpt, weights_only=True)  # no pickled classes inside
    assert loaded["hyper_parameters"]["label_names"] == ["x", "y", "z"]
    restored = VDCNNClassifier.load_from_checkpoint(ckpt, weights_only=True)
    torch.testing.assert_close(restored.model.state_dict(), module.model.state_dict())

    assert loaded["run"] == {"precision": "32-true", "seed": 7}  # what test/predict evaluate with

    trainer.test(module, datamodule=_Batches())
    out = capsys.readouterr().out
    run = tmp_path / "lightning_logs" / "version_0"
    assert (run / "confusion_matrix_test.png").exists()
    metrics = trainer.callback_metrics
    assert metrics["test/error_pct"] == pytest.approx(100 * (1 - metrics["test/acc"].item()), abs=1e-3)
    assert {"test/f1/x", "test/f1/y", "test/f1/z", "test/f1_macro"} <= set(metrics)
    assert "test/loss" not in metrics  # the label-smoothed training objective, easily taken for the NLL
    # The summary: error, accuracy and macro-F1 in one line; the worst classes; the per-class table in a file.
    acc, f1 = 100 * metrics["test/acc"].item(), 100 * metrics["test/f1_macro"].item()
    assert f"Test error: {100 - acc:.2f} % (accuracy {acc:.2f} % on 36 texts), macro-F1 {f1:.2f} %" in out
    rows = list(csv.DictReader((run / "per_class_test.csv").open(encoding="utf-8")))
    assert [r["label"] for r in rows] == ["x", "y", "z"] and sum(int(r["support"]) for r in rows) == 36
    for row in rows:
        assert float(row["f1"]) == pytest.approx(metrics[f"test/f1/{row['label']}"].item(), abs=1e-4)
        assert float(row["recall"]) == pytest.approx(metrics[f"test/recall/{row['label']}"].item(), abs=1e-4)
    worst = sorted(rows, key=lambda r: (float(r["f1"]), r["label"]))[:2]
    assert "Worst classes by F1: " + ", ".join(f"{r['label']} {100 * float(r['f1']):.2f} %" for r in worst) in out
    assert f"Per-class scores: {run / 'per_class_test.csv'}" in out
    assert "Each branch alone" not in out  # the CNN alone has no branches to compare


def test_branch_accuracies_are_each_branchs_own_arg_max():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]],   # cnn says 0, bag says 1
                           [[0.0, 3.0], [0.0, 1.0]],   # both say 1
                           [[1.0, 0.0], [5.0, 0.0]]])  # both say 0
    assert branch_accuracies(logits, torch.tensor([1, 1, 0])) == {"cnn": pytest.approx(2 / 3), "ngrams": 1.0}
    assert branch_accuracies(logits[:, :1], torch.tensor([0, 1, 0])) == {"cnn": 1.0}
    with pytest.raises(ValueError, match="need"):
        branch_accuracies(logits[0], torch.tensor([0, 1]))


def test_a_two_branch_model_reports_each_branch_beside_the_model(tmp_path, capsys):
    """test logs and prints the CNN's and the bag's own accuracy, the same the branch logits give."""
    torch.manual_seed(0)
    module = VDCNNClassifier(arch=ModelConfig(**TINY, ngram_orders=(1, 2), ngram_buckets=64, ngram_dim=8),
                             label_names=["x", "y", "z"])
    with torch.no_grad():
        module.model.branch_weights.copy_(torch.tensor([0.5, 1.5]))  # as calibration may leave them
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=_Batches(), verbose=False)
    out = capsys.readouterr().out
    module.eval()
    with torch.no_grad():
        batches = _Batches().batches
        branches = [module.model.branch_logits(module.model.forward_features(b["input_ids"], b["lengths"])) for b in batches]
        labels = torch.cat([b["labels"] for b in batches])
        expected = {k: float((torch.cat([z[k] for z in branches]).argmax(1) == labels).double().mean()) for k in ("cnn", "ngrams")}
    metrics = trainer.callback_metrics
    assert metrics["test/acc_cnn"].item() == pytest.approx(expected["cnn"])
    assert metrics["test/acc_ngrams"].item() == pytest.approx(expected["ngrams"])
    model = 100 * metrics["test/acc"].item()
    assert (f"Each branch alone (the other's weight 0): CNN {100 * expected['cnn']:.2f} %, n-gram bag "
            f"{100 * expected['ngrams']:.2f} % (the model: {model:.2f} %)") in out
