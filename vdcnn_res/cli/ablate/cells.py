"""Grids of fits on a shared folder: the machinery `vdcnn-res ablate` and `vdcnn-res sweep` share.

A grid is a list of Jobs: a named cell and the `vdcnn-res fit` arguments that train it. run_jobs
trains every cell that is neither finished nor claimed by another worker. A cell's folder
(<out_dir>/cells/<name>/) holds fit_command.txt (a folder holding another command's run is refused,
never mixed in), claim.json while a worker trains it (claims.py) and result.json once it finished
(written whole or not at all); an interrupted cell resumes from its checkpoints/last.ckpt.
dispatch runs the grid here, or as one process of --workers, or starts those processes
(run_workers: each is the same command, exactly what another machine sharing the folder runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch

from vdcnn_res.cli.ablate.claims import CLAIM_FILE, claim, release
from vdcnn_res.cli.ablate.grid import RESULT_FILE, write_atomically
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.training.callbacks import CurveRecorder

__all__ = [
    "EXECUTION_OPTIONS", "FitRun", "Grid", "GridCommand", "Job", "add_grid_options", "budget_args", "build_fit",
    "check_command", "config_args", "dispatch", "finished", "fit_cell", "fit_command", "grid_command",
    "parse_command", "run_jobs", "run_workers", "save_result", "without_execution_options", "write_report",
]  # fmt: skip

COMMAND_FILE = "fit_command.txt"


class Outcome(Protocol):
    """What run_jobs needs of a cell's result row (a dataclass, saved as result.json)."""

    status: str
    fit_seconds: float


R = TypeVar("R", bound=Outcome)


# ----------------------------------------------------------------------------- one cell


def build_fit(args: list[str]) -> Any:
    """The `vdcnn-res fit` CLI for `args`, with model, data and Trainer built but nothing run."""
    from vdcnn_res.cli.lightning import build_cli  # imports data/tokenizers; only needed to train

    return build_cli(args, run=False)


def resume_path(cell_dir: Path) -> str | None:
    """The cell's last.ckpt when an earlier run was interrupted (checked safe to load), else None."""
    last = cell_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    from vdcnn_res.inference.model_files import load_checkpoint_safely

    load_checkpoint_safely(last)  # refuses a damaged or unsafe file with a one-line UserError
    return str(last)


def fit_command(fit_args: list[str]) -> str:
    """The shell command that trains a cell: written to its folder and its results row."""
    return "vdcnn-res fit " + shlex.join(fit_args)


@dataclass
class FitRun:
    """A cell's fit: the CLI (model, data, Trainer), its recorder (left out of the Trainer again),
    "ok" or why the fit failed, and the optimizer steps taken."""

    cli: Any
    recorder: CurveRecorder
    status: str
    steps: int


def fit_cell(fit_args: list[str], cell_dir: Path, recorder: CurveRecorder) -> FitRun:
    """Fit one cell with `recorder` attached, resuming its last.ckpt if any.

    A UserError while fitting (e.g. the loss diverged) is a result of the experiment, recorded in
    the status; one while building (a bad config) stops the grid.
    """
    cli = build_fit(fit_args)
    cli.trainer.callbacks.append(recorder)
    resume = resume_path(cell_dir)
    if resume:
        print(f"  {recorder.label}: resuming from {resume}", flush=True)
    status = "ok"
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume, weights_only=True)
    except UserError as err:
        status = f"failed: {err}"
    # A later test restores the best checkpoint, callback states included: the recorder stays out of it.
    cli.trainer.callbacks.remove(recorder)
    return FitRun(cli, recorder, status, cli.trainer.global_step)


def save_result(result: Any, path: Path) -> None:
    """A finished cell's row (a dataclass) as JSON: fully recorded or not at all."""
    write_atomically(path, json.dumps(asdict(result)))


def check_command(cell_dir: Path, command: str) -> None:
    """Refuse a cell folder holding a run of another command: its results or checkpoints are never mixed in."""
    path = cell_dir / COMMAND_FILE
    if path.is_file() and path.read_text(encoding="utf-8").strip() != command:
        raise UserError(
            f"{cell_dir} holds a run of another command (the base config, extra fit arguments or budget "
            f"differ; see {path}); use a new --out_dir, or delete that folder to retrain the cell"
        )


# ----------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Job:
    """One cell of a grid: its folder name, its fit arguments and what its start line says about it."""

    name: str
    fit_args: tuple[str, ...]
    intro: str

    @property
    def command(self) -> str:
        return fit_command(list(self.fit_args))


