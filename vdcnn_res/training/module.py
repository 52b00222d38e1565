"""LightningModule around the pure VDCNN: loss, metrics, optimizers, checkpoint contents."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from vdcnn_res.errors import UserError
from vdcnn_res.model import ModelConfig, build_model
from vdcnn_res.training.optim import OptimConfig, build_optimizer, build_scheduler
from vdcnn_res.training.plotting import plot_confusion_matrix, write_confusion_csv


class VDCNNClassifier(pl.LightningModule):
    """Trains a VDCNN text classifier.

    `arch.num_classes`, `arch.vocab_size`, `arch.padding_idx` and `label_names` are linked from
    the data module by the CLI; nobody types them. The tokenizer travels in the checkpoint as
    the data module's state, so a checkpoint alone can encode new texts.

    ``class_weights`` weights the training loss per class: ``[w1, ...]`` (one positive weight
    per class, label-id order), or ``"balanced"``: ``n / (n_classes * count_c)`` from the
    training split's label counts, computed when fit starts from the data module's
    ``class_counts`` (the counts of the data actually trained on, also under DDP, where every
    rank holds the whole split). Validation and test losses stay unweighted, so runs with and
    without weights compare on the same footing.
    """

    def __init__(
        self,
        arch: ModelConfig = ModelConfig(),  # a dataclass default makes `model.arch.*` a config group
        optim: OptimConfig = OptimConfig(),
        label_smoothing: float = 0.1,  # docs/results.md; the paper used none
        label_names: list[str] | None = None,
        class_weights: Literal["balanced"] | list[float] | None = None,
    ) -> None:
        super().__init__()
        # Checkpoints hold plain dicts, never pickled classes, so they load with weights_only.
        arch = ModelConfig.from_dict(arch)
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_names is not None and len(label_names) != arch.num_classes:
            raise UserError(
                f"{len(label_names)} label names given for arch.num_classes={arch.num_classes}; "
                "let the CLI link both from the data module instead of typing them"
            )
        weights = _check_class_weights(class_weights, arch.num_classes)
        self.save_hyperparameters(
            {
                "arch": asdict(arch),
                "optim": asdict(optim),
                "label_smoothing": label_smoothing,
                "label_names": list(label_names) if label_names else None,
                "class_weights": class_weights if class_weights == "balanced" or weights is None else weights,
            }
        )
        self.arch, self.optim = arch, optim
        self.in_range_test = False  # True while lr: auto's range test runs (training/lr_finder.py)
        self.label_names = list(label_names) if label_names else [str(i) for i in range(arch.num_classes)]
        self.model = build_model(arch)
        # Not in the state dict: explicit weights live in hparams, balanced ones are derived at fit.
        self.register_buffer("loss_weights", None if weights is None else torch.tensor(weights), persistent=False)

        n = arch.num_classes
        self.train_acc = MulticlassAccuracy(n, average="micro")
        self.val_acc = MulticlassAccuracy(n, average="micro")
        self.val_f1 = MulticlassF1Score(n, average="macro")
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.test_f1 = MulticlassF1Score(n, average="macro")
        self.test_class_f1 = MulticlassF1Score(n, average="none")
        self.test_confusion = MulticlassConfusionMatrix(n)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, lengths)  # (B, num_classes) logits

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.get("class_weights") == "balanced":
            counts = getattr(self.trainer.datamodule, "class_counts", None)
            if counts is None:
                raise UserError(
                    "model.class_weights=balanced needs the training label counts from a data module "
                    "(TextDataModule.class_counts); give explicit weights [w1, ...] instead"
                )
            weights = balanced_class_weights(counts, self.label_names)
            self.loss_weights = torch.tensor(weights, device=self.device)
            rank_zero_info(
                "Class weights (balanced, from the training split's label counts): "
                + ", ".join(f"{name} {w:.3g}" for name, w in zip(self.label_names, weights))
            )

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, weighted: bool = False) -> torch.Tensor:
        weight = None
        if weighted and self.hparams.get("class_weights") is not None:
            if self.loss_weights is None:
                raise RuntimeError("class_weights='balanced' is resolved in setup('fit'); call it before training_step")
            weight = self.loss_weights.to(logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["lengths"])
        loss = self._loss(logits, batch["labels"], weighted=True)
        self._stop_if_diverged(loss)
        self.train_acc(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["lengths"])
        labels = batch["labels"]
        self.log("val/loss", self._loss(logits, labels), sync_dist=True, batch_size=len(labels))
        self.val_acc(logits, labels)
        self.val_f1(logits, labels)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/f1_macro", self.val_f1)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["input_ids"], batch["lengths"])
        labels = batch["labels"]
        self.log("test/loss", self._loss(logits, labels), sync_dist=True, batch_size=len(labels))
        for metric in (self.test_acc, self.test_f1, self.test_class_f1, self.test_confusion):
            metric.update(logits, labels)

    def on_test_epoch_end(self) -> None:
        # compute() syncs the states of all ranks, so every number covers the whole split.
        acc = self.test_acc.compute()
        class_f1 = self.test_class_f1.compute()
        confusion = self.test_confusion.compute()
        self.log("test/acc", acc)
        self.log("test/error_pct", 100.0 * (1.0 - acc))
        self.log("test/f1_macro", self.test_f1.compute())
        recall = confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()  # rows: true labels
        for name, f1, r in zip(self.label_names, class_f1, recall):
            self.log(f"test/f1/{name}", f1)
            self.log(f"test/recall/{name}", r)
        for metric in (self.test_acc, self.test_f1, self.test_class_f1, self.test_confusion):
            metric.reset()
        if self.trainer.is_global_zero:
            n_texts = int(confusion.sum())
            print(f"\nTest error: {100.0 * (1.0 - float(acc)):.2f} % "
                  f"(accuracy {100.0 * float(acc):.2f} % on {n_texts} texts)")
            out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            png = plot_confusion_matrix(confusion.cpu(), self.label_names, out_dir / "confusion_matrix_test.png")
            table = write_confusion_csv(confusion.cpu(), self.label_names, out_dir / "confusion_matrix_test.csv")
            print(f"Confusion matrix: {png} (counts: {table.name})")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["lengths"])
        return {"index": batch["index"], "probs": logits.float().softmax(dim=-1)}

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.model, self.optim)
        scheduler = build_scheduler(optimizer, self.optim, self.trainer.estimated_stepping_batches)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _stop_if_diverged(self, loss: torch.Tensor) -> None:
        """End the run with a UserError, before the update, when the loss is NaN or infinite.

        The decision is reduced over all ranks, so under DDP every rank raises at the same step
        and none waits in a collective. Nothing is saved after the raise (checkpoints are written
        at validation, which does not run), so best and last stay the last finite model.
        """
        if self._trainer is None:
            return
        diverged = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        if not diverged:
            return
        if self.in_range_test:  # a rate of the range test diverged: that ends the test, not the run
            self.trainer.should_stop = True
            return
        callback = self.trainer.checkpoint_callback
        last = callback.last_model_path or callback.best_model_path if callback is not None else ""
        self._diverged = (
            f"the training loss became {float(loss.detach())} at step {self.trainer.global_step} (epoch {self.current_epoch}): "
            f"training stopped without saving these weights; lower model.optim.lr (now {self.optim.lr:g}) "
            "or clip gradients (--trainer.gradient_clip_val=1.0), then start again"
            + (f" or resume from the last good checkpoint: --ckpt_path {last}" if last else "")
        )
        raise UserError(self._diverged)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "_diverged", None):  # e.g. ModelCheckpoint(save_on_exception=True): never save NaN weights
            raise UserError(self._diverged)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _check_compatible(checkpoint.get("hyper_parameters", {}), self.hparams)


def _check_class_weights(class_weights: Any, num_classes: int) -> list[float] | None:
    """Explicit weights as floats (checked), None for none or 'balanced' (derived at fit)."""
    if class_weights is None or class_weights == "balanced":
        return None
    if isinstance(class_weights, str) or not isinstance(class_weights, (list, tuple)):
        raise UserError(f"model.class_weights must be 'balanced' or a list of {num_classes} weights, got {class_weights!r}")
    if len(class_weights) != num_classes:
        raise UserError(
            f"model.class_weights has {len(class_weights)} weights for {num_classes} classes; "
            "give one per class in label-id order, or use 'balanced'"
        )
    try:
        weights = [float(w) for w in class_weights]
    except (TypeError, ValueError):
        raise UserError(f"model.class_weights must be numbers, got {class_weights!r}") from None
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError(f"model.class_weights must all be positive and finite, got {weights}")
    return weights


def balanced_class_weights(counts: Any, label_names: list[str]) -> list[float]:
    """``n / (n_classes * count_c)`` per class (sklearn's 'balanced'); a class without texts is an error."""
    counts = [int(c) for c in counts]
    if len(counts) != len(label_names):
        raise UserError(f"{len(counts)} class counts for {len(label_names)} classes; the data and the model disagree")
    missing = [name for name, c in zip(label_names, counts) if c <= 0]
    if missing:
        raise UserError(
            f"class_weights=balanced: class(es) {missing} have no training texts, so no weight can balance them; "
            "add training texts for them or give explicit weights"
        )
    n = sum(counts)
    return [n / (len(counts) * c) for c in counts]


def _check_compatible(saved: dict, current: Any) -> None:
    """Refuse a checkpoint trained on another vocabulary size or label set than the data given.

    Runs before the weights are loaded, so the user sees this instead of a shape mismatch.
    """
    saved_arch, arch = saved.get("arch", {}), current["arch"]
    for key in ("num_classes", "vocab_size"):
        if key in saved_arch and saved_arch[key] != arch[key]:
            raise UserError(
                f"the checkpoint was trained with {key}={saved_arch[key]} but the data gives "
                f"{key}={arch[key]}: use the data (and tokenizer settings) it was trained on"
            )
    if saved.get("label_names") and current.get("label_names") and saved["label_names"] != current["label_names"]:
        raise UserError(
            f"the checkpoint's labels {saved['label_names']} differ from the data's "
            f"{current['label_names']}: use the data it was trained on"
        )
