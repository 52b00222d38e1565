"""`vdcnn-res ablate`: train a grid of depths x shortcut on/off (x downsampling x seeds) under one budget.

    vdcnn-res ablate --config configs/shared/ag_news_7600.yaml --out_dir ablations/ag_news \\
        --depths 9 17 29 49 --layouts 8,8,8,8 --max_epochs 4

Every cell is a `vdcnn-res fit` of the base config with the cell's architecture, the same data
order and seed, followed by a test of its best (validation) checkpoint. Each finished cell
leaves `result.json` in its folder and is never retrained; an interrupted cell resumes from its
`last.ckpt`. After every cell the tables (`results.csv`, `results.md`) and the figure
(`ablation.png`) are rewritten from all finished cells.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import shlex
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vdcnn_res.config import DOWNSAMPLING_TYPES, VARIANTS
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.flops import count_parameters

RESULT_FILE = "result.json"
COLUMNS = (
    "cell", "layers", "blocks_per_stage", "shortcut", "downsampling", "seed", "params", "steps", "epochs",
    "train_loss_final", "train_loss_best", "train_err_final", "train_err_best",
    "val_err_final", "val_err_best", "test_err", "fit_seconds", "status", "fit_args",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One architecture of the grid, trained once."""

    layout: tuple[int, ...]
    shortcut: bool
    downsampling: str
    seed: int
    depth: int | None = None  # set when the layout is a paper variant (then passed as --model.arch.depth)

    @property
    def layers(self) -> int:
        """Convolutional layers: the first conv plus two per residual block (the paper's depth)."""
        return 1 + 2 * sum(self.layout)

    @property
    def name(self) -> str:
        arch = f"d{self.depth}" if self.depth is not None else "b" + "-".join(map(str, self.layout))
        return f"{arch}_{'res' if self.shortcut else 'plain'}_{self.downsampling}_seed{self.seed}"

    def fit_args(self, base: list[str], budget: list[str], cell_dir: Path) -> list[str]:
        """The `vdcnn-res fit` arguments (without the subcommand) that train this cell."""
        if self.depth is not None:
            arch = ["--model.arch.depth", str(self.depth), "--model.arch.blocks_per_stage", "null"]
        else:
            arch = ["--model.arch.blocks_per_stage", "[" + ",".join(map(str, self.layout)) + "]"]
        return [
            *base,
            *arch,
            "--model.arch.shortcut", str(self.shortcut).lower(),
            "--model.arch.downsampling", self.downsampling,
            "--seed_everything", str(self.seed),
            "--data.seed", str(self.seed),
            *budget,
            "--trainer.default_root_dir", str(cell_dir),
            "--checkpoint.dirpath", str(cell_dir / "checkpoints"),
        ]  # fmt: skip


