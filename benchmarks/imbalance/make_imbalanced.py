"""An imbalanced training split of a shared benchmark split: some classes cut to a fraction.

    python benchmarks/imbalance/make_imbalanced.py                       # AG News, Business + Sci/Tech at 1/10
    python benchmarks/imbalance/make_imbalanced.py --minority 3 4 --fraction 0.1 --out benchmarks/imbalance/data/train.csv

Reads a Zhang et al. CSV (no header: "class 1-N","title","description"), keeps every row of
the other classes and a seeded random ``fraction`` of each minority class's rows, in file
order, and writes the result byte for byte (rows are copied, not re-quoted). The same
arguments always give the same file. Validation and test splits are left as they are: the
config (ag_news_7600_imb10.yaml) reads them from ../shared/data.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "ag_news_7600" / "train.csv"
DEFAULT_OUT = HERE / "data" / "ag_news_7600_imb10" / "train.csv"


def label_of(line: str) -> str:
    """The first CSV field of one physical line (AG News rows hold no line breaks)."""
    return next(csv.reader(io.StringIO(line)))[0].strip()


def subsample(lines: list[str], minority: set[str], fraction: float, seed: int) -> list[str]:
    """Every line of the other classes; a seeded ``fraction`` (rounded, at least 1) of each minority class."""
    by_class: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        by_class.setdefault(label_of(line), []).append(i)
    unknown = minority - set(by_class)
    if unknown:
        raise SystemExit(f"make_imbalanced: classes {sorted(unknown)} do not occur in the source (it has {sorted(by_class)})")
    keep: set[int] = set()
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        rows = by_class[label]
        if label in minority:
            k = max(1, round(fraction * len(rows)))
            rows = rng.choice(rows, size=k, replace=False).tolist()
        keep.update(rows)
    return [line for i, line in enumerate(lines) if i in keep]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Zhang et al. training CSV")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the imbalanced training CSV to write")
    parser.add_argument("--minority", nargs="+", default=["3", "4"], help="class values (first column) to cut")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of each minority class kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.fraction <= 1:
        raise SystemExit(f"make_imbalanced: --fraction must be in (0, 1], got {args.fraction}")
    with args.source.open(encoding="utf-8", newline="") as f:  # lines end at \n / \r\n only
        lines = f.readlines()
    kept = subsample(lines, set(args.minority), args.fraction, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write("".join(kept))
    tmp.replace(args.out)
    counts = Counter(label_of(line) for line in kept)
    print(f"{args.out}: {len(kept)} of {len(lines)} rows; per class " + ", ".join(f"{c}: {counts[c]}" for c in sorted(counts)))


if __name__ == "__main__":
    main()
