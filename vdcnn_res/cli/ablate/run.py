"""`vdcnn-res ablate`: train a grid of depths x shortcut on/off (x downsampling x seeds) under one budget.

    vdcnn-res ablate --config configs/shared/ag_news_7600.yaml --out_dir ablations/ag_news \\
        --depths 9 17 29 49 --layouts 8,8,8,8 --max_epochs 4

Every cell is a `vdcnn-res fit` of the base config with the cell's architecture, the same data
order and seed, followed by a test of its best (validation) checkpoint. Each finished cell
leaves `result.json` in its folder and is never retrained; an interrupted cell resumes from its
`last.ckpt`. After every cell the tables (`results.csv`, `summary.csv`, `results.md`) and the
figure (`ablation.png`) are rewritten from all finished cells.

`--workers N` trains N cells at once, one process each; processes on several machines may share
the folder too: a claim file per cell (claims.py) gives each cell to exactly one of them.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from vdcnn_res.cli.ablate.claims import CLAIM_FILE, claim, release
from vdcnn_res.cli.ablate.grid import (
    RESULT_FILE,
    Cell,
    CellResult,
    build_cells,
    load_result,
    save_result,
    write_atomically,
)
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
        threads=torch.get_num_threads(),
        host=socket.gethostname(),
        status=status,
        fit_args=fit_command(fit_args),
        curve=recorder.steps,
    )


def _check_command(cell_dir: Path, command: str) -> None:
    """Refuse a cell folder holding a run of another command: its results or checkpoints are never mixed in."""
    path = cell_dir / "fit_command.txt"
    if path.is_file() and path.read_text(encoding="utf-8").strip() != command:
        raise UserError(
            f"{cell_dir} holds a run of another command (the base config, extra fit arguments or budget "
            f"differ; see {path}); use a new --out_dir, or delete that folder to retrain the cell"
        )


def finished_results(cells: list[Cell], out_dir: Path) -> list[CellResult]:
    """The result rows of the grid's finished cells, in grid order."""
    paths = [out_dir / "cells" / cell.name / RESULT_FILE for cell in cells]
    return [load_result(path) for path in paths if path.is_file()]


def write_report(cells: list[Cell], out_dir: Path, command: str) -> list[CellResult]:
    """Rewrite the tables and the figure from every finished cell; returns their rows.

    Another worker may finish a cell while this one writes (and its own report, written from an
    older list, may land after this one): the files are rewritten until no cell finished meanwhile,
    so the last report written by anyone includes every cell saved before it.
    """
    out = Path(out_dir)
    seen: list[tuple[str, int]] | None = None
    results: list[CellResult] = []
    for _ in range(len(cells) + 1):
        done = [(out / "cells" / c.name / RESULT_FILE) for c in cells]
        now = [(str(p), p.stat().st_mtime_ns) for p in done if p.is_file()]
        if now == seen:
            break
        results, seen = finished_results(cells, out), now
        if results:
            write_tables(results, out, command)
            plot_results(results, out)
    return results


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
    out = Path(out_dir)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for i, cell in enumerate(cells, 1):
        cell_dir = out / "cells" / cell.name
        done = cell_dir / RESULT_FILE
        label = f"[{i}/{len(cells)}{' ' + worker if worker else ''}] {cell.name}"
        fit_args = cell.fit_args(base_args, budget, cell_dir)
        command_line = fit_command(fit_args)
        _check_command(cell_dir, command_line)
        if done.is_file():
            if not worker:  # a worker process leaves this to the command that started it
                result = load_result(done)
                print(f"{label}: done earlier (test error {md_cell('test_err', result.test_err)} %), skipped", flush=True)
            continue
        cell_dir.mkdir(parents=True, exist_ok=True)
        claim_path = cell_dir / CLAIM_FILE
        holder = claim(claim_path)
        if holder is not None:
            print(f"{label}: being trained by {holder} ({claim_path}), skipped", flush=True)
            continue
        try:
            if done.is_file():  # finished by another worker between the check above and the claim
                continue
            _check_command(cell_dir, command_line)  # written by another command while this one claimed it
            write_atomically(cell_dir / "fit_command.txt", command_line + "\n")
            threads = f", {torch.get_num_threads()} threads" if worker else ""
            print(f"{label}: {cell.layers} layers, shortcut {'on' if cell.shortcut else 'off'}{threads}", flush=True)
            result = train_cell(cell, fit_args, cell_dir, label)
            save_result(result, done)
        finally:
            release(claim_path)
        tested = f"test error {md_cell('test_err', result.test_err)} %" if not math.isnan(result.test_err) else "not tested"
        print(f"{label}: {tested} ({result.status}, {result.fit_seconds:.0f} s)", flush=True)
        write_report(cells, out, command)
    return write_report(cells, out, command)


