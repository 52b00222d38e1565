"""Training callbacks that are not Lightning's own."""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl

from vdcnn_res.errors import UserError

__all__ = ["CurveRecorder", "GivenBranchWeights"]


class CurveRecorder(pl.Callback):
    """Per-step training loss and per-epoch summaries; stored in checkpoints so a resumed cell keeps them."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[dict[str, float]] = []
        self.fit_seconds = 0.0
        self._epoch_loss: list[float] = []
        self._val_acc = math.nan
        self._start = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "fit_seconds": self.fit_seconds + self._elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [tuple(s) for s in state["steps"]]
        self.epochs = list(state["epochs"])
        self.fit_seconds = float(state["fit_seconds"])

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start if self._start else 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds += self._elapsed()
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_loss = []
        self._val_acc = math.nan  # an epoch that does not validate has no validation error, not the last one

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        loss = outputs.get("model_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        self._epoch_loss.append(value)
        self.steps.append((trainer.global_step, value))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self._val_acc = float(metrics["val/acc"]) if "val/acc" in metrics else math.nan

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "train_loss": sum(self._epoch_loss) / max(1, len(self._epoch_loss)),
            "train_err": 100 * (1 - float(metrics["train/acc"])) if "train/acc" in metrics else math.nan,
            "val_err": 100 * (1 - self._val_acc),
        }
        self.epochs.append(row)
        print(
            f"  {self.label} epoch {row['epoch']}/{trainer.max_epochs}: train loss {row['train_loss']:.4f}, "
            f"train error {row['train_err']:.2f} %"
            + ("" if math.isnan(row["val_err"]) else f", val error {row['val_err']:.2f} %")
            + " "
            f"({self.fit_seconds + self._elapsed():.0f} s)",
            flush=True,
        )


class GivenBranchWeights(pl.Callback):
    """Calibration keeps these branch weights (``{"cnn": 1, "ngrams": 0}``: the CNN alone) and fits
    only the temperature of their mix; `vdcnn-res calibrate --branch_weights` adds it to `validate`."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(pl_module.model.branch_names) < 2:
            raise UserError("--branch_weights: this model has one branch (the CNN, no n-gram bag), so it has no branch weights")
        try:
            pl_module.given_branch_weights = pl_module.model.branch_weight_values(self.weights)
        except ValueError as err:
            raise UserError(f"--branch_weights: {err}") from None
