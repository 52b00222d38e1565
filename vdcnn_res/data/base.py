"""What every data module of the package shares: Lightning's hooks over length-bucketed splits.

A subclass says how a split is read and encoded (`_split`, returning an object with `lengths`
and `labels`) and how a batch is padded (`_collator`); this base turns splits into loaders: the
length-bucket batch sampler (shuffled, sharded across DDP ranks, resumable mid-epoch), the
class-balanced draw when asked for, and a plain sorted sampler for prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader

from vdcnn_res.data.files import FORMATS
from vdcnn_res.data.labels import LabelTable, read_classes
from vdcnn_res.data.sampler import LengthBucketBatchSampler, ResumableDataLoader, SortedSampler
from vdcnn_res.data.sources import DEFAULT_HUB_SPLITS, SPLITS, SplitSources
from vdcnn_res.errors import UserError

__all__ = ["BucketedDataModule"]


class BucketedDataModule(LightningDataModule):
    """Lightning hooks and loaders over `self._sources` (a SplitSources) and `self._split(name)`.

    Under DDP the module shards its own batches: run the Trainer with use_distributed_sampler=False.
    """

    _sources: Any
    _labels: Any = None  # LabelTable, built on first use
    _trained_ids: Any = None

    def check_shared_settings(self) -> None:
        """The checks of the settings every data module has (``self.hparams``: save_hyperparameters first)."""
        h = self.hparams
        if not 0.0 <= h.valid_fraction < 1.0:
            raise UserError(f"data.valid_fraction must be in [0, 1), got {h.valid_fraction}")
        if h.missing_labels not in ("error", "drop"):
            raise UserError(f"data.missing_labels must be 'error' or 'drop', got {h.missing_labels!r}")
        if h.batching not in ("bucket", "fixed"):
            raise UserError(f"data.batching must be 'bucket' or 'fixed', got {h.batching!r}")

    def check_file_format(self) -> None:
        """data.file_format is one of :data:`~vdcnn_res.data.files.FORMATS` or None (inferred)."""
        if self.hparams.file_format is not None and self.hparams.file_format not in FORMATS:
            raise UserError(f"data.file_format must be one of {', '.join(FORMATS)}, got {self.hparams.file_format!r}")

    def split_sources(self, **settings: Any) -> SplitSources:
        """Where each split comes from: the paths, hub and reading settings every data module has
        (from ``self.hparams``) and the subclass's own ``settings`` (its columns and the like)."""
        h = self.hparams
        unknown_splits = set(h.hub_splits or {}) - set(SPLITS)
        if unknown_splits:
            raise UserError(f"data.hub_splits: unknown keys {sorted(unknown_splits)}; use {', '.join(SPLITS)}")
        return SplitSources(
            paths={split: h[split] for split in ("train", "valid", "test", "predict")},
            hub_splits={**DEFAULT_HUB_SPLITS, **(h.hub_splits or {})},
            hub_dataset=h.hub_dataset,
            hub_config=h.hub_config,
            file_format=h.file_format,
            label_column=h.label_column,
            valid_fraction=h.valid_fraction,
            seed=h.seed,
            cache_dir=h.cache_dir,
            missing_labels=h.missing_labels,
            **settings,
        )

    def _split(self, split: str) -> Any:
        raise NotImplementedError

    def _collator(self) -> Any:
        raise NotImplementedError

    @property
    def label_names(self) -> list[str]:
        """Class names, index = label id."""
        return list(self._label_table().names)

    @property
    def num_classes(self) -> int:
        return len(self._label_table().names)

    @property
    def class_counts(self) -> np.ndarray:
        """Training examples per class (index = label id), e.g. for balanced class weights."""
        return np.bincount(self._split("train").labels, minlength=self.num_classes)

    def _label_table(self) -> LabelTable:
        """Label names from data.classes_file, a ClassLabel feature or the training labels (once)."""
        if self._labels is not None:
            return self._labels
        hp = self.hparams
        names = read_classes(hp.classes_file) if hp.classes_file else None
        classes_source = f"data.classes_file {hp.classes_file!r}"
        train = self._sources.get("train") if self._sources.has("train") else None
        if train is None:
            if names is None:
                raise UserError(
                    "the label names are unknown without a training split: set data.train (or data.hub_dataset), "
                    "data.classes_file, or load them from a checkpoint"
                )
            self._labels = LabelTable(names, hp.label_offset, classes_source)
            return self._labels
        self._labels, self._trained_ids = LabelTable.from_train(
            train, hp.label_column, hp.label_offset, names, classes_source
        )
        return self._labels

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ["train", "valid"],
            "validate": ["valid"],
            "test": ["test"],
            "predict": ["predict"],
            None: [s for s in SPLITS if self._sources.has(s)],
        }[stage]
        for split in wanted:
            # An optional split without data (no validation, no test in a hub dataset) is skipped;
            # an explicitly requested one raises in its dataloader.
            if (stage is None or split == "valid") and self._sources.get(split) is None:
                continue
            self._split(split)

    def train_dataloader(self) -> DataLoader:
        # Lightning cannot see that our batch sampler shuffles; with overfit_batches it must not.
        overfit = self.trainer is not None and bool(getattr(self.trainer, "overfit_batches", 0))
        return self._loader("train", shuffle=not overfit)

    def val_dataloader(self) -> DataLoader | list:
        if self._sources.get("valid") is None:
            return []  # valid_fraction=0 and no valid split: Lightning skips validation
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        split = self._split("predict")
        replicas, rank = self._replicas(predicting=True)
        # A plain sampler + batch_size (not our batch sampler): Lightning's predict loop
        # re-creates the BatchSampler to track indices, which only works for the stock class.
        return DataLoader(
            split,
            sampler=SortedSampler(split.lengths, num_replicas=replicas, rank=rank),
            batch_size=self._eval_batch_size,
            collate_fn=self._collator(),
            num_workers=self.hparams.num_workers,
        )

    # ------------------------------------------------------------------ loaders

    @property
    def _eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or self.hparams.batch_size

    def _replicas(self, predicting: bool = False) -> tuple[int, int]:
        """(world size, rank) to shard by; (1, 0) outside a Trainer or when Lightning shards."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return 1, 0
        connector = getattr(trainer, "_accelerator_connector", None)
        if getattr(connector, "use_distributed_sampler", False):
            if predicting:  # Lightning wraps our sampler in an unrepeated distributed one
                return 1, 0
            raise UserError(
                f"{type(self).__name__} shards its own length-bucketed batches across processes; "
                "set trainer.use_distributed_sampler=false"
            )
        return trainer.world_size, trainer.global_rank

    def _loader(self, split_name: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        split = self._split(split_name)
        replicas, rank = self._replicas()
        balance = shuffle and split_name == "train" and hp.get("sampling", "natural") == "balanced"
        if balance:
            absent = [name for name, n in zip(self.label_names, self.class_counts) if n == 0]
            if absent:
                raise UserError(
                    f"data.sampling=balanced: class(es) {absent} have no training texts, so they cannot be drawn; "
                    "add training texts for them, remove them from data.classes_file, or use data.sampling=natural"
                )
        sampler = LengthBucketBatchSampler(
            split.lengths,
            hp.batch_size if shuffle else self._eval_batch_size,
            bucket=hp.batching == "bucket",
            shuffle=shuffle,
            seed=hp.seed,
            num_replicas=replicas,
            rank=rank,
            pool_batches=hp.pool_batches,
            balance_labels=split.labels if balance else None,
        )
        # Resumable: Lightning checkpoints the training loader's position (mid-epoch resume).
        return ResumableDataLoader(
            split,
            batch_sampler=sampler,
            collate_fn=self._collator(),
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )
