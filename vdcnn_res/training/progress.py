"""What a training run prints: one line per epoch, and a model summary with the model's FLOPs.

    epoch 3/30  steps 375  train loss 0.8123 acc 71.20 %  val acc 74.50 % macro-F1 73.91 %  1 min 23 s  (best)
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import summarize
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from vdcnn_res.model.flops import forward_flops

__all__ = ["EpochSummary", "FlopsModelSummary", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f} %"


class EpochSummary(pl.Callback):
    """Prints one line per training epoch: steps, mean training loss and accuracy, validation
    accuracy and macro-F1 (of the epoch's last validation), time since the start of fit.

    The line goes through the progress bar when there is one (so it does not break the bar),
    else to stdout; under DDP only rank 0 prints.
    """

    def __init__(self, monitor: str = "val/acc", chance_warning_after: float = 0.25) -> None:
        self.monitor = monitor
        self.chance_warning_after = chance_warning_after  # share of the budget; 0 or more than 1: never
        self._losses: list[float] = []
        self._start = 0.0
        self._best = -math.inf
        self._warned = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._best = -math.inf
        self._warned = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        loss = outputs.get("model_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss.detach()))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics

        def metric(name: str) -> float:
            return float(metrics[name]) if name in metrics else math.nan

        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        val_acc = metric("val/acc")
        score = metric(self.monitor)
        improved = not math.isnan(score) and score > self._best
        if improved:
            self._best = score
        cap = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        line = (
            f"epoch {trainer.current_epoch + 1}{cap}  steps {trainer.global_step}  "
            f"train loss {loss:.4f} acc {_percent(metric('train/acc'))}  "
            f"val acc {_percent(val_acc)} macro-F1 {_percent(metric('val/f1_macro'))}  "
            f"{format_duration(time.perf_counter() - self._start)}"
            + ("  (best)" if improved else "")
        )
        bar = trainer.progress_bar_callback
        if bar is not None and bar.is_enabled:
            bar.print(line)
        else:
            print(line, flush=True)
        self._warn_if_at_chance(trainer, pl_module, loss)

    def _warn_if_at_chance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: float) -> None:
        """One warning when the training loss is still at chance (ln C, the loss of a uniform guess
        over C classes, label smoothing included) after a share of the budget: the plateau of
        docs/longdoc_plateau.md. Classes of very unequal size make the prior's loss lower than
        ln C, so this check only sees a run stuck at a uniform guess."""
        arch = getattr(pl_module, "arch", None)
        classes = getattr(arch, "num_classes", 0)
        if self._warned or classes < 2 or math.isnan(loss) or self.chance_warning_after <= 0:
            return
        if trainer.max_epochs and trainer.max_epochs > 0:
            done = (trainer.current_epoch + 1) / trainer.max_epochs
        elif trainer.max_steps and trainer.max_steps > 0:
            done = trainer.global_step / trainer.max_steps
        else:
            return
        chance = math.log(classes)
        if done >= self.chance_warning_after and loss >= 0.97 * chance:
            self._warned = True
            centred = getattr(arch, "head_norm", "none") != "none"
            warnings.warn(
                f"the training loss ({loss:.3f}) is still at chance (ln {classes} = {chance:.3f}) after "
                f"{100 * done:.0f} % of the budget: the head is probably stuck (docs/longdoc_plateau.md); "
                + ("try a lower --model.optim.lr" if centred else "try --model.arch.head_norm batch, or a lower --model.optim.lr"),
                stacklevel=2,
            )


class FlopsModelSummary(ModelSummary):
    """Lightning's model summary with the FLOPs column filled by the project's own counter.

    Lightning counts FLOPs only for a module with an ``example_input_array`` (so it shows 0
    here), and it warns that mixed precision is "not supported" by its size estimate. This
    summary counts one forward pass over a text of ``data.max_length`` characters with
    :func:`vdcnn_res.model.flops.forward_flops` (convolutions and matmuls) and reports parameter
    sizes in float32, which is how the weights are stored under mixed precision too.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._max_depth:
            return
        with warnings.catch_warnings():  # the size estimate is float32 weights, true under -mixed as well
            warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
            summary = summarize(pl_module, max_depth=self._max_depth)
        hparams = getattr(trainer.datamodule, "hparams", None) or {}
        length = int(hparams.get("max_length") or 0)
        model = getattr(pl_module, "model", None)
        flops = forward_flops(model, length) if model is not None and length > 0 else 0
        columns = []
        for name, values in summary._get_summary_data():
            if name == "FLOPs":
                if not flops:
                    continue  # nothing to say: leave the column out
                values = [_human(flops) if n == "model" else "-" for n in summary.layer_names]
                values += ["-"] * (len(columns[0][1]) - len(values))
                name = f"FLOPs/text ({length} chars)"
            columns.append((name, values))
        if not trainer.is_global_zero:
            return
        table = _format_summary_table(
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            flops,
            *columns,
        )
        # the last line is Lightning's "Total Flops", meaningless without a text length
        lines = table.splitlines()[:-1]
        if flops:
            lines.append(f"{_human(flops):<10}FLOPs per text of {length} characters (forward, convolutions and matmuls)")
        rank_zero_info("\n" + "\n".join(lines))


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
