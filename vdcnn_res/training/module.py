"""LightningModule around the pure VDCNN: loss, metrics, optimizers, checkpoint contents.

Multi-label (``task="multilabel"``, linked from data.task): one sigmoid per label with
BCE-with-logits; ``class_weights`` are then positive-class weights. Validation reports subset
accuracy (``val/acc``, what checkpoints and early stopping watch) and micro/macro F1 at the
global ``threshold``; every validation also tunes one threshold per label on its own
probabilities (training/calibration.py ``tune_thresholds``), and a checkpoint saved at that step
stores them as ``label_thresholds`` (so test, predict, the Predictor and exports use them).
Temperature scaling is skipped for multi-label models, with one line at the end of fit.

Calibration (training/calibration.py): every validation fits a temperature on its own logits,
and a checkpoint saved at that step (best and last are saved right after a validation) stores
it as ``model.temperature``; with the n-gram bag the fit also weighs the two branches' logits
(``model.branch_weights``, kept only when the mix wins on held-out validation texts). Training
itself always runs with temperature 1 and equal weights. Test reports NLL and ECE before and
after the checkpoint's temperature (and accuracy with equal weights when they differ), each
branch's own accuracy (``branch_accuracies``) and draws a reliability diagram.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelStatScores,
)

from vdcnn_res.errors import UserError
from vdcnn_res.model import ModelConfig, build_model
from vdcnn_res.training.calibration import (
    MULTILABEL_NO_TEMPERATURE,
    N_BINS,
    Calibration,
    LogitCollector,
    Thresholds,
    calibrate,
    check_threshold,
    nll,
    reliability_bins,
    tune_thresholds,
)
from vdcnn_res.training.optim import OptimConfig, build_optimizer, build_scheduler
from vdcnn_res.training.plotting import plot_confusion_matrix, plot_reliability, write_confusion_csv


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

    ``branch_loss`` (with the n-gram bag), e.g. ``{"ngrams": 1.0}``, adds a branch's own loss, on
    its own logits (``VDCNN.branch_logits``: ``cnn``, ``ngrams``), times its weight to the loss of
    their sum, as in Wang et al. 2020 ("What makes training multi-modal classification networks
    hard?"): trained only through the sum, the CNN memorises the training split first and the bag
    stops learning half-way (docs/results.md §9). ``"sum"`` weighs the loss of the summed logits
    (1 unless given): ``{"sum": 0, "cnn": 1, "ngrams": 1}`` trains two classifiers side by side,
    each on its own loss, whose logits are added at prediction. ``sum_detach`` names branches
    whose logits enter the summed logits' loss without gradient: ``["ngrams"]`` trains the bag
    only on its own loss (as if alone) and the CNN, through the sum, on what the bag gets wrong.
    ``"distill"`` weighs the CNN's loss against the bag's predictions, both softened at
    ``DISTILL_TEMPERATURE`` (:func:`distillation_loss`, Hinton et al. 2015): the bag teaches the
    CNN, and gets no gradient from it, so the CNN alone learns what the bag knows.
    """

    def __init__(
        self,
        arch: ModelConfig = ModelConfig(),  # a dataclass default makes `model.arch.*` a config group
        optim: OptimConfig = OptimConfig(),
        label_smoothing: float = 0.1,  # docs/results.md; the paper used none
        label_names: list[str] | None = None,
        class_weights: Literal["balanced"] | list[float] | None = None,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        threshold: float | None = None,
        branch_loss: dict[str, float] | None = None,
        sum_detach: list[str] | None = None,
    ) -> None:
        super().__init__()
        # Checkpoints hold plain dicts, never pickled classes, so they load with weights_only.
        given = ModelConfig.from_dict(arch)
        arch = given.resolved()  # hparams hold the concrete choices
        self._auto_note = given.widened_note()  # said once a fit starts
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_names is not None and len(label_names) != arch.num_classes:
            raise UserError(
                f"{len(label_names)} label names given for arch.num_classes={arch.num_classes}; "
                "let the CLI link both from the data module instead of typing them"
            )
        weights = _check_class_weights(class_weights, arch.num_classes)
        if task not in ("multiclass", "multilabel"):
            raise UserError(f"task must be 'multiclass' or 'multilabel', got {task!r}; it is linked from data.task")
        self.multilabel = task == "multilabel"
        if threshold is not None and not self.multilabel:
            raise UserError("model.threshold is the decision threshold of multi-label models; set data.task=multilabel or drop it")
        self.threshold = 0.5 if threshold is None else check_threshold(threshold, "model.threshold")
        hparams = {
            "arch": asdict(arch),
            "optim": asdict(optim),
            "label_smoothing": label_smoothing,
            "label_names": list(label_names) if label_names else None,
            "class_weights": class_weights if class_weights == "balanced" or weights is None else weights,
        }
        branch_loss = _check_branch_loss(branch_loss, arch, self.multilabel)
        # "sum" weighs the loss of the summed logits (1 unless set; 0 trains each branch on its own only).
        self.sum_weight = branch_loss.get("sum", 1.0)
        self.branch_loss = {name: weight for name, weight in branch_loss.items() if name != "sum"}
        if self.multilabel:  # single-label checkpoints keep exactly their former hyperparameters
            hparams.update(task=task, threshold=threshold)
        if branch_loss:  # likewise for runs without branch losses
            hparams.update(branch_loss=branch_loss)
        self.sum_detach = _check_sum_detach(sum_detach, self.branch_loss)
        if self.sum_detach:
            hparams.update(sum_detach=self.sum_detach)
        self.save_hyperparameters(hparams)
        self.arch, self.optim = arch, optim
        self.in_range_test = False  # True while lr: auto's range test runs (training/lr_finder.py)
        self.label_names = list(label_names) if label_names else [str(i) for i in range(arch.num_classes)]
        self.model = build_model(arch)
        # Not in the state dict: explicit weights live in hparams, balanced ones are derived at fit.
        self.register_buffer("loss_weights", None if weights is None else torch.tensor(weights), persistent=False)

        n = arch.num_classes
        if self.multilabel:
            # Metrics take 0/1 predictions (thresholds applied here), so no metric applies its own.
            self.train_acc = MultilabelExactMatch(n)
            self.val_acc = MultilabelExactMatch(n)
            self.val_f1 = MultilabelF1Score(n, average="macro")
            self.val_f1_micro = MultilabelF1Score(n, average="micro")
            self.test_acc = MultilabelExactMatch(n)
            self.test_f1 = MultilabelF1Score(n, average="macro")
            self.test_f1_micro = MultilabelF1Score(n, average="micro")
            self.test_class_f1 = MultilabelF1Score(n, average="none")
            self.test_confusion = MultilabelStatScores(n, average="none")  # (n, 5): tp, fp, tn, fn, support
            # The decision thresholds in use: the global one until a validation tunes them (saved in checkpoints).
            self.register_buffer("label_thresholds", torch.full((n,), self.threshold))
        else:
            self.train_acc = MulticlassAccuracy(n, average="micro")
            self.val_acc = MulticlassAccuracy(n, average="micro")
            self.val_f1 = MulticlassF1Score(n, average="macro")
            self.test_acc = MulticlassAccuracy(n, average="micro")
            self.test_f1 = MulticlassF1Score(n, average="macro")
            self.test_class_f1 = MulticlassF1Score(n, average="none")
            self.test_confusion = MulticlassConfusionMatrix(n)
        self.tuned: Thresholds | None = None  # multi-label: thresholds tuned at the latest validation
        # Uncalibrated logits of the current validation / test (gathered over DDP ranks).
        self.val_logits = LogitCollector()
        self.test_logits = LogitCollector()
        self.calibration: Calibration | None = None  # fitted at the latest validation ...
        self.calibration_error: str | None = None  # ... or why none could be
        self._calibration_step: int | None = None  # ... which ran at this global step
        # Branch weights that calibration keeps instead of fitting them (`vdcnn-res calibrate
        # --branch_weights`, through training/callbacks.py's GivenBranchWeights); None: fitted.
        self.given_branch_weights: list[float] | None = None

    @property
    def _unit(self) -> str:
        """What the model reads, for printed counts."""
        return "series" if self.arch.input_channels else "texts"

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, lengths)  # (B, num_classes) logits

    def setup(self, stage: str) -> None:
        if stage == "fit":
            if self._auto_note:
                rank_zero_info(self._auto_note)
            with torch.no_grad():  # training runs uncalibrated, also for a module fitted before in this process
                self.model.temperature.fill_(1.0)
                self.model.branch_weights.fill_(1.0)
        if stage == "fit" and self.hparams.get("class_weights") == "balanced":
            data = self.trainer.datamodule
            counts, n = getattr(data, "class_counts", None), getattr(data, "num_train_texts", None)
            if counts is None or (self.multilabel and n is None):
                raise UserError(
                    "model.class_weights=balanced needs the training label counts from a data module "
                    "(TextDataModule.class_counts); give explicit weights [w1, ...] instead"
                )
            if self.multilabel:
                weights = balanced_positive_weights(counts, n, self.label_names)
                what = "Positive-class weights (balanced: negatives / positives per label in the training split): "
            else:
                weights = balanced_class_weights(counts, self.label_names)
                what = "Class weights (balanced, from the training split's label counts): "
            self.loss_weights = torch.tensor(weights, device=self.device)
            rank_zero_info(what + ", ".join(f"{name} {w:.3g}" for name, w in zip(self.label_names, weights)))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, weighted: bool = False) -> torch.Tensor:
        weight = None
        if weighted and self.hparams.get("class_weights") is not None:
            if self.loss_weights is None:
                raise RuntimeError("class_weights='balanced' is resolved in setup('fit'); call it before training_step")
            weight = self.loss_weights.to(logits.device)
        if self.multilabel:
            # Label smoothing for independent binary labels: targets move eps/2 towards 1/2.
            eps = self.hparams.label_smoothing
            targets = labels.float() * (1.0 - eps) + eps / 2
            return F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=weight)
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=self.hparams.label_smoothing)

    def _decide(self, logits: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
        """Multi-label 0/1 predictions: sigmoid(logits) >= thresholds (one or one per label)."""
        return (logits.float().sigmoid() >= thresholds).int()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | dict[str, torch.Tensor]:
        # Each weighted branch is also trained as a classifier of its own: without it the CNN
        # memorises the training split and the bag stops learning (docs/results.md §9).
        branches = self.model.branch_logits(self.model.forward_features(batch["input_ids"], batch["lengths"]))
        logits = self.model.combine({k: z.detach() if k in self.sum_detach else z for k, z in branches.items()})
        loss = self._loss(logits, batch["labels"], weighted=True)
        objective = loss if self.sum_weight == 1.0 else self.sum_weight * loss
        own = {}
        for name, weight in self.branch_loss.items():
            if name == "distill":
                part = distillation_loss(branches["cnn"], branches["ngrams"])
                self.log("train/loss_distill", part)
            else:
                own[name] = part = self._loss(branches[name], batch["labels"], weighted=True)
                self.log(f"train/loss_{name}", part)
            objective = objective + weight * part
        self._stop_if_diverged(objective)
        if self.multilabel:
            self.train_acc(self._decide(logits, self.threshold), batch["labels"].int())
        else:
            self.train_acc(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)  # the model's own loss, also with branch losses
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        # With branch losses the optimiser gets the whole objective; progress lines report the model's
        # loss, and the chance warning also reads each branch's own loss.
        if objective is loss:
            return loss
        return {"loss": objective, "model_loss": loss.detach(), "branch_losses": {k: v.detach() for k, v in own.items()}}

    def _outputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits (B, C) and what calibration fits on: each branch's own logits
        (B, branches, C), before weights and temperature (float32); multi-label: the logits."""
        branches = self.model.branch_logits(self.model.forward_features(batch["input_ids"], batch["lengths"]))
        logits = self.model.combine(branches)
        if self.multilabel:
            return logits, logits.float()
        return logits, torch.stack([z.float() for z in branches.values()], dim=1)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, raw = self._outputs(batch)
        labels = batch["labels"]
        self.log("val/loss", self._loss(logits, labels), sync_dist=True, batch_size=len(labels))
        if self.multilabel:
            predicted, labels = self._decide(logits, self.threshold), labels.int()
            self.val_f1_micro(predicted, labels)
            self.log("val/f1_micro", self.val_f1_micro)
        else:
            predicted = logits
        self.val_acc(predicted, labels)
        self.val_f1(predicted, labels)
        self.val_logits.update(raw, labels)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/f1_macro", self.val_f1)

    def on_validation_epoch_end(self) -> None:
        """Fit a temperature on this validation's logits (a 1-D search, well under a second); checkpoints
        saved at this step store it (on_save_checkpoint). A failed fit leaves them uncalibrated, with the reason."""
        collector = self.val_logits
        if self.trainer.sanity_checking or not collector.update_called:
            collector.reset()
            return
        logits, labels = collector.compute()  # every rank's, so all ranks fit the same temperature and weights
        collector.reset()
        self._calibration_step = self.trainer.global_step
        if self.multilabel:
            self.calibration, self.calibration_error = None, MULTILABEL_NO_TEMPERATURE
            try:
                self.tuned = tune_thresholds(logits.sigmoid(), labels, self.threshold) if self.hparams.threshold is None else None
            except ValueError:
                self.tuned = None
            return
        if getattr(getattr(self.trainer, "datamodule", None), "hparams", {}).get("train_as_valid"):
            self.calibration, self.calibration_error = None, TRAIN_AS_VALID_NO_TEMPERATURE
            return
        try:
            self.calibration, self.calibration_error = calibrate(logits, labels, self.given_branch_weights), None
        except ValueError as err:  # e.g. a model still at chance; the end of fit reports the best checkpoint's
            self.calibration, self.calibration_error = None, str(err)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, raw = self._outputs(batch)
        labels = batch["labels"]
        if self.multilabel:
            predicted, labels = self._decide(logits, self.label_thresholds), labels.int()
            for metric in (self.test_acc, self.test_f1, self.test_f1_micro, self.test_class_f1, self.test_confusion):
                metric.update(predicted, labels)
            return
        for metric in (self.test_acc, self.test_f1, self.test_class_f1, self.test_confusion):
            metric.update(logits, labels)
        self.test_logits.update(raw, labels)

    def _multilabel_test_end(self) -> None:
        """Subset accuracy, micro/macro F1, per-label F1, precision, recall and support at the
        model's thresholds; one line and a per-label CSV beside the run's logs."""
        metrics = (self.test_acc, self.test_f1, self.test_f1_micro, self.test_class_f1, self.test_confusion)
        acc, macro, micro, class_f1, stats = (m.compute() for m in metrics)
        for metric in metrics:
            metric.reset()
        self.log("test/acc", acc)
        self.log("test/subset_acc", acc)
        self.log("test/f1_micro", micro)
        self.log("test/f1_macro", macro)
        tp, fp, fn, support = stats[:, 0].double(), stats[:, 1].double(), stats[:, 3].double(), stats[:, 4]
        precision = tp / (tp + fp).clamp(min=1)
        recall = tp / (tp + fn).clamp(min=1)
        for name, f1, r, n in zip(self.label_names, class_f1, recall, support):
            self.log(f"test/f1/{name}", f1)
            self.log(f"test/recall/{name}", r.float())
            self.log(f"test/support/{name}", n.float())
        if not self.trainer.is_global_zero:
            return
        thresholds = self.label_thresholds.tolist()
        tuned = "per-label thresholds tuned on the validation split" if len(set(thresholds)) > 1 else f"threshold {thresholds[0]:g}"
        n_texts = int(stats[0, :4].sum())
        print(f"\nTest (multi-label, {tuned}): micro-F1 {100 * float(micro):.2f} %, macro-F1 {100 * float(macro):.2f} %, "
              f"subset accuracy {100 * float(acc):.2f} % on {n_texts} {self._unit}")
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "per_label_test.csv"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "threshold", "precision", "recall", "f1", "support"])
            for row in zip(self.label_names, thresholds, precision.tolist(), recall.tolist(), class_f1.tolist(), support.tolist()):
                name, t, p, r, f1, n = row
                writer.writerow([name, f"{t:.4g}", f"{p:.4f}", f"{r:.4f}", f"{f1:.4f}", int(n)])
        os.replace(tmp, path)
        print(f"Per-label scores: {path}")
        print(f"Calibration: none ({MULTILABEL_NO_TEMPERATURE})")

    def on_test_epoch_end(self) -> None:
        """Multi-class test summary (rank 0 prints it): error, accuracy and macro-F1; each branch's
        own accuracy for a model with the n-gram bag; the worst classes; calibration; and, beside
        the run's logs, the per-class table (per_class_test.csv), the confusion matrix and the
        reliability diagram. Logged: test/acc, test/error_pct, test/f1_macro, test/f1/<label>,
        test/recall/<label>, test/acc_<branch> (two branches), test/nll and test/ece (the model's
        probabilities: its branch weights and temperature), test/nll_uncalibrated and
        test/ece_uncalibrated (equal weights, temperature 1), test/temperature."""
        if self.multilabel:
            self._multilabel_test_end()
            return
        # compute() syncs the states of all ranks, so every number covers the whole split.
        acc = self.test_acc.compute()
        macro_f1 = self.test_f1.compute()
        class_f1 = self.test_class_f1.compute()
        confusion = self.test_confusion.compute()
        self.log("test/acc", acc)
        self.log("test/error_pct", 100.0 * (1.0 - acc))
        self.log("test/f1_macro", macro_f1)
        recall = confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()  # rows: true labels
        for name, f1, r in zip(self.label_names, class_f1, recall):
            self.log(f"test/f1/{name}", f1)
            self.log(f"test/recall/{name}", r)
        for metric in (self.test_acc, self.test_f1, self.test_class_f1, self.test_confusion):
            metric.reset()
        temperature = float(self.model.temperature)
        weights = self.model.branch_weights.double().cpu()
        raw, labels = self.test_logits.compute()  # each branch's, all ranks
        self.test_logits.reset()
        raw = raw.double().cpu()
        logits = raw.sum(1)  # equal weights, temperature 1
        weighted = (raw * weights[None, :, None]).sum(1)  # the model's, before its temperature
        labels = labels.cpu()
        alone = branch_accuracies(raw, labels) if raw.shape[1] > 1 else {}
        for name, value in alone.items():
            self.log(f"test/acc_{name}", value)
        before = reliability_bins(logits.softmax(-1), labels)
        after = reliability_bins((weighted / temperature).softmax(-1), labels)
        nll_before, nll_after = nll(logits, labels), nll(weighted, labels, temperature)
        self.log("test/temperature", temperature)
        self.log("test/nll", nll_after)
        self.log("test/ece", after.ece)
        self.log("test/nll_uncalibrated", nll_before)
        self.log("test/ece_uncalibrated", before.ece)
        if self.trainer.is_global_zero:
            n_texts = int(confusion.sum())
            print(f"\nTest error: {100.0 * (1.0 - float(acc)):.2f} % "
                  f"(accuracy {100.0 * float(acc):.2f} % on {n_texts} {self._unit}), macro-F1 {100.0 * float(macro_f1):.2f} %")
            if alone:
                print("Each branch alone (the other's weight 0): "
                      + ", ".join(f"{BRANCH_NAMES.get(k, k)} {100.0 * v:.2f} %" for k, v in alone.items())
                      + f" (the model: {100.0 * float(acc):.2f} %)")
            if bool((weights != 1.0).any()):
                equal = float((logits.argmax(1) == labels).double().mean())
                print(f"Branch weights (cnn/ngrams) {'/'.join(f'{w:.2f}' for w in weights.tolist())}, fitted on the "
                      f"validation split: accuracy {100.0 * float(acc):.2f} % (equal weights: {100.0 * equal:.2f} %)")
            out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
            table = write_per_class_csv(confusion.cpu(), class_f1.cpu(), self.label_names, out_dir / "per_class_test.csv")
            worst = sorted(range(len(self.label_names)), key=lambda i: (float(class_f1[i]), self.label_names[i]))
            worst = worst[: min(3, len(worst) - 1)]
            print("Worst classes by F1: " + ", ".join(f"{self.label_names[i]} {100.0 * float(class_f1[i]):.2f} %" for i in worst)
                  + f" (every class: {table.name})")
            if temperature != 1.0 or bool((weights != 1.0).any()):
                panels = [("uncalibrated (temperature 1)", before), (f"temperature {temperature:.3f}", after)]
                print(f"Calibration (temperature {temperature:.3f}, fitted on the validation split): "
                      f"NLL {nll_before:.4f} -> {nll_after:.4f}, ECE {100 * before.ece:.2f} % -> {100 * after.ece:.2f} % "
                      f"({N_BINS} bins)")
            else:
                panels = [("uncalibrated (temperature 1)", before)]
                print(f"Calibration: none (temperature 1): NLL {nll_before:.4f}, ECE {100 * before.ece:.2f} % "
                      f"({N_BINS} bins); `vdcnn-res calibrate --ckpt_path CKPT --data.valid FILE` fits a temperature")
            png = plot_confusion_matrix(confusion.cpu(), self.label_names, out_dir / "confusion_matrix_test.png")
            counts = write_confusion_csv(confusion.cpu(), self.label_names, out_dir / "confusion_matrix_test.csv")
            print(f"Per-class scores: {table}")
            print(f"Confusion matrix: {png} (counts: {counts.name})")
            print(f"Reliability diagram: {plot_reliability(panels, out_dir / 'reliability_test.png')}")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["input_ids"], batch["lengths"])
        if self.multilabel:
            return {"index": batch["index"], "probs": logits.float().sigmoid()}
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
        if self._trainer is not None:  # how the model was trained: test and predict evaluate the same way
            checkpoint["run"] = training_run(self.trainer)
        # The temperature fitted on these very weights' validation logits; other saves keep 1.
        state = checkpoint.get("state_dict")
        if self._calibration_step != checkpoint.get("global_step") or not isinstance(state, dict):
            return
        if self.multilabel and self.tuned is not None and "label_thresholds" in state:
            state["label_thresholds"] = torch.tensor(self.tuned.thresholds, dtype=state["label_thresholds"].dtype)
            checkpoint["thresholds"] = self.tuned.to_dict()
        if self.calibration is not None and "model.temperature" in state:
            state["model.temperature"] = torch.tensor(self.calibration.temperature, dtype=state["model.temperature"].dtype)
            if self.calibration.branch_weights is not None and "model.branch_weights" in state:
                state["model.branch_weights"] = torch.tensor(self.calibration.branch_weights, dtype=state["model.branch_weights"].dtype)
            checkpoint["calibration"] = self.calibration.to_dict()
        elif self.calibration_error is not None:
            checkpoint["calibration"] = {"error": self.calibration_error}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _check_compatible(checkpoint.get("hyper_parameters", {}), self.hparams)
        state = checkpoint.get("state_dict")
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and isinstance(state, dict) and "model.temperature" in state:
            # Training always runs uncalibrated; the next validation fits a new temperature.
            state["model.temperature"] = torch.ones_like(state["model.temperature"])
        if fitting and isinstance(state, dict) and "model.branch_weights" in state:
            state["model.branch_weights"] = torch.ones_like(state["model.branch_weights"])
        if fitting and isinstance(state, dict) and "label_thresholds" in state:
            state["label_thresholds"] = torch.full_like(state["label_thresholds"], self.threshold)

    def on_fit_end(self) -> None:
        """The in-memory model takes the temperature fitted on its own (final) weights, as last.ckpt
        has; one line reports the temperature stored in the best checkpoint (or why there is none)."""
        if self.calibration is not None and self._calibration_step == self.trainer.global_step:
            with torch.no_grad():
                self.model.temperature.fill_(self.calibration.temperature)
                if self.calibration.branch_weights is not None:
                    self.model.branch_weights.copy_(torch.tensor(self.calibration.branch_weights))
        if self.multilabel and self.tuned is not None and self._calibration_step == self.trainer.global_step:
            with torch.no_grad():
                self.label_thresholds.copy_(torch.tensor(self.tuned.thresholds))
        callback = self.trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not self.trainer.is_global_zero or not path:
            return
        if self.multilabel:
            self._report_best_thresholds(path)
        try:  # mmap: only the small calibration entry is read, not the weights
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("calibration")
        except (OSError, RuntimeError, ValueError, AttributeError):
            return
        if isinstance(saved, dict) and all(k in saved for k in _CALIBRATION_KEYS):
            fields = {k: saved[k] for k in _CALIBRATION_KEYS + _BRANCH_WEIGHT_KEYS if k in saved}
            print(f"Calibration of the best checkpoint: {Calibration(**fields).summary(unit=self._unit)}")
        elif isinstance(saved, dict) and isinstance(saved.get("error"), str):
            print(f"Calibration of the best checkpoint: none, temperature 1 ({saved['error']})")
        else:
            print("Calibration of the best checkpoint: none (no validation logits at its step), temperature 1")


    def _report_best_thresholds(self, path: str) -> None:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("thresholds")
        except (OSError, RuntimeError, ValueError, AttributeError):
            return
        if isinstance(saved, dict):
            print(f"Thresholds of the best checkpoint: {Thresholds(**saved).summary()}")
        else:
            print(f"Thresholds of the best checkpoint: {self.threshold:g} for every label"
                  + (" (model.threshold)" if self.hparams.threshold is not None else " (no validation to tune them on)"))


_CALIBRATION_KEYS = ("temperature", "texts", "nll_before", "nll_after", "ece_before", "ece_after")
_BRANCH_WEIGHT_KEYS = ("branch_weights", "heldout_nll_mix", "heldout_nll_equal", "accuracy_before", "accuracy_after")


def training_run(trainer: pl.Trainer) -> dict[str, Any]:
    """What a checkpoint records of the run that trained it: ``precision`` (Lightning's name,
    e.g. ``bf16-mixed``) and ``seed`` (the run's ``seed_everything``; None when it was not seeded)."""
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by Lightning's seed_everything
    return {"precision": str(trainer.precision), "seed": int(seed) if seed and seed.lstrip("-").isdigit() else None}


def balanced_positive_weights(positives: Any, n: int, label_names: list[str]) -> list[float]:
    """Multi-label ``pos_weight`` per label: negatives / positives in the training split (a label
    without positive texts is an error, one present in every text gets 1)."""
    positives = _training_counts(positives, label_names, "labels")
    return [max(n - c, 1) / c for c in positives]


def _training_counts(counts: Any, label_names: list[str], plural: str) -> list[int]:
    """The training split's texts per class (``plural``: "classes" or "labels") as ints; one line
    if the counts do not match the names or one is zero."""
    counts = [int(c) for c in counts]
    if len(counts) != len(label_names):
        raise UserError(f"{len(counts)} counts for {len(label_names)} {plural}; the data and the model disagree")
    missing = [name for name, c in zip(label_names, counts) if c <= 0]
    if missing:
        raise UserError(
            f"class_weights=balanced: {plural} {missing} have no training texts, so no weight can balance them; "
            "add training texts for them or give explicit weights"
        )
    return counts


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


# Why a run validated on its training split (data.train_as_valid) keeps temperature 1.
TRAIN_AS_VALID_NO_TEMPERATURE = (
    "validation is the training split (data.train_as_valid): a temperature fitted on it would only "
    "make the model more confident"
)

BRANCHES = ("cnn", "ngrams")  # VDCNN.branch_logits' keys
DISTILL_TEMPERATURE = 2.0  # branch_loss.distill's softening of both branches' logits
BRANCH_NAMES = {"cnn": "CNN", "ngrams": "n-gram bag"}  # as the test summary names them


def branch_accuracies(branch_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Each branch's own accuracy: ``branch_logits`` (N, branches, C) in ``BRANCHES`` order (each
    branch's logits before weights and temperature, as ``VDCNN.branch_logits`` gives them), labels
    (N,). A branch alone predicts as the model does with every other branch's weight at 0 (its own
    positive weight and the temperature do not change the arg max)."""
    if branch_logits.ndim != 3 or branch_logits.shape[1] > len(BRANCHES) or len(labels) != len(branch_logits):
        raise ValueError(f"need (N, branches <= {len(BRANCHES)}, C) logits and N labels, got {tuple(branch_logits.shape)}")
    hits = branch_logits.argmax(-1) == labels.to(branch_logits.device)[:, None]  # (N, branches)
    return {name: float(hits[:, i].double().mean()) for i, name in enumerate(BRANCHES[: branch_logits.shape[1]])}


def write_per_class_csv(confusion: torch.Tensor, f1: torch.Tensor, label_names: list[str], path: Path) -> Path:
    """Precision, recall, F1 and support per class (rows: label-id order) from a confusion matrix
    (rows: true labels), written atomically; returns the path."""
    confusion = confusion.double()
    support = confusion.sum(dim=1)
    precision = confusion.diag() / confusion.sum(dim=0).clamp(min=1)
    recall = confusion.diag() / support.clamp(min=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "precision", "recall", "f1", "support"])
        for name, p, r, score, n in zip(label_names, precision.tolist(), recall.tolist(), f1.tolist(), support.tolist()):
            writer.writerow([name, f"{p:.4f}", f"{r:.4f}", f"{score:.4f}", int(n)])
    os.replace(tmp, path)
    return path


def _check_branch_loss(branch_loss: Any, arch: ModelConfig, multilabel: bool) -> dict[str, float]:
    """``branch_loss`` as {branch: weight > 0} (zero weights dropped; "sum", the summed logits'
    weight, kept when it is not 1), or one line naming the problem."""
    if branch_loss is None:
        return {}
    keys = [*BRANCHES, "sum", "distill"]
    if not isinstance(branch_loss, dict):
        raise UserError(f"model.branch_loss must map branch names {keys} to weights, e.g. {{ngrams: 1.0}}; got {branch_loss!r}")
    out = {}
    for name, weight in branch_loss.items():
        if name not in keys:
            raise UserError(f"model.branch_loss: unknown branch {name!r}; valid: {keys}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise UserError(f"model.branch_loss.{name} must be a number >= 0 (0 = off), got {weight!r}")
        if (weight != 1.0) if name == "sum" else weight > 0:  # the defaults are not stored
            out[name] = float(weight)
    if out and not arch.ngram_orders:
        raise UserError("model.branch_loss weighs the CNN's and the n-gram bag's own losses: it needs model.arch.ngram_orders")
    if out.get("sum") == 0.0 and not set(out) - {"sum", "distill"}:
        raise UserError("model.branch_loss: sum 0 with no branch weighted trains nothing; weigh cnn and/or ngrams")
    if "distill" in out and multilabel:
        raise UserError("model.branch_loss.distill softens one softmax over the classes: it needs data.task=multiclass")
    return out


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = DISTILL_TEMPERATURE) -> torch.Tensor:
    """KL(teacher || student) of the softened class distributions, times temperature**2 so its
    gradients keep the scale of a cross-entropy's (Hinton et al. 2015); the teacher gets no gradient."""
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=-1)
    log_q = F.log_softmax(teacher.detach().float() / t, dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


def _check_sum_detach(sum_detach: Any, branch_loss: dict[str, float]) -> list[str]:
    """``sum_detach`` as a sorted list of branch names, each trained by its own branch loss, or one line."""
    if not sum_detach:
        return []
    if isinstance(sum_detach, str) or not isinstance(sum_detach, (list, tuple)):
        raise UserError(f"model.sum_detach must be a list of branch names from {list(BRANCHES)}, e.g. [ngrams]; got {sum_detach!r}")
    names = sorted(set(sum_detach))
    for name in names:
        if name not in BRANCHES:
            raise UserError(f"model.sum_detach: unknown branch {name!r}; valid: {list(BRANCHES)}")
        if name not in branch_loss:
            raise UserError(
                f"model.sum_detach: {name!r} would learn nothing (the sum's loss no longer reaches it); "
                f"give it its own loss, e.g. \"--model.branch_loss={{{name}: 1}}\""
            )
    if len(names) == len(BRANCHES) and branch_loss.get("sum", 1.0):
        raise UserError("model.sum_detach: with every branch detached the sum's loss trains nothing; set model.branch_loss.sum 0 instead")
    return names


def balanced_class_weights(counts: Any, label_names: list[str]) -> list[float]:
    """``n / (n_classes * count_c)`` per class (sklearn's 'balanced'); a class without texts is an error."""
    counts = _training_counts(counts, label_names, "classes")
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
    saved_task, task = saved.get("task", "multiclass"), current.get("task", "multiclass")
    if saved_task != task:
        raise UserError(
            f"the checkpoint is a {saved_task} model but data.task={task!r}: drop data.task (the checkpoint sets it)"
        )
    if saved.get("label_names") and current.get("label_names") and saved["label_names"] != current["label_names"]:
        raise UserError(
            f"the checkpoint's labels {saved['label_names']} differ from the data's "
            f"{current['label_names']}: use the data it was trained on"
        )