def _cpu_count() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cuda_devices() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries for the workers."""
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def run_workers(grid_argv: list[str], extra: list[str], workers: int, threads: int | None) -> None:
    """Start `workers` processes of the same ablation (each the loop of run_ablation) and wait for them.

    Each worker is `python -m vdcnn_res.cli ablate <the same grid>` with its own thread count and, when
    CUDA devices are visible, its own device: a worker is exactly what another machine sharing the
    folder would run, and a crash (or the out-of-memory killer) ends one worker, not the others.
    """
    devices = _cuda_devices()
    threads = threads or max(1, _cpu_count() // workers)
    procs: list[subprocess.Popen[bytes]] = []
    for k in range(1, workers + 1):
        env = dict(os.environ)
        where = ""
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[(k - 1) % len(devices)]
            where = f", CUDA device {env['CUDA_VISIBLE_DEVICES']}"
        args = [*grid_argv, "--threads", str(threads), "--worker_id", str(k), "--", *extra]
        procs.append(subprocess.Popen([sys.executable, "-m", "vdcnn_res.cli", "ablate", *args], env=env))
        print(f"worker w{k}: pid {procs[-1].pid}, {threads} threads{where}", flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them release their claims
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
        raise
    failed = [f"w{k} (exit code {code})" for k, code in enumerate(codes, 1) if code != 0]
    if failed:
        raise UserError(
            f"worker {', '.join(failed)} stopped early (its output is above); the other cells are recorded: "
            "re-run the same command to train the cells it left"
        )


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

# Options that say how to run the grid, not what it is: left out of the recorded command, so workers
# and machines with other thread counts share one folder and one command line in results.md.
_EXECUTION_OPTIONS = ("--workers", "--threads", "--worker_id")


def _without_execution_options(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _EXECUTION_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in _EXECUTION_OPTIONS)):
            kept.append(arg)
    return kept


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


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
    parser.add_argument("--workers", type=_positive, default=1,
                        help="cells trained at once, one process each (one CUDA device each when there are any)")  # fmt: skip
    parser.add_argument("--threads", type=_positive,
                        help="torch threads per worker (default: CPUs / workers with --workers, else torch's own)")  # fmt: skip
    parser.add_argument("--worker_id", type=_positive, help=argparse.SUPPRESS)  # set on the processes --workers starts
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    grid_argv = _without_execution_options(argv)
    command = "vdcnn-res ablate " + shlex.join(grid_argv + (["--", *extra] if extra else []))
    if not args.config:
        parser.error("--config is required: the base fit config every cell starts from")
    for path in args.config:
        if not Path(path).is_file():
            raise MissingFileError(f"--config {path!r}: no such file")
    base = [arg for path in args.config for arg in ("--config", path)] + CELL_DEFAULTS + extra
    if args.max_steps is not None:
        limit = ["--trainer.max_steps", str(args.max_steps), "--trainer.max_epochs", "-1"]
    elif args.max_epochs is not None:
        limit = ["--trainer.max_epochs", str(args.max_epochs)]
    else:
        limit = []
    cells = build_cells(args.depths, args.layouts, args.shortcut, args.downsampling, args.seeds)
    out = Path(args.out_dir)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker_id is not None:  # one of the processes of --workers
        run_ablation(base, out, cells, limit, command, worker=f"w{args.worker_id}")
        return
    print(f"Ablation: {len(cells)} cells -> {out}", flush=True)
    if args.workers > 1:
        todo = []
        for cell in cells:
            cell_dir = out / "cells" / cell.name
            _check_command(cell_dir, fit_command(cell.fit_args(base, limit, cell_dir)))  # refuse before starting
            if (cell_dir / RESULT_FILE).is_file():
                print(f"{cell.name}: done earlier, skipped", flush=True)
            else:
                todo.append(cell)
        if todo:
            run_workers(grid_argv, extra, min(args.workers, len(todo)), args.threads)
        results = write_report(cells, out, command)
    else:
        results = run_ablation(base, out, cells, limit, command)
    print(f"Wrote {out / 'results.md'}, results.csv, summary.csv and ablation.png ({len(results)} of {len(cells)} cells)")
