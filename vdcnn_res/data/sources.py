"""Where each split comes from: local files (``data.train`` ...) or a hub dataset, checked.

:class:`SplitSources` loads each raw split once, checks its columns, refuses or drops rows
without a label (``data.missing_labels``), refuses to validate on the test data, and carves the
validation split out of train when none is given.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import datasets
import numpy as np

from vdcnn_res.data.files import NoRows, infer_format, load_files, locate_row, read_header, resolve_files
from vdcnn_res.data.labels import label_key, label_set, missing_label_rows, stratified_split
from vdcnn_res.errors import UserError

__all__ = ["DEFAULT_HUB_SPLITS", "SPLITS", "SplitSources"]

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test", "predict")
DEFAULT_HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}


@dataclass
class SplitSources:
    """The raw (untokenized) splits of a data module's settings, loaded lazily and cached.

    ``paths`` maps every split in :data:`SPLITS` to a file path or glob (or None);
    ``hub_splits`` is already merged with :data:`DEFAULT_HUB_SPLITS`; the other fields are the
    `TextDataModule` settings of the same names (a series module passes its series column as
    ``text_columns`` and ``column_arg="data.series_column"``).
    """

    paths: dict[str, str | None]
    hub_dataset: str | None
    hub_config: str | None
    hub_splits: dict[str, str]
    file_format: str | None
    column_names: list[str] | None
    text_columns: list[str]
    label_column: str
    valid_fraction: float
    seed: int
    cache_dir: str | None
    missing_labels: str = "error"
    column_arg: str = "data.text_columns"  # the setting that names the input columns, for messages
    multilabel: bool = False  # label cells hold label sets (data.task=multilabel)
    label_separator: str = "|"  # ... split at this in CSV/TSV strings
    _hub: datasets.DatasetDict | None = field(default=None, init=False, repr=False)
    _raw: dict[str, datasets.Dataset | None] = field(default_factory=dict, init=False, repr=False)
    # split -> (files, format, column names) as read, to say in which file a row is
    _read: dict[str, tuple[list[str], str, list[str] | None]] = field(default_factory=dict, init=False, repr=False)
    # split -> (the split it was read as, its rows there) for splits that dropped or carved rows
    _origin: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict, init=False, repr=False)

    def has(self, split: str) -> bool:
        """Whether the split has a source (without loading it, except a hub's split list)."""
        if self.paths[split] is not None:
            return True
        if self.hub_dataset is None or split not in self.hub_splits:
            return False
        return split in ("train", "valid") or self.hub_splits[split] in self._hub_dict()

    def describe(self, split: str) -> str:
        """The split's source as the user set it, for messages."""
        if self.paths[split] is not None:
            return f"data.{split}={self.paths[split]!r}"
        return f"hub dataset {self.hub_dataset!r} split {self.hub_splits.get(split)!r}"

    def get(self, split: str) -> datasets.Dataset | None:
        """The raw split, checked, or None without a source; train and valid after carving."""
        if split in self._raw:
            return self._raw[split]
        if split in ("train", "valid"):
            train, valid = self._checked("train"), self._checked("valid")
            if train is not None and valid is None and self.valid_fraction > 0:
                train, valid = self._carve(train)
            self._raw["train"], self._raw["valid"] = train, valid
        else:
            self._raw[split] = self._checked(split)
        return self._raw[split]

    def require(self, split: str) -> datasets.Dataset:
        """The raw split; an error saying which setting to add when it has no source."""
        ds = self.get(split)
        if ds is None:
            hint = {"valid": "data.valid or data.valid_fraction > 0"}.get(split, f"data.{split}=path/to/{split}.csv")
            raise UserError(f"no {split} split: set {hint}")
        return ds

    def _checked(self, split: str) -> datasets.Dataset | None:
        """The split as loaded, its columns checked and (labelled splits) its missing labels handled."""
        ds = self._load(split)
        if ds is None:
            return None
        self._check_columns(ds, split)
        if split != "predict":
            ds = self._without_missing_labels(ds, split)
        return ds

    def _without_missing_labels(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        rows = missing_label_rows(ds, self.label_column, self.multilabel)
        if len(rows) == 0:
            return ds
        problem = (
            f"{len(rows)} of {len(ds)} rows of the {split} split have no label in column {self.label_column!r} "
            f"(empty, null or missing; first: {self._locate(split, int(rows[0]))})"
        )
        if self.missing_labels != "drop":
            raise UserError(f"{problem}; fill them in, or set data.missing_labels=drop to skip such rows")
        if len(rows) == len(ds):
            raise UserError(f"{problem}: no labelled row is left; check data.label_column")
        warnings.warn(f"dropped {problem} (data.missing_labels=drop)", stacklevel=2)
        keep = np.ones(len(ds), dtype=bool)
        keep[rows] = False
        self._origin[split] = (split, np.flatnonzero(keep))
        return ds.select(np.flatnonzero(keep))

    def locate(self, split: str, row: int) -> str:
        """Where row ``row`` (0-based, as loaded) of a split lies, for messages."""
        return self._locate(split, row)

    def _locate(self, split: str, row: int) -> str:
        """Where a row of a split lies: the file and its data row number (from 1), for messages."""
        if split in self._origin and row < len(self._origin[split][1]):
            split, rows = self._origin[split]
            row = int(rows[row])
        if split not in self._read:
            return f"row {row + 1} of {self.describe(split)}"
        files, fmt, names = self._read[split]
        return locate_row(files, fmt, names, self.cache_dir, row)

    def _carve(self, train: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        key = self._label_set_key if self.multilabel else label_key
        labels = [key(v) for v in train[self.label_column]]
        train_rows, valid_rows = stratified_split(labels, self.valid_fraction, self.seed)
        if len(train_rows) == 0:
            raise UserError("data.valid_fraction leaves no training rows; lower it or give data.valid")
        log.info("validation: %d of %d training rows (seed %d)", len(valid_rows), len(train), self.seed)
        kept = self._origin.get("train", ("train", np.arange(len(train))))[1]
        self._origin["train"], self._origin["valid"] = ("train", kept[train_rows]), ("train", kept[valid_rows])
        return train.select(train_rows), train.select(valid_rows)

    def _label_set_key(self, value: object) -> str:
        """A label set as one stratum for carving (sorted; a bad cell is reported later, with its row)."""
        try:
            labels = label_set(value, self.label_separator)
        except (ValueError, UserError):
            return repr(value)
        return "\x1f".join(sorted(labels)) if labels is not None else ""

    def _hub_dict(self) -> datasets.DatasetDict:
        if self._hub is None:
            try:
                loaded = datasets.load_dataset(self.hub_dataset, self.hub_config, cache_dir=self.cache_dir)
            except Exception as err:  # offline, unknown name, bad config: many exception types
                raise UserError(
                    f"could not load hub dataset {self.hub_dataset!r}"
                    f"{f' (config {self.hub_config!r})' if self.hub_config else ''}: the hub is unreachable "
                    f"or the name is wrong ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                    "to use local files instead set data.train=path/to/train.csv (and data.valid, data.test)"
                ) from err
            if not isinstance(loaded, datasets.DatasetDict):
                raise UserError(f"hub dataset {self.hub_dataset!r} did not load as a dict of splits")
            self._hub = loaded
        return self._hub

    def _load(self, split: str) -> datasets.Dataset | None:
        """The split as loaded, or None when it has no source."""
        if self.paths[split] is not None:
            return self._load_local(split)
        if self.hub_dataset is None or split not in self.hub_splits:
            return None
        hub = self._hub_dict()
        name = self.hub_splits[split]
        if split == "valid" and name == self.hub_splits.get("test"):
            raise UserError("data.hub_splits maps valid and test to the same split; validate on a split other than test")
        if name not in hub:
            if split == "train":
                raise UserError(
                    f"hub dataset {self.hub_dataset!r} has no split {name!r} (it has {', '.join(hub)}); set data.hub_splits"
                )
            return None
        return hub[name]

    def _load_local(self, split: str) -> datasets.Dataset:
        arg = f"data.{split}"
        files = resolve_files(self.paths[split], arg)
        fmt = self.file_format or infer_format(files, arg)
        if split == "valid" and self.paths["test"] is not None:
            if files == resolve_files(self.paths["test"], "data.test"):
                raise UserError("data.valid and data.test are the same file(s); validate on a split other than test")
        try:
            names = self._predict_column_names(files, fmt) if split == "predict" else self.column_names
            self._read[split] = (files, fmt, names)
            return load_files(files, fmt, names, self.cache_dir, arg)
        except NoRows:
            raise UserError(f"the {split} split ({self.describe(split)}) has no rows") from None

    def _predict_column_names(self, files: list[str], fmt: str) -> list[str] | None:
        """data.column_names for a predict file, which may lack the label column, or None
        when the file names its own columns.

        A CSV/TSV file whose first row equals data.column_names, with or without the label
        column, has a header and is read with it; a header-less one with one field fewer than
        data.column_names gets the names without the label. JSON and Parquet name their columns.
        """
        names = self.column_names
        if not names or fmt not in ("csv", "tsv"):
            return None
        first_row = read_header(files[0], fmt)
        unlabelled = [n for n in names if n != self.label_column]
        if first_row in (names, unlabelled):
            return None
        if self.label_column in names and len(first_row) == len(unlabelled):
            return unlabelled
        return names

    def _check_columns(self, ds: datasets.Dataset, split: str) -> None:
        needed = [(self.column_arg, c) for c in self.text_columns]
        if split != "predict":
            needed.append(("data.label_column", self.label_column))
        for arg, column in needed:
            if column not in ds.column_names:
                raise UserError(
                    f"{arg}: no column {column!r} in the {split} split ({self.describe(split)}); its columns are: "
                    f"{', '.join(map(str, ds.column_names))} (for header-less CSV/TSV files set data.column_names)"
                )
        if len(ds) == 0:
            raise UserError(f"the {split} split ({self.describe(split)}) has no rows")