def finished(jobs: list[Job], out_dir: Path, load: Callable[[Path], R]) -> list[R]:
    """The result rows of the grid's finished cells, in grid order."""
    paths = [out_dir / "cells" / job.name / RESULT_FILE for job in jobs]
    return [load(path) for path in paths if path.is_file()]


def write_report(jobs: list[Job], out_dir: Path, load: Callable[[Path], R], write: Callable[[list[R]], Any]) -> list[R]:
    """Rewrite the tables (`write`) from every finished cell; returns their rows.

    Another worker may finish a cell while this one writes (and its own report, written from an
    older list, may land after this one): the files are rewritten until no cell finished meanwhile,
    so the last report written by anyone includes every cell saved before it.
    """
    seen: list[tuple[str, int]] | None = None
    results: list[R] = []
    for _ in range(len(jobs) + 1):
        done = [(out_dir / "cells" / job.name / RESULT_FILE) for job in jobs]
        now = [(str(p), p.stat().st_mtime_ns) for p in done if p.is_file()]
        if now == seen:
            break
        results, seen = finished(jobs, out_dir, load), now
        if results:
            write(results)
    return results


def run_jobs(
    jobs: list[Job],
    out_dir: Path,
    train: Callable[[Job, Path, str], R],
    load: Callable[[Path], R],
    headline: Callable[[R], str],
    report: Callable[[], list[R]],
    worker: str = "",
) -> list[R]:
    """Train every cell that is neither finished nor claimed by another worker, rewriting the tables
    (`report`) after each; returns the rows of all finished cells.

    `train(job, cell_dir, label)` fits a cell and returns its row; `headline(row)` is the result its
    progress lines show. Workers (processes, or machines sharing `out_dir`) run this same loop: a
    cell's claim file lets one of them train it; the others skip it. `worker` tags their lines.
    """
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    for i, job in enumerate(jobs, 1):
        cell_dir = out_dir / "cells" / job.name
        done = cell_dir / RESULT_FILE
        label = f"[{i}/{len(jobs)}{' ' + worker if worker else ''}] {job.name}"
        check_command(cell_dir, job.command)
        if done.is_file():
            if not worker:  # a worker process leaves this to the command that started it
                print(f"{label}: done earlier ({headline(load(done))}), skipped", flush=True)
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
            check_command(cell_dir, job.command)  # written by another command while this one claimed it
            write_atomically(cell_dir / COMMAND_FILE, job.command + "\n")
            threads = f", {torch.get_num_threads()} threads" if worker else ""
            print(f"{label}: {job.intro}{threads}", flush=True)
            result = train(job, cell_dir, label)
            save_result(result, done)
        finally:
            release(claim_path)
        print(f"{label}: {headline(result)} ({result.status}, {result.fit_seconds:.0f} s)", flush=True)
        report()
    return report()


# ----------------------------------------------------------------------------- the command line

# Options that say how to run the grid, not what it is: left out of the recorded command, so workers
# and machines with other thread counts share one folder and one command line in the tables.
EXECUTION_OPTIONS = ("--workers", "--threads", "--worker_id")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def add_grid_options(parser: argparse.ArgumentParser, out_dir_help: str) -> None:
    """The options every grid command has: --config, --out_dir, the budget (--max_epochs | --max_steps)
    and how to run it (--workers, --threads; --worker_id for the processes --workers starts)."""
    parser.add_argument("--config", action="append", default=[], help="base fit config (repeatable, composed in order)")
    parser.add_argument("--out_dir", required=True, help=out_dir_help)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--max_epochs", type=int, help="training budget in epochs (default: the base config's)")
    budget.add_argument("--max_steps", type=int, help="training budget in optimizer steps")
    parser.add_argument("--workers", type=_positive, default=1,
                        help="cells trained at once, one process each (one CUDA device each when there are any)")  # fmt: skip
    parser.add_argument("--threads", type=_positive,
                        help="torch threads per worker (default: CPUs / workers with --workers, else torch's own)")  # fmt: skip
    parser.add_argument("--worker_id", type=_positive, help=argparse.SUPPRESS)


def budget_args(args: argparse.Namespace) -> list[str]:
    """The fit arguments of --max_epochs / --max_steps (none when neither is given)."""
    if args.max_steps is not None:
        return ["--trainer.max_steps", str(args.max_steps), "--trainer.max_epochs", "-1"]
    if args.max_epochs is not None:
        return ["--trainer.max_epochs", str(args.max_epochs)]
    return []


@dataclass(frozen=True)
class GridCommand:
    """A grid command line, parsed: its options, the fit arguments after `--` (`extra`), the grid's own
    arguments without the execution options (`grid_argv`: what workers are given) and the command as
    recorded at the top of the tables."""

    args: argparse.Namespace
    extra: list[str]
    grid_argv: list[str]
    command: str

    def base_args(self, parser: argparse.ArgumentParser, cell_defaults: list[str]) -> list[str]:
        """Every cell's first fit arguments: the base configs (checked to exist), the grid's cell
        defaults, then the arguments after `--`, which may override them."""
        return config_args(self.args.config, parser) + cell_defaults + self.extra


def split_fit_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own options, fit arguments): everything after the first `--` goes to every fit unchanged."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def parse_command(parser: argparse.ArgumentParser, subcommand: str, argv: list[str]) -> GridCommand:
    """Parse `argv` (everything after `--` goes to every cell's fit unchanged)."""
    argv, extra = split_fit_args(argv)
    args = parser.parse_args(argv)
    grid_argv = without_execution_options(argv)
    return GridCommand(args, extra, grid_argv, grid_command(subcommand, grid_argv, extra))


