"""The label table: class names, and the rule that maps the raw label values of any split to ids.

Names come, in this order, from ``data.classes_file``, a `ClassLabel` feature, or the training
split: integer labels ``0..K-1`` after ``data.label_offset``, else the sorted distinct strings.

A label cell stands for :func:`label_key` of its value: strings without surrounding whitespace
(reported once per split), integers, ``true``/``false`` for booleans. An empty or blank cell, a
null, a missing key or a ClassLabel ``-1`` is a missing label (see :func:`missing_label_rows`);
floats, lists and objects are errors.

Multi-label data (``data.task=multilabel``, :func:`label_set`): a cell holds a label set, a
list (JSON/JSONL/Parquet) or a string split at ``data.label_separator`` (CSV/TSV); an empty
list or an empty string is the empty set, a null or missing key a missing label. Names are
strings: ``classes_file``, a list-of-ClassLabel feature, or the sorted union of the training
labels. An empty label inside a set, a label listed twice, or a training label that is other
labels joined by another separator are one-line errors.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from vdcnn_res.errors import MissingFileError, UserError

__all__ = [
    "SEPARATOR_CANDIDATES",
    "LabelSetError",
    "LabelTable",
    "int_labels",
    "is_missing_label",
    "label_ids",
    "label_key",
    "label_set",
    "label_sets",
    "missing_label_rows",
    "read_classes",
    "stratified_split",
]

_INT_LABEL = re.compile(r"^\s*[+-]?[0-9]+\s*$")  # ASCII digits: '٣' stays a string label
_TRAIN = "the training split"
# Separators a multi-label file may use; a label that is known labels joined by one of them
# means data.label_separator is set wrong.
SEPARATOR_CANDIDATES = ("|", ",", ";", "/", "+", "\t")


class LabelTable:
    """Label names (index = id) and the rule that maps raw label values to ids.

    ``source`` says where the names come from, for error messages.
    """

    def __init__(self, names: list[str], offset: int, source: str = _TRAIN) -> None:
        self.names = names
        self.offset = offset
        self.source = source
        self.index = {n: i for i, n in enumerate(names)}
        self._reported: set[str] = set()  # splits whose stripped labels were reported

    @classmethod
    def from_train(
        cls, train: datasets.Dataset, column: str, offset: int, classes: list[str] | None, classes_source: str
    ) -> tuple[LabelTable, set[int]]:
        """The table for a training split (``classes``: the names of data.classes_file, if any)
        and the ids that occur in it; a single-class split is an error."""
        names, source = classes, classes_source if classes else _TRAIN
        feature = train.features[column]
        keys = _distinct(train, column, None)  # lookup() below reports stripped whitespace
        if isinstance(feature, datasets.ClassLabel):
            if offset:
                raise UserError(f"data.label_offset must be 0: column {column!r} is a ClassLabel (0-based)")
            if names is None:
                names, source = list(feature.names), f"the ClassLabel feature {column!r}"
        elif names is None:
            ints = int_labels(sorted(keys, key=repr))
            if ints is not None:
                ids = sorted({i - offset for i in ints})
                if ids[0] < 0 or ids[-1] != len(ids) - 1:
                    present = set(ids)  # the first few gaps, without listing up to a huge label
                    missing = list(itertools.islice((i for i in range(max(ids[-1], 0)) if i not in present), 10))
                    raise UserError(
                        f"integer labels must be 0..K-1 after data.label_offset={offset}, "
                        f"found {ids[0] + offset}..{ids[-1] + offset}"
                        f"{f' without {missing}' if missing else ''}; set data.label_offset or data.classes_file"
                    )
                names = [str(i + offset) for i in range(ids[-1] + 1)]
            else:
                names = sorted({str(k) for k in keys})
                _warn_case_variants(names)
        table = cls(names, offset, source)
        trained = set(table.lookup(train, column, "train split", None).values())
        if len(trained) < 2:
            raise UserError(
                f"the training split has a single class ({table.names[trained.pop()]!r}); a classifier needs at least two"
            )
        return table, trained

    @classmethod
    def from_label_sets(
        cls, sets: Sequence[Sequence[str] | None], separator: str, classes: list[str] | None, classes_source: str
    ) -> tuple[LabelTable, set[int]]:
        """The table of a multi-label training split (``sets``: its :func:`label_sets`) and the ids
        with a positive example; fewer than two labels in all, or labels that are other labels
        joined by a separator other than ``separator``, are errors."""
        union = {label for labels in sets if labels for label in labels}
        if classes is None:
            numeric = bool(union) and int_labels(sorted(union)) is not None
            names = sorted(union, key=lambda n: (int(n), n)) if numeric else sorted(union)
            _warn_case_variants(names)
            _check_joined(names, separator)
            source = _TRAIN
        else:
            names, source = classes, classes_source
        if len(names) < 2:
            raise UserError(
                f"the training split has {len(names)} distinct label(s) ({', '.join(map(repr, names))}); "
                "a multi-label classifier needs at least two"
            )
        table = cls(names, 0, source)
        hot = table.multi_hot(sets, "train split")
        return table, set(np.flatnonzero(hot.max(axis=0, initial=0) > 0).tolist())

    def multi_hot(self, sets: Sequence[Sequence[str] | None], where: str, separator: str | None = None) -> np.ndarray:
        """``(len(sets), n_labels)`` int8: 1 where a row has the label, -1 for every label of a row
        without labels (None); a label outside the table is an error naming it (and, with
        ``separator``, the separator it seems to hold)."""
        hot = np.zeros((len(sets), len(self.names)), dtype=np.int8)
        for row, labels in enumerate(sets):
            if labels is None:
                hot[row] = -1
                continue
            for label in labels:
                i = self.index.get(label)
                if i is None:
                    try:
                        i = self._id(label, label, where, False)
                    except UserError as err:
                        hint = _joined_hint(label, self.names, separator) if separator is not None else ""
                        raise UserError(f"{err}{hint}") from None
                hot[row, i] = 1
        return hot

    def lookup(self, ds: datasets.Dataset, column: str, where: str, trained: set[int] | None) -> dict[Any, int]:
        """:func:`label_key` -> id for every label of ``ds[column]``; errors name the bad value.

        Missing labels are left out (the caller drops or refuses them first). With ``trained``
        (the ids of the training split) classes without a training example are warned about.
        """
        feature = ds.features[column]
        keys = sorted(_distinct(ds, column, None if where in self._reported else where), key=repr)
        self._reported.add(where)
        is_classlabel = isinstance(feature, datasets.ClassLabel)
        as_names = [feature.int2str(k) for k in keys] if is_classlabel else keys
        ints = None if is_classlabel else int_labels(as_names)
        table = {key: self._id(key, value, where, ints is not None) for key, value in zip(keys, ints or as_names)}
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
        same = [n for n in self.names if n.casefold() == str(value).casefold()]
        hint = f" (labels are case-sensitive: {same[0]!r}?)" if same else ""
        raise UserError(
            f"label {value!r} in the {where} {problem}{hint}; fix the data or list every class in data.classes_file"
        )


def is_missing_label(value: Any) -> bool:
    """Whether a raw label cell holds no label: None, a blank string or NaN."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def label_key(value: Any) -> str | int | float | None:
    """The label a raw (non-ClassLabel) cell stands for, None when missing (hashable, comparable by repr)."""
    if is_missing_label(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)  # refused by int_labels with a clear message
    hint = "; for several labels per text set data.task=multilabel" if isinstance(value, (list, tuple, np.ndarray)) else ""
    raise UserError(f"a label is a {type(value).__name__} ({str(value)[:40]!r}); use integer or string labels{hint}")


