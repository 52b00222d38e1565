"""Issue 14, a newcomer's first hour: the recipe is the default, a checkpoint is enough for test and
predict, user mistakes are one line, and nothing foreign is printed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from fixtures.tiny import LABELS, QUIET, REPO, SAMPLE, TINY
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from vdcnn_res.cli import lightning as cli_module
from vdcnn_res.cli import main
from vdcnn_res.cli.lightning import MAX_EPOCHS, PATIENCE, _resolve_best, build_cli, default_precision
from vdcnn_res.errors import UserError
from vdcnn_res.training.progress import EpochSummary

SMALL_MODEL = ["--model.arch.channels=[8, 8, 16, 16]", "--model.arch.hidden_size=16", "--model.arch.ngram_buckets=256"]
SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]

pytestmark = pytest.mark.usefixtures("one_thread", "in_repo")


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    """As from a shell: LightningCLI warns when both sys.argv (pytest's here) and args are given."""
    monkeypatch.setattr(sys, "argv", ["vdcnn-res"])


def write_tsv(path: Path, split: str, n: int, text_column: str = "text", labels: bool = True) -> Path:
    """A TSV with a header and string labels (text<TAB>label), from the bundled sample."""
    with open(SAMPLE / f"{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[:n]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(f"{text_column}\tlabel\n" if labels else f"{text_column}\n")
        for label, title, description in rows:
            text = f"{title} {description}".replace("\t", " ").replace('"', "'")
            f.write(f"{text}\t{LABELS[int(label) - 1]}\n" if labels else f"{text}\n")
    return path


def errors(args: list, capsys) -> tuple[int, list[str]]:
    return run_cli(args, capsys)


# ----------------------------------------------------------------------------- 1, 2: the recipe and budget are the defaults


@pytest.mark.parametrize("native", [True, False], ids=["native bf16", "no native bf16"])
def test_only_data_paths_give_the_recommended_recipe(native, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_module, "native_bf16", lambda device: native)
    train, valid = write_tsv(tmp_path / "train.tsv", "train", 64), write_tsv(tmp_path / "valid.tsv", "valid", 16)
    cli = build_cli(["--data.train", str(train), "--data.valid", str(valid), "--trainer.logger=false",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    optim = cli.model.optim
    assert (optim.name, optim.lr, optim.weight_decay, optim.schedule, optim.warmup_fraction) == (
        "adamw", 1e-3, 0.05, "cosine", 0.05)
    assert cli.model.hparams.label_smoothing == 0.1
    data = cli.datamodule.hparams
    assert (data.batch_size, data.max_length, data.batching, data.tokenizer) == (32, 512, "bucket", "char")
    assert cli.trainer.precision == ("bf16-mixed" if native else "32-true")
    # the adaptive budget: early stopping on validation accuracy, capped at MAX_EPOCHS
    assert cli.trainer.max_epochs == MAX_EPOCHS
    stopping = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert len(stopping) == 1
    assert (stopping[0].monitor, stopping[0].mode, stopping[0].patience) == ("val/acc", "max", PATIENCE)
    assert any(isinstance(c, EpochSummary) for c in cli.trainer.callbacks)
    assert cli.model.label_names == ["Business", "Sci/Tech", "Sports", "World"]  # string labels, sorted


def test_default_precision_follows_the_device(monkeypatch):
    asked = []
    monkeypatch.setattr(cli_module, "native_bf16", lambda device: asked.append(device.type) or device.type == "cpu")
    assert default_precision("cpu") == "bf16-mixed"
    assert default_precision("gpu") == "32-true" and asked[-1] == "cuda"
    assert default_precision("auto") == ("32-true" if torch.cuda.is_available() else "bf16-mixed")


def test_fixed_budget_configs_turn_early_stopping_off_and_an_explicit_precision_stays(tmp_path):
    cli = build_cli([*TINY, "--early_stopping=null", "--trainer.max_epochs=3", "--trainer.precision=bf16-mixed",
                     "--trainer.logger=false", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert not any(isinstance(c, EarlyStopping) for c in cli.trainer.callbacks)
    assert cli.trainer.max_epochs == 3 and cli.trainer.precision == "bf16-mixed"
    for config in ("ablation/ag_news_7600.yaml", "ablation/dbpedia14_14k.yaml", "paper/recipe.yaml", "shared/clinc150.yaml"):
        assert "early_stopping" in yaml.safe_load((REPO / "configs" / config).read_text())


def test_without_validation_data_the_budget_is_the_cap(tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", "train", 64)
    cli = build_cli(["--data.train", str(train), "--data.valid_fraction=0", "--trainer.logger=false",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert not any(isinstance(c, EarlyStopping) for c in cli.trainer.callbacks)  # nothing to watch
    assert f"No validation data: no early stopping, training runs {MAX_EPOCHS} epochs" in capsys.readouterr().err


def test_a_step_budget_shorter_than_one_epoch_is_no_crash(tmp_path, one_thread):
    """max_steps can end fit before the first validation: early stopping then has nothing to judge."""
    main(["fit", *TINY, *QUIET, "--trainer.max_steps=2", "--trainer.logger=false",
          "--trainer.default_root_dir", str(tmp_path)])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_the_cosine_schedule_ends_at_the_cap(tmp_path):
    # min_delta=1: accuracy can never improve by 1, so patience 1 stops after the second validation
    root = tmp_path / "stopped"
    main(["fit", *TINY, *QUIET, *SHORT, "--trainer.max_epochs=5", "--early_stopping.min_delta=1.0",
          "--early_stopping.patience=1", "--trainer.logger=false", "--trainer.default_root_dir", str(root)])
    stopped = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert stopped["global_step"] == 6  # 2 of 5 epochs
    assert min(stopped["lr_schedulers"][0]["_last_lr"]) > 1e-4  # stopped mid-schedule (it spans the cap)

    root = tmp_path / "full"  # not stopped: the schedule reaches zero exactly at the cap
    main(["fit", *TINY, *QUIET, *SHORT, "--trainer.max_epochs=2", "--trainer.logger=false",
          "--trainer.default_root_dir", str(root)])
    full = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert full["global_step"] == 6
    assert max(full["lr_schedulers"][0]["_last_lr"]) < 1e-12


# ----------------------------------------------------------------------------- 5: --ckpt_path best


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


def test_ckpt_path_best_is_the_best_checkpoint_of_the_newest_run(tmp_path):
    _touch(tmp_path / "lightning_logs/version_0/checkpoints/best-epoch=03-step=40.ckpt", 1000)
    newest = _touch(tmp_path / "lightning_logs/version_1/checkpoints/best-epoch=01-step=20.ckpt", 2000)
    _touch(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt", 2100)
    assert _resolve_best(str(tmp_path)) == str(newest)
    with pytest.raises(UserError, match="--ckpt_path best: no best-"):
        _resolve_best(str(tmp_path / "elsewhere"))


def test_ckpt_path_best_with_no_earlier_run_is_one_line(tmp_path, capsys):
    code, err = errors(["test", *TINY, "--ckpt_path", "best", "--trainer.default_root_dir", tmp_path], capsys)
    assert code == 2 and len(err) == 1 and "--ckpt_path best: no best-*.ckpt under" in err[0], err


# ----------------------------------------------------------------------------- 6: no checkpoints


def test_enable_checkpointing_false_is_honoured(tmp_path):
    cli = build_cli([*TINY, "--trainer.enable_checkpointing=false", "--trainer.logger=false",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert not any(isinstance(c, ModelCheckpoint) for c in cli.trainer.callbacks)
    assert cli.trainer.checkpoint_callback is None


# ----------------------------------------------------------------------------- 7: typos


@pytest.mark.parametrize(
    "args, line",
    [
        (["--data.batchsize", "3"], "unknown config key data.batchsize; did you mean data.batch_size?"),
        (["--data.batchsize=3"], "unknown config key data.batchsize; did you mean data.batch_size?"),
        (["--config", "TYPO"], "unknown config key data.max_lenght; did you mean data.max_length?"),
        (["--zzzz.qqqq=1"], "unknown config key zzzz.qqqq; `vdcnn-res fit --help` lists every key"),
    ],
)
def test_a_typo_is_one_line_with_a_suggestion(args, line, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  max_lenght: 100\n")
    args = [typo if a == "TYPO" else a for a in args]
    code, err = errors(["fit", *args], capsys)
    assert code == 2
    assert err == [f"vdcnn-res: error: {line}"]


# ----------------------------------------------------------------------------- 4: --help


def test_help_has_no_foreign_remarks(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # help lines are wrapped
    assert "lacks type and help" not in out
    assert "linked from data.num_classes, never typed" in out


# ----------------------------------------------------------------------------- 10: exported file modes


def test_exported_files_share_the_normal_mode(ckpt, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(tmp_path / "model")])
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "model").iterdir()}
    assert set(modes) == {"model.safetensors", "config.json", "tokenizer.json", "README.md"}
    assert set(modes.values()) == {0o666 & ~umask}, modes


# ----------------------------------------------------------------------------- 3, 4, 8, 9: the first hour, end to end


FOREIGN = [
    "Traceback", "litlogger", "litmodels", "LeafSpec", "not supported by the model summary", "Generating train split",
    "dirpath has changed", "callbacks used to create the checkpoint", "to estimate number of stepping batches",
    "site-packages",  # where any other library warning would point
]


def _vdcnn(cwd: Path, *args: object) -> tuple[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "vdcnn_res.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for word in FOREIGN:
        assert word not in proc.stdout + proc.stderr, (word, proc.stdout, proc.stderr)
    return proc.stdout, proc.stderr


@pytest.mark.slow
def test_fit_then_test_and_predict_with_the_checkpoint_alone(tmp_path):
    write_tsv(tmp_path / "train.tsv", "train", 352)  # 11 batches of 32
    write_tsv(tmp_path / "valid.tsv", "valid", 40)
    write_tsv(tmp_path / "test.tsv", "test", 40)
    write_tsv(tmp_path / "texts.tsv", "test", 30, text_column="sentence", labels=False)

    out, err = _vdcnn(tmp_path, "fit", "--data.train", "train.tsv", "--data.valid", "valid.tsv", "--data.test",
                      "test.tsv", "--data.tokenizer=learned", "--data.max_length=100", *SMALL_MODEL,
                      "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false")
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], out
    assert all("train loss" in line and "val acc" in line and "macro-F1" in line for line in epochs)
    assert "Best checkpoint (val/acc=" in out
    assert "FLOPs per text of 100 characters" in err
    run = tmp_path / "lightning_logs" / "version_0"
    (tmp_path / "train.tsv").unlink()  # test and predict never read the training data again
    (tmp_path / "valid.tsv").unlink()

    out, err = _vdcnn(tmp_path, "test", "--ckpt_path", "best", "--data.test", "test.tsv",
                      "--trainer.enable_progress_bar=false")
    assert "Test error:" in out and "on 40 texts" in out
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    assert f"Best checkpoint of the newest run: {best}" in err
    assert (run / "test" / best.stem / "confusion_matrix_test.png").is_file()

    _vdcnn(tmp_path, "predict", "--ckpt_path", run / "checkpoints" / "last.ckpt", "--data.predict", "texts.tsv",
           "--data.text_columns=[sentence]", "--trainer.enable_progress_bar=false")
    predicted = run / "predict" / "last"
    rows = [json.loads(line) for line in (predicted / "predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(30))
    assert {r["label"] for r in rows} <= set(LABELS)
    used = yaml.safe_load((predicted / "config.yaml").read_text())["data"]
    assert used["max_length"] == 100 and used["train"] is None  # the checkpoint's, not the default 512
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # versions count fits

