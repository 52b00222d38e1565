"""`vdcnn-res tune`: the space, the budget, resuming, refusals, the final fit (tiny model, few steps)."""

from __future__ import annotations

import json

import optuna  # the `test` extra installs the `tune` extra's Optuna
import pytest
import yaml
from fixtures.tiny import QUIET, TINY
from optuna.trial import TrialState

from vdcnn_res.cli import main
from vdcnn_res.cli.tune import run
from vdcnn_res.cli.tune.space import DEFAULT_SPACE, as_arg, base_values, default_space_for, parse_space
from vdcnn_res.errors import UserError

# Two epochs of 4 steps each, two validation batches: about a second a trial on one thread.
FIT = [*TINY[2:], *QUIET, "--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2",
       "--trainer.logger=false", "--model.arch.depth=9"]  # fmt: skip
SPACE = {"model.optim.lr": {"low": 1e-4, "high": 3e-3, "log": True}, "model.label_smoothing": {"choices": [0.0, 0.1]}}


def _tune(study, *options: str, space: dict | None = SPACE, fit: tuple[str, ...] = ()) -> None:
    argv = ["tune", *TINY[:2], "--study", str(study), *options]
    if space is not None:
        path = study.parent / f"{study.name}_space.yaml"
        path.write_text(yaml.safe_dump(space), encoding="utf-8")
        argv += ["--space", str(path)]
    main([*argv, "--", *FIT, *fit])


def _trials(study) -> list:
    return optuna.load_study(study_name=run.STUDY_NAME, storage=f"sqlite:///{study / 'study.db'}").get_trials()


def _error(capsys, *args, **kwargs) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _tune(*args, **kwargs)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("vdcnn-res: error: ")
    return lines[-1]


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("90", 90), ("0", 0)])
def test_durations(text, seconds):
    assert run.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "m"])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(UserError, match="--time_budget"):
        run.parse_duration(text)


def test_default_space_is_valid():
    params = parse_space(DEFAULT_SPACE)
    assert [p.key for p in params] == list(DEFAULT_SPACE)
    assert next(p for p in params if p.key == "model.arch.depth").choices == (9, 17)


@pytest.mark.parametrize(
    "space, words",
    [
        ({"model.optim.lr": {"low": 3e-3, "high": 1e-4}}, "model.optim.lr: empty range"),
        ({"model.optim.lr": {"low": 0.0, "high": 1e-3, "log": True}}, "log range needs low > 0"),
        ({"model.arch.depth": {"choices": []}}, "choices must be a non-empty list"),
        ({"model.arch.depth": {"choices": [9, 9]}}, "repeat"),
        ({"model.optim.lr": {"low": 1e-4, "hihg": 1e-3}}, "unknown field"),
        ({"model.optim.lr": 0.001}, "needs {low"),
        ({"trainer.default_root_dir": {"choices": ["a", "b"]}}, "set by vdcnn-res tune itself"),
        ([], "must map config keys"),
    ],
)
def test_bad_spaces_are_one_line_naming_the_key(space, words):
    with pytest.raises(UserError, match=words.replace("{", r"\{")):
        parse_space(space)


def test_args_are_spelled_as_the_fit_command_line():
    assert as_arg("model.arch.shortcut", False) == "--model.arch.shortcut=false"
    assert as_arg("model.optim.lr", 1e-4) == "--model.optim.lr=0.0001"
    assert as_arg("data.max_length", None) == "--data.max_length=null"


def test_the_base_values_inside_the_space_are_tried_first():
    from jsonargparse import Namespace

    space = parse_space({
        "model.optim.lr": {"low": 1e-4, "high": 3e-3, "log": True},
        "model.optim.weight_decay": {"low": 1e-3, "high": 0.01},  # the base's 0.05 is outside: sampled
        "model.label_smoothing": {"choices": [0, 0.2]},  # the base's 0.0 is the choice 0
        "model.arch.depth": {"choices": [17, 29]},  # the base's 9 is not a choice
        "data.max_length": {"low": 256, "high": 1024, "step": 256},
        "model.arch.dropout": {"low": 0, "high": 1},  # an int range: the base's 0.5 is no int
    })  # fmt: skip
    config = Namespace()
    for key, value in {"model.optim.lr": 1e-3, "model.optim.weight_decay": 0.05, "model.label_smoothing": 0.0,
                       "model.arch.depth": 9, "data.max_length": 512, "model.arch.dropout": 0.5}.items():  # fmt: skip
        config[key] = value
    assert base_values(space, config) == {"model.optim.lr": 1e-3, "model.label_smoothing": 0, "data.max_length": 512}
    config["model.optim.lr"], config["data.max_length"] = "auto", 500  # a word; off the step grid
    assert base_values(space, config) == {"model.label_smoothing": 0}
    assert base_values(parse_space(DEFAULT_SPACE), Namespace()) == {}  # keys the config lacks
    default = parse_space(DEFAULT_SPACE)
    config["data.max_length"] = None  # a series recipe reads every value: the default space leaves it so
    assert "data.max_length" not in [p.key for p in default_space_for(default, config)]
    config["data.max_length"] = 512
    assert "data.max_length" in [p.key for p in default_space_for(default, config)]


