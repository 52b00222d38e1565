"""Robustness (issue 8): bad input ends in one actionable line, odd texts are handled, a diverging
or killed run loses no good checkpoint, seeded runs repeat exactly, untrusted files run nothing.

Cases already covered elsewhere (not repeated here): nonexistent path, unsupported extension,
missing columns, unseen/out-of-range labels, single-class train split, empty split
(tests/test_data.py, test_error_*); unknown depth, bad lr (tests/test_cli.py); garbage, foreign,
resized and malicious checkpoints (tests/test_predict.py); tampered, truncated or incomplete
exports (tests/test_export.py); NUL/CJK/emoji/huge texts in the tokenizer (tests/test_tokenizer.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from conftest import RunsCode, run_cli
from fixtures.tiny import QUIET, REPO, SAMPLE, TINY

from vdcnn_res import Predictor
from vdcnn_res.training.checkpointing import AtomicCheckpointIO
from vdcnn_res.cli import main
from vdcnn_res.model.config import ModelConfig
from vdcnn_res.data import TextDataModule
from vdcnn_res.errors import UserError
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.optim import OptimConfig

pytestmark = pytest.mark.usefixtures("one_thread", "in_repo")  # tests/conftest.py

SHORT = ["--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
         "--trainer.max_epochs=1"]
GOOD_ROWS = b"label,text\n" + b"".join(b"%s,row %d about %s\n" % (c, i, c) for i, c in enumerate([b"a", b"b"] * 10))
ODD_TEXTS = {
    "empty": "",
    "whitespace only": " \t  ",
    "one million characters": "x" * 1_000_000,
    "NUL inside": "before\x00after",
    "emoji": "rocket 🚀 launch 👩‍🚀",
    "CJK": "日本語のニュース 中文新闻 한국어",
    "right-to-left": "مرحبا بالعالم שלום עולם",
}



def cli(*args, capsys) -> tuple[int, list[str]]:
    """Exit status (0 when main returns) and stderr lines of one `vdcnn-res` call."""
    return run_cli(args, capsys)


# ----------------------------------------------------------------------------- bad data files (Python API)


def _files(tmp_path, contents: dict[str, bytes]) -> dict[str, str]:
    paths = {}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        paths[name.split(".")[0]] = str(tmp_path / name)
    return paths


DATA_CASES = [
    # id, files ({split}.{ext}: bytes), expected error (regex)
    ("csv not UTF-8", {"train.csv": GOOD_ROWS + b"a,caf\xe9 latin-1\n"},
     r"data\.train: '.*train\.csv' is not UTF-8 text \(it holds byte 0xe9\): re-save it as UTF-8, e\.g\. `iconv"),
    ("tsv not UTF-8", {"train.tsv": GOOD_ROWS.replace(b",", b"\t") + b"a\tcaf\xe9\n"},
     r"data\.train: '.*train\.tsv' is not UTF-8 text"),
    ("jsonl not UTF-8", {"train.jsonl": b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n'},
     r"data\.train: '.*train\.jsonl' is not UTF-8 text: re-save it as UTF-8"),
    ("valid not UTF-8", {"train.csv": GOOD_ROWS, "valid.csv": b"label,text\na,\xff\xfe\n"},
     r"'.*valid\.csv' is not UTF-8 text"),
    ("binary file named .csv", {"train.csv": bytes(range(128, 256)) * 20}, r"'.*train\.csv' is not UTF-8 text"),
    ("corrupt parquet", {"train.parquet": b"PAR1 this is not parquet"},
     r"data\.train: could not read parquet file\(s\) '.*train\.parquet'"),
    ("header only", {"train.csv": b"label,text\n"}, r"the train split \(data\.train=.*\) has no rows"),
    ("empty file", {"train.csv": b""}, r"the train split \(data\.train=.*\) has no rows"),
]


@pytest.mark.parametrize("files, words", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data_files_are_one_line_user_errors(tmp_path, files, words):
    paths = _files(tmp_path, files)
    with pytest.raises(UserError, match=words) as err:
        dm = TextDataModule(**paths, text_columns=["text"], valid_fraction=0.0 if "valid" in paths else 0.2)
        dm.setup("fit")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_user_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(GOOD_ROWS)
    path.chmod(0)
    with pytest.raises(UserError, match="train.csv"):
        TextDataModule(train=str(path), text_columns=["text"]).num_classes


def test_odd_texts_train_and_predict_finite(tmp_path, ckpt):
    """Empty, blank, huge, NUL, emoji, CJK and right-to-left texts are kept (not dropped, not errors):
    truncated to max_length, unknown characters become <unk>, an empty text is all padding."""
    import csv

    rows = [(label, text) for text in ODD_TEXTS.values() for label in ("a", "b")]
    with open(tmp_path / "train.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("label", "text"), *rows, *[(r[0], f"plain {i}") for i, r in enumerate(rows)]])
    dm = TextDataModule(train=str(tmp_path / "train.csv"), text_columns=["text"], valid_fraction=0.0, max_length=64)
    dm.setup("fit")
    model = VDCNNClassifier(ModelConfig(channels=(8, 8, 16, 16), hidden_size=16, num_classes=dm.num_classes,
                                        vocab_size=dm.vocab_size, padding_idx=dm.padding_idx))
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["lengths"].max() <= 64
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["lengths"])
        assert torch.isfinite(logits).all()
        seen += len(batch["labels"])
    assert seen == 2 * len(rows)
    probs = Predictor.from_checkpoint(ckpt).predict_proba(list(ODD_TEXTS.values()))
    assert probs.shape == (len(ODD_TEXTS), 4) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- the command line


def _six_class_csv(tmp_path, ckpt) -> Path:
    path = tmp_path / "six.csv"
    path.write_text("".join(f'{1 + i % 6},"title {i}","text {i}"\n' for i in range(20)), encoding="utf-8")
    return path


def _truncated(tmp_path, ckpt) -> Path:
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    return path


def _flipped(tmp_path, ckpt) -> Path:
    """Garbage over the zip's central directory. (Bytes flipped inside tensor data are NOT detected:
    torch.load checks no checksum, so such a file loads with wrong weights; see the issue note.)"""
    data = bytearray(ckpt.read_bytes())
    data[-200:] = bytes(range(200))
    path = tmp_path / "corrupted.ckpt"
    path.write_bytes(bytes(data))
    return path


def _typo_config(tmp_path, ckpt) -> Path:
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  arch:\n    dephth: 9\n")
    return path


def _latin1_train(tmp_path, ckpt) -> Path:
    path = tmp_path / "latin1.csv"
    path.write_bytes("1,café,crème brûlée\n2,naïve,façade\n".encode("latin-1"))
    return path


# id, arguments (callables get (tmp_path, ckpt)), words the last stderr line must contain
CLI_CASES = [
    ("unknown key", ["--model.arch.dephth=9"], "unknown config key model.arch.dephth; did you mean model.arch.depth?"),
    ("unknown key in a config file", ["--config", _typo_config], "dephth"),
    ("wrong type", ["--data.batch_size=abc"], "Got value: abc"),
    ("stage layout and channels disagree", ["--model.arch.blocks_per_stage=[1, 1]"], "one entry per stage"),
    ("data path is a folder", ["--data.train", "data"], "'data' is a folder"),
    ("data not UTF-8", ["--data.train", _latin1_train], "is not UTF-8 text"),
    ("truncated checkpoint", ["--ckpt_path", _truncated], "cannot read checkpoint"),
    ("corrupted checkpoint", ["--ckpt_path", _flipped], "cannot read checkpoint"),
    ("test data with classes the checkpoint does not know",
     ["--ckpt_path", lambda tmp, ck: ck, "--data.test", _six_class_csv, "--data.classes_file=null"],
     "in the test split is outside the 4 classes"),
    ("another tokenizer than the checkpoint's",
     ["--ckpt_path", lambda tmp, ck: ck, "--data.tokenizer=byte"],
     "data.tokenizer='byte' but the checkpoint was trained with 'char'"),
    ("--ckpt_path last with no earlier run", ["--ckpt_path", "last"], "--ckpt_path last: no last.ckpt under"),
    ("diverging learning rate", ["--model.optim.lr=1e30", "--model.optim.schedule=constant"],
     "the training loss became nan at step"),
]


@pytest.mark.parametrize("args, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_errors_are_one_line_and_exit_2(args, words, tmp_path, ckpt, capsys):
    args = [a(tmp_path, ckpt) if callable(a) else a for a in args]
    subcommand = "test" if "--ckpt_path" in args and "last" not in args else "fit"
    code, err = cli(subcommand, *TINY, *QUIET, *SHORT, "--trainer.default_root_dir", tmp_path / "run", *args,
                    capsys=capsys)
    assert code == 2, err
    assert words in err[-1], err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    if "became nan" in words:  # the diverged weights were never written
        assert not list((tmp_path / "run").rglob("*.ckpt"))


# ----------------------------------------------------------------------------- divergence keeps good checkpoints


class _BlowUp(pl.Callback):
    """From the second epoch on, a learning rate that makes the weights, and so the loss, non-finite."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 1e30


