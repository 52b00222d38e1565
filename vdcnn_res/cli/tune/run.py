"""`vdcnn-res tune`: search the recipe's knobs on the validation split within a time budget (Optuna).

    vdcnn-res tune --config configs/shared/ag_news_7600.yaml --study tunes/ag_news --time_budget 30m

Every trial is a real `vdcnn-res fit` of the base config with the trial's values, in its own
folder (`STUDY/trials/NNN/`), with the test split removed. Its validation accuracy is reported
to Optuna after every validation; the pruner (median by default) stops trials that trail the
others. The study lives in `STUDY/study.db` (or `--storage`), so re-running the same command
resumes it: finished trials are kept, new ones continue the search. When the budget is spent,
the best configuration is written to `STUDY/best.yaml` (a plain `vdcnn-res fit --config` file)
and fitted once more in `STUDY/final/`, then tested if the base config has a test split.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from vdcnn_res.cli.ablate.cells import split_fit_args
from vdcnn_res.cli.tune.report import plot_search, trial_rows, write_table
from vdcnn_res.cli.tune.space import Param, as_arg, base_values, check_keys, default_space_for, fingerprint, load_space
from vdcnn_res.errors import MissingFileError, UserError

MONITOR = "val/acc"
STUDY_NAME = "vdcnn-res-tune"
BEST_FILE = "best.yaml"
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float:
    """'30m', '2h', '1h30m', '90s', '90' -> seconds; 0 means: no search, only the final fit."""
    match = _DURATION.match(text.strip().lower())
    if not text.strip() or not match or not any(match.groups()):
        raise UserError(f"--time_budget {text!r} is not a duration; write e.g. 30m, 2h, 1h30m or 90s")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return 3600 * h + 60 * m + s


class PruneOnValidation(pl.Callback):
    """Reports the validation accuracy to the trial after every validation and stops pruned trials.

    Ten lines of our own instead of optuna-integration's callback: no extra dependency, and that
    one is written for the `lightning.pytorch` namespace, whose Callback class this project's
    `pytorch_lightning` Trainer does not accept.
    """

    def __init__(self, trial: Any, monitor: str = MONITOR) -> None:
        self.trial, self.monitor = trial, monitor
        self.values: list[float] = []
        self.pruned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        self.values.append(float(trainer.callback_metrics[self.monitor]))
        self.trial.report(self.values[-1], step=len(self.values))
        if self.trial.should_prune():
            self.pruned = trainer.should_stop = True


def _cli(args: list[str]) -> Any:
    from vdcnn_res.cli.lightning import build_cli

    return build_cli(args, run=False)


def _storage(spec: str | None, study_dir: Path) -> Any:
    """Optuna storage: an RDB URL (sqlite:///, postgresql://, mysql://) or a journal file path."""
    import optuna

    url = spec or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    if "://" in url:
        try:
            # Heartbeats let a later run mark trials of a killed process as failed (after the grace period).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except Exception as err:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
            raise UserError(f"--storage {url!r}: cannot open the study database ({type(err).__name__}: {err})") from None
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url).expanduser())))


