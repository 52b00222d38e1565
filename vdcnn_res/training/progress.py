"""What a training run prints: one line per epoch, one line when early stopping ends the run, and
a model summary with the model's FLOPs.

    epoch 3/30  steps 375  train loss 0.8123 acc 71.20 %  val acc 74.50 % macro-F1 73.91 %  1 min 23 s  (best)
    Early stopping ended the run after epoch 14/30: val/acc did not improve for 4 validations. Best epoch: 10 (val/acc 76.12 %).

Epochs count from 1, in these lines and in checkpoint names (``best-epoch=03-step=375.ckpt`` is
the model of the line ``epoch 3/30 ... (best)``). ``(best)`` marks the epoch whose model the
checkpoint callback kept as best, so it follows ``checkpoint.monitor`` (``val/loss`` in the series
recipe), not accuracy. An epoch without validation (``trainer.check_val_every_n_epoch`` > 1) shows
no validation numbers; with ``data.train_as_valid`` they are named ``train-eval`` (the training
split, evaluated in eval mode), not ``val``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelSummary
from pytorch_lightning.utilities.model_summary import summarize
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from vdcnn_res.model.flops import forward_flops

__all__ = ["EpochSummary", "FlopsModelSummary", "format_duration", "format_metric"]


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


def format_metric(name: str, value: float) -> str:
    """A logged metric as a person reads it: accuracies and F1 in %, losses with 4 decimals."""
    if math.isnan(value):
        return "-"
    last = name.rsplit("/", 1)[-1]
    return _percent(value) if last.startswith(("acc", "f1")) else f"{value:.4f}"


def _say(trainer: pl.Trainer, line: str) -> None:
    """One line on stdout, through the progress bar when there is one (so it does not break the bar)."""
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled:
        bar.print(line)
    else:
        print(line, flush=True)


class EpochSummary(pl.Callback):
    """Prints one line per training epoch: steps, mean training loss and accuracy, the numbers of
    the epoch's validation (none when the epoch did not validate), time since the start of fit;
    and one line when early stopping ends the run. Under DDP only rank 0 prints.

    Args:
        monitor: the metric ``(best)`` follows; None (default) follows the checkpoint callback,
            so ``(best)`` marks the epoch saved as the best checkpoint (without one: ``val/acc``).
        mode: ``max`` or ``min`` for an explicit ``monitor`` (default ``max``).
        chance_warning_after: share of the budget after which a training loss still at chance
            is warned about once; 0 or more than 1: never.

    It also logs ``epoch`` (counted from 1) at every training step, not to the loggers: checkpoint
    names read it (Lightning's ModelCheckpoint takes a logged ``epoch``), so they number epochs as
    these lines do.
    """

    def __init__(self, monitor: str | None = None, mode: Literal["max", "min"] = "max", chance_warning_after: float = 0.25) -> None:
        self.monitor = monitor
        self.mode = mode
        self.chance_warning_after = chance_warning_after  # share of the budget; 0 or more than 1: never
        self._losses: list[float] = []
        self._branch_losses: dict[str, list[torch.Tensor]] = {}  # each branch's own loss, where it has one
        self._start = 0.0
        self._warned = False
        self._validated = False
        self._best = math.nan
        self._best_path = ""
        self.best_epoch: int | None = None  # counted from 1, as in the lines
        self.best_value = math.nan

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._warned = False
        self._best = math.nan
        self.best_epoch, self.best_value = None, math.nan
        callback = trainer.checkpoint_callback
        self._best_path = getattr(callback, "best_model_path", "") or ""  # a resumed run's best so far

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses = []
        self._branch_losses = {}
        self._validated = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        loss = outputs.get("model_loss", outputs["loss"]) if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._losses.append(float(loss.detach()))
        for name, part in (outputs.get("branch_losses", {}) if isinstance(outputs, dict) else {}).items():
            self._branch_losses.setdefault(name, []).append(part)  # read once per epoch: no sync per step
        # ModelCheckpoint names files with a logged "epoch" when there is one: count from 1 there too.
        pl_module.log("epoch", float(trainer.current_epoch + 1), on_step=True, on_epoch=False, logger=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def _watched(self, trainer: pl.Trainer) -> tuple[str, str, Any]:
        """(metric, mode, checkpoint callback or None) that ``(best)`` follows."""
        callback = trainer.checkpoint_callback
        if self.monitor is None and callback is not None and getattr(callback, "monitor", None):
            return callback.monitor, callback.mode, callback
        return self.monitor or "val/acc", self.mode if self.monitor else "max", None

    def _improved(self, trainer: pl.Trainer, score: float) -> bool:
        monitor, mode, callback = self._watched(trainer)
        if callback is not None:  # the epoch whose model the checkpoint callback keeps as best
            path = getattr(callback, "best_model_path", "") or ""
            # Saved at this step already (at the end of this epoch's validation)? Then it says.
            if getattr(callback, "_last_global_step_saved", None) == trainer.global_step:
                improved, self._best_path = bool(path) and path != self._best_path, path
                return improved
            # Else it saves at the end of this training epoch, after this callback (Lightning runs
            # checkpoint callbacks last): a new best if the score beats its best so far.
            self._best_path = path
            best = getattr(callback, "best_model_score", None)
            if math.isnan(score) or getattr(callback, "save_top_k", 1) == 0:
                return False
            if best is None:
                return True
            return score > float(best) if mode == "max" else score < float(best)
        if math.isnan(score):
            return False
        if math.isnan(self._best) or (score > self._best if mode == "max" else score < self._best):
            self._best = score
            return True
        return False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics

        def metric(name: str) -> float:
            return float(metrics[name]) if name in metrics else math.nan

        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        monitor = self._watched(trainer)[0]
        improved = self._validated and self._improved(trainer, metric(monitor))
        if improved:
            self.best_epoch, self.best_value = trainer.current_epoch + 1, metric(monitor)
        cap = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        line = (
            f"epoch {trainer.current_epoch + 1}{cap}  steps {trainer.global_step}  "
            f"train loss {loss:.4f} acc {_percent(metric('train/acc'))}  "
        )
        if self._validated:
            name = "train-eval" if _train_as_valid(trainer) else "val"
            shown_loss = f"loss {metric('val/loss'):.4f} " if monitor == "val/loss" else ""
            line += f"{name} {shown_loss}acc {_percent(metric('val/acc'))} macro-F1 {_percent(metric('val/f1_macro'))}  "
        line += format_duration(time.perf_counter() - self._start) + ("  (best)" if improved else "")
        _say(trainer, line)
        branch_losses = {k: _plateau_loss(torch.stack(v).tolist()) for k, v in self._branch_losses.items() if v}
        self._warn_if_at_chance(trainer, pl_module, _plateau_loss(self._losses), branch_losses)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """One line when early stopping ended the run: after which epoch, why, and the best epoch."""
        if not trainer.is_global_zero:
            return
        stopper = next((cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping) and _stopped(cb)), None)
        capped = bool(trainer.max_epochs and trainer.max_epochs > 0)
        if stopper is None or (capped and stopper.stopped_epoch + 1 >= trainer.max_epochs):
            return  # the run ended at its cap anyway (Lightning says so)
        cap = f"/{trainer.max_epochs}" if capped else ""
        why = getattr(stopper, "stopping_reason_message", None) or ""
        if getattr(getattr(stopper, "stopping_reason", None), "name", "") == "PATIENCE_EXHAUSTED" or not why:
            why = f"{stopper.monitor} did not improve for {stopper.patience} validations"
        why = why.replace(" Signaling Trainer to stop.", "").rstrip(". ")
        line = f"Early stopping ended the run after epoch {stopper.stopped_epoch + 1}{cap}: {why}."
        if self.best_epoch is not None:
            monitor = self._watched(trainer)[0]
            line += f" Best epoch: {self.best_epoch} ({monitor} {format_metric(monitor, self.best_value)})."
        _say(trainer, line)

    def _warn_if_at_chance(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: float, branch_losses: dict[str, float] | None = None
    ) -> None:
        """One warning when the training loss is still at chance (ln C, the loss of a uniform guess
        over C classes, label smoothing included) after a share of the budget: the plateau of
        docs/longdoc_plateau.md. Classes of very unequal size make the prior's loss lower than
        ln C, so this check only sees a run stuck at a uniform guess.

        ``loss`` and ``branch_losses`` are :func:`_plateau_loss` values (NaN: still falling, not
        judged). ``branch_losses`` are the own losses of the branches trained on one
        (``model.branch_loss``). A CNN branch stuck at chance is named even while the bag learns:
        the bag's progress would otherwise hide a dead head. The bag is not judged (a linear model
        on weak signal learns late, it does not get stuck). The model's loss is checked only
        when it is trained (``branch_loss.sum`` above 0)."""
        arch = getattr(pl_module, "arch", None)
        classes = getattr(arch, "num_classes", 0)
        if self._warned or classes < 2 or self.chance_warning_after <= 0:
            return
        if trainer.max_epochs and trainer.max_epochs > 0:
            done = (trainer.current_epoch + 1) / trainer.max_epochs
        elif trainer.max_steps and trainer.max_steps > 0:
            done = trainer.global_step / trainer.max_steps
        else:
            return
        chance = math.log(classes)
        if done < self.chance_warning_after:
            return
        # (what, whose head, its loss, the head setting to try where the head is not centred)
        candidates = [("the training loss", "the head", loss, "--model.arch.head_norm batch or layer")] if getattr(pl_module, "sum_weight", 1.0) > 0 else []  # fmt: skip
        if "cnn" in (branch_losses or {}):  # the bag has no head to die; on weak signal it is just slow
            # the CNN on its own loss (the apart overlay): the long-document setting of docs/results.md §21
            fix = "--model.arch.head_norm layer --model.arch.hidden_size 512"
            candidates.append(("the CNN branch's own training loss", "its head", branch_losses["cnn"], fix))
        stuck = next((c for c in candidates if not math.isnan(c[2]) and c[2] >= 0.97 * chance), None)
        if stuck is None:
            return
        self._warned = True
        what, head, value, fix = stuck
        centred = getattr(arch, "head_norm", "none") != "none"
        advice = "try a lower --model.optim.lr" if centred else f"try {fix}, or a lower --model.optim.lr"
        warnings.warn(
            f"{what} ({value:.3f} over the epoch's last steps) is still at chance (ln {classes} = {chance:.3f}) after {100 * done:.0f} % of the "
            f"budget: {head} is probably stuck (docs/longdoc_plateau.md); {advice}",
            stacklevel=2,
        )


def _plateau_loss(losses: Sequence[float]) -> float:
    """The mean loss over an epoch's last quarter of steps, or NaN while it is still falling (5 % or
    more below the quarter before): a head that starts far above chance and is learning is not
    stuck, one whose loss has flattened out at chance is (docs/longdoc_plateau.md §16)."""
    if not losses:
        return math.nan
    quarter = max(1, len(losses) // 4)
    recent = sum(losses[-quarter:]) / quarter
    before = losses[-2 * quarter : -quarter]
    if before and recent < 0.95 * sum(before) / len(before):
        return math.nan
    return recent


def _train_as_valid(trainer: pl.Trainer) -> bool:
    """Whether the run validates on its own training split (the series recipe's data.train_as_valid)."""
    hparams = getattr(getattr(trainer, "datamodule", None), "hparams", None) or {}
    return bool(hparams.get("train_as_valid"))


def _stopped(callback: EarlyStopping) -> bool:
    """Whether this early-stopping callback ended the run."""
    reason = getattr(callback, "stopping_reason", None)
    if reason is not None:
        return getattr(reason, "name", "") != "NOT_STOPPED"
    return callback.stopped_epoch > 0


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
