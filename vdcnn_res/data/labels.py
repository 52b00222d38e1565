"""The label table: class names, and the rule that maps the raw label values of any split to ids.

Names come, in this order, from ``data.classes_file``, a `ClassLabel` feature, or the training
split: integer labels ``0..K-1`` after ``data.label_offset``, else the sorted distinct strings.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from vdcnn_res.errors import MissingFileError, UserError

__all__ = ["LabelTable", "int_labels", "read_classes", "stratified_split"]

_INT_LABEL = re.compile(r"^\s*[+-]?\d+\s*$")
_TRAIN = "the training split"


class LabelTable:
    """Label names (index = id) and the rule that maps raw label values to ids.

    ``source`` says where the names come from, for error messages.
    """

    def __init__(self, names: list[str], offset: int, source: str = _TRAIN) -> None:
        self.names = names
        self.offset = offset
        self.source = source
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def from_train(
        cls, train: datasets.Dataset, column: str, offset: int, classes: list[str] | None, classes_source: str
    ) -> tuple[LabelTable, set[int]]:
        """The table for a training split (``classes``: the names of data.classes_file, if any)
        and the ids that occur in it; a single-class split is an error."""
        names, source = classes, classes_source if classes else _TRAIN
        feature = train.features[column]
        uniques = train.unique(column)
        if any(u is None for u in uniques):
            raise UserError(f"the train split has rows without a label in column {column!r}")
        if isinstance(feature, datasets.ClassLabel):
            if offset:
                raise UserError(f"data.label_offset must be 0: column {column!r} is a ClassLabel (0-based)")
            if names is None:
                names, source = list(feature.names), f"the ClassLabel feature {column!r}"
        elif names is None:
            ints = int_labels(uniques)
            if ints is not None:
                ids = sorted(i - offset for i in ints)
                missing = sorted(set(range(ids[-1] + 1)) - set(ids))
                if ids[0] < 0 or missing:
                    raise UserError(
                        f"integer labels must be 0..K-1 after data.label_offset={offset}, "
                        f"found {ids[0] + offset}..{ids[-1] + offset}"
                        f"{f' without {missing[:10]}' if missing else ''}; set data.label_offset or data.classes_file"
                    )
                names = [str(i + offset) for i in range(ids[-1] + 1)]
            else:
                names = sorted(str(u) for u in uniques)
        table = cls(names, offset, source)
        trained = set(table.lookup(train, column, "train split", None).values())
        if len(trained) < 2:
            raise UserError(
                f"the training split has a single class ({table.names[trained.pop()]!r}); a classifier needs at least two"
            )
        return table, trained

    def lookup(self, ds: datasets.Dataset, column: str, where: str, trained: set[int] | None) -> dict[Any, int]:
        """Raw value -> id for every distinct value of ``ds[column]``; errors name the bad value.

        With ``trained`` (the ids of the training split) classes without a training example
        are warned about.
        """
        feature = ds.features[column]
        uniques = ds.unique(column)
        if any(u is None for u in uniques):
            raise UserError(f"the {where} has rows without a label in column {column!r}")
        is_classlabel = isinstance(feature, datasets.ClassLabel)
        as_names = [feature.int2str(u) for u in uniques] if is_classlabel else uniques
        ints = None if is_classlabel else int_labels(as_names)
        table: dict[Any, int] = {}
        for raw, value in zip(uniques, ints if ints is not None else as_names):
            table[raw] = self._id(raw, value, where, is_int=ints is not None)
        if trained is not None:
            untrained = sorted({self.names[i] for i in table.values() if i not in trained})
            if untrained:
                warnings.warn(f"the {where} has classes with no training example: {', '.join(untrained)}", stacklevel=2)
        return table

    def _id(self, raw: Any, value: Any, where: str, is_int: bool) -> int:
        if is_int:
            label = value - self.offset
            if not 0 <= label < len(self.names):
                raise UserError(
                    f"label {raw!r} in the {where} is outside the {len(self.names)} classes "
                    f"(ids 0..{len(self.names) - 1} after data.label_offset={self.offset}); "
                    "check data.label_offset or data.classes_file"
                )
            return label
        if str(value) in self.index:
            return self.index[str(value)]
        shown = ", ".join(self.names[:20]) + (", ..." if len(self.names) > 20 else "")
        if self.source == _TRAIN:
            problem = f"never occurs in the training split (classes: {shown})"
        else:
            problem = f"is none of the {len(self.names)} classes of {self.source} ({shown})"
        raise UserError(f"label {value!r} in the {where} {problem}; fix the data or list every class in data.classes_file")


def int_labels(values: list[Any]) -> list[int] | None:
    """The values as ints if they all are integers (CSV cells arrive as digit strings), else None."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return [int(v) for v in values]
    if all(isinstance(v, str) and _INT_LABEL.match(v) for v in values):
        return [int(v) for v in values]
    if any(isinstance(v, float) for v in values):
        raise UserError("labels are floats; use integer or string labels")
    return None


def read_classes(path: str) -> list[str]:
    """The class names of a classes file: one per line, line 1 = id 0."""
    if not os.path.isfile(os.path.expanduser(path)):
        raise MissingFileError(f"data.classes_file: file not found: {path!r}")
    with open(os.path.expanduser(path), encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise UserError(f"data.classes_file {path!r} must list >= 2 distinct, non-empty class names, one per line")
    return names


def stratified_split(labels: Sequence[Any], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, valid): ``round(fraction * n_c)`` random rows of each class go to valid."""
    _, inverse = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    rng = np.random.default_rng(seed)
    valid: list[np.ndarray] = []
    for c in range(inverse.max() + 1):
        rows = np.flatnonzero(inverse == c)
        valid.append(rng.permutation(rows)[: int(round(fraction * len(rows)))])
    valid_rows = np.sort(np.concatenate(valid))
    if len(valid_rows) == 0:
        valid_rows = np.sort(rng.permutation(len(labels))[:1])
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[valid_rows] = False
    return np.flatnonzero(train_mask), valid_rows