def _sample_data(**kwargs) -> TextDataModule:
    return TextDataModule(train=str(SAMPLE / "train.csv"), valid=str(SAMPLE / "valid.csv"),
                          column_names=["label", "title", "description"], text_columns=["title", "description"],
                          label_offset=1, classes_file=str(SAMPLE / "classes.txt"), max_length=128, batch_size=16,
                          **kwargs)


def test_divergence_stops_the_run_and_never_overwrites_good_checkpoints(tmp_path):
    pl.seed_everything(0)
    dm = _sample_data()
    model = VDCNNClassifier(
        ModelConfig(channels=(8, 8, 16, 16), hidden_size=16, num_classes=dm.num_classes, vocab_size=dm.vocab_size,
                    padding_idx=dm.padding_idx),
        OptimConfig(name="adamw", lr=1e-3, schedule="constant"), label_names=dm.label_names)
    # save_on_exception=True would write the diverged weights on the way out: the module refuses.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True,
                                 filename="best-{epoch}-{step}", save_on_exception=True)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=3, limit_val_batches=2, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint, _BlowUp()],
                         plugins=[AtomicCheckpointIO()])
    with pytest.raises(UserError, match=r"the training loss became (nan|inf|-inf) at step [34] \(epoch 1\): training "
                                        r"stopped without saving these weights; lower model\.optim\.lr.*--ckpt_path "):
        trainer.fit(model, datamodule=dm)
    files = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert files == ["best-epoch=0-step=3.ckpt", "last.ckpt"]
    for name in files:
        saved = torch.load(tmp_path / name, weights_only=True)
        assert saved["global_step"] == 3
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    probs = Predictor.from_checkpoint(tmp_path / "last.ckpt").predict_proba(["Stocks rallied.", "The striker scored."])
    assert np.isfinite(probs).all()