class LabelSetError(ValueError):
    """A bad multi-label cell: ``row`` (0-based, in the values given) and what is wrong with it."""

    def __init__(self, row: int, problem: str) -> None:
        super().__init__(problem)
        self.row, self.problem = row, problem


def label_set(value: Any, separator: str) -> list[str] | None:
    """The labels of one multi-label cell, in cell order; None when missing (null or NaN).

    A list (JSON/Parquet) gives its items, a string is split at ``separator``; ``[]`` and an
    empty or blank string are the empty set. Each label loses surrounding whitespace; an empty
    label, a label listed twice or a nested list raise ValueError (or UserError for a float or
    an object, as single labels do).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return []
        parts: list[Any] = value.split(separator)
    elif isinstance(value, (list, tuple, np.ndarray)):
        parts = list(value)
    else:
        parts = [value]
    labels: list[str] = []
    for part in parts:
        if isinstance(part, (list, tuple, dict, np.ndarray)):
            raise ValueError(f"a label inside a label list is a {type(part).__name__} ({str(part)[:40]!r})")
        key = label_key(part)
        if key is None:
            where = f" (separator {separator!r})" if isinstance(value, str) else ""
            raise ValueError(f"an empty label in {_shown(value)}{where}")
        if isinstance(key, float):
            raise UserError(f"a label is a float ({part!r}); use integer or string labels")
        labels.append(str(key))
    if len(set(labels)) != len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise ValueError(f"label {twice!r} is listed twice in {_shown(value)}")
    return labels


def label_sets(values: Sequence[Any], separator: str) -> list[list[str] | None]:
    """:func:`label_set` of every cell; the first bad one raises :class:`LabelSetError` with its row."""
    out: list[list[str] | None] = []
    for row, value in enumerate(values):
        try:
            out.append(label_set(value, separator))
        except ValueError as err:
            raise LabelSetError(row, str(err)) from None
    return out


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _joined_hint(label: str, names: Sequence[str], separator: str) -> str:
    """'; it looks like labels joined by ','...' when ``label`` splits at another separator into known names."""
    known = set(names)
    for candidate in SEPARATOR_CANDIDATES:
        if candidate == separator or candidate not in label:
            continue
        parts = [p.strip() for p in label.split(candidate)]
        if len(parts) > 1 and all(p in known for p in parts):
            return f" (it looks like {len(parts)} labels joined by {candidate!r}: set data.label_separator={candidate!r}, now {separator!r})"
    return ""


def _check_joined(names: list[str], separator: str) -> None:
    """Refuse training labels that are other training labels joined by a separator other than ``separator``."""
    for name in names:
        hint = _joined_hint(name, names, separator)
        if hint:
            raise UserError(f"training label {name!r} is not one label{hint}")


def missing_label_rows(ds: datasets.Dataset, column: str, multilabel: bool = False) -> np.ndarray:
    """Indices of the rows of ``ds`` without a label in ``column`` (a ClassLabel's -1 included).

    ``multilabel``: only a null (or NaN) is missing; an empty string or list is the empty label set.
    """
    feature = ds.features[column]
    if multilabel:
        def missing(v: Any) -> bool:
            return v is None or (isinstance(v, float) and math.isnan(v))
    elif isinstance(feature, datasets.ClassLabel):
        def missing(v: Any) -> bool:
            return v is None or v < 0
    else:
        missing = is_missing_label
    if isinstance(feature, (datasets.Value, datasets.ClassLabel)) and not any(map(missing, ds.unique(column))):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.fromiter(map(missing, ds[column]), dtype=bool, count=len(ds)))


def _distinct(ds: datasets.Dataset, column: str, where: str | None) -> set[Any]:
    """The label keys of ``ds[column]`` (ClassLabel: the ids), missing labels left out.

    With ``where`` (the split, for the message) labels with surrounding whitespace are reported.
    """
    feature = ds.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return {int(u) for u in ds.unique(column) if u is not None and u >= 0}
    raw = ds.unique(column) if isinstance(feature, datasets.Value) else ds[column]
    keys = {label_key(v) for v in raw} - {None}
    padded = sorted({v for v in raw if isinstance(v, str) and v.strip() and v != v.strip()})
    if padded and where:
        warnings.warn(
            f"the {where} has {len(padded)} label(s) with surrounding whitespace, stripped "
            f"(e.g. {padded[0]!r} -> {padded[0].strip()!r})",
            stacklevel=3,
        )
    return keys


def _warn_case_variants(names: list[str]) -> None:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.casefold(), []).append(name)
    variants = [" / ".join(map(repr, g)) for g in groups.values() if len(g) > 1]
    if variants:
        warnings.warn(
            f"training labels that differ only by case are separate classes: {'; '.join(variants[:5])}"
            f"{' ...' if len(variants) > 5 else ''}; fix the data if they mean one class",
            stacklevel=3,
        )


def label_ids(values: list[Any], table: dict[Any, int], is_classlabel: bool) -> list[int]:
    """The ids of raw label cells through a :meth:`LabelTable.lookup` table; -1 where missing."""
    if is_classlabel:
        return [table.get(v, -1) for v in values]
    return [-1 if (key := label_key(v)) is None else table[key] for v in values]


def int_labels(values: list[Any]) -> list[int] | None:
    """The values as ints if they all are integers (CSV cells arrive as digit strings), else None."""
    if all(
        (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) or (isinstance(v, str) and _INT_LABEL.match(v))
        for v in values
    ):
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