def _open_study(args: argparse.Namespace, study_dir: Path, space: list[Param], base_print: str) -> Any:
    """Create the study, or resume it after checking it was started with this space and base config."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=5)
    pruner = {
        "median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": optuna.pruners.HyperbandPruner(min_resource=1),
        "none": optuna.pruners.NopPruner(),
    }[args.pruner]
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=_storage(args.storage, study_dir),
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    settings = {"space": fingerprint(space), "base_config": base_print}
    stored = {key: study.user_attrs.get(key) for key in settings}
    if all(value is None for value in stored.values()):
        for key, value in settings.items():
            study.set_user_attr(key, value)
        return study
    for key, what in (("space", "search space (--space)"), ("base_config", "base config (--config and fit arguments)")):
        if stored[key] != settings[key]:
            raise UserError(
                f"the study in {args.storage or study_dir} was started with another {what}; "
                "repeat its settings to resume it, or use a new --study folder"
            )
    return study


def _trial_args(base: list[str], values: dict[str, Any], trial_dir: Path, test: bool = False) -> list[str]:
    args = [*base, *(as_arg(k, v) for k, v in values.items())]
    args += ["--trainer.default_root_dir", str(trial_dir), "--checkpoint.dirpath", str(trial_dir / "checkpoints")]
    # One process per trial: Lightning's DDP launcher would re-run this whole command in each child.
    # Several devices: one `vdcnn-res tune` per device (CUDA_VISIBLE_DEVICES) on a shared --storage.
    args += ["--trainer.devices=1", "--trainer.num_nodes=1"]
    return args if test else [*args, "--data.test=null"]  # the test split is never read while tuning


class Objective:
    """One trial: fit the base config with the trial's values; its value is the best validation accuracy."""

    def __init__(self, base: list[str], space: list[Param], study_dir: Path, deadline: float) -> None:
        self.base, self.space, self.study_dir, self.deadline = base, space, study_dir, deadline

    def __call__(self, trial: Any) -> float:
        import optuna
        from pytorch_lightning.callbacks import Timer

        values = {p.key: p.suggest(trial) for p in self.space}
        trial_dir = self.study_dir / "trials" / f"{trial.number:03d}"
        args = _trial_args(self.base, values, trial_dir)
        trial.set_user_attr("fit_command", "vdcnn-res fit " + shlex.join(args))
        try:
            cli = _cli(args)
        except UserError as err:  # a value of the space the config refuses: every trial would fail alike
            raise SpaceError(f"the search space gave {', '.join(as_arg(k, v) for k, v in values.items())}: {err}") from None
        pruning = PruneOnValidation(trial)
        remaining = max(0.01, self.deadline - time.monotonic())
        timer = Timer(duration=timedelta(seconds=remaining), interval="step")
        cli.trainer.callbacks.extend([pruning, timer])
        start = time.monotonic()
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, weights_only=True)
        except UserError as err:  # e.g. the loss diverged: an outcome of these values
            trial.set_user_attr("error", str(err))
            raise TrialFailed(str(err)) from None
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit(1)
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt from None  # Optuna marks the trial failed and re-raises it
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
            trial.set_user_attr("steps", cli.trainer.global_step)
            trial.set_user_attr("curve", pruning.values)
        planned = int(cli.trainer.estimated_stepping_batches)
        # Cut by the budget: the deadline passed before the planned steps (the Timer's own clock
        # starts late on a busy machine, so the deadline itself decides).
        if time.monotonic() >= self.deadline and cli.trainer.global_step < planned and not pruning.pruned:
            trial.set_user_attr("cut", "time budget")
            trial.set_user_attr("planned_steps", planned)
            trial.set_user_attr("train_seconds", timer.time_elapsed("train") - timer.time_elapsed("validate"))
            raise optuna.TrialPruned("the time budget ran out")
        if pruning.pruned:
            raise optuna.TrialPruned(f"pruned after validation {len(pruning.values)}")
        if not pruning.values:
            raise TrialFailed(f"no {MONITOR} was logged: the base config needs a validation split")
        return max(pruning.values)


class TrialFailed(Exception):
    """A trial's fit ended with a UserError (recorded on the trial; the search goes on)."""


class SpaceError(UserError):
    """The space produced values the fit config refuses (ends the search)."""