def test_a_budget_of_few_trials_is_pointed_out_once(capsys):
    import time

    study = optuna.create_study(direction="maximize")
    dist = {"model.optim.lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}

    def trial(seconds: float) -> optuna.trial.FrozenTrial:
        made = optuna.trial.create_trial(params={"model.optim.lr": 1e-3}, distributions=dist, value=0.8,
                                         user_attrs={"seconds": seconds, "curve": [0.8]})  # fmt: skip
        study.add_trial(made)
        return study.trials[-1]

    report = run._progress(None, time.monotonic(), budget=1800)
    report(study, trial(60))  # 30 such trials fit: nothing to say
    assert "note:" not in capsys.readouterr().out
    report(study, trial(500))
    out = capsys.readouterr().out
    assert "note: one whole trial took 8 min of the 30-min budget, so about 3 more can finish" in out
    report(study, trial(700))
    assert "note:" not in capsys.readouterr().out  # said once


def test_unknown_key_is_refused_before_any_trial(tmp_path, in_repo, one_thread, capsys):
    line = _error(capsys, tmp_path / "s", "--time_budget", "1m", space={"model.optim.learning_rate": {"low": 0.1, "high": 1.0}})
    assert "'model.optim.learning_rate', which is not a `vdcnn-res fit` config key" in line
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.slow
def test_search_resume_and_final_fit(tmp_path, in_repo, one_thread, capsys, monkeypatch):
    """Two trials; an interrupted third; a rerun keeps the two and finishes; the final fit repeats the best."""
    study = tmp_path / "study"
    _tune(study, "--time_budget", "10m", "--trials", "2", "--no_final_fit")
    out = capsys.readouterr().out
    assert out.count("\ntrial ") + out.startswith("trial ") == 2 and "trial 1/2:" in out
    first = {t.number: (t.state, t.value, t.params) for t in _trials(study)}
    base = run._cli([*TINY, *FIT]).config
    assert first[0][2] == {"model.optim.lr": base.model.optim.lr, "model.label_smoothing": base.model.label_smoothing}
    assert "Trial 0 is the base config's own values" in out and "the base config's values" in (study / "trials.md").read_text()
    assert sorted(first) == [0, 1] and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s, _, _ in first.values())
    config = yaml.safe_load((study / "trials" / "000" / "config.yaml").read_text(encoding="utf-8"))
    assert config["data"]["test"] is None  # the test split is never read while tuning
    assert (study / "trials.md").is_file() and (study / "search.png").stat().st_size > 1000

    # Interrupt the next trial in its first step, as Ctrl-C would (Lightning turns it into SystemExit).
    build = run._cli

    def interrupted(args):
        cli = build(args)
        if "/trials/002" in " ".join(args):
            import pytorch_lightning as pl

            class CtrlC(pl.Callback):
                def on_train_batch_end(self, *a, **k):
                    raise KeyboardInterrupt

            cli.trainer.callbacks.append(CtrlC())
        return cli

    monkeypatch.setattr(run, "_cli", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        _tune(study, "--time_budget", "10m", "--trials", "3", "--no_final_fit")
    assert exit_info.value.code == 130 and "repeat the command to resume" in capsys.readouterr().err
    monkeypatch.setattr(run, "_cli", build)

    _tune(study, "--time_budget", "10m", "--trials", "3")
    out = capsys.readouterr().out
    assert "2 trial(s) finished earlier" in out
    trials = {t.number: t for t in _trials(study)}
    assert {n: (t.state, t.value, t.params) for n, t in trials.items() if n < 2} == first  # kept as they were
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["error"] == "interrupted"
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)

    best = max((t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    result = json.loads((study / "final" / f"{best.number:03d}" / "result.json").read_text(encoding="utf-8"))
    assert result["trial"] == best.number and result["val_acc"] == pytest.approx(best.value)  # same seed, same fit
    assert "test_error_pct" in result
    saved = yaml.safe_load((study / "best.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["optim"]["lr"] == best.params["model.optim.lr"]
    assert saved["data"]["test"] and saved["trainer"]["default_root_dir"] is None

    # The same study with another space or base config: refused, nothing run.
    line = _error(capsys, study, "--time_budget", "1m", space={"model.optim.lr": {"low": 1e-4, "high": 1e-3}})
    assert "another search space" in line
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["tune", *TINY[:2], "--study", str(study), "--time_budget", "1m", "--space",
              str(tmp_path / "space.yaml"), "--", *FIT, "--data.batch_size=8"])  # fmt: skip
    assert "another base config" in capsys.readouterr().err
    assert len(_trials(study)) == 4


def test_folders_of_another_study_are_refused(tmp_path, in_repo, one_thread, capsys):
    (tmp_path / "s" / "trials" / "000" / "checkpoints").mkdir(parents=True)  # its study.db was deleted
    line = _error(capsys, tmp_path / "s", "--time_budget", "1m")
    assert "holds trial folders the study does not know (000)" in line


def test_budget_too_small_for_one_trial(tmp_path, in_repo, one_thread, capsys):
    # a trial of 20 x 40 steps cannot finish in 1 s on any machine
    line = _error(capsys, tmp_path / "s", "--time_budget", "1s", "--no_final_fit",
                  fit=("--trainer.max_epochs=20", "--trainer.limit_train_batches=40", "--early_stopping=null"))
    assert "--time_budget 1s is too small for one trial" in line and "steps" in line
