"""`vdcnn-res sweep`: grid parsing, the point tables, and one end-to-end sweep on the bundled sample."""

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from fixtures.tiny import QUIET, TINY
from vdcnn_res.cli import main
from vdcnn_res.cli.sweep.grid import (
    Axis,
    Point,
    SweepResult,
    baseline_point,
    build_points,
    parse_axis,
    parse_grid,
    split_values,
)
from vdcnn_res.cli.sweep.report import write_tables
from vdcnn_res.errors import UserError
from vdcnn_res.training.callbacks import CurveRecorder

pytestmark = pytest.mark.usefixtures("in_repo", "one_thread")

EXTRA = [arg for arg in TINY if not arg.startswith("--config") and not arg.endswith(".yaml")] + QUIET + [
    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- grid syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("3e-4,1e-3", ["3e-4", "1e-3"]),
        ("[],[1,2,3,4,5]", ["[]", "[1,2,3,4,5]"]),
        ("{a: 1, b: [2, 3]}, null", ["{a: 1, b: [2, 3]}", "null"]),
        ('"a,b",c', ['"a,b"', "c"]),
        ("'x, [y',z", ["'x, [y'", "z"]),
        ("true", ["true"]),
    ],
)
def test_values_split_at_top_level_commas_only(text, values):
    assert split_values(text) == values


@pytest.mark.parametrize("text", ["[1,2", "1,2]", "[1,2}", '"a,b', "{a: [1}"])
def test_unbalanced_values_are_refused(text):
    with pytest.raises(ValueError):
        split_values(text)


def test_axes_keep_the_values_as_written_and_points_cover_the_product():
    axes = parse_grid(["model.optim.lr=3e-4,1e-3", "model.arch.ngram_orders=[],[1,2,3,4,5],null"])
    assert axes == [Axis("model.optim.lr", ("3e-4", "1e-3")), Axis("model.arch.ngram_orders", ("[]", "[1,2,3,4,5]", "null"))]
    points = build_points(axes)
    assert len(points) == 6 and points[0].values == (("model.optim.lr", "3e-4"), ("model.arch.ngram_orders", "[]"))
    assert points[1].fit_args() == ["--model.optim.lr=3e-4", "--model.arch.ngram_orders=[1,2,3,4,5]"]
    names = [p.name for p in points]
    assert len(set(names)) == 6  # [] and null differ, though neither has a folder-safe character in common
    assert all("/" not in n and "[" not in n and "," not in n for n in names)
    assert names[2] == "model.optim.lr=3e-4__model.arch.ngram_orders=null"  # safe values are kept as written
    assert build_points(axes)[1].name == names[1]  # a cell's folder does not depend on the run
    assert build_points([]) == [Point(())] and Point(()).name == "base"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("model.optim.lr", "no KEY=VALUES"),
        ("=1,2", "no KEY=VALUES"),
        ("--model.optim.lr=1e-3", "without dashes"),
        ("model optim=1", "not a dotted config key"),
        ("model.optim.lr=", "no values"),
        ("model.optim.lr=1e-3,,3e-3", "an empty value"),
        ("model.optim.lr=1e-3,", "an empty value"),
        ("model.optim.lr=1e-3,1e-3", "more than once"),
        ("model.arch.ngram_orders=[1,2", "unclosed '\\['"),
        ("data.test=x.csv", "never reads the test split"),
        ("seed_everything=1,2", "--seeds"),
    ],
)
def test_bad_axes_say_what_is_wrong(spec, words):
    with pytest.raises(UserError, match=words):
        parse_axis(spec)


def test_a_key_given_twice_is_refused():
    with pytest.raises(UserError, match="model.optim.lr is given more than once"):
        parse_grid(["model.optim.lr=1e-3", "model.optim.lr=3e-4"])


def test_the_baseline_is_the_first_values_unless_chosen():
    axes = parse_grid(["a.b=1,2", "c.d=x,y"])
    assert baseline_point(axes, None) == Point((("a.b", "1"), ("c.d", "x")))
    assert baseline_point(axes, ["c.d=y"]) == Point((("a.b", "1"), ("c.d", "y")))
    for spec, words in (("e.f=1", "not a --grid key"), ("a.b=3", "not one of the --grid values"), ("a.b", "KEY=VALUE")):
        with pytest.raises(UserError, match=words):
            baseline_point(axes, [spec])


# --- tables from cell rows -----------------------------------------------------------------------


