"""The sweep's tables: results.csv (one row per cell), summary.csv and summary.md (one row per point).

A point's row holds, over its seeds, mean +- sd and every seed's value of the best and the final
validation accuracy (and the macro-F1 at the best epoch), and, for every point but the baseline,
the paired difference point - baseline by seed with its 95 % Student-t interval. Points are sorted
by mean best validation accuracy. Every file is replaced whole: workers may rewrite them at any time.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vdcnn_res.cli.ablate.grid import write_atomically
from vdcnn_res.cli.ablate.report import Group, csv_text, group_results, md_interval, md_spread, md_table
from vdcnn_res.cli.ablate.stats import Interval, mean_ci, paired_differences, spread
from vdcnn_res.cli.sweep.grid import Axis, Point, SweepResult

__all__ = ["COMPARED", "METRICS", "write_tables"]

# Summarised over seeds (all in %); the paired differences are given for COMPARED.
METRICS = ("best_val_acc", "final_val_acc", "best_val_f1")
COMPARED = ("best_val_acc", "final_val_acc")
_CELL_COLUMNS = (
    "best_val_acc", "best_epoch", "final_val_acc", "best_val_f1", "final_val_f1", "train_loss_final",
    "train_acc_final", "epochs", "steps", "fit_seconds", "threads", "host", "status", "fit_args",
)  # fmt: skip


def _mean_of(group: Group[SweepResult], attr: str) -> float:
    return spread(float(getattr(r, attr)) for r in group.results if r.ok).mean


def _sort_key(group: Group[SweepResult]) -> tuple[bool, float]:
    best = group.spread("best_val_acc").mean
    return (math.isnan(best), -best if not math.isnan(best) else 0.0)


def _seed_values(group: Group[SweepResult], metric: str) -> str:
    return " ".join(f"{seed}:{v:.6g}" for seed, v in group.values(metric).items() if not math.isnan(v))


def write_tables(
    results: list[SweepResult], axes: list[Axis], baseline: Point, out_dir: Path, command: str
) -> tuple[Path, Path, Path]:
    """results.csv (every cell, with its exact fit command), summary.csv and summary.md (every point)."""
    keys = [axis.key for axis in axes]
    groups = sorted(group_results(results), key=_sort_key)
    base = next((g for g in groups if g.first.point == baseline.name), None)
    diffs: dict[str, dict[str, Interval]] = {}
    for g in groups:
        if base is not None and g is not base:
            diffs[g.first.point] = {m: mean_ci(paired_differences(g.values(m), base.values(m)).values()) for m in COMPARED}

    csv_path, summary_path, md_path = out_dir / "results.csv", out_dir / "summary.csv", out_dir / "summary.md"
    rows = []
    for r in results:
        row = asdict(r)
        rows.append([r.cell, r.point, r.seed, *(r.values.get(k, "") for k in keys), *(row[c] for c in _CELL_COLUMNS)])
    write_atomically(csv_path, csv_text(("cell", "point", "seed", *keys, *_CELL_COLUMNS), rows))

    header = (
        "point", *keys, "baseline", "seeds", "failed_seeds",
        *(f"{m}_{stat}" for m in METRICS for stat in ("mean", "sd", "n", "values")),
        *(f"{m}_diff{stat}" for m in COMPARED for stat in ("", "_lo", "_hi", "_n")),
        "epochs_values", "fit_seconds_mean",
    )  # fmt: skip
    rows = []
    for g in groups:
        r = g.first
        row: list[Any] = [r.point, *(r.values.get(k, "") for k in keys), g is base,
                          " ".join(str(x.seed) for x in g.results if x.ok),
                          " ".join(str(x.seed) for x in g.results if not x.ok)]  # fmt: skip
        for m in METRICS:
            s = g.spread(m)
            row += [s.mean, s.sd, s.n, _seed_values(g, m)]
        for m in COMPARED:
            d = diffs.get(r.point, {}).get(m)
            row += [d.mean, d.lo, d.hi, d.n] if d else ["", "", "", ""]
        row += [" ".join(f"{x.seed}:{x.epochs}" for x in g.results if x.ok), _mean_of(g, "fit_seconds")]
        rows.append(row)
    write_atomically(summary_path, csv_text(header, rows))

    lines = [
        f"Command: `{command}`",
        "",
        (
            "Validation accuracy and macro-F1 in %, on the validation split (the test split is never read). "
            "best: the highest of any epoch (the epoch of the best checkpoint); final: the last epoch trained. "
            "mean ± sd (sample sd, n - 1) over the seeds that trained to the end, then each seed's value in seed "
            "order. Δ vs baseline: for each seed both finished (same seed = same data order and initialisation), "
            "the point's accuracy minus the baseline's; the mean of these differences [95 % confidence interval, "
            "mean ± t(0.975, n - 1) · sd / √n]; one pair gives no interval. Points are sorted by mean best "
            "validation accuracy; every cell, with its exact fit command, is in results.csv."
        ),
        "",
        f"Baseline: {baseline.label}" + ("" if base is not None else " (no seed of it has finished yet)"),
        "",
    ]
    md_header = ("#", *keys, "seeds", "best val acc", "Δ best vs baseline", "final val acc", "Δ final vs baseline",
                 "best val macro-F1", "epochs", "fit s")  # fmt: skip
    md_rows = []
    for rank, g in enumerate(groups, 1):
        r = g.first
        failed = [str(x.seed) for x in g.results if not x.ok]
        seeds = ", ".join(str(x.seed) for x in g.results if x.ok) + (f" (failed: {', '.join(failed)})" if failed else "")
        d = diffs.get(r.point, {})
        delta = {m: "baseline" if g is base else (md_interval(d[m]) if m in d else "") for m in COMPARED}
        epochs = ", ".join(str(x.epochs) for x in g.results if x.ok)
        fit_s = _mean_of(g, "fit_seconds")
        md_rows.append([str(rank), *(r.values.get(k, "") for k in keys), seeds,
                        md_spread(g.spread("best_val_acc"), g.values("best_val_acc")), delta["best_val_acc"],
                        md_spread(g.spread("final_val_acc"), g.values("final_val_acc")), delta["final_val_acc"],
                        md_spread(g.spread("best_val_f1"), g.values("best_val_f1")), epochs,
                        "" if math.isnan(fit_s) else f"{fit_s:.0f}"])  # fmt: skip
    lines += md_table(md_header, md_rows, left=1 + len(keys))
    failed_cells = [r for r in results if not r.ok]
    if failed_cells:
        lines += ["", "Cells without a result (left out above):", ""]
        lines += [f"- {r.cell}: {r.status}" for r in failed_cells]
    write_atomically(md_path, "\n".join(lines) + "\n")
    return csv_path, summary_path, md_path
