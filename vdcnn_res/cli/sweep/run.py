"""`vdcnn-res sweep`: a grid over any fit config keys x seeds, judged on the validation split only.

    vdcnn-res sweep --config configs/shared/ag_news_7600.yaml --out_dir sweeps/ag_lr \\
        --grid model.optim.lr=3e-4,1e-3 model.arch.ngram_orders=[],[1,2,3,4,5] --seeds 1 2 3

Every cell (a point of the grid and a seed) is a `vdcnn-res fit` of the base config with the point's
values, the seed (`seed_everything` and `data.seed`) and `--data.test=null`: the test file is not
even opened and no cell is tested. The fit is the CLI's default otherwise (early stopping
included, unless the base config or the arguments after `--` change it); the epochs it trained
are recorded. Cells run seed by seed (every point at the first seed, then at the second, ...),
so an unfinished sweep already holds paired comparisons.

The cell folders, resuming, claims and --workers are ablate's (vdcnn_res/cli/ablate/cells.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vdcnn_res.cli.ablate.cells import Grid, Job, add_grid_options, budget_args, build_fit, fit_cell, fit_command
from vdcnn_res.cli.ablate.cells import parse_command, write_report
from vdcnn_res.cli.sweep.grid import Point, SweepResult, baseline_point, build_points, load_result, parse_grid
from vdcnn_res.cli.sweep.report import write_tables
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.training.callbacks import CurveRecorder

__all__ = ["ValidationRecorder", "check_points", "main", "run_sweep", "train_cell"]

# The recorder prints a per-epoch line naming the cell (workers interleave) instead of the CLI's own.
CELL_DEFAULTS = ["--epoch_summary=null"]
# Last in every cell's arguments: nothing before it can bring the test split back.
NO_TEST = ["--data.test=null"]


class ValidationRecorder(CurveRecorder):
    """CurveRecorder that also keeps each epoch's validation accuracy and macro-F1 and training accuracy
    (in %; NaN for an epoch without validation)."""

    def __init__(self, label: str = "") -> None:
        super().__init__(label)
        self._validation: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._validation = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self._validation = {
                name: 100 * float(metrics[key]) if key in metrics else math.nan
                for name, key in (("val_acc", "val/acc"), ("val_f1", "val/f1_macro"))
            }

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        metrics = trainer.callback_metrics
        self.epochs[-1].update(
            val_acc=self._validation.get("val_acc", math.nan),
            val_f1=self._validation.get("val_f1", math.nan),
            train_acc=100 * float(metrics["train/acc"]) if "train/acc" in metrics else math.nan,
        )


def train_cell(point: Point, seed: int, fit_args: list[str], cell_dir: Path, label: str) -> SweepResult:
    """Fit one cell (resuming its last.ckpt if any) with validation only; return its row."""
    run = fit_cell(fit_args, cell_dir, ValidationRecorder(label))
    epochs = run.recorder.epochs
    validated = [e for e in epochs if not math.isnan(e.get("val_acc", math.nan))]
    best = max(validated, key=lambda e: e["val_acc"], default=None)  # the first of equal epochs
    final = validated[-1] if validated else None
    status = run.status
    if status == "ok" and best is None:
        status = "failed: no validation accuracy was logged (does the config validate at all?)"
    last = epochs[-1] if epochs else {}
    return SweepResult(
        cell=cell_dir.name,
        point=point.name,
        seed=seed,
        values=dict(point.values),
        best_val_acc=best["val_acc"] if best else math.nan,
        best_epoch=int(best["epoch"]) if best else 0,
        final_val_acc=final["val_acc"] if final else math.nan,
        best_val_f1=best["val_f1"] if best else math.nan,
        final_val_f1=final["val_f1"] if final else math.nan,
        train_loss_final=last.get("train_loss", math.nan),
        train_acc_final=last.get("train_acc", math.nan),
        epochs=len(epochs),
        steps=run.steps,
        fit_seconds=run.recorder.fit_seconds,
        status=status,
        fit_args=fit_command(fit_args),
        threads=torch.get_num_threads(),
        host=socket.gethostname(),
        val_acc_curve=[e.get("val_acc", math.nan) for e in epochs],
    )


def _cell_name(point: Point, seed: int) -> str:
    return f"{point.name}_seed{seed}"


def _jobs(base: list[str], budget: list[str], points: list[Point], seeds: list[int], out_dir: Path) -> list[Job]:
    """Every point at the first seed, then every point at the next seed, ..."""
    jobs = []
    for seed in seeds:
        for point in points:
            cell_dir = out_dir / "cells" / _cell_name(point, seed)
            args = [
                *base, *budget, *point.fit_args(),
                "--seed_everything", str(seed), "--data.seed", str(seed),
                "--trainer.default_root_dir", str(cell_dir), "--checkpoint.dirpath", str(cell_dir / "checkpoints"),
                *NO_TEST,
            ]  # fmt: skip
            jobs.append(Job(cell_dir.name, tuple(args), f"{point.label}, seed {seed}"))
    return jobs


def _resolved_config(args: list[str]) -> dict[str, Any]:
    """The full fit config `args` give (parsed and validated, nothing built), as `--print_config` prints it."""
    import yaml

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            build_fit([*args, "--print_config"])
        except SystemExit:  # --print_config exits after printing
            pass
    return yaml.safe_load(printed.getvalue()) or {}


def _same_files(a: str, b: str) -> bool:
    from vdcnn_res.data.files import resolve_files

    try:
        return resolve_files(a, "data.valid") == resolve_files(b, "data.test")
    except MissingFileError:
        return False


def check_points(base: list[str], points: list[Point]) -> None:
    """Parse the fit config of every point before anything trains: an unknown key or a value its
    type refuses is one line naming the point. Also refuse configs that would validate on the test
    file (the sweep drops data.test, and with it the data module's own check) or not at all."""
    try:
        resolved = _resolved_config(base)
    except UserError as err:
        raise UserError(f"the base config and fit arguments: {err}") from None
    for point in points:
        config = resolved
        if point.values:
            try:
                config = _resolved_config([*base, *point.fit_args()])
            except UserError as err:
                raise UserError(f"--grid point {point.label}: {err}") from None
        data = config.get("data") or {}
        valid, test = data.get("valid"), data.get("test")
        if valid and test and _same_files(str(valid), str(test)):
            raise UserError(f"data.valid and data.test are the same file(s) ({valid}); a sweep validates on a split other than test")  # fmt: skip
        if valid is None and not data.get("valid_fraction") and data.get("hub_dataset") is None:
            raise UserError("the sweep needs a validation split: give data.valid, or data.valid_fraction > 0")




def _headline(result: SweepResult) -> str:
    if math.isnan(result.best_val_acc):
        return "no validation accuracy"
    return (
        f"best val acc {result.best_val_acc:.2f} % (epoch {result.best_epoch} of {result.epochs}), "
        f"final {result.final_val_acc:.2f} %"
    )


def run_sweep(
    jobs: list[Job],
    cells: dict[str, tuple[Point, int]],
    out_dir: Path,
    report: Callable[[], list[SweepResult]],
    worker: str = "",
) -> list[SweepResult]:
    """Train every cell neither finished nor claimed by another worker, rewriting the tables after each."""
    return _grid(jobs, cells, out_dir, report).run(worker)


def _grid(
    jobs: list[Job], cells: dict[str, tuple[Point, int]], out: Path, report: Callable[[], list[SweepResult]]
) -> Grid[SweepResult]:
    def train(job: Job, cell_dir: Path, label: str) -> SweepResult:
        point, seed = cells[job.name]
        return train_cell(point, seed, list(job.fit_args), cell_dir, label)

    return Grid("sweep", jobs, out, train, load_result, _headline, report)


def main(argv: list[str]) -> None:
    """`vdcnn-res sweep`: its own argparse; everything after `--` goes to every cell's `fit` unchanged."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res sweep",
        description="Fit every combination of the --grid values of any fit config keys, once per seed, on the "
        "validation split only (the test split is never read); write results.csv (cells), summary.csv and "
        "summary.md (per point: mean ± sd over seeds of the best and final validation accuracy, paired "
        "difference to the baseline point with a 95 % interval) to --out_dir. Re-running the same command "
        "skips finished cells and resumes an interrupted one; several workers or machines may share --out_dir.",
        epilog="Grid syntax: KEY=V1,V2,... with a dotted fit config key; commas inside [], {} or quotes do not "
        "separate values, so model.arch.ngram_orders=[],[1,2,3] has two values. Values are parsed like on the "
        "fit command line (YAML). Example: vdcnn-res sweep --config configs/quickstart.yaml --out_dir sweeps/lr "
        "--grid model.optim.lr=3e-4,1e-3 --seeds 1 2 3 --max_epochs 2 --workers 2",
        allow_abbrev=False,  # the recorded command drops the execution options by their full names
    )
    add_grid_options(parser, out_dir_help="folder for the cells and tables")
    parser.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                        help="an axis of the grid: a dotted fit config key and its values (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="one run per point and seed (model init and data order; default: 1 2 3)")  # fmt: skip
    parser.add_argument("--baseline", nargs="+", default=[], metavar="KEY=VALUE",
                        help="the point the others are compared with (default: the first value of every axis)")  # fmt: skip
    parsed = parse_command(parser, "sweep", argv)
    args, command = parsed.args, parsed.command
    base = parsed.base_args(parser, CELL_DEFAULTS)
    axes = parse_grid(args.grid)
    budget = budget_args(args)
    budget_axes = sorted({"trainer.max_epochs", "trainer.max_steps"} & {a.key for a in axes})
    if budget and budget_axes:
        raise UserError(f"--grid {budget_axes[0]} and --max_epochs/--max_steps both set the budget; give one of them")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given more than once")
    points = build_points(axes)
    baseline = baseline_point(axes, args.baseline)
    out = Path(args.out_dir)
    jobs = _jobs(base, budget, points, args.seeds, out)
    cells = {_cell_name(p, s): (p, s) for s in args.seeds for p in points}
    if args.worker_id is None:  # the processes of --workers run a command already checked
        check_points([*base, *budget], points)

    def report() -> list[SweepResult]:
        return write_report(jobs, out, load_result, lambda results: write_tables(results, axes, baseline, out, command))

    results = _grid(jobs, cells, out, report).dispatch(
        parsed, header=f"Sweep: {len(points)} point(s) x {len(args.seeds)} seed(s) = {len(jobs)} cells -> {out}")
    if results is not None:
        print(f"Wrote {out / 'summary.md'}, summary.csv and results.csv ({len(results)} of {len(jobs)} cells)")
