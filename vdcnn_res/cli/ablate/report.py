"""The ablation's tables (results.csv, summary.csv, results.md) and figure (ablation.png).

results.csv has one row per cell; summary.csv one row per group (a cell's configuration over its
seeds): mean, sd and every seed's value of each error, and on residual rows the paired difference
residual - plain (same seed = same data order and initialisation) with its 95 % interval.
Every file is replaced whole (write, then rename): workers sharing the folder may rewrite them at
any moment.
"""

from __future__ import annotations

import csv
import io
import math
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vdcnn_res.cli.ablate.grid import COLUMNS, CellResult, write_atomically
from vdcnn_res.cli.ablate.stats import Interval, Spread, mean_ci, paired_differences, spread

# The errors summarised over seeds (all in %).
METRICS = ("train_err_final", "train_err_best", "val_err_final", "val_err_best", "test_err")
GROUP_COLUMNS = ("group", "arch", "layers", "blocks_per_stage", "shortcut", "downsampling", "seeds", "failed_seeds")
SUMMARY_COLUMNS = (
    *GROUP_COLUMNS,
    *(f"{m}_{stat}" for m in METRICS for stat in ("mean", "sd", "n", "values")),
    *(f"{m}_diff{stat}" for m in METRICS for stat in ("", "_lo", "_hi", "_n")),
)


def fmt(value: Any, digits: int = 6) -> str:
    """Floats with `digits` significant digits (empty for NaN), everything else as str."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def md_cell(column: str, value: Any) -> str:
    """Readable Markdown: losses to 4 decimals, errors (%) to 2, seconds whole, params grouped."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if column.startswith("train_loss"):
        return f"{value:.4f}"
    if column.endswith("_err") or "_err_" in column:
        return f"{value:.2f}"
    if column == "fit_seconds":
        return f"{value:.0f}"
    if column == "params":
        return f"{value:,}"
    return str(value)


class SeedRow(Protocol):
    """A cell's row as grouped over seeds (CellResult; `vdcnn-res sweep`'s rows too)."""

    seed: int

    @property
    def group(self) -> str: ...

    @property
    def ok(self) -> bool: ...


T = TypeVar("T", bound=SeedRow)


@dataclass
class Group(Generic[T]):
    """The seeds of one configuration (e.g. architecture, shortcut, downsampling), in seed order."""

    results: list[T] = field(default_factory=list)

    @property
    def first(self) -> T:
        return self.results[0]

    def values(self, metric: str) -> dict[int, float]:
        """seed -> value for the seeds that trained to the end (NaN where that number is missing)."""
        return {r.seed: float(getattr(r, metric)) for r in self.results if r.ok}

    def spread(self, metric: str) -> Spread:
        return spread(self.values(metric).values())


def group_results(results: list[T]) -> list[Group[T]]:
    """Cells grouped over seeds, groups in the order of their first cell."""
    groups: dict[str, Group[T]] = {}
    for r in results:
        groups.setdefault(r.group, Group[T]()).results.append(r)
    for g in groups.values():
        g.results.sort(key=lambda r: r.seed)
    return list(groups.values())


def paired(groups: list[Group[CellResult]]) -> dict[str, dict[str, Interval]]:
    """For each residual group with a plain partner (same arch and downsampling): metric -> residual - plain
    over the seeds both finished, as a mean with its 95 % interval."""
    plain = {(g.first.arch, g.first.downsampling): g for g in groups if not g.first.shortcut}
    out: dict[str, dict[str, Interval]] = {}
    for g in groups:
        partner = plain.get((g.first.arch, g.first.downsampling))
        if g.first.shortcut and partner is not None:
            out[g.first.group] = {
                m: mean_ci(paired_differences(g.values(m), partner.values(m)).values()) for m in METRICS
            }
    return out


