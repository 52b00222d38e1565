"""Rebuild data/ag_news_sample/ from the AG News benchmark copy in ../shared/data/ag_news_7600.

Deterministic: the first N rows of each class in file order (train 1,000 per class, test 200
per class, valid all 400), rows written back in their original order and quoting.

    python data/make_ag_news_sample.py [SOURCE_DIR] [TARGET_DIR]
"""

import csv
import shutil
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_CLASS = {"train.csv": 1000, "valid.csv": None, "test.csv": 200}  # None: every row


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data" / "ag_news_7600"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "ag_news_sample"
    target.mkdir(parents=True, exist_ok=True)
    for name, limit in PER_CLASS.items():
        with open(source / name, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        taken: Counter[str] = Counter()
        kept = []
        for row in rows:
            if limit is None or taken[row[0]] < limit:
                taken[row[0]] += 1
                kept.append(row)
        with open(target / name, "w", encoding="utf-8", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerows(kept)
        print(f"{name}: {len(kept)} rows, per class {dict(sorted(taken.items()))}")
    shutil.copyfile(source / "classes.txt", target / "classes.txt")


if __name__ == "__main__":
    main()
