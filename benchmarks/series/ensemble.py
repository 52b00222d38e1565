"""Test accuracy of ensembles of the series recipe: k fits (seeds) averaged by `Predictor.ensemble`.

    python benchmarks/series/run.py --out_dir runs/series --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14
    python benchmarks/series/ensemble.py runs/series --size 5      # ensembles of seeds 0-4, 5-9, 10-14

Reads the cells that benchmarks/series/run.py wrote (one or more of its out_dirs; the same set
and seed must not appear twice), groups each set's seeds in ascending order into ensembles of
`--size` consecutive seeds (a last incomplete group is left out), and tests each ensemble once
on the set's test split. The ensemble's members are the cells' best checkpoints, the ones
`vdcnn-res test --ckpt_path best` read. As a check of the path, every member is also tested
alone through the Predictor and must give the accuracy its cell's `vdcnn-res test` logged.

Writes <first out_dir>/ensemble_table.md: per set, the single fits' mean +- sd over all seeds
and the ensembles' mean +- sd, and the mean over sets of both.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from vdcnn_res import Predictor

REPO = Path(__file__).resolve().parents[2]
SERIES = REPO.parent / "shared" / "data" / "series"


def read_cells(out_dirs: list[Path]) -> dict[str, dict[int, dict]]:
    """{set: {seed: result row + "ckpt"}} from the out_dirs' results.jsonl (default recipe rows only)."""
    cells: dict[str, dict[int, dict]] = {}
    for out_dir in out_dirs:
        for line in (out_dir / "results.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["extra"]:
                continue
            if row["seed"] in cells.setdefault(row["set"], {}):
                raise SystemExit(f"{row['set']} seed {row['seed']} appears twice; give each seed's out_dir once")
            best = sorted((out_dir / f"{row['set']}_seed{row['seed']}").glob("lightning_logs/version_*/checkpoints/best-*.ckpt"))
            if len(best) != 1:
                raise SystemExit(f"expected one best checkpoint for {row['set']} seed {row['seed']}, found {len(best)}")
            cells[row["set"]][row["seed"]] = {**row, "ckpt": best[0]}
    return cells


def read_test(name: str) -> tuple[list[list], list[str]]:
    rows = [json.loads(line) for line in (SERIES / name / "test.jsonl").read_text().splitlines() if line.strip()]
    return [r["series"] for r in rows], [str(r["label"]).strip() for r in rows]


def accuracy(predictor: Predictor, series: list[list], labels: list[str]) -> float:
    predicted = [p["label"] for p in predictor.predict(series)]
    return 100.0 * sum(p == y for p, y in zip(predicted, labels)) / len(labels)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} +- {sd:.1f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dirs", nargs="+", type=Path)
    parser.add_argument("--size", type=int, default=5, help="members per ensemble (consecutive seeds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        f"| set | single fits: seeds | test acc % | ensembles of {args.size}: count | test acc % | per ensemble |",
        "|---|---:|---:|---:|---:|---|",
    ]
    singles, ensembles, rows = [], [], []
    for name, by_seed in sorted(read_cells(args.out_dirs).items()):
        series, labels = read_test(name)
        members = {}
        for seed, cell in sorted(by_seed.items()):
            members[seed] = Predictor.from_checkpoint(cell["ckpt"], bf16=False)
            alone = accuracy(members[seed], series, labels)
            if abs(alone - cell["test_acc"]) > 0.01:
                raise SystemExit(f"{name} seed {seed}: the Predictor gives {alone:.2f} %, vdcnn-res test gave {cell['test_acc']}")
        seeds = sorted(members)
        groups = [seeds[i : i + args.size] for i in range(0, len(seeds) - args.size + 1, args.size)]
        accs = [accuracy(Predictor.ensemble([members[s] for s in group]), series, labels) for group in groups]
        single = [by_seed[s]["test_acc"] for s in seeds]
        singles.append(statistics.mean(single))
        if accs:
            ensembles.append(statistics.mean(accs))
        rows.append({"set": name, "single": single, "ensembles": dict(zip([f"{g[0]}-{g[-1]}" for g in groups], accs))})
        per = ", ".join(f"{a:.2f} (seeds {g[0]}-{g[-1]})" for g, a in zip(groups, accs))
        lines.append(f"| {name} | {len(single)} | {_mean_sd(single)} | {len(accs)} | {_mean_sd(accs) if accs else '-'} | {per} |")
    lines.append(f"| mean of sets | | {statistics.mean(singles):.2f} | | {statistics.mean(ensembles):.2f} | |" if ensembles
                 else f"| mean of sets | | {statistics.mean(singles):.2f} | | - | |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (args.out_dirs[0] / "ensemble_table.md").write_text(text)
    (args.out_dirs[0] / "ensemble_results.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return text


if __name__ == "__main__":
    main()
