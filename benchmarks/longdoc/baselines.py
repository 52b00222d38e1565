"""TF-IDF + logistic regression and fastText on a long-document set of make_longdoc.py.

    .venv/bin/python -m pip install scikit-learn fasttext-wheel   # benchmark extras, not vdcnn-res dependencies
    .venv/bin/python benchmarks/longdoc/baselines.py /tmp/longdoc/p350j3

The protocol of ../shared/data/README.md's baselines, so the long-document rows sit beside the
shared splits' like for like: TF-IDF of word 1-2-grams and character 2-5-grams (each at most
300k features, sublinear tf) with a logistic regression, C in {10, 100}; fastText supervised with
word bigrams, dim 50, lr in {0.1, 0.5, 1.0}, epochs in {5, 25}. Each chooses its setting on the
valid split; the test split is read once, by the chosen model. Prints one JSON line per model.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path


def read(path: Path) -> tuple[list[str], list[str]]:
    """(texts, labels) of a make_longdoc.py TSV (columns text, label)."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))  # make_longdoc.py writes QUOTE_MINIMAL
    return [r["text"] for r in rows], [r["label"] for r in rows]


def tfidf_lr(train: tuple, valid: tuple, test: tuple) -> dict:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    words = TfidfVectorizer(ngram_range=(1, 2), max_features=300_000, sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), max_features=300_000, sublinear_tf=True)
    x_train = hstack([words.fit_transform(train[0]), chars.fit_transform(train[0])]).tocsr()

    def features(texts: list[str]):
        return hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    x_valid, x_test = features(valid[0]), features(test[0])
    scores = {}
    for c in (10, 100):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, train[1])
        scores[c] = (model.score(x_valid, valid[1]), model)
    c = max(scores, key=lambda k: scores[k][0])
    valid_acc, model = scores[c]
    return {"model": "tfidf_lr", "setting": {"C": c}, "valid_acc": valid_acc, "test_acc": model.score(x_test, test[1])}


def fasttext_supervised(train: tuple, valid: tuple, test: tuple) -> dict:
    import fasttext

    def write(split: tuple, path: Path) -> Path:
        lines = ("__label__" + label + " " + " ".join(text.split()) + "\n" for text, label in zip(*split))
        path.write_text("".join(lines), encoding="utf-8")
        return path

    with tempfile.TemporaryDirectory() as tmp:
        files = [write(s, Path(tmp) / f"{name}.txt") for s, name in ((train, "train"), (valid, "valid"), (test, "test"))]
        best = None
        for lr in (0.1, 0.5, 1.0):
            for epoch in (5, 25):
                model = fasttext.train_supervised(str(files[0]), lr=lr, epoch=epoch, dim=50, wordNgrams=2, verbose=0, seed=0)
                valid_acc = model.test(str(files[1]))[1]  # precision@1 = accuracy for one label per text
                if best is None or valid_acc > best[0]:
                    best = (valid_acc, {"lr": lr, "epoch": epoch}, model)
        valid_acc, setting, model = best
        return {"model": "fasttext", "setting": setting, "valid_acc": valid_acc, "test_acc": model.test(str(files[2]))[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder of make_longdoc.py: train.tsv, valid.tsv, test.tsv")
    args = parser.parse_args()
    splits = [read(args.data / f"{name}.tsv") for name in ("train", "valid", "test")]
    for run in (tfidf_lr, fasttext_supervised):
        start = time.perf_counter()
        result = run(*splits)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