class CurveRecorder(pl.Callback):
    """Per-step training loss and per-epoch summaries; stored in checkpoints so a resumed cell keeps them."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[dict[str, float]] = []
        self.fit_seconds = 0.0
        self._epoch_loss: list[float] = []
        self._val_acc = math.nan
        self._start = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "fit_seconds": self.fit_seconds + self._elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [tuple(s) for s in state["steps"]]
        self.epochs = list(state["epochs"])
        self.fit_seconds = float(state["fit_seconds"])

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start if self._start else 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_seconds += self._elapsed()
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_loss = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        self._epoch_loss.append(value)
        self.steps.append((trainer.global_step, value))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self._val_acc = float(metrics["val/acc"]) if "val/acc" in metrics else math.nan

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "train_loss": sum(self._epoch_loss) / max(1, len(self._epoch_loss)),
            "train_err": 100 * (1 - float(metrics["train/acc"])) if "train/acc" in metrics else math.nan,
            "val_err": 100 * (1 - self._val_acc),
        }
        self.epochs.append(row)
        print(
            f"  {self.label} epoch {row['epoch']}/{trainer.max_epochs}: train loss {row['train_loss']:.4f}, "
            f"train error {row['train_err']:.2f} %, val error {row['val_err']:.2f} % "
            f"({self.fit_seconds + self._elapsed():.0f} s)",
            flush=True,
        )


def build_cells(
    depths: list[int], layouts: list[str], shortcuts: list[bool], downsampling: list[str], seeds: list[int]
) -> list[Cell]:
    """The grid, in a stable order: architecture, then shortcut on/off, downsampling, seed."""
    archs: list[tuple[tuple[int, ...], int | None]] = []
    for depth in depths:
        if depth not in VARIANTS:
            raise UserError(f"--depths: {depth} is not a paper variant; choose from {sorted(VARIANTS)} or use --layouts")
        archs.append((VARIANTS[depth], depth))
    for text in layouts:
        try:
            layout = tuple(int(n) for n in text.split(","))
        except ValueError:
            raise UserError(f"--layouts: {text!r} is not comma-separated blocks per stage, e.g. 8,8,8,8") from None
        if len(layout) != 4 or min(layout) < 1:
            raise UserError(f"--layouts: {text!r} needs four positive blocks-per-stage counts, e.g. 8,8,8,8")
        archs.append((layout, None))
    for kind in downsampling:
        if kind not in DOWNSAMPLING_TYPES:
            raise UserError(f"--downsampling: {kind!r} is unknown; choose from {DOWNSAMPLING_TYPES}")
    if not archs:
        raise UserError("nothing to train: give --depths and/or --layouts")
    cells = [
        Cell(layout, shortcut, kind, seed, depth)
        for (layout, depth), shortcut, kind, seed in itertools.product(archs, shortcuts, downsampling, seeds)
    ]
    return list(dict.fromkeys(cells))  # a layout given twice is trained once


@dataclass
class CellResult:
    cell: str
    layers: int
    blocks_per_stage: str
    shortcut: bool
    downsampling: str
    seed: int
    params: int
    steps: int
    epochs: int
    train_loss_final: float
    train_loss_best: float
    train_err_final: float
    train_err_best: float
    val_err_final: float
    val_err_best: float
    test_err: float
    fit_seconds: float
    status: str  # "ok", or why the cell has no usable result (e.g. "diverged: ...")
    fit_args: str
    curve: list[tuple[int, float]] = field(default_factory=list, repr=False)


def _cli(args: list[str]) -> Any:
    from vdcnn_res.cli import build_cli  # the CLI imports data/tokenizers; only needed to train

    with warnings.catch_warnings():
        # LightningCLI warns that sys.argv (the `ablate` command line) is ignored: it is meant to be.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return build_cli(args, run=False)


def _resume_path(cell_dir: Path) -> str | None:
    last = cell_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    from vdcnn_res.export import load_checkpoint_safely

    load_checkpoint_safely(last)  # refuses a damaged or unsafe file with a one-line UserError
    return str(last)


def fit_command(fit_args: list[str]) -> str:
    """The shell command that trains a cell: written to its folder and its results row."""
    return "vdcnn-res fit " + shlex.join(fit_args)


def train_cell(cell: Cell, fit_args: list[str], cell_dir: Path, label: str) -> CellResult:
    """Fit one cell (resuming its last.ckpt if any), test its best checkpoint, return its row."""
    cli = _cli(fit_args)
    recorder = CurveRecorder(label)
    cli.trainer.callbacks.append(recorder)
    resume = _resume_path(cell_dir)
    if resume:
        print(f"  {label}: resuming from {resume}", flush=True)
    status, test_err = "ok", math.nan
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume, weights_only=True)
    except UserError as err:  # e.g. the loss diverged: a result of the experiment, not a crash
        status = f"failed: {err}"
    steps = cli.trainer.global_step
    # Testing restores the best checkpoint, callback states included: keep the recorder out of it.
    cli.trainer.callbacks.remove(recorder)
    callback = cli.trainer.checkpoint_callback
    best = callback.best_model_path if callback is not None else ""
    if status == "ok" and best:
        try:
            with warnings.catch_warnings():  # the recorder's state in the checkpoint is not needed to test
                warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need")
                metrics = cli.trainer.test(
                    cli.model, datamodule=cli.datamodule, ckpt_path=best, verbose=False, weights_only=True
                )
            test_err = float(metrics[0]["test/error_pct"])
        except UserError as err:  # e.g. the base config names no test split: the row keeps the rest
            status = f"ok, not tested: {err}"
    epochs = recorder.epochs
    finite = [e for e in epochs if not math.isnan(e["val_err"])]
    return CellResult(
        cell=cell.name,
        layers=cell.layers,
        blocks_per_stage=",".join(map(str, cell.layout)),
        shortcut=cell.shortcut,
        downsampling=cell.downsampling,
        seed=cell.seed,
        params=count_parameters(cli.model.model),
        steps=steps,
        epochs=len(epochs),
        train_loss_final=epochs[-1]["train_loss"] if epochs else math.nan,
        train_loss_best=min((e["train_loss"] for e in epochs), default=math.nan),
        train_err_final=epochs[-1]["train_err"] if epochs else math.nan,
        train_err_best=min((e["train_err"] for e in epochs), default=math.nan),
        val_err_final=finite[-1]["val_err"] if finite else math.nan,
        val_err_best=min((e["val_err"] for e in finite), default=math.nan),
        test_err=test_err,
        fit_seconds=recorder.fit_seconds,
        status=status,
        fit_args=fit_command(fit_args),
        curve=recorder.steps,
    )


def _fmt(value: Any, digits: int = 6) -> str:
    """Floats with `digits` significant digits (empty for NaN), everything else as str."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _md_cell(column: str, value: Any) -> str:
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
        cells = [_md_cell(c, row[c]) for c in shown]
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


