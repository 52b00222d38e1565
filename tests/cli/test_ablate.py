"""`vdcnn-res ablate` on the bundled sample: the grid, the tables, the figure, resuming, errors."""

import csv
import json
import math
import shlex
from pathlib import Path

import pytest

from fixtures.tiny import TINY
from vdcnn_res.cli.ablate.grid import Cell, build_cells
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


def rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "results.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_grid_covers_every_variant_and_layout_once_with_and_without_shortcut():
    cells = build_cells(sorted(VARIANTS), ["8,8,8,8", "8,8,8,8"], [False, True], ["maxpool", "conv"], [1, 2])
    assert len(cells) == (len(VARIANTS) + 1) * 2 * 2 * 2
    assert len({c.name for c in cells}) == len(cells)
    for depth, layout in VARIANTS.items():
        assert Cell(layout, True, "maxpool", 1, depth).layers == depth  # the paper's depth = conv layers
    assert Cell((8, 8, 8, 8), False, "kmax", 3).layers == 65


@pytest.mark.parametrize(
    ("args", "words"),
    [((10,), "--depths"), ((9, ["8,8"]), "--layouts"), ((9, ["a,b,c,d"]), "--layouts"),
     ((9, [], ["avgpool"]), "--downsampling")],
)
def test_bad_grids_name_the_option(args, words):
    depths, layouts, kinds = [args[0]], (args[1] if len(args) > 1 else []), (args[2] if len(args) > 2 else ["maxpool"])
    with pytest.raises(UserError, match=words):
        build_cells(depths, layouts, [True], kinds, [42])


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