def _result(lr: str, seed: int, best: float, final: float, status: str = "ok") -> SweepResult:
    point = Point((("model.optim.lr", lr),))
    return SweepResult(
        cell=f"{point.name}_seed{seed}", point=point.name, seed=seed, values=dict(point.values), best_val_acc=best,
        best_epoch=2, final_val_acc=final, best_val_f1=best - 1, final_val_f1=final - 1, train_loss_final=0.5,
        train_acc_final=90.0, epochs=3, steps=30, fit_seconds=10.0, status=status, fit_args="vdcnn-res fit ...",
    )  # fmt: skip


def test_points_are_summarised_over_seeds_sorted_and_paired_with_the_baseline(tmp_path):
    axes = [Axis("model.optim.lr", ("1e-3", "3e-4", "1e-4"))]
    results = [
        _result("1e-3", 1, 80.0, 79.0), _result("1e-3", 2, 82.0, 80.0), _result("1e-3", 3, 81.0, 81.0),
        _result("3e-4", 1, 84.0, 83.0), _result("3e-4", 2, 83.0, 83.0), _result("3e-4", 3, 86.0, 84.0),
        _result("1e-4", 1, 70.0, 70.0), _result("1e-4", 2, math.nan, math.nan, "failed: the training loss became nan"),
    ]  # fmt: skip
    write_tables(results, axes, baseline_point(axes, None), tmp_path, "vdcnn-res sweep ...")
    summary = read_csv(tmp_path / "summary.csv")
    assert [row["model.optim.lr"] for row in summary] == ["3e-4", "1e-3", "1e-4"]  # by mean best val acc
    top, base, slow = summary
    assert base["baseline"] == "True" and base["best_val_acc_diff"] == ""
    assert float(top["best_val_acc_mean"]) == pytest.approx(statistics.mean([84, 83, 86]))
    assert float(top["best_val_acc_sd"]) == pytest.approx(statistics.stdev([84, 83, 86]), rel=1e-5)
    assert top["best_val_acc_values"] == "1:84 2:83 3:86"
    diffs = [84 - 80, 83 - 82, 86 - 81]
    half = 4.3027 * statistics.stdev(diffs) / math.sqrt(3)  # t(0.975, 2)
    assert float(top["best_val_acc_diff"]) == pytest.approx(statistics.mean(diffs), rel=1e-5)
    assert float(top["best_val_acc_diff_lo"]) == pytest.approx(statistics.mean(diffs) - half, abs=1e-4)
    assert float(top["best_val_acc_diff_hi"]) == pytest.approx(statistics.mean(diffs) + half, abs=1e-4)
    assert (slow["seeds"], slow["failed_seeds"], slow["best_val_acc_n"], slow["best_val_acc_sd"]) == ("1", "2", "1", "")
    assert (slow["best_val_acc_diff"], slow["best_val_acc_diff_n"], slow["best_val_acc_diff_lo"]) == ("-10", "1", "")
    md = (tmp_path / "summary.md").read_text()
    assert md.splitlines()[0] == "Command: `vdcnn-res sweep ...`" and "Baseline: model.optim.lr=1e-3" in md
    assert "| 1 | 3e-4 | 1, 2, 3 | 84.33 ± 1.53 (84.00, 83.00, 86.00) |" in md
    assert "| 70.00 (1 seed) | -10.00 (1 pair: no interval) |" in md and "1 (failed: 2)" in md
    assert "model.optim.lr=1e-4_seed2: failed: the training loss became nan" in md
    assert len(read_csv(tmp_path / "results.csv")) == 8


# --- the command ---------------------------------------------------------------------------------


def sweep(out_dir: Path, *args: str, extra: tuple[str, ...] = ()) -> None:
    main(["sweep", "--config", "configs/quickstart.yaml", "--out_dir", str(out_dir), *args, "--", *EXTRA, *extra])


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("model.optim.lrr=1e-3", "--grid point model.optim.lrr=1e-3: unknown config key model.optim.lrr; did you mean model.optim.lr?"),  # fmt: skip
        ("model.optim.lr=fast", "--grid point model.optim.lr=fast: "),
        ("model.optim.lr=1e-3,", "--grid 'model.optim.lr=1e-3,': an empty value"),
        ("model.optim.lr", "--grid 'model.optim.lr': no KEY=VALUES"),
    ],
)
def test_bad_grids_are_one_line_and_train_nothing(tmp_path, capsys, grid, message):
    with pytest.raises(SystemExit) as exit_:
        sweep(tmp_path / "sw", "--grid", grid, "--max_epochs", "1")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"vdcnn-res: error: {message}") and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "sw" / "cells").exists()


