"""`vdcnn-res ablate` on the bundled sample: the grid, the tables, the figure, resuming, errors."""

import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest

from fixtures.tiny import TINY
from vdcnn_res.cli.ablate import claims
from vdcnn_res.cli.ablate.grid import Cell, CellResult, build_cells, grid_depths
from vdcnn_res.cli.ablate.report import md_interval, write_tables
from vdcnn_res.cli.ablate.stats import mean_ci, paired_differences, spread, t975
from vdcnn_res.training.callbacks import CurveRecorder
from vdcnn_res.cli import main
from vdcnn_res.model.config import VARIANTS
from vdcnn_res.errors import UserError

SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
EXTRA = [arg for arg in TINY if not arg.startswith("--config") and not arg.endswith(".yaml")] + SHORT


pytestmark = pytest.mark.usefixtures("in_repo", "one_thread")


def ablate(out_dir: Path, *args: str) -> None:
    main(["ablate", "--config", "configs/quickstart.yaml", "--out_dir", str(out_dir), *args, "--", *EXTRA])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def rows(out_dir: Path) -> list[dict[str, str]]:
    return read_csv(out_dir / "results.csv")


def test_grid_covers_every_variant_and_layout_once_with_and_without_shortcut():
    cells = build_cells(sorted(VARIANTS), ["8,8,8,8", "8,8,8,8"], [False, True], ["maxpool", "conv"], [1, 2])
    assert len(cells) == (len(VARIANTS) + 1) * 2 * 2 * 2
    assert len({c.name for c in cells}) == len(cells)
    for depth, layout in VARIANTS.items():
        assert Cell(layout, True, "maxpool", 1, depth).layers == depth  # the paper's depth = conv layers
    assert Cell((8, 8, 8, 8), False, "kmax", 3).layers == 65
    assert Cell((1, 1, 1), True, "none", 1, convs_per_block=3).layers == 10  # the series recipe's blocks


@pytest.mark.parametrize(
    ("args", "words"),
    [((10,), "--depths"), ((9, ["8,8"]), "--layouts: '8,8' has 2 stages but the configuration has 4"),
     ((9, ["a,b,c,d"]), "--layouts"), ((9, ["1,0,1,1"]), "--layouts"), ((9, [], ["avgpool"]), "--downsampling")],
)
def test_bad_grids_name_the_option(args, words):
    depths, layouts, kinds = [args[0]], (args[1] if len(args) > 1 else []), (args[2] if len(args) > 2 else ["maxpool"])
    with pytest.raises(UserError, match=words):
        build_cells(depths, layouts, [True], kinds, [42], stages=4)


@pytest.fixture
def series(tmp_path: Path) -> list[str]:
    """The series recipe with GunPoint's config, on a small file of its kind (1 channel, classes 1
    and 2) instead of ../shared's GunPoint: a user's clone has no ../shared."""
    rows = "".join(json.dumps({"series": [(i % 2) - 0.5 + t / 20 for t in range(20)], "label": 1 + i % 2}) + "\n"
                   for i in range(8))  # fmt: skip
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text(rows, encoding="utf-8")
    return ["--config", "configs/series/recipe.yaml", "--config", "configs/series/GunPoint.yaml",
            f"--data.train={tmp_path / 'train.jsonl'}", f"--data.test={tmp_path / 'test.jsonl'}"]  # fmt: skip


def test_the_grid_keeps_the_configs_downsampling_unless_asked(series):
    """Without --downsampling the cells keep their configuration's choice (a series recipe's `none`),
    not the model's default; flags after `--` count as configuration."""
    from vdcnn_res.cli.ablate.run import PURE_CNN, configured_arch

    assert configured_arch(PURE_CNN + series).downsampling == "none"
    # The documented series ablation: 4-stage widths that the recipe's own 3-stage layout cannot build
    # alone; read with the grid's first architecture, as `ablate` does.
    widths = ["--model.arch.channels=[32,64,128,256]", "--model.arch.kernel_sizes=[3,3]"]
    first = build_cells([9, 29], [], [False, True], ["maxpool"], [1])[0]
    assert configured_arch(PURE_CNN + series + widths + first.arch_args()).downsampling == "none"
    assert configured_arch(PURE_CNN + ["--config", "configs/quickstart.yaml"]).downsampling == "maxpool"
    assert configured_arch(PURE_CNN + ["--config", "configs/quickstart.yaml", "--model.arch.downsampling=conv"]).downsampling == "conv"


