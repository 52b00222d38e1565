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

Slim best checkpoints: the ``best-*.ckpt`` files that :class:`ModelCheckpointWithLast` keeps
for the monitored metric hold what test, predict, export, calibrate and the Predictor read
(weights, the calibration, the tokenizer and label names in the data module's state, both
hyperparameter sets): Lightning's ``save_weights_only`` format, without the optimizer,
scheduler, callback and precision states (AdamW's two moments per weight are two thirds of a
full text checkpoint: sizes in docs/sharing.md). ``last.ckpt`` stays complete: it is what ``--ckpt_path last``
resumes. A slim file given to ``fit --ckpt_path`` is refused in one line
(:func:`require_resumable`); older full best checkpoints keep loading everywhere.
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

from vdcnn_res.errors import UserError

__all__ = ["AtomicCheckpointIO", "ModelCheckpointWithLast", "atomic_torch_save", "is_slim", "require_resumable"]


def is_slim(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint holds a model without its training state (a slim best checkpoint,
    or any Lightning ``save_weights_only`` file): it loads for test/predict/export, not for resume."""
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint and "optimizer_states" not in checkpoint


def require_resumable(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A one-line UserError when ``fit --ckpt_path`` is given a checkpoint without optimizer state."""
    if is_slim(checkpoint):
        last = Path(path).with_name("last.ckpt")
        raise UserError(
            f"--ckpt_path {str(path)!r} is a slim checkpoint (weights, tokenizer, labels, calibration: for test, predict "
            f"and export) without the optimizer state fit resumes from; resume with --ckpt_path last"
            + (f" ({str(last)!r})" if last.is_file() else "")
        )


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

    ``slim_best`` (default True; ``--checkpoint.slim_best false`` turns it off): the top-k files
    chosen by the monitored metric are written without the training state (see the module
    docstring); ``last.ckpt`` and every other save stay complete. With ``save_last="link"`` (last
    would be a link to a best file) the best files stay complete too.
    """

    def __init__(self, *, slim_best: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slim_best = slim_best
        self._saving_best = False

    def _update_best_and_save(self, current: torch.Tensor, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        self._saving_best = True
        try:
            super()._update_best_and_save(current, trainer, monitor_candidates)
        finally:
            self._saving_best = False

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        slim = self.slim_best and self._saving_best and self.save_last != "link" and not self.save_weights_only
        if not slim:
            super()._save_checkpoint(trainer, filepath)
            return
        self.save_weights_only = True  # Lightning's own weights-only dump for this one file
        try:
            super()._save_checkpoint(trainer, filepath)
        finally:
            self.save_weights_only = False

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
