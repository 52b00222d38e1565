"""The sweep's grid: axes (a config key and its values), points (one value per axis) and result rows.

An axis is written `KEY=V1,V2,...`: KEY a dotted `vdcnn-res fit` config key, the values separated
by the commas that are outside brackets, braces and quotes, so a list or a mapping is one value:

    model.optim.lr=3e-4,1e-3
    model.arch.ngram_orders=[],[1,2,3,4,5]        two values: [] and [1,2,3,4,5]
    data.text_columns=[title],"[title, description]"

Each value goes to the fit command unchanged (`--KEY=VALUE`), so it is parsed exactly as on the
`vdcnn-res fit` command line (YAML).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vdcnn_res.errors import UserError

__all__ = ["RESERVED", "Axis", "Point", "SweepResult", "baseline_point", "build_points", "load_result", "parse_axis", "parse_grid", "split_values"]  # fmt: skip

# Keys the sweep sets itself for every cell: a grid may not vary them.
RESERVED = {
    "config": "give base configs with --config",
    "seed_everything": "give seeds with --seeds",
    "data.seed": "give seeds with --seeds",
    "data.test": "a sweep never reads the test split",
    "trainer.default_root_dir": "each cell has its own folder under --out_dir",
    "checkpoint.dirpath": "each cell has its own folder under --out_dir",
    "ckpt_path": "an interrupted cell resumes by itself",
    "print_config": "it is not a setting",
}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_EXAMPLE = "write KEY=V1,V2 with a dotted fit config key, e.g. --grid model.optim.lr=3e-4,1e-3"
_OPEN, _CLOSE = "[{(", "]})"


def split_values(text: str) -> list[str]:
    """`text` cut at the commas outside brackets, braces and quotes, each piece stripped.

    Raises ValueError for unbalanced brackets or an unclosed quote.
    """
    values, depth, quote, start = [], [], "", 0
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _OPEN:
            depth.append(_CLOSE[_OPEN.index(char)])
        elif char in _CLOSE:
            if not depth or depth.pop() != char:
                raise ValueError(f"unbalanced {char!r}")
        elif char == "," and not depth:
            values.append(text[start:i].strip())
            start = i + 1
    if quote:
        raise ValueError(f"unclosed {quote}")
    if depth:
        raise ValueError(f"unclosed {_OPEN[_CLOSE.index(depth[-1])]!r}")
    values.append(text[start:].strip())
    return values


@dataclass(frozen=True)
class Axis:
    """One config key of the grid and its values, as given (strings passed to fit unchanged)."""

    key: str
    values: tuple[str, ...]


def parse_axis(spec: str) -> Axis:
    """`KEY=V1,V2,...` as an Axis; every mistake is one UserError line naming the spec."""
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--grid {spec!r}: no KEY=VALUES; {_EXAMPLE}")
    if key.startswith("-"):
        raise UserError(f"--grid {spec!r}: write the key without dashes ({key.lstrip('-')}=...); {_EXAMPLE}")
    if not _KEY.fullmatch(key):
        raise UserError(f"--grid {spec!r}: {key!r} is not a dotted config key; {_EXAMPLE}")
    if key in RESERVED:
        raise UserError(f"--grid {key}: set by the sweep itself ({RESERVED[key]})")
    try:
        values = split_values(rest)
    except ValueError as err:
        raise UserError(f"--grid {spec!r}: {err}; quote a value holding a comma, e.g. {key}='\"a,b\"',c") from None
    if not any(values):
        raise UserError(f"--grid {key}: no values; {_EXAMPLE}")
    if not all(values):
        raise UserError(f"--grid {spec!r}: an empty value (two commas in a row, or one at an end); write null for None")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"--grid {key}: {', '.join(repeated)} given more than once")
    return Axis(key, tuple(values))


def parse_grid(specs: list[str]) -> list[Axis]:
    """The axes of `--grid` arguments, in the order given; each key once."""
    axes = [parse_axis(spec) for spec in specs]
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"--grid {key} is given more than once; give all its values in one KEY=V1,V2,...")
    return axes


_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_MAX_NAME = 180  # a folder name must stay under 255 bytes with the seed appended


def _slug(value: str) -> str:
    """A value as folder-name characters; a short hash of the exact value is added when any were changed."""
    slug = _SAFE.sub("-", value).strip("-")
    if slug == value:
        return value
    digest = hashlib.sha1(value.encode("utf-8")).hexdigest()[:6]
    return f"{slug}-{digest}" if slug else digest


@dataclass(frozen=True)
class Point:
    """One value per axis: a configuration of the grid, trained once per seed."""

    values: tuple[tuple[str, str], ...]  # (key, value) in axis order

    @property
    def name(self) -> str:
        """The folder name: `key=value` per axis, joined by `__` (ends with a hash if long)."""
        name = "__".join(f"{key}={_slug(value)}" for key, value in self.values) or "base"
        if len(name) > _MAX_NAME:
            digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
            name = f"{name[: _MAX_NAME - 9]}~{digest}"
        return name

    @property
    def label(self) -> str:
        """The values as written on the command line: `key=value, key=value`."""
        return ", ".join(f"{key}={value}" for key, value in self.values) or "the base config"

    def fit_args(self) -> list[str]:
        return [f"--{key}={value}" for key, value in self.values]


def build_points(axes: list[Axis]) -> list[Point]:
    """Every combination of the axes' values, first axis slowest."""
    return [Point(tuple(zip([a.key for a in axes], combo))) for combo in itertools.product(*(a.values for a in axes))]


def baseline_point(axes: list[Axis], specs: list[str] | None) -> Point:
    """The point others are compared with: `--baseline KEY=VALUE ...`, the first value of every other axis."""
    chosen = {axis.key: axis.values[0] for axis in axes}
    values_of = {axis.key: axis.values for axis in axes}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"--baseline {spec!r}: write KEY=VALUE with a key and one value of --grid")
        if key not in values_of:
            raise UserError(f"--baseline {spec!r}: {key} is not a --grid key ({', '.join(values_of) or 'none'})")
        if value not in values_of[key]:
            raise UserError(f"--baseline {spec!r}: {value} is not one of the --grid values of {key} ({', '.join(values_of[key])})")  # fmt: skip
        chosen[key] = value
    return Point(tuple(chosen.items()))


@dataclass
class SweepResult:
    """One cell (a point and a seed): its validation numbers, in % (accuracy, macro-F1), and how it ran."""

    cell: str
    point: str
    seed: int
    values: dict[str, str]  # grid key -> value, as given
    best_val_acc: float  # the highest validation accuracy of any epoch
    best_epoch: int  # that epoch (from 1; 0: no validation)
    final_val_acc: float  # the last epoch's
    best_val_f1: float  # macro-F1 at the best epoch
    final_val_f1: float
    train_loss_final: float  # mean over the last epoch's batches (training mode)
    train_acc_final: float
    epochs: int  # trained, early stopping included
    steps: int
    fit_seconds: float
    status: str  # "ok", or why the cell has no usable result (e.g. "failed: the training loss became nan")
    fit_args: str
    threads: int = 0
    host: str = ""
    val_acc_curve: list[float] = field(default_factory=list)  # per epoch

    @property
    def group(self) -> str:
        """The point: its seeds are repeats of one configuration."""
        return self.point

    @property
    def ok(self) -> bool:
        return self.status == "ok" and not math.isnan(self.best_val_acc)


def load_result(path: Path) -> SweepResult:
    return SweepResult(**json.loads(path.read_text(encoding="utf-8")))
