"""How the cells of the text columns become texts.

Texts are never rejected for their content. A string is used as it is; a missing value (JSON
``null``, a missing key, a Parquet null) becomes the empty text; any other value (a number, a
boolean, a list or an object in JSON) becomes its JSON text (``3``, ``true``, ``[1, 2]``).
:func:`odd_text_summary` counts the rows that needed either, for one line per split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np

__all__ = ["join_texts", "odd_text_summary", "text_value"]


def text_value(value: Any) -> str:
    """The text of one cell: strings as they are, None as "", anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def join_texts(batch: Mapping[str, list[Any]], columns: list[str], separator: str) -> list[str]:
    """The texts of a batch of rows: the text columns' cells joined with ``separator``."""
    if len(columns) == 1:
        return [text_value(v) for v in batch[columns[0]]]
    return [separator.join(map(text_value, row)) for row in zip(*(batch[c] for c in columns))]


def odd_text_summary(ds: datasets.Dataset, columns: list[str]) -> str | None:
    """'N rows had null text, treated as empty; M rows had non-string text (...)', or None."""
    null = np.zeros(len(ds), dtype=bool)
    other = np.zeros(len(ds), dtype=bool)
    for column in columns:
        if isinstance(ds.features[column], datasets.Value) and ds.features[column].dtype in ("string", "large_string"):
            cells = ds.with_format("arrow")[column]
            if cells.null_count:
                null |= np.asarray(cells.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            continue
        values = ds[column]
        null |= np.fromiter((v is None for v in values), dtype=bool, count=len(ds))
        other |= np.fromiter((v is not None and not isinstance(v, str) for v in values), dtype=bool, count=len(ds))
    parts = []
    if null.any():
        parts.append(f"{_rows(int(null.sum()))} null or missing text, treated as empty")
    if other.any():
        parts.append(f"{_rows(int(other.sum()))} non-string text (numbers, booleans, lists or objects), used as JSON text")
    return "; ".join(parts) or None


def _rows(n: int) -> str:
    return f"{n} row had" if n == 1 else f"{n} rows had"
