"""Build a reproducible multi-label split from ../shared/data/ag_news_7600 (issue 17, part 1).

    .venv/bin/python benchmarks/multilabel/make_multilabel.py            # -> runs/multilabel/ag_news_ml/

Construction, per split (train, valid, test) separately, so no source text crosses splits:

1. Read the split (Zhang et al. CSV: 1-based class, title, description; a text is
   ``title + " " + description``, as the data module joins them) and the class names of
   ``classes.txt``.
2. Shuffle each class's texts with ``numpy.random.default_rng(seed)`` (seed 17 by default, the
   same generator for every step below, splits drawn in the order train, valid, test).
3. Repeat until fewer than 3 classes have unused texts: draw k uniformly from {1, 2, 3} (capped by
   the number of classes with unused texts), draw k distinct classes among those with unused
   texts, weighted by how many texts each has left, and take the next unused text of each. The
   new text is those k texts joined with a space, in the drawn order; its label set is their k
   classes. Every source text is used at most once (the few left at the end are dropped).

So a text holds one, two or three topics, each label set has 1-3 distinct labels (no empty
set), and the labels are about equally frequent. Written as CSV with a header ``text,labels``,
labels joined by ``|`` in label-name order (``data.label_separator`` default), plus
``classes.txt`` and ``stats.json`` (rows and label-set sizes per split). The output folder is
git-ignored (``/runs/``): only this script is part of the project.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "ag_news_7600"
OUT = REPO / "runs" / "multilabel" / "ag_news_ml"


def read_split(path: Path) -> list[tuple[int, str]]:
    """(0-based class, text) rows of a Zhang et al. CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(label) - 1, f"{title} {description}") for label, title, description in csv.reader(f)]


def combine(rows: list[tuple[int, str]], n_classes: int, rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """Texts of 1-3 source texts of distinct classes, each source text used at most once."""
    pools = [[text for label, text in rows if label == c] for c in range(n_classes)]
    for pool in pools:
        rng.shuffle(pool)
    out = []
    while sum(1 for pool in pools if pool) >= 3:
        open_classes = [c for c in range(n_classes) if pools[c]]
        k = int(rng.integers(1, 4))
        left = np.array([len(pools[c]) for c in open_classes], dtype=np.float64)
        chosen = rng.choice(open_classes, size=k, replace=False, p=left / left.sum())
        out.append((" ".join(pools[c].pop() for c in chosen), sorted(int(c) for c in chosen)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    names = [line.strip() for line in (args.source / "classes.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in ("train", "valid", "test"):
        rows = combine(read_split(args.source / f"{split}.csv"), len(names), rng)
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "labels"])
            for text, labels in rows:
                writer.writerow([text, "|".join(names[c] for c in labels)])
        sizes = np.bincount([len(labels) for _, labels in rows], minlength=4)[1:]
        per_label = np.bincount([c for _, labels in rows for c in labels], minlength=len(names))
        stats[split] = {"rows": len(rows), "labels_per_text": {str(k + 1): int(n) for k, n in enumerate(sizes)},
                        "texts_per_label": dict(zip(names, map(int, per_label)))}
    (args.out / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (args.out / "stats.json").write_text(json.dumps({"seed": args.seed, **stats}, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(stats, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
