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
import math
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from vdcnn_res.cli.ablate.grid import RESULT_FILE, Cell, CellResult, build_cells, load_result, save_result
from vdcnn_res.cli.ablate.report import md_cell, plot_results, write_tables
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.model import DOWNSAMPLING_TYPES, count_parameters
from vdcnn_res.training.callbacks import CurveRecorder


def _cli(args: list[str]) -> Any:
    from vdcnn_res.cli.lightning import build_cli  # imports data/tokenizers; only needed to train

    with warnings.catch_warnings():
        # LightningCLI warns that sys.argv (the `ablate` command line) is ignored: it is meant to be.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return build_cli(args, run=False)


def _resume_path(cell_dir: Path) -> str | None:
    last = cell_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    from vdcnn_res.inference.model_files import load_checkpoint_safely

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
            result = load_result(done)
            print(f"{label}: done earlier (test error {md_cell('test_err', result.test_err)} %), skipped", flush=True)
        else:
            print(f"{label}: {cell.layers} layers, shortcut {'on' if cell.shortcut else 'off'}", flush=True)
            result = train_cell(cell, fit_args, cell_dir, label)
            save_result(result, done)
            tested = f"test error {md_cell('test_err', result.test_err)} %" if not math.isnan(result.test_err) else "not tested"
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