# ----------------------------------------------------------------------------- same seed, same run


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_weights(tmp_path, capsys):
    results = []
    for run in ("a", "b"):
        root = tmp_path / run
        code, _ = cli("fit", *TINY, *QUIET, "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2",
                      "--trainer.max_epochs=1", "--trainer.logger=false", "--seed_everything=42",
                      "--trainer.default_root_dir", root, capsys=capsys)
        assert code == 0
        results.append(torch.load(root / "checkpoints" / "last.ckpt", weights_only=True))
    a, b = results
    assert a["global_step"] == b["global_step"] == 5
    scores = [next(v for k, v in r["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_score"]
              for r in results]
    assert scores[0] is not None and torch.equal(scores[0], scores[1])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


# ----------------------------------------------------------------------------- a killed run resumes


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_planned_step_count(tmp_path, capsys):
    steps = 60
    plan = [*TINY, *QUIET, "--trainer.max_epochs=1", f"--trainer.limit_train_batches={steps}",
            "--trainer.val_check_interval=10", "--trainer.limit_val_batches=2", "--trainer.default_root_dir", tmp_path,
            "--early_stopping=null"]  # validations every 10 steps: patience could end the plan early
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(tmp_path / "first_run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vdcnn_res.cli", "fit", *map(str, plan)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # mid-epoch, right after the first checkpoint
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first_run.log").read_text()[-2000:]
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 10 <= killed_at < steps

    code, err = cli("fit", *plan, "--ckpt_path", "last", capsys=capsys)
    assert code == 0, err
    assert f"Resuming from {last}" in err
    resumed = tmp_path / "lightning_logs" / "version_1" / "checkpoints"
    final = torch.load(resumed / "last.ckpt", weights_only=True)
    assert final["global_step"] == steps
    best = sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/best-*.ckpt"))
    assert best
    probs = Predictor.from_checkpoint(best[-1]).predict_proba(["Stocks rallied after the Fed decision."])
    assert np.isfinite(probs).all()


# ----------------------------------------------------------------------------- untrusted files


def test_pickles_hidden_in_an_export_folder_are_never_read(ckpt, tmp_path, monkeypatch):
    """An exported folder is read as safetensors + JSON only: extra files (pickles named like
    PyTorch weights) are ignored, and nothing in the folder can run code."""
    out = tmp_path / "model"
    main(["export", "--ckpt_path", str(ckpt), "--out_dir", str(out)])
    marker = tmp_path / "PWNED"
    for name in ("pytorch_model.bin", "model.pt", "model.ckpt", "training_args.pkl", "optimizer.pt"):
        with open(out / name, "wb") as f:
            pickle.dump(RunsCode(str(marker)), f)
    config = json.loads((out / "config.json").read_text())
    config["architecture"]["__reduce__"] = "os.system"  # a key that is not a ModelConfig field
    (tmp_path / "tampered").mkdir()
    shutil.copytree(out, tmp_path / "tampered", dirs_exist_ok=True)
    (tmp_path / "tampered" / "config.json").write_text(json.dumps(config))

    def forbidden(*args, **kwargs):
        raise AssertionError("loading an exported folder must not unpickle anything")

    for module, name in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, forbidden)
    assert Predictor.from_pretrained(out).predict("Stocks rallied.")["label"]
    with pytest.raises(UserError, match=r"unknown architecture key\(s\) \['__reduce__'\]"):
        Predictor.from_pretrained(tmp_path / "tampered")
    assert not marker.exists()
