"""A fit killed mid-epoch and resumed from its mid-epoch checkpoint sees exactly the batches it had
not seen yet (Lightning checkpoints the training loader's position: data/sampler.py)."""

import csv

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from vdcnn_res.data import TextDataModule

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS_PER_EPOCH = 10  # 40 rows, batch size 4


class Killed(Exception):
    """Stands for a kill: the run ends at once, nothing more is saved."""


class Recorder(pl.LightningModule):
    """Records the rows of every training batch; raises after ``crash_after`` steps."""

    def __init__(self, vocab_size: int, num_classes: int, crash_after: int | None = None) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 4)
        self.fc = torch.nn.Linear(4, num_classes)
        self.crash_after = crash_after
        self.seen: list[tuple[int, list[int]]] = []

    def training_step(self, batch, _):
        self.seen.append((self.current_epoch, batch["index"].tolist()))
        return torch.nn.functional.cross_entropy(self.fc(self.emb(batch["input_ids"]).mean(1)), batch["labels"])

    def on_train_batch_end(self, *args) -> None:
        if self.crash_after is not None and self.global_step == self.crash_after:
            raise Killed

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, data, *, crash_after=None, ckpt_path=None, every=None, num_workers=0) -> list:
    dm = TextDataModule(train=str(data), valid_fraction=0.0, batch_size=4, max_length=32, num_workers=num_workers)
    module = Recorder(dm.vocab_size, dm.num_classes, crash_after)
    callbacks = [ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1,
                                 filename="{step}")] if every else []
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=bool(every),
                         callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    try:
        trainer.fit(module, dm, ckpt_path=ckpt_path, weights_only=True)
    except Killed:
        assert crash_after is not None
    return module.seen


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("label", "text"), *[("ab"[i % 2], "word " * (i % 9) + str(i)) for i in range(40)]])
    return path


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_mid_epoch_sees_exactly_the_unseen_batches(tmp_path, data, num_workers):
    uninterrupted = fit(tmp_path / "a", data, num_workers=num_workers)
    assert len(uninterrupted) == 2 * STEPS_PER_EPOCH

    interrupted = fit(tmp_path / "b", data, crash_after=6, every=4, num_workers=num_workers)
    assert len(interrupted) == 6  # killed after step 6; the last checkpoint is from step 4
    resumed = fit(tmp_path / "c", data, ckpt_path=tmp_path / "b" / "ckpt" / "step=4.ckpt", num_workers=num_workers)

    assert interrupted[:4] + resumed == uninterrupted  # same batches, same order, none repeated or lost
    first_epoch = [i for e, batch in interrupted[:4] + resumed if e == 0 for i in batch]
    assert sorted(first_epoch) == list(range(40))


def test_resume_from_the_last_batch_of_an_epoch_starts_the_next_epoch_whole(tmp_path, data):
    uninterrupted = fit(tmp_path / "a", data)
    fit(tmp_path / "b", data, crash_after=STEPS_PER_EPOCH + 1, every=STEPS_PER_EPOCH)
    resumed = fit(tmp_path / "c", data, ckpt_path=tmp_path / "b" / "ckpt" / f"step={STEPS_PER_EPOCH}.ckpt")
    assert resumed == uninterrupted[STEPS_PER_EPOCH:]
