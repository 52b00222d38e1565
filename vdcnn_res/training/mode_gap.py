"""A warning when a model scores much worse on its own training batches in eval mode than in
training mode: the sign of normalisation statistics that differ between the two (BatchNorm's
running statistics against each batch's own, e.g. plain BatchNorm over unequal-length padded
batches), which otherwise shows only as a test accuracy far below the training accuracy."""

from __future__ import annotations

import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging

__all__ = ["EvalModeGap", "eval_mode_accuracy"]


def eval_mode_accuracy(module: pl.LightningModule, batches: Any, max_batches: int) -> tuple[float, int]:
    """Accuracy (%) and count of the module's network in eval mode on up to ``max_batches`` batches
    (dicts with ``input_ids``, ``lengths``, ``labels``, as the data modules make them)."""
    was_training = module.training
    module.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= max_batches:
                    break
                batch = module.transfer_batch_to_device(batch, module.device, 0)
                logits = module.model(batch["input_ids"], batch["lengths"])
                correct += int((logits.argmax(dim=1) == batch["labels"]).sum())
                total += len(batch["labels"])
    finally:
        module.train(was_training)
    return (100.0 * correct / total if total else float("nan")), total


class EvalModeGap(pl.Callback):
    """After fit: the last epoch's training accuracy (training mode, as logged in ``train/acc``)
    against the accuracy of the same network in eval mode on up to ``max_batches`` training
    batches; one warning when eval mode is more than ``threshold`` points lower.

    Dropout makes training mode score *lower*, so only the other direction is reported. Single-label
    models only (multi-label accuracy is a subset accuracy with tuned thresholds).
    """

    def __init__(self, threshold: float = 10.0, max_batches: int = 20) -> None:
        self.threshold = threshold
        self.max_batches = max_batches
        self.last: tuple[float, float] | None = None  # (training-mode %, eval-mode %) of the last fit

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_acc = trainer.callback_metrics.get("train/acc")
        if train_acc is None or getattr(pl_module, "multilabel", False) or trainer.num_training_batches == 0:
            return
        loader = trainer.train_dataloader
        if loader is None:
            return
        with trainer.precision_plugin.forward_context():
            eval_acc, n = eval_mode_accuracy(pl_module, loader, self.max_batches)
        if not n:
            return
        self.last = (100.0 * float(train_acc), eval_acc)
        gap = self.last[0] - eval_acc
        if gap > self.threshold and trainer.is_global_zero:
            masked = getattr(getattr(pl_module, "arch", None), "masked_norm", True)
            fix = (
                "set model.arch.masked_norm true (inputs of unequal length)"
                if not masked
                else "inputs of very different scales make each batch's statistics differ (for series: "
                "data.normalize zscore), as do small batches"
            )
            if any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks):
                # Lightning's weight averaging (EMA, SWA) leaves BatchNorm's statistics those of the
                # last weights, not of the averaged ones it evaluates with.
                fix = (
                    "with weight averaging, the averaged weights need their own BatchNorm statistics "
                    "(torch.optim.swa_utils.update_bn); else drop the averaging callback, or " + fix
                )
            warnings.warn(
                f"on {n} training examples the model scores {eval_acc:.1f} % in eval mode against "
                f"{self.last[0]:.1f} % in training mode (last epoch): BatchNorm's running statistics "
                f"do not match its batch statistics, so test accuracy will be low too; {fix}",
                stacklevel=1,  # attributed to this file: the CLI prints the toolkit's warnings as one line
            )
