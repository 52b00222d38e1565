"""The ablation's tables (results.csv, results.md) and figure (ablation.png)."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vdcnn_res.cli.ablate.grid import COLUMNS, CellResult


def _fmt(value: Any, digits: int = 6) -> str:
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


def write_tables(results: list[CellResult], out_dir: Path, command: str) -> tuple[Path, Path]:
    """results.csv (every column, the exact fit command per cell) and results.md (the readable part)."""
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in results:
            row = asdict(r)
            writer.writerow([_fmt(row[c]) for c in COLUMNS])
    md_path = out_dir / "results.md"
    shown = ("cell", "layers", "shortcut", "params", "steps", "train_loss_final", "train_loss_best",
             "train_err_final", "train_err_best", "val_err_best", "test_err", "fit_seconds")  # fmt: skip
    lines = [
        f"Command: `{command}`",
        "",
        "Errors in %. Training loss/error: mean over each epoch's batches (training mode), final = last epoch, "
        "best = lowest epoch. test_err: the best-validation checkpoint on the test split. "
        "Each cell's exact fit command is in results.csv.",
        "",
        "| " + " | ".join(shown) + " |",
        "|" + "|".join("---" if c == "cell" else "---:" for c in shown) + "|",
    ]
    for r in results:
        row = asdict(r)
        cells = [md_cell(c, row[c]) for c in shown]
        if r.status != "ok":
            cells[0] += f" ({r.status})"
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_results(results: list[CellResult], out_dir: Path) -> Path:
    """Training loss against steps (plain | residual) and test error against depth, like the paper's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [shortcut for shortcut in (False, True) if any(r.shortcut == shortcut for r in results)]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5.4 * (len(kinds) + 1), 4.6))
    layers = sorted({r.layers for r in results})
    colours = {n: plt.cm.viridis(i / max(1, len(layers) - 1)) for i, n in enumerate(layers)}
    top = 0.0
    for ax, shortcut in zip(axes[:-1], kinds):
        for r in sorted(results, key=lambda r: r.layers):
            if r.shortcut != shortcut or not r.curve:
                continue
            steps, losses = zip(*r.curve)
            window = max(1, len(losses) // 25)
            smooth = _smooth(list(losses), window)
            top = max(top, max(smooth[window:] or smooth))
            ax.plot(steps, smooth, color=colours[r.layers], label=f"{r.layers} layers (seed {r.seed})")
        ax.set_title(("residual (shortcut on)" if shortcut else "plain (shortcut off)") + ": training loss")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (moving average)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in axes[:-1]:
        ax.set_ylim(0, top * 1.05 if top > 0 else None)
    ax = axes[-1]
    for shortcut, marker in ((False, "s"), (True, "o")):
        by_depth: dict[int, list[float]] = {}
        for r in results:
            if r.shortcut == shortcut and not math.isnan(r.test_err):
                by_depth.setdefault(r.layers, []).append(r.test_err)
        if by_depth:
            x = sorted(by_depth)
            line = ax.plot(x, [sum(by_depth[n]) / len(by_depth[n]) for n in x], marker=marker,
                           label=("residual" if shortcut else "plain") + " (mean over seeds)")
            for n in x:  # every seed's own result
                ax.scatter([n] * len(by_depth[n]), by_depth[n], s=12, color=line[0].get_color(), alpha=0.5)
    ax.set_title("test error against depth")
    ax.set_xlabel("convolutional layers")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    path = out_dir / "ablation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
