"""vdcnn_res.training.checkpointing: write-then-rename saves, a last.ckpt that is the last state, `--ckpt_path last`."""

from __future__ import annotations

import os
import time

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from test_module import _Batches, _module
from fixtures.tiny import QUIET, REPO, TINY
from vdcnn_res.training import checkpointing
from vdcnn_res.training.checkpointing import AtomicCheckpointIO, ModelCheckpointWithLast, atomic_torch_save
from vdcnn_res.cli.lightning import VDCNNCLI, _resolve_last
from vdcnn_res.data import TextDataModule
from vdcnn_res.errors import UserError
from vdcnn_res.training.module import VDCNNClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class _HalfWriter:
    """A file that takes half of the bytes, then fails (a full disk or a kill in the middle of the write)."""

    def __init__(self, path, mode, error):
        self.f = open(path, mode)
        self.error = error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        data = bytes(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise self.error

    def fileno(self):
        return self.f.fileno()

    def flush(self):
        self.f.flush()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_failing_midway_leaves_the_previous_file_intact(tmp_path, monkeypatch, error):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"global_step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(checkpointing, "open", lambda p, m: _HalfWriter(p, m, error), raising=False)
    with pytest.raises(type(error)):
        AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial temporary file is gone
    monkeypatch.undo()
    AtomicCheckpointIO().save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2


def test_last_ckpt_is_the_last_state_even_without_improvement(tmp_path):
    """Lightning 2.6 writes last.ckpt only with a new top-k checkpoint; ours writes it at every validation."""
    steps = {}
    for cls in (ModelCheckpoint, ModelCheckpointWithLast):
        # monitor "epoch" with mode "min": only the first epoch is ever "best"
        callback = cls(dirpath=tmp_path / cls.__name__, monitor="epoch", mode="min", save_last=True)
        trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[callback], plugins=[AtomicCheckpointIO()])
        trainer.fit(_module(), datamodule=_Batches())
        assert trainer.global_step == 9
        steps[cls.__name__] = torch.load(callback.last_model_path, weights_only=True)["global_step"]
        assert torch.load(callback.best_model_path, weights_only=True)["global_step"] == 3
    assert steps == {"ModelCheckpoint": 3, "ModelCheckpointWithLast": 9}  # the first documents Lightning 2.6


def test_last_ckpt_holds_the_epochs_after_the_last_validation(tmp_path):
    """Validating every 2nd of 3 epochs: the end of training still writes last.ckpt at the final step."""
    callback = ModelCheckpointWithLast(dirpath=tmp_path, monitor="epoch", mode="min", save_last=True)
    trainer = pl.Trainer(max_epochs=3, check_val_every_n_epoch=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback], plugins=[AtomicCheckpointIO()])
    trainer.fit(_module(), datamodule=_Batches())
    assert trainer.global_step == 9
    assert torch.load(callback.last_model_path, weights_only=True)["global_step"] == 9
    assert torch.load(callback.best_model_path, weights_only=True)["global_step"] == 6  # the one validation


def test_the_cli_trainer_saves_atomically_and_keeps_last(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = VDCNNCLI(VDCNNClassifier, TextDataModule, run=False, auto_configure_optimizers=False,
                   args=[*TINY, *QUIET, "--trainer.default_root_dir", str(tmp_path)])
    assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert type(cli.trainer.checkpoint_callback) is ModelCheckpointWithLast


def test_ckpt_path_last_finds_the_newest_last_ckpt_of_earlier_runs(tmp_path):
    with pytest.raises(UserError, match="no last.ckpt under"):
        _resolve_last(str(tmp_path))
    paths = [tmp_path / "lightning_logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in (0, 1, 10)]
    paths.append(tmp_path / "checkpoints" / "last.ckpt")  # --trainer.logger=false layout
    now = time.time()
    for age, path in zip((30, 10, 20, 40), paths):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    assert _resolve_last(str(tmp_path)) == str(paths[1])  # newest, not the highest version number


# ----------------------------------------------------------------------------- slim best checkpoints

_TRAINING_STATE = {"optimizer_states", "lr_schedulers", "callbacks"}


def _fit_once(tmp_path, **callback_args):
    callback = ModelCheckpointWithLast(**{"dirpath": tmp_path, "monitor": "epoch", "mode": "max", "save_last": True, **callback_args})
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback], plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path)  # test's files too
    trainer.fit(_module(label_names=["x", "y", "z"]), datamodule=_Batches())
    return trainer, callback


def test_best_is_slim_and_last_is_complete(tmp_path):
    trainer, callback = _fit_once(tmp_path)
    best = torch.load(callback.best_model_path, weights_only=True)
    last = torch.load(callback.last_model_path, weights_only=True)
    assert best["global_step"] == last["global_step"] == 3  # one validation: best and last hold the same weights
    assert _TRAINING_STATE <= set(last) and not _TRAINING_STATE & set(best)
    assert checkpointing.is_slim(best) and not checkpointing.is_slim(last)
    assert best["hyper_parameters"] == last["hyper_parameters"] and best["hyper_parameters"]["label_names"] == ["x", "y", "z"]
    assert best["state_dict"].keys() == last["state_dict"].keys()
    for key, value in last["state_dict"].items():
        assert torch.equal(best["state_dict"][key], value), key
    assert os.path.getsize(callback.best_model_path) < os.path.getsize(callback.last_model_path)
    # ... and it is what test and load_from_checkpoint need
    assert trainer.test(ckpt_path=callback.best_model_path, datamodule=_Batches(), verbose=False, weights_only=True)
    restored = VDCNNClassifier.load_from_checkpoint(callback.best_model_path, weights_only=True)
    assert restored.label_names == ["x", "y", "z"]


@pytest.mark.parametrize("callback_args", [{"slim_best": False}, {"save_last": "link"}], ids=["slim_best=False", "last is a link"])
def test_best_stays_complete_when_asked_or_when_last_links_to_it(tmp_path, callback_args):
    _, callback = _fit_once(tmp_path, **callback_args)
    assert _TRAINING_STATE <= set(torch.load(callback.best_model_path, weights_only=True))


def test_fit_refuses_to_resume_a_slim_checkpoint_in_one_line(tmp_path, monkeypatch, capsys):
    from vdcnn_res.cli import main

    _, callback = _fit_once(tmp_path)
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *TINY, *QUIET, "--ckpt_path", callback.best_model_path, "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a slim checkpoint" in err[0]
    assert f"resume with --ckpt_path last ({str(tmp_path / 'last.ckpt')!r})" in err[0]
    with pytest.raises(UserError, match="slim checkpoint"):  # the function behind it, on any weights-only file
        checkpointing.require_resumable({"state_dict": {}}, tmp_path / "x.ckpt")
    checkpointing.require_resumable(torch.load(callback.last_model_path, weights_only=True), callback.last_model_path)
