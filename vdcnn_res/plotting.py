"""Figures written next to the logs (headless: matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def plot_confusion_matrix(confusion: torch.Tensor, label_names: Sequence[str], path: str | Path) -> Path:
    """Save a row-normalised confusion matrix (rows: true label, columns: predicted) as PNG."""
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    n = len(label_names)
    size = max(4.0, min(0.45 * n + 2.0, 40.0))
    fig, ax = plt.subplots(figsize=(size, size))
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