def csv_text(header: tuple[str, ...], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([fmt(v) for v in row] for row in rows)
    return buffer.getvalue()


def _seed_list(seeds: list[int]) -> str:
    return " ".join(map(str, seeds))


def summary_rows(groups: list[Group[CellResult]], diffs: dict[str, dict[str, Interval]]) -> list[list[Any]]:
    """summary.csv's rows: one per group, SUMMARY_COLUMNS in order."""
    rows = []
    for g in groups:
        r = g.first
        row: list[Any] = [r.group, r.arch, r.layers, r.blocks_per_stage, r.shortcut, r.downsampling,
                          _seed_list([x.seed for x in g.results if x.ok]),
                          _seed_list([x.seed for x in g.results if not x.ok])]  # fmt: skip
        for m in METRICS:
            s = g.spread(m)
            values = " ".join(f"{seed}:{fmt(v)}" for seed, v in g.values(m).items() if not math.isnan(v))
            row += [s.mean, s.sd, s.n, values]
        diff = diffs.get(r.group)
        for m in METRICS:
            row += [diff[m].mean, diff[m].lo, diff[m].hi, diff[m].n] if diff else ["", "", "", ""]
        rows.append(row)
    return rows


def md_spread(s: Spread, values: dict[int, float]) -> str:
    """`mean ± sd (seed values)`; one seed shows its value and says so (no sd, not 0)."""
    if s.n == 0:
        return ""
    if s.n == 1:
        return f"{s.mean:.2f} (1 seed)"
    shown = ", ".join(f"{v:.2f}" for v in values.values() if not math.isnan(v))
    return f"{s.mean:.2f} ± {s.sd:.2f} ({shown})"


def md_interval(i: Interval) -> str:
    """`+d.dd [lo, hi]`; one pair shows its difference and says there is no interval (not a zero-width one)."""
    if i.n == 0:
        return ""
    if i.n == 1:
        return f"{i.mean:+.2f} (1 pair: no interval)"
    return f"{i.mean:+.2f} [{i.lo:+.2f}, {i.hi:+.2f}]"


def md_table(header: tuple[str, ...], rows: list[list[str]], left: int = 1) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def write_tables(results: list[CellResult], out_dir: Path, command: str) -> tuple[Path, Path, Path]:
    """results.csv (every column, the exact fit command per cell), summary.csv (per group over seeds)
    and results.md (the readable part of both)."""
    groups = group_results(results)
    diffs = paired(groups)
    csv_path, summary_path, md_path = out_dir / "results.csv", out_dir / "summary.csv", out_dir / "results.md"
    write_atomically(csv_path, csv_text(COLUMNS, [[asdict(r)[c] for c in COLUMNS] for r in results]))
    write_atomically(summary_path, csv_text(SUMMARY_COLUMNS, summary_rows(groups, diffs)))

    lines = [
        f"Command: `{command}`",
        "",
        (
            "Errors in %. Training loss/error: mean over each epoch's batches (training mode), final = last "
            "epoch, best = lowest epoch. test_err: the best-validation checkpoint on the test split. "
            "Each cell's exact fit command is in results.csv; the numbers below are in summary.csv too."
        ),
        "",
        "## Over seeds",
        "",
        (
            "mean ± sd (sample sd, n - 1) over the seeds that trained to the end, then each seed's value in "
            "seed order; failed seeds (e.g. diverged) are listed apart and left out."
        ),
        "",
    ]
    header = ("group", "layers", "shortcut", "downsampling", "seeds", "failed", *METRICS)
    rows = []
    for g in groups:
        r = g.first
        ok = [str(x.seed) for x in g.results if x.ok]
        failed = [str(x.seed) for x in g.results if not x.ok]
        rows.append([r.group, str(r.layers), str(r.shortcut), r.downsampling, ", ".join(ok), ", ".join(failed),
                     *(md_spread(g.spread(m), g.values(m)) for m in METRICS)])  # fmt: skip
    lines += md_table(header, rows)
    if diffs:
        lines += [
            "",
            "## Residual - plain, paired by seed",
            "",
            (
                "For each seed both finished (same seed = same data order and initialisation): the residual "
                "cell's error minus the plain cell's; the mean of these differences [95 % confidence interval, "
                "mean ± t(0.975, n - 1) · sd / √n, Student t over seeds]. Negative: the shortcut lowers the "
                "error. One pair gives no interval."
            ),
            "",
        ]
        header = ("architecture", "layers", "downsampling", "pairs", *METRICS)
        rows = []
        for g in groups:
            if g.first.group in diffs:
                d = diffs[g.first.group]
                pairs = max(i.n for i in d.values())
                rows.append([g.first.arch, str(g.first.layers), g.first.downsampling, str(pairs),
                             *(md_interval(d[m]) for m in METRICS)])  # fmt: skip
        lines += md_table(header, rows)
    lines += ["", "## Cells", ""]
    shown = ("cell", "layers", "shortcut", "params", "steps", "train_loss_final", "train_loss_best",
             "train_err_final", "train_err_best", "val_err_best", "test_err", "fit_seconds")  # fmt: skip
    rows = []
    for r in results:
        row = asdict(r)
        cells = [md_cell(c, row[c]) for c in shown]
        if r.status != "ok":
            cells[0] += f" ({r.status})"
        rows.append(cells)
    lines += md_table(shown, rows)
    write_atomically(md_path, "\n".join(lines) + "\n")
    return csv_path, summary_path, md_path


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], int]:
    """Each seed's loss curve smoothed (moving average), then mean and sd over seeds at every step;
    also the first step index past the smoothing window (where the y range is taken from)."""
    by_step: dict[int, list[float]] = {}
    skip = 0
    for curve in curves:
        steps, losses = zip(*curve)
        window = max(1, len(losses) // 25)
        skip = max(skip, window)
        for step, value in zip(steps, _smooth(list(losses), window)):
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    xs = sorted(by_step)
    stats = [spread(by_step[x]) for x in xs]
    return xs, [s.mean for s in stats], [s.sd for s in stats], skip


def plot_results(results: list[CellResult], out_dir: Path) -> Path:
    """Training loss against steps (plain | residual; mean over seeds with a ±sd band) and test error
    against depth (mean with ±sd error bars, every seed as a dot), like the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_results(results)
    kinds = [shortcut for shortcut in (False, True) if any(g.first.shortcut == shortcut for g in groups)]
    downsampling = list(dict.fromkeys(g.first.downsampling for g in groups))
    styles = dict(zip(downsampling, ("-", "--", ":", "-.")))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5.4 * (len(kinds) + 1), 4.6), squeeze=False)
    axes = axes[0]
    layers = sorted({g.first.layers for g in groups})
    colours = {n: plt.cm.viridis(i / max(1, len(layers) - 1)) for i, n in enumerate(layers)}
    top = 0.0
    for ax, shortcut in zip(axes[:-1], kinds):
        for g in sorted(groups, key=lambda g: g.first.layers):
            curves = [r.curve for r in g.results if r.curve]
            if g.first.shortcut != shortcut or not curves:
                continue
            steps, mean, sd, skip = _band(curves)
            if not steps:
                continue
            colour = colours[g.first.layers]
            seeds = ", ".join(str(r.seed) for r in g.results if r.curve)
            name = f"{g.first.layers} layers" + (f", {g.first.downsampling}" if len(downsampling) > 1 else "")
            ax.plot(steps, mean, color=colour, linestyle=styles.get(g.first.downsampling, "-"),
                    label=f"{name} (seed{'s' if len(curves) > 1 else ''} {seeds})")  # fmt: skip
            if len(curves) > 1:
                lo = [m - s if not math.isnan(s) else m for m, s in zip(mean, sd)]
                hi = [m + s if not math.isnan(s) else m for m, s in zip(mean, sd)]
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)
                top = max(top, max(hi[skip:] or hi))
            top = max(top, max(mean[skip:] or mean))
        ax.set_title(("residual (shortcut on)" if shortcut else "plain (shortcut off)") + ": training loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (moving average; band: ±sd over seeds)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in axes[:-1]:
        ax.set_ylim(0, top * 1.05 if top > 0 else None)
    ax = axes[-1]
    for shortcut, marker in ((False, "s"), (True, "o")):
        for kind in downsampling:
            points = [g for g in groups if g.first.shortcut == shortcut and g.first.downsampling == kind]
            points = sorted((g for g in points if g.spread("test_err").n), key=lambda g: g.first.layers)
            if not points:
                continue
            stats = [g.spread("test_err") for g in points]
            x = [g.first.layers for g in points]
            name = ("residual" if shortcut else "plain") + (f", {kind}" if len(downsampling) > 1 else "")
            bars = ax.errorbar(x, [s.mean for s in stats], yerr=[0.0 if math.isnan(s.sd) else s.sd for s in stats],
                               marker=marker, capsize=3, linestyle=styles.get(kind, "-"),
                               label=f"{name} (mean ± sd over seeds)")  # fmt: skip
            for g in points:  # every seed's own result
                ys = [v for v in g.values("test_err").values() if not math.isnan(v)]
                ax.scatter([g.first.layers] * len(ys), ys, s=12, color=bars[0].get_color(), alpha=0.5)
    ax.set_title("test error against depth")
    ax.set_xlabel("convolutional layers")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "ablation.png"
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path