def without_execution_options(argv: list[str]) -> list[str]:
    """`argv` without EXECUTION_OPTIONS and their values (the parser must have allow_abbrev=False)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in EXECUTION_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{o}=" for o in EXECUTION_OPTIONS)):
            kept.append(arg)
    return kept


def grid_command(subcommand: str, grid_argv: list[str], extra: list[str]) -> str:
    """The command line written at the top of the tables (execution options left out)."""
    return f"vdcnn-res {subcommand} " + shlex.join(grid_argv + (["--", *extra] if extra else []))


def config_args(paths: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`--config PATH` for every base config, each checked to exist."""
    if not paths:
        parser.error("--config is required: the base fit config every cell starts from")
    for path in paths:
        if not Path(path).is_file():
            raise MissingFileError(f"--config {path!r}: no such file")
    return [arg for path in paths for arg in ("--config", path)]


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


def run_workers(subcommand: str, grid_argv: list[str], extra: list[str], workers: int, threads: int | None) -> None:
    """Start `workers` processes of the same grid (each the loop of run_jobs) and wait for them.

    Each worker is `python -m vdcnn_res.cli <subcommand> <the same grid>` with its own thread count
    and, when CUDA devices are visible, its own device: a worker is exactly what another machine
    sharing the folder would run, and a crash (or the out-of-memory killer) ends one worker, not the others.
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
        procs.append(subprocess.Popen([sys.executable, "-m", "vdcnn_res.cli", subcommand, *args], env=env))
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


def dispatch(
    subcommand: str,
    jobs: list[Job],
    out_dir: Path,
    command: GridCommand,
    header: str,
    run: Callable[[str], list[R]],
    report: Callable[[], list[R]],
) -> list[R] | None:
    """Run the grid: as one worker process of --workers (`run(worker tag)`; returns None), with
    --workers N processes (then `report()`), or here (`run("")`); returns the finished rows."""
    args = command.args
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker_id is not None:  # one of the processes of --workers
        run(f"w{args.worker_id}")
        return None
    print(header, flush=True)
    if args.workers == 1:
        return run("")
    todo = []
    for job in jobs:
        cell_dir = out_dir / "cells" / job.name
        check_command(cell_dir, job.command)  # refuse before starting any worker
        if (cell_dir / RESULT_FILE).is_file():
            print(f"{job.name}: done earlier, skipped", flush=True)
        else:
            todo.append(job)
    if todo:
        run_workers(subcommand, command.grid_argv, command.extra, min(args.workers, len(todo)), args.threads)
    return report()


@dataclass(frozen=True)
class Grid(Generic[R]):
    """A grid of cells and what it does with them: the one runner of `vdcnn-res ablate` and `sweep`.

    `train(job, cell_dir, label)` fits a cell and returns its row, `load` reads a saved row,
    `headline(row)` is what progress lines show of it, `report()` rewrites the tables from every
    finished cell (write_report) and returns their rows.
    """

    subcommand: str
    jobs: list[Job]
    out_dir: Path
    train: Callable[[Job, Path, str], R]
    load: Callable[[Path], R]
    headline: Callable[[R], str]
    report: Callable[[], list[R]]

    def run(self, worker: str = "") -> list[R]:
        """This process's loop over the cells (run_jobs); `worker` tags a --workers process's lines."""
        return run_jobs(self.jobs, self.out_dir, self.train, self.load, self.headline, self.report, worker)

    def dispatch(self, command: GridCommand, header: str) -> list[R] | None:
        """Run the grid here, as one --workers process, or with --workers processes (dispatch)."""
        return dispatch(self.subcommand, self.jobs, self.out_dir, command, header, self.run, self.report)
