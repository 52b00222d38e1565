"""Imbalanced AG News: macro-F1 and per-class recall without and with class weights / balanced sampling.

    python benchmarks/imbalance/make_imbalanced.py
    python benchmarks/imbalance/run.py --seeds 1 2 --out_dir benchmarks/imbalance/runs

Every cell is one `vdcnn-res fit` of ag_news_7600_imb10.yaml (the CLI's default recipe, 4 epochs,
one thread) followed by `vdcnn-res test` of its last checkpoint (the cosine schedule ends there;
no checkpoint selection), one cell at a time. Per-class recall and macro-F1 come from the
test's confusion matrix (confusion_matrix_test.csv). A finished cell is not run again;
results.csv holds every cell with its commands and results.md the table (mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / "ag_news_7600_imb10.yaml"
VARIANTS = {
    "natural": [],
    "class weights": ["--model.class_weights=balanced"],
    "balanced sampling": ["--data.sampling=balanced"],
}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def cli() -> list[str]:
    return [str(Path(sys.executable).with_name("vdcnn-res"))]


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run.py: a command failed (exit {done.returncode}); see {log}")


def scores(confusion_csv: Path) -> tuple[list[str], np.ndarray, float, float]:
    """(label names, per-class recall, macro-F1, accuracy) from a confusion-matrix CSV."""
    with confusion_csv.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    m = np.array([[int(x) for x in row[1:]] for row in rows[1:]], dtype=float)
    tp = np.diag(m)
    recall = tp / np.maximum(m.sum(axis=1), 1)
    precision = tp / np.maximum(m.sum(axis=0), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return names, recall, float(f1.mean()), float(tp.sum() / m.sum())


def cell(out_dir: Path, variant: str, seed: int, epochs: int) -> dict[str, object]:
    name = f"{variant.replace(' ', '_')}-seed{seed}"
    root = out_dir / name
    confusion = root / "test" / "confusion_matrix_test.csv"
    fit = [*cli(), "fit", "--config", str(CONFIG), *VARIANTS[variant], f"--seed_everything={seed}", f"--data.seed={seed}",
           f"--trainer.max_epochs={epochs}", "--trainer.logger=false", f"--trainer.default_root_dir={root}", *QUIET]
    test = [*cli(), "test", "--config", str(CONFIG), "--ckpt_path", str(root / "checkpoints" / "last.ckpt"),
            f"--trainer.default_root_dir={root / 'test'}", "--trainer.logger=false", *QUIET]
    if not confusion.is_file():
        root.mkdir(parents=True, exist_ok=True)
        start = time.process_time(), time.time()
        run(fit, root / "log.txt")
        # The test writes confusion_matrix_test.csv into the Trainer's root dir when it has no logger.
        run(test, root / "log.txt")
        print(f"{name}: {time.time() - start[1]:.0f} s wall", flush=True)
    names, recall, macro_f1, acc = scores(confusion)
    return {"variant": variant, "seed": seed, "macro_f1": macro_f1, "accuracy": acc,
            **{f"recall {n}": r for n, r in zip(names, recall)}, "fit": " ".join(fit), "test": " ".join(test)}


def table(rows: list[dict[str, object]]) -> str:
    recall_keys = [k for k in rows[0] if str(k).startswith("recall ")]
    head = ["variant", "seeds", "macro-F1", "accuracy", *[k.removeprefix("recall ") + " recall" for k in recall_keys]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue

        def stat(key: str, mine: list[dict[str, object]] = mine) -> str:
            v = 100 * np.array([float(r[key]) for r in mine])
            return f"{v.mean():.1f}" + (f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else "")

        lines.append("| " + " | ".join([variant, str(len(mine)), stat("macro_f1"), stat("accuracy"),
                                         *[stat(k) for k in recall_keys]]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out_dir", type=Path, default=HERE / "runs")
    args = parser.parse_args()
    if not (REPO / "benchmarks/imbalance/data/ag_news_7600_imb10/train.csv").is_file():
        raise SystemExit("run.py: no imbalanced split yet; run python benchmarks/imbalance/make_imbalanced.py first")
    rows = []
    for seed in args.seeds:  # all variants of a seed first: a cut-short run still compares them
        for variant in args.variants:
            rows.append(cell(args.out_dir, variant, seed, args.epochs))
            with (args.out_dir / "results.csv").open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            (args.out_dir / "results.md").write_text(table(rows), encoding="utf-8")
    print(table(rows))


if __name__ == "__main__":
    main()
