"""Figures written next to the logs (headless: matplotlib's Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.ft2font import FT2Font  # noqa: E402

# Tried in order, so CJK label names render where such a font is installed.
_FONTS = ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "SimHei", "Arial Unicode MS"]


def _renderable(names: Sequence[str]) -> bool:
    """Whether the installed fonts among _FONTS have a glyph for every character of names."""
    chars = {ord(c) for name in names for c in name}
    available = set()
    for family in _FONTS:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        except ValueError:  # not installed
            continue
        available |= set(FT2Font(path).get_charmap())
    return chars <= available


def write_confusion_csv(confusion: torch.Tensor, label_names: Sequence[str], path: str | Path) -> Path:
    """Counts as CSV (rows: true label, columns: predicted), with the label names in UTF-8."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *label_names])
        for name, row in zip(label_names, confusion.tolist()):
            writer.writerow([name, *row])
    return path


def plot_confusion_matrix(confusion: torch.Tensor, label_names: Sequence[str], path: str | Path) -> Path:
    """Save a row-normalised confusion matrix (rows: true label, columns: predicted) as PNG.

    Where no installed font can draw the label names (CJK without a CJK font), the axes show
    class indices instead; `write_confusion_csv` keeps the names.
    """
    counts = confusion.double()
    if not _renderable(label_names):
        label_names = [str(i) for i in range(len(label_names))]
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(label_names)
    size = max(4.0, min(0.45 * n + 2.0, 40.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"font.family": "sans-serif", "font.sans-serif": _FONTS}):
        fig, ax = plt.subplots(figsize=(size, size))
        _draw(ax, counts, rates, label_names)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw(ax: plt.Axes, counts: torch.Tensor, rates: torch.Tensor, label_names: Sequence[str]) -> None:
    n = len(label_names)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=label_names, rotation=90 if n > 8 else 45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diag().sum() / counts.sum().clamp(min=1)
    ax.set_title(f"Confusion matrix\n{int(counts.sum())} texts, accuracy {100 * accuracy:.2f} %", fontsize=10)
    if n <= 20:  # numbers stay readable up to about 20 classes
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")


def plot_reliability(panels: Sequence[tuple[str, Any]], path: str | Path) -> Path:
    """Save a reliability diagram as PNG: one panel per ``(title, ReliabilityBins)``.

    Bars: each confidence bin's accuracy (bins without predictions are left out); the diagonal
    is perfect calibration; hatched red: the gap between a bin's accuracy and its mean
    confidence; the bin's share of the predictions is written on top of its bar.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, bins) in zip(axes[0], panels):
        n, total = bins.n_bins, max(int(bins.counts.sum()), 1)
        width = 1.0 / n
        lefts = [k * width for k in range(n) if bins.counts[k] > 0]
        used = [k for k in range(n) if bins.counts[k] > 0]
        accuracy = [float(bins.accuracy[k]) for k in used]
        confidence = [float(bins.confidence[k]) for k in used]
        ax.bar(lefts, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
               label="accuracy")
        ax.bar(lefts, [abs(c - a) for a, c in zip(accuracy, confidence)], bottom=[min(a, c) for a, c in zip(accuracy, confidence)],
               width=width, align="edge", facecolor="none", edgecolor="tab:red", hatch="////", linewidth=0.5,
               label="gap to mean confidence")
        for left, k in zip(lefts, used):
            ax.text(left + width / 2, min(max(float(bins.accuracy[k]), float(bins.confidence[k])) + 0.02, 0.97),
                    f"{100 * int(bins.counts[k]) / total:.0f}%", ha="center", va="bottom", fontsize=6)
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}\nECE {100 * bins.ece:.2f} % ({total} texts, {n} bins)", fontsize=10)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
