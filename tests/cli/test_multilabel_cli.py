"""Multi-label end to end through the command line: fit -> test -> predict -> export -> Predictor
(issue 17.1), on label sets built from the bundled sample (texts of 0-3 sample texts joined)."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch

from fixtures.tiny import LABELS, QUIET, SAMPLE, TINY
from vdcnn_res import Predictor
from vdcnn_res.cli import main
from vdcnn_res.inference.model_files import CONFIG_FILE, MULTILABEL_FORMAT_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def write_split(path, rows, n, rng):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "labels"])
        for _ in range(n):
            picks = rng.sample(rows, rng.randint(0, 3))
            writer.writerow([" ".join(p[1] for p in picks), "|".join(sorted({LABELS[int(p[0]) - 1] for p in picks}))])
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny multi-label fit (3 steps) and the paths of its splits and checkpoint."""
    root = tmp_path_factory.mktemp("multilabel")
    rng = random.Random(0)
    with open(SAMPLE / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    splits = {s: write_split(root / f"{s}.csv", rows, n, rng) for s, n in (("train", 64), ("valid", 32), ("test", 32))}
    data = ["--data.train", splits["train"], "--data.valid", splits["valid"], "--data.test", splits["test"],
            "--data.text_columns=[text]", "--data.label_column=labels", "--data.task=multilabel",
            "--data.column_names=null", "--data.label_offset=0", "--data.classes_file=null"]
    main(["fit", *TINY, *QUIET, *data, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
          "--trainer.logger=false", "--trainer.default_root_dir", str(root)])
    return root, splits, root / "checkpoints" / "last.ckpt"


def test_fit_stores_task_and_tuned_thresholds(run):
    _, _, ckpt = run
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["hyper_parameters"]["task"] == "multilabel"
    assert checkpoint["datamodule_hyper_parameters"]["task"] == "multilabel"
    tuned = checkpoint["thresholds"]["thresholds"]
    assert checkpoint["state_dict"]["label_thresholds"].tolist() == pytest.approx(tuned)
    assert "temperature scaling is for single-label" in checkpoint["calibration"]["error"]  # skipped, and why


def test_test_writes_micro_macro_subset_and_per_label(run, capsys):
    root, splits, ckpt = run
    main(["test", *QUIET, "--ckpt_path", str(ckpt), "--data.test", splits["test"], "--trainer.precision=32-true"])
    out = capsys.readouterr().out
    assert "Test (multi-label, " in out and "micro-F1" in out and "macro-F1" in out and "subset accuracy" in out
    per_label = next(root.rglob("per_label_test.csv")).read_text().splitlines()
    assert per_label[0] == "label,threshold,precision,recall,f1,support" and len(per_label) == 1 + len(LABELS)
    assert sum(int(line.split(",")[-1]) for line in per_label[1:]) == sum(
        len(r["labels"].split("|")) for r in csv.DictReader(open(splits["test"])) if r["labels"])


def test_predict_writes_lists_and_matches_the_predictor(run, tmp_path):
    _, splits, ckpt = run
    out = tmp_path / "p.jsonl"
    main(["predict", *QUIET, "--ckpt_path", str(ckpt), "--data.predict", splits["test"], "--trainer.precision=32-true",
          "--prediction_writer.output_path", str(out), "--prediction_writer.top_k=2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [r["text"] for r in csv.DictReader(open(splits["test"]))]
    predicted = Predictor.from_checkpoint(ckpt, bf16=False).predict(texts, top_k=2)
    assert [r["labels"] for r in rows] == [p["labels"] for p in predicted]
    assert all(isinstance(r["true_labels"], list) and len(r["top_k"]) == 2 for r in rows)


def test_export_carries_the_thresholds(run, tmp_path):
    _, _, ckpt = run
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "m")])
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert config["format_version"] == MULTILABEL_FORMAT_VERSION and config["task"] == "multilabel"
    assert config["thresholds"] == pytest.approx(torch.load(ckpt, weights_only=True)["thresholds"]["thresholds"])
    assert Predictor.from_pretrained(tmp_path / "m").task == "multilabel"


def test_calibrate_refuses_a_multilabel_checkpoint(run, capsys):
    _, splits, ckpt = run
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--ckpt_path", str(ckpt), "--data.valid", splits["valid"], *QUIET])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "temperature scaling is for single-label" in err[-1]
    assert ckpt.read_bytes() == before