def _progress(total: int | None, t0: float, budget: float = math.inf) -> Any:
    hinted = False

    def report(study: Any, trial: Any) -> None:
        nonlocal hinted
        from optuna.trial import TrialState

        values = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in trial.params.items())
        curve = trial.user_attrs.get("curve", [])
        if trial.state == TrialState.COMPLETE:
            outcome = f"val acc {100 * trial.value:.2f} %"
        elif trial.state == TrialState.PRUNED:
            why = "cut by the time budget" if trial.user_attrs.get("cut") else f"pruned after validation {len(curve)}"
            outcome = f"{why} (val acc {100 * curve[-1]:.2f} %)" if curve else why
        else:
            outcome = f"failed: {trial.user_attrs.get('error', 'see the log')}"
        try:
            best = f"best {100 * study.best_value:.2f} % (trial {study.best_trial.number})"
        except ValueError:
            best = "no finished trial yet"
        of = f"/{total}" if total else ""
        seconds = trial.user_attrs.get("seconds", 0.0)
        print(f"trial {trial.number}{of}: {values} -> {outcome}; {best}; {seconds:.0f} s, "
              f"{time.monotonic() - t0:.0f} s in all", flush=True)  # fmt: skip
        if trial.state == TrialState.COMPLETE and not hinted and seconds > budget / 4:
            hinted = True  # once: a search of two or three trials is hardly a search
            more = int(max(0.0, t0 + budget - time.monotonic()) // seconds)
            print(f"note: one whole trial took {seconds / 60:.0f} min of the {budget / 60:.0f}-min budget, so about "
                  f"{more} more can finish; a longer --time_budget, or fewer epochs for every trial "
                  "(-- --trainer.max_epochs N), lets the search try more", flush=True)  # fmt: skip

    return report


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _write_best(study: Any, base: list[str], study_dir: Path) -> tuple[Path, list[str]]:
    """best.yaml: the base config resolved with the best trial's values (a plain `fit --config` file)."""
    best = study.best_trial
    args = _trial_args(base, best.params, study_dir / "final", test=True)
    cli = _cli(args)
    config = cli.config.clone()
    for key in ("trainer.default_root_dir", "checkpoint.dirpath", "config"):
        if key in config:
            config[key] = None
    text = cli.parser.dump(config, skip_none=False)
    path = study_dir / BEST_FILE
    header = (f"# vdcnn-res tune: trial {best.number} of {study_dir}, val acc {100 * best.value:.2f} %\n"
              f"# values: {json.dumps(best.params)}\n# vdcnn-res fit --config {path}\n")  # fmt: skip
    path.write_text(header + text, encoding="utf-8")
    return path, ["--config", str(path)]


def final_fit(study: Any, base: list[str], study_dir: Path) -> None:
    """Fit the best configuration from best.yaml in STUDY/final/ and test it if there is a test split."""
    path, args = _write_best(study, base, study_dir)
    best = study.best_trial
    final = study_dir / "final" / f"{best.number:03d}"
    done = final / "result.json"
    if done.is_file():
        print(f"Final fit of trial {best.number} done earlier: {done}", flush=True)
        return
    fit_args = [*args, "--trainer.default_root_dir", str(final), "--checkpoint.dirpath", str(final / "checkpoints")]
    print(f"Final fit (trial {best.number}'s values): vdcnn-res fit {shlex.join(fit_args)}", flush=True)
    last = final / "checkpoints" / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:  # an interrupted final fit: go on from its last state
        from vdcnn_res.inference.model_files import load_checkpoint_safely

        load_checkpoint_safely(last)  # refuses a damaged or unsafe file with a one-line UserError
        print(f"  resuming from {resume}", flush=True)
    (final / "config.yaml").unlink(missing_ok=True)  # an interrupted final fit's copy of best.yaml (logger=false)
    cli = _cli(fit_args)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume, weights_only=True)
    callback = cli.trainer.checkpoint_callback
    result: dict[str, Any] = {"trial": best.number, "values": best.params, "best_yaml": str(path)}
    if callback is not None and callback.best_model_score is not None:
        result["val_acc"] = float(callback.best_model_score)
        result["checkpoint"] = callback.best_model_path
    if cli.datamodule.hparams.get("test"):
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False, weights_only=True)
        result["test_error_pct"] = float(metrics[0]["test/error_pct"])
    done.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items() if k != "values"}
    print(f"Final fit: {json.dumps(shown)}", flush=True)