def test_a_config_that_validates_on_the_test_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep(tmp_path / "sw", "--grid", "model.optim.lr=1e-3", extra=("--data.valid=data/ag_news_sample/test.csv",))
    assert "data.valid and data.test are the same file(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_end_to_end_validates_only_summarises_the_cells_and_resumes(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ("--grid", "model.arch.ngram_orders=[],[1,2]", "--seeds", "1", "2", "--max_epochs", "1")
    # A test file that does not exist: any attempt to read (or even resolve) the test split fails.
    sweep(out, *args, extra=("--data.test=no/such/test.csv",))
    printed = capsys.readouterr().out
    cells = {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}
    assert len(cells) == 4 and printed.count(": best val acc") == 4  # one finish line per cell
    for name, cell in cells.items():
        assert cell["status"] == "ok" and cell["epochs"] == 1 and cell["steps"] == 3, name
        assert 0 <= cell["best_val_acc"] <= 100 and cell["best_epoch"] == 1 and not math.isnan(cell["best_val_f1"])
        assert cell["fit_args"].endswith("--data.test=null")
        (run,) = (out / "cells" / name / "lightning_logs").iterdir()
        events = b"".join(p.read_bytes() for p in run.glob("events.out.tfevents.*"))
        assert b"val/acc" in events and b"test/" not in events  # validated, never tested
        assert "\ntest: null\n" in (run / "hparams.yaml").read_text()  # the data module had no test split

    # The summary is computed from the cells' own rows.
    summary = {row["model.arch.ngram_orders"]: row for row in read_csv(out / "summary.csv")}
    assert set(summary) == {"[]", "[1,2]"} and summary["[]"]["baseline"] == "True"
    by = {(c["values"]["model.arch.ngram_orders"], c["seed"]): c for c in cells.values()}
    for value, row in summary.items():
        for metric in ("best_val_acc", "final_val_acc"):
            xs = [by[value, seed][metric] for seed in (1, 2)]
            assert float(row[f"{metric}_mean"]) == pytest.approx(statistics.mean(xs), rel=1e-5)
            assert row[f"{metric}_values"] == f"1:{xs[0]:.6g} 2:{xs[1]:.6g}"
    diffs = [by["[1,2]", s]["best_val_acc"] - by["[]", s]["best_val_acc"] for s in (1, 2)]
    assert float(summary["[1,2]"]["best_val_acc_diff"]) == pytest.approx(statistics.mean(diffs), abs=1e-4)
    md = (out / "summary.md").read_text()
    assert md.startswith("Command: `vdcnn-res sweep --config configs/quickstart.yaml") and "--seeds 1 2" in md

    # The same command again retrains nothing; another budget on the same folder is refused.
    before = (out / "summary.csv").read_text()
    sweep(out, *args, extra=("--data.test=no/such/test.csv",))
    assert capsys.readouterr().out.count("done earlier") == 4 and (out / "summary.csv").read_text() == before
    with pytest.raises(SystemExit):
        sweep(out, "--grid", "model.arch.ngram_orders=[],[1,2]", "--seeds", "1", "--max_epochs", "2")
    assert "holds a run of another command" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_the_cell_with_its_validation_history(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sw"
    args = ("--grid", "model.optim.lr=1e-3", "--seeds", "3", "--max_epochs", "2", "--", *EXTRA)

    def power_cut(self, trainer, *args):
        if trainer.current_epoch == 1:  # after epoch 1 and its checkpoints
            raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(CurveRecorder, "on_train_batch_start", power_cut, raising=False)
        with pytest.raises(RuntimeError, match="power cut"):
            main(["sweep", "--config", "configs/quickstart.yaml", "--out_dir", str(out), *args])
    cell = out / "cells" / "model.optim.lr=1e-3_seed3"
    assert not (cell / "result.json").exists() and (cell / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    main(["sweep", "--config", "configs/quickstart.yaml", "--out_dir", str(out), *args])
    assert "resuming from" in capsys.readouterr().out
    result = json.loads((cell / "result.json").read_text())
    assert (result["epochs"], result["steps"], result["status"]) == (2, 6, "ok")
    curve = result["val_acc_curve"]  # epoch 1's validation came back from last.ckpt
    assert len(curve) == 2 and all(0 <= v <= 100 for v in curve)
    assert result["best_val_acc"] == max(curve) and result["final_val_acc"] == curve[-1]
