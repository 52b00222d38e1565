"""`vdcnn-res predict` output: one JSONL or CSV file of predictions, in input order.

Each process keeps the rows it predicted; at the end of the epoch rank 0 gathers all of them
(`torch.distributed.gather_object`), drops duplicates by row index (a sampler that pads
shards repeats rows), sorts by row and writes the single file. JSONL rows look like

    {"row": 0, "label": "Business", "probability": 0.912, "top_k": [{"label": "Business", "probability": 0.912}],
     "true_label": "Business"}

(``true_label`` only when the predict file has labels). CSV has the columns ``row, label,
probability``, then ``label_2, probability_2, ...`` up to top_k, then ``true_label``.

A multi-label model's rows hold the label set at the model's thresholds (possibly empty):

    {"row": 0, "labels": ["Business", "World"], "probabilities": {"Business": 0.83, "World": 0.61},
     "true_labels": ["Business"]}

with ``"top_k"`` added when ``top_k`` > 1. CSV: ``row, labels, probabilities`` (both joined
with ``|``, in label order), then ``label_1, probability_1, ...`` when top_k > 1, then
``true_labels``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from vdcnn_res.errors import UserError

__all__ = ["PredictionWriter"]

_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of `trainer.predict` to one file (JSONL or CSV), every row once.

    Args:
        output_path: file to write, or an existing folder to write ``predictions.<format>``
            into; None writes next to the run's logs (``trainer.log_dir``).
        output_format: ``jsonl`` or ``csv``; None takes it from the file name (default jsonl).
        top_k: how many (label, probability) pairs per row, most likely first.
    """

    def __init__(
        self,
        output_path: str | None = None,
        output_format: Literal["jsonl", "csv"] | None = None,
        top_k: int = 1,
    ) -> None:
        super().__init__(write_interval="batch_and_epoch")
        if output_format is not None and output_format not in ("jsonl", "csv"):
            raise UserError(f"prediction_writer.output_format must be 'jsonl' or 'csv', got {output_format!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UserError(f"prediction_writer.top_k must be a positive int, got {top_k!r}")
        self.output_path = output_path
        self.output_format = output_format
        self.top_k = top_k
        self.path: Path | None = None  # the file written by the last predict run (rank 0)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._target: tuple[Path, str] | None = None

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        names = _label_names(pl_module)
        if names is not None and self.top_k > len(names):
            raise UserError(
                f"prediction_writer.top_k={self.top_k} but the model has {len(names)} classes; use at most {len(names)}"
            )
        self._parts = []
        self._target = self._resolve(trainer)  # on every rank: trainer.log_dir is a collective under DDP

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(prediction, dict) or "index" not in prediction or "probs" not in prediction:
            raise TypeError("PredictionWriter needs predict_step to return {'index': (B,), 'probs': (B, C)}")
        index = prediction["index"].detach().cpu().numpy().astype(np.int64)
        probs = prediction["probs"].detach().float().cpu().numpy()
        labels = batch.get("labels") if isinstance(batch, dict) else None
        labels = labels.detach().cpu().numpy().astype(np.int64) if labels is not None else np.full(len(index), -1)
        if labels.ndim == 1 and probs.ndim == 2 and getattr(pl_module, "multilabel", False):
            labels = np.full((len(index), probs.shape[1]), -1, dtype=np.int64)  # texts without labels
        self._parts.append((index, probs, labels))

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        parts = _gather(trainer, self._parts)
        self._parts = []
        if not trainer.is_global_zero:
            return
        index, probs, labels = _merge(parts)
        assert self._target is not None
        path, fmt = self._target
        names = _label_names(pl_module) or [str(i) for i in range(probs.shape[1] if probs.ndim == 2 else 0)]
        thresholds = getattr(pl_module, "label_thresholds", None) if getattr(pl_module, "multilabel", False) else None
        if thresholds is not None:
            _write_sets(path, fmt, index, probs, labels, names, min(self.top_k, len(names)), thresholds.detach().cpu().numpy())
        else:
            _write(path, fmt, index, probs, labels, names, min(self.top_k, len(names)))
        self.path = path
        print(f"Predictions ({len(index)} rows): {path}")

    # ------------------------------------------------------------------ helpers

    def _resolve(self, trainer: pl.Trainer) -> tuple[Path, str]:
        if self.output_path is None:
            log_dir = trainer.log_dir or trainer.default_root_dir
            fmt = self.output_format or "jsonl"
            return Path(log_dir) / f"predictions.{fmt}", fmt
        path = Path(os.path.expanduser(self.output_path))
        if path.is_dir():
            fmt = self.output_format or "jsonl"
            return path / f"predictions.{fmt}", fmt
        fmt = self.output_format or _SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise UserError(
                f"prediction_writer.output_path {self.output_path!r}: cannot tell the format from its extension; "
                "name it .jsonl or .csv, or set prediction_writer.output_format"
            )
        return path, fmt


def _label_names(pl_module: pl.LightningModule) -> list[str] | None:
    names = getattr(pl_module, "label_names", None)
    return [str(n) for n in names] if names else None


def _gather(trainer: pl.Trainer, parts: list[Any]) -> list[Any]:
    """Every rank's parts on rank 0 (the local ones elsewhere, unused)."""
    if trainer.world_size <= 1:
        return parts
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("PredictionWriter collects predictions from several processes with torch.distributed")
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(parts, gathered, dst=0)
    return [p for rank_parts in gathered for p in rank_parts] if gathered is not None else parts


def _merge(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate, keep each row index once, sort by row."""
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    index = np.concatenate([p[0] for p in parts])
    if any(p[2].ndim == 2 for p in parts):  # multi-label: every part as (rows, labels)
        width = max(p[1].shape[1] for p in parts)
        parts = [(i, pr, lab if lab.ndim == 2 else np.full((len(i), width), -1)) for i, pr, lab in parts]
    probs = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    _, first = np.unique(index, return_index=True)  # sorted unique rows, first occurrence of each
    return index[first], probs[first], labels[first]


def _write(
    path: Path, fmt: str, index: np.ndarray, probs: np.ndarray, labels: np.ndarray, names: list[str], top_k: int
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k] if len(index) else np.zeros((0, top_k), dtype=np.int64)
    has_labels = bool((labels >= 0).any())
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for row, p, label, best in zip(index, probs, labels, order):
                record: dict[str, Any] = {
                    "row": int(row),
                    "label": names[best[0]],
                    "probability": round(float(p[best[0]]), 6),
                    "top_k": [{"label": names[j], "probability": round(float(p[j]), 6)} for j in best],
                }
                if label >= 0:
                    record["true_label"] = names[label]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(f)
            header = ["row", "label", "probability"]
            header += [c for k in range(2, top_k + 1) for c in (f"label_{k}", f"probability_{k}")]
            writer.writerow(header + (["true_label"] if has_labels else []))
            for row, p, label, best in zip(index, probs, labels, order):
                cells: list[Any] = [int(row)]
                for j in best:
                    cells += [names[j], f"{float(p[j]):.6f}"]
                if has_labels:
                    cells.append(names[label] if label >= 0 else "")
                writer.writerow(cells)
    os.replace(tmp, path)


def _write_sets(
    path: Path,
    fmt: str,
    index: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    top_k: int,
    thresholds: np.ndarray,
) -> None:
    """Multi-label rows: the labels at or above their thresholds, their probabilities, top-k when > 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k] if len(index) else np.zeros((0, top_k), dtype=np.int64)
    known = labels.ndim == 2 and len(labels) > 0 and bool((labels >= 0).all(axis=1).any())
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f) if fmt == "csv" else None
        if writer is not None:
            header = ["row", "labels", "probabilities"]
            header += [c for k in range(1, top_k + 1) for c in (f"label_{k}", f"probability_{k}")] if top_k > 1 else []
            writer.writerow(header + (["true_labels"] if known else []))
        for row, p, label, best in zip(index, probs, labels, order):
            chosen = np.flatnonzero(p >= thresholds)
            truth = [names[j] for j in np.flatnonzero(label > 0)] if label.ndim == 1 and (label >= 0).all() else None
            if writer is None:
                record: dict[str, Any] = {
                    "row": int(row),
                    "labels": [names[j] for j in chosen],
                    "probabilities": {names[j]: round(float(p[j]), 6) for j in chosen},
                }
                if top_k > 1:
                    record["top_k"] = [{"label": names[j], "probability": round(float(p[j]), 6)} for j in best]
                if truth is not None:
                    record["true_labels"] = truth
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                continue
            cells: list[Any] = [int(row), "|".join(names[j] for j in chosen), "|".join(f"{float(p[j]):.6f}" for j in chosen)]
            if top_k > 1:
                for j in best:
                    cells += [names[j], f"{float(p[j]):.6f}"]
            if known:
                cells.append("|".join(truth) if truth is not None else "")
            writer.writerow(cells)
    os.replace(tmp, path)
