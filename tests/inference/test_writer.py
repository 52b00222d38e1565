"""`vdcnn-res predict`: one JSONL/CSV file of predictions, every row once, in input order (DDP too)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from fixtures.tiny import LABELS, QUIET, REPO, SAMPLE, TINY, sample_texts
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.errors import UserError
from vdcnn_res.inference.writer import PredictionWriter

pytestmark = pytest.mark.usefixtures("one_thread", "in_repo")  # tests/conftest.py



def predict(ckpt, tmp_path, *extra: str) -> None:
    main(["predict", *TINY, *QUIET, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(tmp_path), *extra])


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_predict_writes_one_jsonl_beside_the_checkpoints_run_in_input_order(ckpt, tmp_path, capsys):
    predict(ckpt, tmp_path, "--data.predict", str(SAMPLE / "test.csv"), "--prediction_writer.top_k=3")
    path = Path(re.search(r"Predictions \(800 rows\): (.+)", capsys.readouterr().out).group(1))
    assert path.name == "predictions.jsonl" and path.parent.parent.name == "predict"  # <run>/predict/<ckpt>/
    rows = read_jsonl(path)
    texts, labels = sample_texts()
    assert [r["row"] for r in rows] == list(range(800))
    assert [r["true_label"] for r in rows] == labels
    expected = Predictor.from_checkpoint(ckpt, bf16=False).predict_proba(texts)
    for r, p in zip(rows, expected):
        assert [t["label"] for t in r["top_k"]] == [LABELS[j] for j in np.argsort(-p, kind="stable")[:3]]
        assert r["label"] == r["top_k"][0]["label"] and r["probability"] == r["top_k"][0]["probability"]
        assert r["probability"] == pytest.approx(p.max(), abs=1e-5)


def _without_labels(tmp_path, fmt: str):
    frame = pd.read_csv(SAMPLE / "test.csv", header=None, names=["label", "title", "description"], nrows=37,
                        keep_default_na=False)
    texts = frame.drop(columns="label")
    path = tmp_path / f"texts.{fmt}"
    if fmt == "csv":  # header-less, like the training files, one column fewer
        texts.to_csv(path, header=False, index=False)
    elif fmt == "tsv":
        texts.to_csv(path, sep="\t", header=False, index=False)
    elif fmt == "jsonl":
        texts.to_json(path, orient="records", lines=True, force_ascii=False)
    else:  # parquet, with its label column kept
        frame.to_parquet(path, index=False)
    return path, [f"{t} {d}" for t, d in zip(frame.title, frame.description)]


@pytest.mark.parametrize(
    "fmt, output, extra",
    [
        ("csv", "preds.csv", []),
        ("tsv", "preds.jsonl", []),
        ("jsonl", "preds.csv", []),
        # Only a checkpoint, the classes file and texts: no training data needed to predict.
        ("parquet", "preds.jsonl", ["--data.train=null", "--data.valid=null", "--data.test=null"]),
    ],
)
def test_predict_files_of_every_format_with_or_without_labels(ckpt, tmp_path, fmt, output, extra):
    data, texts = _without_labels(tmp_path, fmt)
    out = tmp_path / output
    predict(ckpt, tmp_path, "--data.predict", str(data), "--prediction_writer.output_path", str(out),
            "--prediction_writer.top_k=2", *extra)
    expected = Predictor.from_checkpoint(ckpt, bf16=False).predict(texts, top_k=2)
    if out.suffix == ".csv":
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["row", "label", "probability", "label_2", "probability_2"]  # no labels in the file
        got = [(int(r["row"]), r["label"], float(r["probability"]), r["label_2"]) for r in rows]
    else:
        rows = read_jsonl(out)
        assert ("true_label" in rows[0]) == (fmt == "parquet")
        got = [(r["row"], r["label"], r["probability"], r["top_k"][1]["label"]) for r in rows]
    assert [g[0] for g in got] == list(range(37))
    assert [g[1] for g in got] == [e["label"] for e in expected]
    assert [g[3] for g in got] == [e["top_k"][1][0] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e["probability"] for e in expected], atol=1e-5)


def test_writer_options_are_checked(ckpt, tmp_path, capsys):
    with pytest.raises(UserError, match="top_k"):
        PredictionWriter(top_k=0)
    with pytest.raises(SystemExit):
        predict(ckpt, tmp_path, "--data.predict", str(SAMPLE / "test.csv"), "--prediction_writer.top_k=5")
    assert "top_k=5 but the model has 4 classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(ckpt, tmp_path, "--data.predict", str(SAMPLE / "test.csv"),
                "--prediction_writer.output_path", str(tmp_path / "out.txt"))
    assert "name it .jsonl or .csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the callback alone


class _Rows(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i), "probs": torch.tensor([i / 10, 0.5, 0.5 - i / 10])}


class _Echo(pl.LightningModule):
    label_names = ["a", "b", "c"]

    def predict_step(self, batch, batch_idx):
        return {"index": batch["index"], "probs": batch["probs"]}


def test_rows_seen_twice_or_out_of_order_are_written_once_in_order(tmp_path, capsys):
    order = [5, 3, 1, 3, 0, 2, 5, 4]  # what a padding distributed sampler could hand out
    writer = PredictionWriter(output_path=str(tmp_path), top_k=2)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer],
                         default_root_dir=tmp_path)
    trainer.predict(_Echo(), DataLoader(_Rows(), batch_size=3, sampler=order), return_predictions=False)
    rows = read_jsonl(tmp_path / "predictions.jsonl")
    assert [r["row"] for r in rows] == [0, 1, 2, 3, 4, 5]
    # Row i holds [i/10, 0.5, 0.5 - i/10]; equal probabilities rank the earlier label first.
    assert [r["label"] for r in rows] == ["b", "b", "b", "b", "b", "a"]
    assert [r["top_k"][1]["label"] for r in rows] == ["c", "c", "c", "a", "a", "b"]
    assert all("true_label" not in r for r in rows)
    assert writer.path == tmp_path / "predictions.jsonl"


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_ddp_writes_one_file_every_row_once_in_input_order(ckpt, tmp_path):
    data, texts = _without_labels(tmp_path, "csv")  # 37 rows: the two shards differ in size
    out = tmp_path / "ddp.jsonl"
    args = [
        sys.executable, "-m", "vdcnn_res.cli", "predict", *TINY, *QUIET,
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--data.eval_batch_size=4", "--ckpt_path", str(ckpt), "--data.predict", str(data),
        "--trainer.default_root_dir", str(tmp_path), "--prediction_writer.output_path", str(out),
    ]
    done = subprocess.run(args, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Predictions (37 rows)") == 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.glob("ddp*")) == ["ddp.jsonl"]
    rows = read_jsonl(out)
    assert [r["row"] for r in rows] == list(range(37))
    expected = Predictor.from_checkpoint(ckpt, bf16=False).predict_proba(texts)
    np.testing.assert_allclose([r["probability"] for r in rows], expected.max(axis=1), atol=1e-5)
    assert [r["label"] for r in rows] == [LABELS[j] for j in expected.argmax(axis=1)]
