"""The warning when a network scores much worse on its training batches in eval mode than in
training mode (normalisation statistics that differ between the two: issue 39)."""

import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from torch.utils.data import DataLoader

from vdcnn_res.model.config import ModelConfig
from vdcnn_res.training.mode_gap import EvalModeGap, eval_mode_accuracy
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.optim import OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    """Three classes told apart by the token that fills each text, lengths 10-40."""
    out = []
    for seed in range(n):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(12) % 3
        lengths = torch.randint(10, 41, (12,), generator=g)
        ids = (labels[:, None] + 2).expand(12, 40).clone()
        ids[torch.arange(40)[None, :] >= lengths[:, None]] = 0
        out.append({"input_ids": ids, "lengths": lengths, "labels": labels, "index": torch.arange(12)})
    return out


class _Data(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(_batches(), batch_size=None)


class _BreakRunningStatistics(pl.Callback):
    """Runs before EvalModeGap: eval-mode BatchNorm then normalises with statistics far off."""

    def on_train_end(self, trainer, pl_module):
        for m in pl_module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.fill_(50.0)


def _fit(tmp_path, broken: bool, masked_norm: bool = True, averaging: bool = False) -> tuple[EvalModeGap, list[str]]:
    pl.seed_everything(0)
    gap = EvalModeGap(threshold=10.0)
    callbacks = ([_BreakRunningStatistics()] if broken else []) + ([EMAWeightAveraging()] if averaging else []) + [gap]
    trainer = pl.Trainer(max_epochs=15, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
                         limit_val_batches=0)  # fmt: skip
    module = VDCNNClassifier(
        arch=ModelConfig(num_classes=3, vocab_size=8, channels=(8, 8, 16, 16), hidden_size=16, masked_norm=masked_norm),
        optim=OptimConfig(name="adamw", lr=3e-3, schedule="constant"),
        label_smoothing=0.0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=_Data())
    return gap, [str(w.message) for w in caught if "eval mode" in str(w.message)]


def test_warns_when_eval_mode_is_far_below_training_mode(tmp_path):
    gap, messages = _fit(tmp_path, broken=True)
    train_pct, eval_pct = gap.last
    assert train_pct > eval_pct + 10
    assert len(messages) == 1 and "data.normalize zscore" in messages[0] and f"{eval_pct:.1f} % in eval mode" in messages[0]


def test_the_warning_names_masked_norm_when_it_is_off(tmp_path):
    _, messages = _fit(tmp_path, broken=True, masked_norm=False)
    assert len(messages) == 1 and "set model.arch.masked_norm true" in messages[0]


def test_the_warning_names_weight_averaging_when_a_callback_averages(tmp_path):
    _, messages = _fit(tmp_path, broken=True, averaging=True)
    assert len(messages) == 1 and "with weight averaging" in messages[0] and "update_bn" in messages[0]


def test_silent_when_the_modes_agree(tmp_path):
    gap, messages = _fit(tmp_path, broken=False)
    train_pct, eval_pct = gap.last
    assert train_pct > 90 and eval_pct > 90  # it learnt, and eval mode agrees
    assert messages == []


def test_eval_mode_accuracy_counts_at_most_max_batches_and_restores_the_mode():
    module = VDCNNClassifier(arch=ModelConfig(num_classes=3, vocab_size=8, channels=(8, 8, 16, 16), hidden_size=16))
    module.train()
    acc, n = eval_mode_accuracy(module, _batches(3), max_batches=2)
    assert n == 24 and 0 <= acc <= 100 and module.training