def test_the_series_recipe_ablates_with_its_own_stages_and_blocks(series):
    """Layouts of the configuration's own stage count; its blocks' convolutions count in `layers`."""
    from vdcnn_res.cli.ablate.run import PURE_CNN, configured_arch

    first = build_cells([], ["1,1,1"], [True], ["maxpool"], [1])[0]
    arch = configured_arch(PURE_CNN + series + first.arch_args())
    assert (arch.num_stages, arch.convs_per_block) == (3, 3)
    cells = build_cells([], ["1,1,1", "3,3,3"], [False, True], [arch.downsampling], [1], arch.num_stages, arch.convs_per_block)
    assert sorted({c.layers for c in cells}) == [10, 28]
    assert all(c.downsampling == "none" for c in cells)
    with pytest.raises(UserError, match="has 4 stages but the configuration has 3"):
        build_cells([], ["8,8,8,8"], [True], ["none"], [1], arch.num_stages, arch.convs_per_block)
    with pytest.raises(UserError, match="--depths: the paper's depth 9 has 4 stages but the configuration has 3"):
        build_cells([9], ["1,1,1"], [True], ["none"], [1], arch.num_stages, arch.convs_per_block)
    assert grid_depths(None, 3) == [] and grid_depths(None, 4) == sorted(VARIANTS) and grid_depths([9], 3) == [9]


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", "--config", "no/such.yaml", "--out_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "vdcnn-res: error: --config 'no/such.yaml': no such file"