def _load_result(path: Path) -> CellResult:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["curve"] = [tuple(p) for p in data.get("curve", [])]
    return CellResult(**data)


def _save_result(result: CellResult, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
    os.replace(tmp, path)  # a finished cell is either fully recorded or not at all


def _claim(cell_dir: Path, command: str) -> None:
    """Tie a cell's folder to its fit command, so results or checkpoints of another command are never mixed in."""
    path = cell_dir / "fit_command.txt"
    if path.is_file():
        earlier = path.read_text(encoding="utf-8").strip()
        if earlier != command:
            raise UserError(
                f"{cell_dir} holds a run of another command (the base config, extra fit arguments or budget "
                f"differ; see {path}); use a new --out_dir, or delete that folder to retrain the cell"
            )
        return
    cell_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(command + "\n", encoding="utf-8")


def run_ablation(
    base_args: list[str],
    out_dir: str | os.PathLike[str],
    cells: list[Cell],
    budget: list[str],
    command: str = "",
) -> list[CellResult]:
    """Train every unfinished cell, then (re)write the tables and the figure; returns all rows."""
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    results: list[CellResult] = []
    for i, cell in enumerate(cells, 1):
        cell_dir = out / "cells" / cell.name
        done = cell_dir / RESULT_FILE
        label = f"[{i}/{len(cells)}] {cell.name}"
        fit_args = cell.fit_args(base_args, budget, cell_dir)
        _claim(cell_dir, fit_command(fit_args))
        if done.is_file():
            result = _load_result(done)
            print(f"{label}: done earlier (test error {_md_cell('test_err', result.test_err)} %), skipped", flush=True)
        else:
            print(f"{label}: {cell.layers} layers, shortcut {'on' if cell.shortcut else 'off'}", flush=True)
            result = train_cell(cell, fit_args, cell_dir, label)
            _save_result(result, done)
            tested = f"test error {_md_cell('test_err', result.test_err)} %" if not math.isnan(result.test_err) else "not tested"
            print(f"{label}: {tested} ({result.status}, {result.fit_seconds:.0f} s)", flush=True)
        results.append(result)
        write_tables(results, out, command)
        plot_results(results, out)
    return results


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on/off")


def main(argv: list[str]) -> None:
    """`vdcnn-res ablate`: its own argparse; everything after `--` goes to every cell's `fit` unchanged."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res ablate",
        description="Train a grid of depths x shortcut on/off (x downsampling x seeds) with identical data "
        "order, seed and budget; write results.csv, results.md and ablation.png to --out_dir. Re-running "
        "the same command skips finished cells and resumes an interrupted one.",
        epilog="Example: vdcnn-res ablate --config configs/quickstart.yaml --out_dir ablations/sample "
        "--depths 9 17 --max_epochs 2 -- --trainer.precision bf16-mixed",
    )
    parser.add_argument("--config", action="append", default=[], help="base fit config (repeatable, composed in order)")
    parser.add_argument("--out_dir", required=True, help="folder for the cells, tables and figure")
    parser.add_argument("--depths", type=int, nargs="*", default=[9, 17, 29, 49], help="paper variants (default: all)")
    parser.add_argument("--layouts", nargs="*", default=[], help="custom blocks per stage, e.g. 8,8,8,8 (65 layers)")
    parser.add_argument("--shortcut", type=_bool, nargs="+", default=[False, True], help="on, off or both (default)")
    parser.add_argument("--downsampling", nargs="+", default=["maxpool"], help=f"any of {DOWNSAMPLING_TYPES}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed (model init and data order)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max_epochs", type=int, help="training budget in epochs (default: the base config's)")
    budget.add_argument("--max_steps", type=int, help="training budget in optimizer steps")
    argv = list(argv)
    command = "vdcnn-res ablate " + shlex.join(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is required: the base fit config every cell starts from")
    for path in args.config:
        if not Path(path).is_file():
            raise MissingFileError(f"--config {path!r}: no such file")
    base = [arg for path in args.config for arg in ("--config", path)] + extra
    if args.max_steps is not None:
        limit = ["--trainer.max_steps", str(args.max_steps), "--trainer.max_epochs", "-1"]
    elif args.max_epochs is not None:
        limit = ["--trainer.max_epochs", str(args.max_epochs)]
    else:
        limit = []
    cells = build_cells(args.depths, args.layouts, args.shortcut, args.downsampling, args.seeds)
    print(f"Ablation: {len(cells)} cells -> {args.out_dir}", flush=True)
    results = run_ablation(base, args.out_dir, cells, limit, command)
    print(f"Wrote {Path(args.out_dir) / 'results.md'}, results.csv and ablation.png ({len(results)} cells)")
