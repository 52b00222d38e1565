"""The search's summary: one row per trial (trials.csv, trials.md) and a figure (search.png)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

COLUMNS = ("trial", "state", "val_acc", "validations", "steps", "seconds", "params", "note")


def trial_rows(trials: Sequence[Any]) -> list[dict[str, Any]]:
    """One dict per trial of the study, best first, then unfinished ones in trial order."""
    rows = []
    for t in trials:
        curve = t.user_attrs.get("curve", [])
        note = t.user_attrs.get("error") or t.user_attrs.get("cut") or ""
        if not note and t.state.name == "PRUNED":
            note = f"pruned after validation {len(curve)}"
        if t.user_attrs.get("base"):
            note = "; ".join(filter(None, ("the base config's values", note)))
        rows.append({
            "trial": t.number,
            "state": t.state.name.lower(),
            "val_acc": t.value if t.value is not None else (max(curve) if curve else math.nan),
            "validations": len(curve),
            "steps": t.user_attrs.get("steps", ""),
            "seconds": t.user_attrs.get("seconds", ""),
            "params": " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
            "note": note,
        })  # fmt: skip
    complete = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -r["val_acc"])
    return complete + [r for r in rows if r["state"] != "complete"]


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    """trials.csv (every column) and trials.md (the same, accuracy in %); returns the .md path."""
    with (out_dir / "trials.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        acc = "" if math.isnan(r["val_acc"]) else f"{100 * r['val_acc']:.2f} %"
        cells = [str(r["trial"]), r["state"], acc, *(str(r[c]) for c in COLUMNS[3:])]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    path = out_dir / "trials.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot_search(trials: Sequence[Any], out_dir: Path) -> Path:
    """Left: each trial's best validation accuracy and the best so far; right: every trial's curve."""
    from vdcnn_res.training.plotting import plt  # Agg backend, set once there

    path = out_dir / "search.png"
    fig, (history, curves) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        best, xs, ys = -math.inf, [], []
        for t in trials:
            curve = t.user_attrs.get("curve", [])
            if not curve:
                continue
            value = max(curve)
            done = t.state.name == "COMPLETE"
            history.plot(t.number, 100 * value, "o" if done else "x", color="C0" if done else "0.5")
            if done:
                best = max(best, value)
                xs.append(t.number)
                ys.append(100 * best)
            style = {"ls": "-" if done else ":", "color": "C0" if done else "0.5", "marker": ".", "lw": 1}
            curves.plot(range(1, len(curve) + 1), [100 * v for v in curve], **style)
        if xs:
            last = max(t.number for t in trials)
            history.step([*xs, last], [*ys, ys[-1]], where="post", color="C3", label="best so far")
            history.legend(fontsize=8)
        for ax in (history, curves):
            ax.xaxis.get_major_locator().set_params(integer=True)
        history.set(xlabel="trial (o finished, x pruned)", ylabel="best validation accuracy (%)", title="search history")
        curves.set(xlabel="validation", ylabel="validation accuracy (%)", title="trials (dotted: pruned)")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
