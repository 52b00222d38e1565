"""Checkpoint files that are either the old version or the new one, never half written;
and a ``last.ckpt`` that really is the last state (see :class:`ModelCheckpointWithLast`).

Lightning 2.6 (``lightning_fabric.utilities.cloud_io._atomic_save``) serializes to memory and
writes through an ``fsspec`` transaction: the bytes go to a temporary file from
``tempfile.mkstemp()`` (the system temp folder) that ``shutil.move`` moves over the target.
That move is an atomic rename only when the temp folder and the checkpoint folder share a
filesystem; otherwise it copies into the target, so a kill during the copy leaves a truncated
``last.ckpt``. Nothing is fsynced either. :class:`AtomicCheckpointIO` writes next to the target,
fsyncs, and renames with ``os.replace``: a kill at any moment leaves the previous file intact
(at worst a stray ``.<name>.tmp-<pid>`` beside it). `vdcnn-res` installs it on every Trainer
whose checkpoint IO is Lightning's default; remote URLs keep Lightning's own code.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["AtomicCheckpointIO", "ModelCheckpointWithLast", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the target's folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # serialize fully before touching the disk
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are write-then-rename (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


class ModelCheckpointWithLast(ModelCheckpoint):
    """ModelCheckpoint whose ``save_last=True`` writes ``last.ckpt`` at every save point.

    Since Lightning 2.6.0, ``save_last=True`` writes ``last.ckpt`` only when a top-k checkpoint is
    written at the same step, i.e. when the monitored metric improves: ``last.ckpt`` is then a
    copy of the best model, a killed run resumes from its last improvement, and the "last"
    checkpoint of a finished run is not its end state. This restores the earlier behaviour:
    after each validation (or training epoch, when there is no validation) ``last.ckpt`` holds
    the current state. When the final epochs are not validated (``check_val_every_n_epoch``
    that does not divide ``max_epochs``), the end of training writes it once more, so their
    training is not lost. `vdcnn-res` uses it for its ``checkpoint.*`` settings.
    """

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_yet(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_not_yet(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_not_yet(trainer)

    def _save_last_if_not_yet(self, trainer: pl.Trainer) -> None:
        # _should_skip_saving_checkpoint is also true when a checkpoint (and so last) was saved at this step
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