def tune(args: argparse.Namespace, base: list[str]) -> Any:
    """Run (or resume) the search, write the report, then the final fit; returns the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed here instead
    budget = parse_duration(args.time_budget)
    space = load_space(args.space)
    study_dir = Path(args.study)
    study_dir.mkdir(parents=True, exist_ok=True)
    base_cli = _cli([*base, "--data.test=null"])  # refuses a bad base config now, not after a trial
    check_keys(space, base_cli.config)
    if args.space is None:  # the default space leaves a key the base leaves null (a series' max_length: all values)
        space = default_space_for(space, base_cli.config)
    base_print = base_cli.parser.dump(base_cli.config, skip_none=False)
    start = base_values(space, base_cli.config) if args.base_trial else {}
    del base_cli
    study = _open_study(args, study_dir, space, base_print)
    numbers = {f"{t.number:03d}" for t in study.get_trials(deepcopy=False)}
    strays = sorted(p.name for p in (study_dir / "trials").glob("*") if p.name not in numbers)
    if strays:
        raise UserError(
            f"{study_dir / 'trials'} holds trial folders the study does not know ({', '.join(strays[:3])}): "
            "was the study database replaced? Use a new --study folder, or --storage with the original study"
        )
    if start and not study.get_trials(deepcopy=False):  # a new study: its first trial is the base recipe
        study.enqueue_trial(start, user_attrs={"base": True}, skip_if_exists=True)
        print("Trial 0 is the base config's own values (" + ", ".join(as_arg(k, v)[2:] for k, v in start.items())
              + "); the sampler draws the rest", flush=True)  # fmt: skip
    t0 = time.monotonic()
    done = _finished(study)
    print(f"Study {args.storage or study_dir / 'study.db'}: {done} trial(s) finished earlier; searching "
          + "; ".join(p.describe() for p in space) + f"; budget {args.time_budget}"
          + (f", up to {args.trials} trials" if args.trials else ""), flush=True)  # fmt: skip
    if budget > 0 and not (args.trials and done >= args.trials):
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        callbacks = [_progress(args.trials, t0, budget)]
        if args.trials:
            callbacks.append(MaxTrialsCallback(args.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        objective = Objective(base, space, study_dir, deadline=t0 + budget)
        study.optimize(objective, timeout=budget, callbacks=callbacks, catch=(TrialFailed,), gc_after_trial=True)
    trials = study.get_trials(deepcopy=False)
    table = write_table(trial_rows(trials), study_dir)
    plot = plot_search(trials, study_dir)
    try:
        best = study.best_trial
    except ValueError:
        first = next((t for t in trials if t.user_attrs.get("cut")), None)
        if first is not None:
            attrs = first.user_attrs
            per_step = attrs["train_seconds"] / max(1, attrs["steps"])
            need = attrs["seconds"] - attrs["train_seconds"] + per_step * attrs["planned_steps"]
            raise UserError(
                f"--time_budget {args.time_budget} is too small for one trial: trial {first.number} did "
                f"{attrs['steps']} of {attrs['planned_steps']} steps in {attrs['seconds']:.0f} s"
                + (f" (one trial needs about {math.ceil(need / 60)} min)" if attrs["steps"] >= 10 else "")
                + "; give more time or fewer epochs"
            ) from None
        raise UserError(f"no trial of the study finished within the budget (see {table}); give more time") from None
    print(f"Search: {len(trials)} trial(s) in the study; best val acc {100 * best.value:.2f} % (trial {best.number}: "
          f"{json.dumps(best.params)}); table {table}, plot {plot}", flush=True)  # fmt: skip
    print(table.read_text(encoding="utf-8"), flush=True)
    if args.final_fit:
        final_fit(study, base, study_dir)
    return study


def main(argv: list[str]) -> None:
    """`vdcnn-res tune`: its own argparse; everything after `--` goes to every trial's `fit` unchanged."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res tune",
        description="Search learning rate, weight decay, regularization and size on the validation split within "
        "a time budget (Optuna: TPE sampler, median pruning), then fit the best configuration once more and "
        "save it as STUDY/best.yaml. Re-running the same command resumes the study.",
        epilog="Example: vdcnn-res tune --config configs/quickstart.yaml --study tunes/sample --time_budget 20m "
        "-- --trainer.max_epochs 4",
    )
    parser.add_argument("--config", action="append", default=[], help="base fit config (repeatable, composed in order)")
    parser.add_argument("--study", required=True, help="folder for the trials, the study database, tables and best.yaml")
    parser.add_argument("--time_budget", required=True, help="search time, e.g. 30m, 2h, 1h30m, 90s (0: final fit only)")
    parser.add_argument("--trials", type=int, help="stop once the study has this many finished trials")
    parser.add_argument("--space", help="YAML search space (default: lr, weight decay, label smoothing, dropout, depth)")
    parser.add_argument("--storage", help="Optuna storage shared by several machines: an RDB URL or a journal file")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (the fits use the config's seed)")
    parser.add_argument("--no_final_fit", dest="final_fit", action="store_false", help="search only (worker machines)")
    parser.add_argument("--no_base_trial", dest="base_trial", action="store_false",
                        help="do not start with the base config's own values (the sampler draws every trial)")  # fmt: skip
    argv, extra = split_fit_args(argv)
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config is required: the base fit config every trial starts from")
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    for path in args.config:
        if not Path(path).is_file():
            raise MissingFileError(f"--config {path!r}: no such file")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("vdcnn-res tune needs Optuna: pip install 'vdcnn-res[tune]'") from None
    base = [arg for path in args.config for arg in ("--config", path)] + extra
    try:
        tune(args, base)
    except KeyboardInterrupt:
        print(f"\nvdcnn-res tune: interrupted; finished trials are kept in {args.storage or args.study}: "
              "repeat the command to resume", file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(130)
