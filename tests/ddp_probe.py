"""A callback the DDP test loads into `vdcnn-res` subprocesses: records what each rank saw."""

import json
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn


class RecordBatches(pl.Callback):
    """Writes, per rank, the row indices of every training batch and the validation metrics."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train_batches: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train_batches.append(batch["index"].tolist())

    def _dump(self, trainer, stage: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "world_size": trainer.world_size,
            "train_batches": self.train_batches,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        path = self.out_dir / f"{stage}_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, "fit")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # the `validate` subcommand, not fit's val loop
            self._dump(trainer, "validate")
