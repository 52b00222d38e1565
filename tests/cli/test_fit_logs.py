"""What a run prints, read as a user reads it (issue 38, points 1, 4, 5, 7, 8): a redirected log of
fit, test and predict; the epoch lines' (best) and names; early stopping; seeds and precision."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fixtures.tiny import QUIET, REPO, SAMPLE, TINY
from vdcnn_res.cli import main
from vdcnn_res.cli.lightning import build_cli
from vdcnn_res.model.config import ModelConfig
from vdcnn_res.training.checkpointing import ModelCheckpointWithLast
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.progress import EpochSummary

SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
         "--trainer.limit_predict_batches=1"]  # fmt: skip
EPOCH = re.compile(r"^epoch (\d+)/(\d+)  steps \d+  train loss [\d.]+ acc [\d.]+ %  (.*)$")


# ----------------------------------------------------------------------------- a redirected log


@pytest.mark.slow
def test_a_redirected_log_has_no_bar_frames_and_one_message_per_line(tmp_path):
    """`vdcnn-res fit ... > fit.log 2>&1` as a user runs it: no carriage returns or cursor codes,
    the epoch lines are the progress, (best) names the saved epoch, test and predict reuse the
    training seed and print each message on a line of its own."""
    exe = str(Path(sys.executable).with_name("vdcnn-res"))
    root = ["--trainer.default_root_dir", str(tmp_path)]

    def run(*args: str, log: str) -> str:
        with open(tmp_path / log, "w") as out:
            subprocess.run([exe, *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=300)
        return (tmp_path / log).read_text(encoding="utf-8")

    fit = run("fit", *TINY, *SHORT, *root, "--trainer.max_epochs=3", "--seed_everything=3", log="fit.log")
    assert "\r" not in fit and "\x1b" not in fit, "progress-bar frames in a redirected log"
    epochs = [EPOCH.match(line) for line in fit.splitlines() if line.startswith("epoch ")]
    assert [int(m.group(1)) for m in epochs if m] == [1, 2, 3], fit
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    best = next(checkpoints.glob("best-*.ckpt")).name
    marked = [int(m.group(1)) for m in epochs if m.group(3).endswith("(best)")]
    assert best.startswith(f"best-epoch={marked[-1]:02d}-"), (best, marked)  # one epoch numbering
    assert "Seed set to 3" in fit and re.search(r"^Best checkpoint \(val/acc=[\d.]+\): \S+best-epoch=", fit, re.M)

    test = run("test", "--ckpt_path", "best", *root, "--data.test", str(SAMPLE / "test.csv"), *SHORT, log="test.log")
    assert "\r" not in test and "Seed set to 3" in test  # the training run's seed, not 42
    assert re.search(r"^Test error: [\d.]+ % \(accuracy [\d.]+ % on 32 texts\), macro-F1 [\d.]+ %$", test, re.M), test
    assert re.search(r"^Each branch alone \(the other's weight 0\): CNN [\d.]+ %, n-gram bag [\d.]+ % \(the model", test, re.M)
    assert re.search(r"^Worst classes by F1: ", test, re.M) and re.search(r"^Per-class scores: \S+per_class_test.csv$", test, re.M)
    assert "test/f1/" not in test and "test/loss" not in test  # no table of 2 rows per class

    predict = run("predict", "--ckpt_path", "best", *root, "--data.predict", str(SAMPLE / "test.csv"), *SHORT,
                  log="predict.log")
    assert "\r" not in predict and re.search(r"^Predictions \(16 rows\): \S+$", predict, re.M), predict


# ----------------------------------------------------------------------------- epoch lines


class _Tiny(pl.LightningDataModule):
    """Three fixed batches of random token ids; `train_as_valid` as the series data module has it."""

    def __init__(self, train_as_valid: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(0)
        self.batches = []
        for _ in range(3):
            lengths = torch.randint(10, 33, (12,), generator=g)
            ids = torch.randint(2, 20, (12, 32), generator=g)
            ids[torch.arange(32)[None, :] >= lengths[:, None]] = 0
            self.batches.append({"input_ids": ids, "lengths": lengths, "labels": torch.arange(12) % 3})

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.batches[:2], batch_size=None)


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("epoch ", "Early stopping"))]


def test_best_follows_the_checkpoints_metric_and_silent_epochs_show_no_old_numbers(tmp_path, capsys):
    """A val/loss (min) checkpoint validated every 2nd epoch on the training split (the series recipe's setup)."""
    torch.manual_seed(0)
    module = VDCNNClassifier(ModelConfig(num_classes=3, vocab_size=20, channels=(8, 8, 16, 16), hidden_size=16))
    checkpoint = ModelCheckpointWithLast(dirpath=tmp_path, monitor="val/loss", mode="min", filename="best-{epoch:02d}")
    trainer = pl.Trainer(max_epochs=6, check_val_every_n_epoch=2, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[EpochSummary(chance_warning_after=0), checkpoint])  # fmt: skip
    trainer.fit(module, datamodule=_Tiny(train_as_valid=True))
    lines = _lines(capsys)
    assert [EPOCH.match(line).group(1) for line in lines] == ["1", "2", "3", "4", "5", "6"]
    for line in lines[0::2]:  # epochs 1, 3, 5 did not validate: nothing of an earlier validation
        assert "val" not in line and "train-eval" not in line and "(best)" not in line, line
    for line in lines[1::2]:  # validated on the training split: named for what it is, with the loss (b) follows
        assert re.search(r"  train-eval loss [\d.]+ acc [\d.]+ % macro-F1 [\d.]+ %  ", line), line
    marked = [int(EPOCH.match(line).group(1)) for line in lines if line.endswith("(best)")]
    saved = int(re.search(r"epoch=(\d+)", Path(checkpoint.best_model_path).name).group(1))
    assert marked and marked[-1] == saved  # the marked epoch is the saved one (epochs from 1 in both)
    losses = [float(re.search(r"train-eval loss ([\d.]+)", line).group(1)) for line in lines[1::2]]
    assert min(losses) == pytest.approx(losses[saved // 2 - 1], abs=1e-4)  # ... and it has the lowest val/loss


def test_early_stopping_says_that_it_ended_the_run(tmp_path, capsys, in_repo):
    main(["fit", *TINY, *QUIET, *SHORT, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs=3",
          "--early_stopping.stopping_threshold=0.0"])  # fmt: skip # any accuracy >= 0: stops after the 1st epoch
    lines = _lines(capsys)
    assert len(lines) == 2 and lines[0].startswith("epoch 1/3 ") and lines[0].endswith("(best)"), lines
    assert re.fullmatch(r"Early stopping ended the run after epoch 1/3: Stopping threshold reached: val/acc = "
                        r"[\d.]+ >=? 0\.0\. Best epoch: 1 \(val/acc [\d.]+ %\)\.", lines[1]), lines[1]


# ----------------------------------------------------------------------------- seeds and precision


@pytest.mark.parametrize("args, seed", [(["--seed_everything=5"], 5), (["--seed_everything=5", "--data.seed=9"], 9),
                                        ([], 42), (["--seed_everything=false"], 42)])
def test_data_seed_follows_seed_everything_unless_set(args, seed, in_repo):
    cli = build_cli([*TINY, *QUIET, "--trainer.max_steps=1", *args], run=False)
    assert cli.datamodule.hparams.seed == seed


@pytest.mark.usefixtures("in_repo")
def test_test_evaluates_in_the_training_precision_with_the_training_seed(ckpt, tmp_path, monkeypatch):
    """A 32-true checkpoint on a machine whose default is bf16-mixed is tested in 32-true; one trained
    in bf16-mixed there, in bf16-mixed; a set --trainer.precision wins. The seed is the run's."""
    import vdcnn_res.cli.lightning as cli_module

    monkeypatch.setattr(cli_module, "default_precision", lambda accelerator="auto": "bf16-mixed")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["run"]["precision"] == "32-true"
    bf16 = tmp_path / "bf16.ckpt"
    torch.save({**saved, "run": {"precision": "bf16-mixed", "seed": 11}}, bf16)
    args = ["--data.test", str(SAMPLE / "test.csv"), *QUIET, "--trainer.limit_test_batches=1"]
    for path, extra, expected in ((ckpt, [], "32-true"), (bf16, [], "bf16-mixed"), (bf16, ["--trainer.precision=32-true"], "32-true")):
        cli = build_cli(["test", "--ckpt_path", str(path), *args, *extra])
        assert cli.trainer.precision == expected, (path.name, extra)
    assert cli.config.test.seed_everything == 11  # the training run's seed, not 42
    cli = build_cli(["test", "--ckpt_path", str(bf16), *args, "--seed_everything=4"])
    assert cli.config.test.seed_everything == 4  # set by the user: kept
    assert math.isfinite(float(cli.trainer.callback_metrics["test/acc"]))
