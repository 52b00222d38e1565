"""`vdcnn-res ablate`: train a grid of depths x shortcut on/off (x downsampling x seeds) under one budget.

    vdcnn-res ablate --config configs/shared/ag_news_7600.yaml --out_dir ablations/ag_news \\
        --depths 9 17 29 49 --layouts 8,8,8,8 --max_epochs 4

Every cell is a `vdcnn-res fit` of the base config with the cell's architecture, the same data
order and seed, followed by a test of its best (validation) checkpoint. Each finished cell
leaves `result.json` in its folder and is never retrained; an interrupted cell resumes from its
`last.ckpt`. After every cell the tables (`results.csv`, `summary.csv`, `results.md`) and the
figure (`ablation.png`) are rewritten from all finished cells.

`--workers N` trains N cells at once, one process each; processes on several machines may share
the folder too: a claim file per cell (claims.py) gives each cell to exactly one of them. The
machinery (cells.py) is shared with `vdcnn-res sweep`.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import warnings
from pathlib import Path

import torch

from vdcnn_res.cli.ablate.cells import Grid, Job, add_grid_options, budget_args, build_fit, fit_cell, fit_command
from vdcnn_res.cli.ablate.cells import parse_command, write_report
from vdcnn_res.cli.ablate.grid import Cell, CellResult, build_cells, grid_depths, load_result
from vdcnn_res.cli.ablate.report import md_cell, plot_results, write_tables
from vdcnn_res.errors import UserError
from vdcnn_res.logs import LIGHTNING_LOGGERS, quiet_loggers
from vdcnn_res.model import DOWNSAMPLING_TYPES, ModelConfig, count_parameters
from vdcnn_res.training.callbacks import CurveRecorder


def train_cell(cell: Cell, fit_args: list[str], cell_dir: Path, label: str) -> CellResult:
    """Fit one cell (resuming its last.ckpt if any), test its best checkpoint, return its row."""
    run = fit_cell(fit_args, cell_dir, CurveRecorder(label))
    cli, status, test_err = run.cli, run.status, math.nan
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
    epochs = run.recorder.epochs
    finite = [e for e in epochs if not math.isnan(e["val_err"])]
    return CellResult(
        cell=cell.name,
        layers=cell.layers,
        blocks_per_stage=",".join(map(str, cell.layout)),
        shortcut=cell.shortcut,
        downsampling=cell.downsampling,
        seed=cell.seed,
        params=count_parameters(cli.model.model),
        steps=run.steps,
        epochs=len(epochs),
        train_loss_final=epochs[-1]["train_loss"] if epochs else math.nan,
        train_loss_best=min((e["train_loss"] for e in epochs), default=math.nan),
        train_err_final=epochs[-1]["train_err"] if epochs else math.nan,
        train_err_best=min((e["train_err"] for e in epochs), default=math.nan),
        val_err_final=finite[-1]["val_err"] if finite else math.nan,
        val_err_best=min((e["val_err"] for e in finite), default=math.nan),
        test_err=test_err,
        fit_seconds=run.recorder.fit_seconds,
        threads=torch.get_num_threads(),
        host=socket.gethostname(),
        status=status,
        fit_args=fit_command(fit_args),
        curve=run.recorder.steps,
    )


def _jobs(base_args: list[str], out_dir: Path, cells: list[Cell], budget: list[str]) -> list[Job]:
    return [
        Job(
            cell.name,
            tuple(cell.fit_args(base_args, budget, out_dir / "cells" / cell.name)),
            f"{cell.layers} layers, shortcut {'on' if cell.shortcut else 'off'}",
        )
        for cell in cells
    ]


def _tested(result: CellResult) -> str:
    return f"test error {md_cell('test_err', result.test_err)} %" if not math.isnan(result.test_err) else "not tested"


def _grid(base_args: list[str], out: Path, cells: list[Cell], budget: list[str], command: str) -> Grid[CellResult]:
    """The ablation as a Grid: its report rewrites the tables and the figure from every finished cell."""
    jobs = _jobs(base_args, out, cells, budget)
    by_name = {cell.name: cell for cell in cells}

    def train(job: Job, cell_dir: Path, label: str) -> CellResult:
        return train_cell(by_name[job.name], list(job.fit_args), cell_dir, label)

    def write(results: list[CellResult]) -> None:
        write_tables(results, out, command)
        plot_results(results, out)

    return Grid("ablate", jobs, out, train, load_result, _tested, lambda: write_report(jobs, out, load_result, write))


def run_ablation(
    base_args: list[str],
    out_dir: str | os.PathLike[str],
    cells: list[Cell],
    budget: list[str],
    command: str = "",
    worker: str = "",
) -> list[CellResult]:
    """Train every cell that is neither finished nor claimed by another worker, then (re)write the tables
    and the figure; returns the rows of all finished cells.

    Workers (processes, or machines sharing `out_dir`) run this same loop: a cell's claim file lets one
    of them train it; the others skip it. `worker` tags the progress lines of a worker process.
    """
    return _grid(base_args, Path(out_dir), cells, budget, command).run(worker)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on/off")


# Every cell trains its whole budget (the CLI's default early stopping would end cells at different
# epochs) and prints the recorder's per-epoch line, which names the cell (workers interleave), instead
# of the CLI's own. Arguments after `--` come later and may turn either back on.
CELL_DEFAULTS = ["--early_stopping=null", "--epoch_summary=null"]
# The shortcut's effect is measured on the CNN alone: fit's text default adds an n-gram bag, which
# would carry part of every cell's accuracy. This comes before the configs, so a config (or
# `-- --model.arch.ngram_orders=[1,2,3]`) that asks for the bag gets it.
PURE_CNN = ["--model.arch.ngram_orders=[]"]


def configured_arch(args: list[str]) -> ModelConfig:
    """The architecture a cell's fit arguments (configs, the arguments after `--`, a layout) set.

    The grid reads from it what it does not choose itself: the downsampling when `--downsampling` is
    not given (so a recipe's choice, a series recipe's `none`, is not silently replaced by the
    model's default), the number of stages and the convolutions per block."""
    with quiet_loggers(LIGHTNING_LOGGERS):  # building the fit CLI reports the seed and the accelerators; the cells do that
        return build_fit(args).model.arch


def main(argv: list[str]) -> None:
    """`vdcnn-res ablate`: its own argparse; everything after `--` goes to every cell's `fit` unchanged."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res ablate",
        description="Train a grid of depths x shortcut on/off (x downsampling x seeds) with identical data "
        "order, seed and budget; write results.csv, summary.csv (mean ± sd over seeds, paired residual - "
        "plain differences), results.md and ablation.png to --out_dir. Re-running the same command skips "
        "finished cells and resumes an interrupted one; several workers or machines may share --out_dir.",
        epilog="Example: vdcnn-res ablate --config configs/quickstart.yaml --out_dir ablations/sample "
        "--depths 9 17 --seeds 1 2 3 --max_epochs 2 --workers 2 -- --trainer.precision bf16-mixed",
        allow_abbrev=False,  # the recorded command drops the execution options by their full names
    )
    add_grid_options(parser, out_dir_help="folder for the cells, tables and figure")
    parser.add_argument("--depths", type=int, nargs="*", default=None,
                        help="paper variants (default: all, when the configuration has their four stages)")
    parser.add_argument("--layouts", nargs="*", default=[],
                        help="custom blocks per stage, one count per stage of the configuration, e.g. 8,8,8,8 (65 layers)")
    parser.add_argument("--shortcut", type=_bool, nargs="+", default=[False, True], help="on, off or both (default)")
    parser.add_argument("--downsampling", nargs="+", default=None,
                        help=f"any of {DOWNSAMPLING_TYPES} (default: the configuration's own, maxpool unless it says otherwise)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one run per seed (model init and data order)")
    parsed = parse_command(parser, "ablate", argv)
    args, command = parsed.args, parsed.command
    base = PURE_CNN + parsed.base_args(parser, CELL_DEFAULTS)
    limit = budget_args(args)
    # The configuration as the grid's first architecture builds it (the base alone may not build).
    first_depths = [] if args.layouts else (args.depths if args.depths is not None else [9])  # a layout if any
    first = build_cells(first_depths, args.layouts, args.shortcut, ["maxpool"], args.seeds)[0]
    arch = configured_arch(base + first.arch_args())
    depths = grid_depths(args.depths, arch.num_stages)
    kinds = args.downsampling or [arch.downsampling]
    cells = build_cells(depths, args.layouts, args.shortcut, kinds, args.seeds, arch.num_stages, arch.convs_per_block)
    out = Path(args.out_dir)
    results = _grid(base, out, cells, limit, command).dispatch(parsed, header=f"Ablation: {len(cells)} cells -> {out}")
    if results is not None:
        print(f"Wrote {out / 'results.md'}, results.csv, summary.csv and ablation.png ({len(results)} of {len(cells)} cells)")
