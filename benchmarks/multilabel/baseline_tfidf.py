"""One-vs-rest TF-IDF + logistic regression on the multi-label split of make_multilabel.py.

    .venv/bin/python -m pip install scikit-learn        # a benchmark extra, not a vdcnn-res dependency
    .venv/bin/python benchmarks/multilabel/baseline_tfidf.py [--data runs/multilabel/ag_news_ml]

The features of ../shared/data/README.md's single-label baseline: TF-IDF of word 1-2-grams and
character 2-5-grams (each at most 300k features, sublinear tf), one logistic regression per label
(``OneVsRestClassifier``), C in {10, 100} chosen by validation micro-F1. Test micro/macro F1 and
subset accuracy are reported twice: every label at threshold 0.5, and with per-label thresholds
tuned on the validation split by the same function vdcnn-res uses (``tune_thresholds``), so the
comparison with a vdcnn-res model (which uses tuned thresholds) is like for like.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.multiclass import OneVsRestClassifier

from vdcnn_res.training.calibration import tune_thresholds

REPO = Path(__file__).resolve().parents[2]


def read(path: Path, names: list[str]) -> tuple[list[str], np.ndarray]:
    texts, hot = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels = set(row["labels"].split("|")) if row["labels"] else set()
            hot.append([int(n in labels) for n in names])
    return texts, np.asarray(hot, dtype=np.int64)


def scores(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "f1_micro": 100 * f1_score(y, predicted, average="micro", zero_division=0),
        "f1_macro": 100 * f1_score(y, predicted, average="macro", zero_division=0),
        "subset_acc": 100 * accuracy_score(y, predicted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "runs" / "multilabel" / "ag_news_ml")
    args = parser.parse_args()
    start = time.perf_counter()
    names = [n.strip() for n in (args.data / "classes.txt").read_text(encoding="utf-8").splitlines() if n.strip()]
    (train, y_train), (valid, y_valid), (test, y_test) = (read(args.data / f"{s}.csv", names) for s in ("train", "valid", "test"))
    word = TfidfVectorizer(ngram_range=(1, 2), max_features=300_000, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), max_features=300_000, sublinear_tf=True)
    x_train = hstack([word.fit_transform(train), char.fit_transform(train)]).tocsr()
    x_valid = hstack([word.transform(valid), char.transform(valid)]).tocsr()
    x_test = hstack([word.transform(test), char.transform(test)]).tocsr()
    best = None
    for c in (10.0, 100.0):
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=2000)).fit(x_train, y_train)
        f1 = scores(y_valid, (model.predict_proba(x_valid) >= 0.5).astype(int))["f1_micro"]
        print(f"C={c:g}: validation micro-F1 {f1:.2f} % (threshold 0.5)")
        if best is None or f1 > best[0]:
            best = (f1, c, model)
    _, c, model = best
    p_valid, p_test = model.predict_proba(x_valid), model.predict_proba(x_test)
    tuned = tune_thresholds(torch.from_numpy(p_valid), torch.from_numpy(y_valid), 0.5)
    result = {
        "C": c,
        "test_threshold_0.5": scores(y_test, (p_test >= 0.5).astype(int)),
        "test_tuned_thresholds": scores(y_test, (p_test >= np.asarray(tuned.thresholds)[None, :]).astype(int)),
        "thresholds": dict(zip(names, tuned.thresholds)),
        "test_texts": len(test),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
