"""A tiny model trained by `vdcnn-res fit` once per test session, shared by the prediction tests.

    ckpt = tiny_checkpoint(tmp_path_factory)    # Path of last.ckpt; trained on first call only
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "ag_news_sample"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]  # data/ag_news_sample/classes.txt

# The model and data settings of the checkpoint; `predict` must be given the same ones.
TINY = [
    "--config", str(REPO / "configs" / "quickstart.yaml"),
    "--model.arch.channels=[8, 8, 16, 16]",
    "--model.arch.hidden_size=16",
    "--data.max_length=128",
    "--data.batch_size=16",
    "--trainer.precision=32-true",  # exact fp32 on any CPU, so Trainer and Predictor(bf16=False) outputs compare
]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

_cache: dict[str, Path] = {}


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """last.ckpt of a 3-step run on the bundled sample (written under the session's temp dir)."""
    if "ckpt" not in _cache:
        from vdcnn_res.cli import main

        root = tmp_path_factory.mktemp("tiny_fit")
        cwd, threads = os.getcwd(), torch.get_num_threads()
        os.chdir(REPO)  # the config names data/ paths relative to the repository root
        torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to a busy machine
        try:
            main(["fit", *TINY, *QUIET, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                 "--trainer.limit_val_batches=1", "--trainer.logger=false", "--trainer.default_root_dir", str(root)])
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)
        _cache["ckpt"] = root / "checkpoints" / "last.ckpt"
    return _cache["ckpt"]


def sample_texts(split: str = "test", n: int | None = None) -> tuple[list[str], list[str]]:
    """(texts, label names) of the bundled sample, texts joined as the data module does (title + ' ' + description)."""
    texts, labels = [], []
    with open(SAMPLE / f"{split}.csv", newline="", encoding="utf-8") as f:
        for label, title, description in csv.reader(f):
            texts.append(f"{title} {description}")
            labels.append(LABELS[int(label) - 1])
    return (texts, labels) if n is None else (texts[:n], labels[:n])
