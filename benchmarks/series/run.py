"""Test accuracy of the series recipe on the shared UCR/UEA sets: fit + test per set and seed.

    python benchmarks/series/run.py --out_dir runs/series                 # 5 sets x 3 seeds, one at a time
    python benchmarks/series/run.py --sets GunPoint --seeds 0 --max_epochs 5 --out_dir /tmp/s   # a smoke run
    python benchmarks/series/run.py --sets ArrowHead --out_dir runs/probe -- --data.batch_size=8  # a variant of the recipe

Each cell runs `vdcnn-res fit --config configs/series/recipe.yaml --config configs/series/<set>.yaml`
with one thread (OMP_NUM_THREADS=1), then `vdcnn-res test` on its best checkpoint alone (the
recipe's `checkpoint.monitor`: the lowest training loss, `data.train_as_valid`), and appends one JSON line to
<out_dir>/results.jsonl: set, seed, test accuracy, fit wall seconds, epochs. Finished cells are
skipped when the command is repeated. The table (mean and sd over seeds) goes to <out_dir>/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETS = ("ArrowHead", "BasicMotions", "Coffee", "GunPoint", "ItalyPowerDemand", "JapaneseVowels", "PLAID")
VDCNN_RES = [sys.executable, "-m", "vdcnn_res.cli"]
_ACCURACY = re.compile(r"accuracy ([0-9.]+) % on (\d+)")


def _run(args: list[str], log: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = log.stat().st_size if log.exists() else 0
    with log.open("a", encoding="utf-8") as f:  # streamed: a long fit's epochs show in the log as they end
        done = subprocess.run(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}); see {log}")
    with log.open(encoding="utf-8") as f:
        f.seek(start)
        return f.read()


def run_cell(name: str, seed: int, out_dir: Path, extra: list[str]) -> dict:
    """Fit and test one (set, seed); returns its result row."""
    cell = out_dir / f"{name}_seed{seed}"
    cell.mkdir(parents=True, exist_ok=True)
    configs = ["--config", "configs/series/recipe.yaml", "--config", f"configs/series/{name}.yaml"]
    fit = [*VDCNN_RES, "fit", *configs, "--seed_everything", str(seed), "--data.seed", str(seed),
           "--trainer.default_root_dir", str(cell), "--trainer.enable_progress_bar=false", *extra]  # fmt: skip
    start = time.perf_counter()
    _run(fit, cell / "fit.log")
    fit_seconds = time.perf_counter() - start
    test_file = f"../shared/data/series/{name}/test.jsonl"
    test = [*VDCNN_RES, "test", "--ckpt_path", "best", "--trainer.default_root_dir", str(cell),
            "--data.test", test_file, "--trainer.enable_progress_bar=false"]  # fmt: skip
    found = _ACCURACY.search(_run(test, cell / "test.log"))
    if found is None:
        raise RuntimeError(f"no test accuracy in {cell / 'test.log'}")
    best = sorted(cell.glob("lightning_logs/version_*/checkpoints/best-*.ckpt"))
    epoch = re.search(r"epoch=(\d+)", best[-1].name) if best else None
    return {
        "set": name,
        "seed": seed,
        "test_acc": float(found.group(1)),
        "test_n": int(found.group(2)),
        "best_epoch": int(epoch.group(1)) if epoch else None,
        "fit_seconds": round(fit_seconds, 1),
        "extra": extra,
    }


def table(rows: list[dict]) -> str:
    """Markdown: per set, test accuracy mean and sd over seeds, and the mean fit wall time."""
    lines = ["| set | seeds | test acc % (mean) | sd | per seed | fit wall s (mean, 1 thread) |", "|---|---:|---:|---:|---|---:|"]
    means = []
    for name in sorted({r["set"] for r in rows}):
        accs = [r["test_acc"] for r in rows if r["set"] == name]
        secs = [r["fit_seconds"] for r in rows if r["set"] == name]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        means.append(statistics.mean(accs))
        per_seed = ", ".join(f"{a:.1f}" for a in accs)
        lines.append(f"| {name} | {len(accs)} | {means[-1]:.1f} | {sd:.1f} | {per_seed} | {statistics.mean(secs):.0f} |")
    if means:
        lines.append(f"| mean of sets | | {statistics.mean(means):.1f} | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, type=Path)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_epochs", type=int, default=None, help="override the recipe's trainer.max_epochs")
    parser.add_argument("fit_args", nargs="*", help="after --: more `vdcnn-res fit` flags for every cell (e.g. -- --data.batch_size=8)")
    args = parser.parse_args(argv)
    extra = ([] if args.max_epochs is None else ["--trainer.max_epochs", str(args.max_epochs)]) + list(args.fit_args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = args.out_dir / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    for seed in args.seeds:  # every set once before the next seed: an interrupted run covers all sets
        for name in args.sets:
            if any(r["set"] == name and r["seed"] == seed and r["extra"] == extra for r in rows):
                continue
            row = run_cell(name, seed, args.out_dir, extra)
            rows.append(row)
            with results.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    text = table([r for r in rows if r["extra"] == extra and r["set"] in args.sets])
    (args.out_dir / "table.md").write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