@pytest.mark.slow
def test_ablation_end_to_end_writes_tables_and_figure_and_resumes(tmp_path, capsys):
    out = tmp_path / "abl"
    ablate(out, "--depths", "9", "--layouts", "1,1,2,1", "--max_epochs", "1")
    first = rows(out)
    assert [(r["layers"], r["shortcut"]) for r in first] == [("9", "False"), ("9", "True"), ("11", "False"), ("11", "True")]
    for r in first:
        assert r["status"] == "ok" and r["steps"] == "3" and r["epochs"] == "1"
        for key in ("train_loss_final", "train_err_final", "val_err_best", "test_err", "fit_seconds"):
            assert math.isfinite(float(r[key])), key
        assert 0 <= float(r["test_err"]) <= 100 and int(r["params"]) > 0
    assert int(first[1]["params"]) > int(first[0]["params"])  # shortcut on adds the projections
    assert "--early_stopping=null" in first[0]["fit_args"]  # the same budget for every cell
    assert "--model.arch.ngram_orders=[]" in first[0]["fit_args"]  # the shortcut is measured on the CNN alone
    md = (out / "results.md").read_text()
    assert "d9_res_maxpool_seed42" in md and "vdcnn-res ablate" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The written command reproduces a cell: same validation result from a fresh fit.
    cell_args = shlex.split(first[1]["fit_args"])[2:]
    again = tmp_path / "again"
    root = cell_args.index("--trainer.default_root_dir")
    cell_args[root + 1] = str(again)
    cell_args[cell_args.index("--checkpoint.dirpath") + 1] = str(again / "checkpoints")
    capsys.readouterr()
    main(["fit", *cell_args])
    assert f"val/acc={1 - float(first[1]['val_err_best']) / 100:.4f}" in capsys.readouterr().out

    # Re-running the same command retrains nothing; another command is refused, not mixed in.
    capsys.readouterr()
    ablate(out, "--depths", "9", "--layouts", "1,1,2,1", "--max_epochs", "1")
    assert capsys.readouterr().out.count("done earlier") == 4 and rows(out) == first
    with pytest.raises(SystemExit):
        ablate(out, "--depths", "9", "--max_epochs", "2")
    assert "holds a run of another command" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_ablation_resumes_the_cell_where_it_stopped(tmp_path, monkeypatch, capsys):
    out = tmp_path / "abl"

    def power_cut(self, trainer, *args):
        if trainer.current_epoch == 1:  # after epoch 1 and its checkpoints
            raise RuntimeError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(CurveRecorder, "on_train_batch_start", power_cut, raising=False)
        with pytest.raises(RuntimeError, match="power cut"):
            ablate(out, "--depths", "9", "--shortcut", "on", "--max_epochs", "2")
    cell = out / "cells" / "d9_res_maxpool_seed42"
    assert not (cell / "result.json").exists() and (cell / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    ablate(out, "--depths", "9", "--shortcut", "on", "--max_epochs", "2")
    assert "resuming from" in capsys.readouterr().out
    result = json.loads((cell / "result.json").read_text())
    assert result["steps"] == 6 and result["epochs"] == 2
    assert [s for s, _ in result["curve"]] == list(range(1, 7))  # epoch 1's curve came back from last.ckpt


@pytest.mark.slow
def test_a_diverging_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    out = tmp_path / "abl"
    main(["ablate", "--config", "configs/quickstart.yaml", "--out_dir", str(out), "--depths", "9",
          "--shortcut", "off", "--max_epochs", "1", "--", *EXTRA, "--model.optim.lr=1e30"])
    (row,) = rows(out)
    assert row["status"].startswith("failed: the training loss became nan")
    assert row["test_err"] == ""
    assert "failed" in (out / "results.md").read_text()


# --- statistics over seeds -------------------------------------------------------------------------


def _t_cdf_above_zero(t: float, df: int, n: int = 2000) -> float:
    """P(0 < T < t) for Student's t, by Simpson's rule on its density: an independent check of the table."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(x: float) -> float:
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    h = t / n
    return h / 3 * (pdf(0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n)))


@pytest.mark.parametrize("df", [*range(1, 31), 31, 45, 200])
def test_t_quantile_is_the_975_point_of_student_t(df):
    t = t975(df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density_at_t = c * (1 + t * t / df) ** (-(df + 1) / 2)
    # within 1e-4 of the true quantile (the table has 4 decimals)
    assert abs(_t_cdf_above_zero(t, df) - 0.475) <= density_at_t * 1e-4


def test_spread_and_interval_of_known_values():
    s = spread([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean) == (4, 2.5) and s.sd == pytest.approx(math.sqrt(5 / 3))
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])  # R: t.test(1:4)$conf.int = 0.4457397 4.5542603
    assert ci.mean == 2.5 and ci.lo == pytest.approx(0.4457397, abs=1e-4) and ci.hi == pytest.approx(4.5542603, abs=1e-4)
    two = mean_ci([-3.0, 5.0])  # df 1: 1 +- 12.7062 * sqrt(32) / sqrt(2)
    assert two.lo == pytest.approx(1 - 12.7062 * 4) and two.hi == pytest.approx(1 + 12.7062 * 4)
    nan_left_out = spread([math.nan, 2.0, 4.0])
    assert (nan_left_out.n, nan_left_out.mean) == (2, 3.0) and nan_left_out.sd == pytest.approx(math.sqrt(2))


def test_one_value_has_no_spread_and_no_interval_not_zero():
    s, ci = spread([7.5]), mean_ci([7.5])
    assert (s.n, s.mean) == (1, 7.5) and math.isnan(s.sd)
    assert (ci.n, ci.mean) == (1, 7.5) and math.isnan(ci.lo) and math.isnan(ci.hi)
    assert md_interval(ci) == "+7.50 (1 pair: no interval)"
    assert spread([]).n == 0 and md_interval(mean_ci([])) == ""


def test_paired_differences_use_only_seeds_both_finished():
    residual = {1: 10.0, 2: 20.0, 3: math.nan, 5: 1.0}
    plain = {1: 4.0, 2: 25.0, 3: 9.0, 4: 1.0}
    assert paired_differences(residual, plain) == {1: 6.0, 2: -5.0}


def _row(name: str, seed: int, train: float, test: float, status: str = "ok") -> CellResult:
    _, kind, down = name.split("_")
    return CellResult(
        cell=f"{name}_seed{seed}", layers=9, blocks_per_stage="1,1,1,1", shortcut=kind == "res", downsampling=down,
        seed=seed, params=1, steps=3, epochs=1, train_loss_final=1.0, train_loss_best=1.0, train_err_final=train,
        train_err_best=train, val_err_final=train, val_err_best=train, test_err=test, fit_seconds=1.0,
        status=status, fit_args="vdcnn-res fit",
    )  # fmt: skip


def test_tables_show_one_seed_and_failed_seeds_as_such(tmp_path):
    results = [
        _row("d9_plain_maxpool", 1, 60.0, 61.0),
        _row("d9_plain_maxpool", 2, math.nan, math.nan, status="failed: the training loss became nan"),
        _row("d9_res_maxpool", 1, 10.0, 21.0),
        _row("d9_res_maxpool", 2, 12.0, 23.0),
    ]
    write_tables(results, tmp_path, "vdcnn-res ablate ...")
    plain, res = read_csv(tmp_path / "summary.csv")
    assert (plain["seeds"], plain["failed_seeds"], plain["test_err_n"], plain["test_err_sd"]) == ("1", "2", "1", "")
    assert (res["seeds"], res["test_err_mean"], res["test_err_sd"]) == ("1 2", "22", f"{math.sqrt(2):.6g}")
    assert (res["test_err_diff"], res["test_err_diff_n"], res["test_err_diff_lo"], res["test_err_diff_hi"]) == ("-40", "1", "", "")
    md = (tmp_path / "results.md").read_text()
    assert "| 61.00 (1 seed) |" in md and "-40.00 (1 pair: no interval)" in md and "± 0.00" not in md


# --- claims: one worker per cell -------------------------------------------------------------------

CLAIMS_PY = Path(claims.__file__)
# A second process that claims `path` with the same code, without importing the package (fast).
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("claims", sys.argv[1])
claims = sys.modules["claims"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(claims)
print("won" if claims.claim(__import__("pathlib").Path(sys.argv[2])) is None else "lost", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _other_process(path: Path, hold_seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(CLAIMS_PY), str(path), str(hold_seconds)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "won"
    return proc


def test_of_two_claimers_one_wins_and_the_other_learns_who(tmp_path):
    path = tmp_path / "claim.json"
    other = _other_process(path, hold_seconds=30)
    try:
        holder = claims.claim(path)
        me = claims.this_process()
        assert holder == claims.Owner(me.host, other.pid, holder.started, me.machine, me.boot)
        assert json.loads(path.read_text())["pid"] == other.pid
        claims.release(path)  # not ours: left alone
        assert path.is_file()
    finally:
        other.kill()
        other.wait()


def test_racing_claimers_split_the_cells_without_overlap(tmp_path):
    paths = [tmp_path / f"cell{i}.json" for i in range(200)]

    def claimer(_: int) -> list[int]:
        return [i for i, p in enumerate(paths) if claims.claim(p) is None]

    with ThreadPoolExecutor(4) as pool:  # threads share a pid: O_EXCL alone decides
        won = list(pool.map(claimer, range(4)))
    assert sorted(i for w in won for i in w) == list(range(len(paths)))


def test_a_stale_claim_of_a_dead_process_is_reclaimed(tmp_path):
    path = tmp_path / "claim.json"
    dead = _other_process(path, hold_seconds=0)
    dead.wait()
    assert claims.claim(path) is None
    assert json.loads(path.read_text())["pid"] == os.getpid()
    claims.release(path)
    assert not path.exists()


def test_a_reused_pid_is_not_taken_for_the_claimer(tmp_path):
    path = tmp_path / "claim.json"
    me = claims.this_process()
    if me.started is None:
        pytest.skip("no /proc: process start times are unknown here")
    mine = {"host": me.host, "pid": me.pid, "machine": me.machine, "boot": me.boot}
    path.write_text(json.dumps({**mine, "started": "1"}))  # same pid, an older process
    assert claims.claim(path) is None and json.loads(path.read_text())["started"] == me.started


def test_a_claim_from_before_a_reboot_is_reclaimed(tmp_path):
    path = tmp_path / "claim.json"
    me = claims.this_process()
    if me.boot is None:
        pytest.skip("no boot id here")
    path.write_text(json.dumps({**asdict(me), "boot": "an-earlier-boot"}))  # this very pid, but before a reboot
    assert claims.claim(path) is None and json.loads(path.read_text())["boot"] == me.boot


@pytest.mark.parametrize("field", ["host", "machine"])
def test_a_claim_of_another_machine_is_never_broken(tmp_path, field):
    path = tmp_path / "claim.json"
    # A pid no process here has: were the claim taken for this machine's, it would be broken as dead.
    other = {**asdict(claims.this_process()), "pid": 999_999_999, field: "elsewhere.invalid"}
    path.write_text(json.dumps(other))
    assert claims.claim(path) == claims.Owner(**other)
    assert json.loads(path.read_text())[field] == "elsewhere.invalid"


# --- workers: the seeds' claim with error bars -----------------------------------------------------


@pytest.mark.slow
def test_two_workers_train_each_cell_once_and_the_tables_hold_the_seed_statistics(tmp_path, capfd):
    out = tmp_path / "abl"
    ablate(out, "--depths", "9", "--seeds", "1", "2", "--max_epochs", "1", "--workers", "2", "--threads", "1")
    printed = capfd.readouterr().out
    cells = {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}
    assert sorted(cells) == [f"d9_{kind}_maxpool_seed{seed}" for kind in ("plain", "res") for seed in (1, 2)]
    for name, cell in cells.items():
        assert cell["status"] == "ok" and cell["threads"] == 1, name
        assert [p.name for p in (out / "cells" / name / "lightning_logs").iterdir()] == ["version_0"]  # trained once
        assert not (out / "cells" / name / "claim.json").exists()  # released
        assert f"{name} epoch 1/1: train loss" in printed  # the per-epoch progress line, from the workers
    assert "w1]" in printed and "w2]" in printed
    md = (out / "results.md").read_text()
    assert "--workers" not in md.splitlines()[0] and "--seeds 1 2" in md.splitlines()[0]

    # Recompute the group statistics and the paired differences from the cells' own files.
    summary = {row["group"]: row for row in read_csv(out / "summary.csv")}
    for metric in ("train_err_final", "train_err_best", "val_err_final", "val_err_best", "test_err"):
        values = {
            kind: [cells[f"d9_{kind}_maxpool_seed{seed}"][metric] for seed in (1, 2)] for kind in ("plain", "res")
        }
        for kind, xs in values.items():
            row = summary[f"d9_{kind}_maxpool"]
            mean, sd = statistics.mean(xs), statistics.stdev(xs)
            assert float(row[f"{metric}_mean"]) == pytest.approx(mean, rel=1e-5, abs=1e-9)
            assert float(row[f"{metric}_sd"]) == pytest.approx(sd, rel=1e-5, abs=1e-6)
            assert row[f"{metric}_values"] == f"1:{xs[0]:.6g} 2:{xs[1]:.6g}"
            assert f"{mean:.2f} ± {sd:.2f} ({xs[0]:.2f}, {xs[1]:.2f})" in md
        diffs = [r - p for r, p in zip(values["res"], values["plain"])]  # paired by seed
        mean, half = statistics.mean(diffs), 12.7062 * statistics.stdev(diffs) / math.sqrt(2)  # t(0.975, df 1)
        row = summary["d9_res_maxpool"]
        assert row[f"{metric}_diff_n"] == "2"
        assert float(row[f"{metric}_diff"]) == pytest.approx(mean, abs=1e-4)
        assert float(row[f"{metric}_diff_lo"]) == pytest.approx(mean - half, abs=1e-3)
        assert float(row[f"{metric}_diff_hi"]) == pytest.approx(mean + half, abs=1e-3)
        assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]" in md
        assert summary["d9_plain_maxpool"][f"{metric}_diff"] == ""
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same command again starts no worker: every cell is done.
    before = (out / "summary.csv").read_text()
    ablate(out, "--depths", "9", "--seeds", "1", "2", "--max_epochs", "1", "--workers", "2", "--threads", "1")
    printed = capfd.readouterr().out
    assert printed.count("done earlier") == 4 and "worker w1" not in printed
    assert (out / "summary.csv").read_text() == before
