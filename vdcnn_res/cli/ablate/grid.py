"""The ablation grid: cells (architecture x shortcut x downsampling x seed) and their result rows."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vdcnn_res.errors import UserError
from vdcnn_res.model import DOWNSAMPLING_TYPES, VARIANTS

RESULT_FILE = "result.json"
COLUMNS = (
    "cell", "layers", "blocks_per_stage", "shortcut", "downsampling", "seed", "params", "steps", "epochs",
    "train_loss_final", "train_loss_best", "train_err_final", "train_err_best",
    "val_err_final", "val_err_best", "test_err", "fit_seconds", "status", "fit_args",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One architecture of the grid, trained once."""

    layout: tuple[int, ...]
    shortcut: bool
    downsampling: str
    seed: int
    depth: int | None = None  # set when the layout is a paper variant (then passed as --model.arch.depth)

    @property
    def layers(self) -> int:
        """Convolutional layers: the first conv plus two per residual block (the paper's depth)."""
        return 1 + 2 * sum(self.layout)

    @property
    def name(self) -> str:
        arch = f"d{self.depth}" if self.depth is not None else "b" + "-".join(map(str, self.layout))
        return f"{arch}_{'res' if self.shortcut else 'plain'}_{self.downsampling}_seed{self.seed}"

    def fit_args(self, base: list[str], budget: list[str], cell_dir: Path) -> list[str]:
        """The `vdcnn-res fit` arguments (without the subcommand) that train this cell."""
        if self.depth is not None:
            arch = ["--model.arch.depth", str(self.depth), "--model.arch.blocks_per_stage", "null"]
        else:
            arch = ["--model.arch.blocks_per_stage", "[" + ",".join(map(str, self.layout)) + "]"]
        return [
            *base,
            *arch,
            "--model.arch.shortcut", str(self.shortcut).lower(),
            "--model.arch.downsampling", self.downsampling,
            "--seed_everything", str(self.seed),
            "--data.seed", str(self.seed),
            *budget,
            "--trainer.default_root_dir", str(cell_dir),
            "--checkpoint.dirpath", str(cell_dir / "checkpoints"),
        ]  # fmt: skip


def build_cells(
    depths: list[int], layouts: list[str], shortcuts: list[bool], downsampling: list[str], seeds: list[int]
) -> list[Cell]:
    """The grid, in a stable order: architecture, then shortcut on/off, downsampling, seed."""
    archs: list[tuple[tuple[int, ...], int | None]] = []
    for depth in depths:
        if depth not in VARIANTS:
            raise UserError(f"--depths: {depth} is not a paper variant; choose from {sorted(VARIANTS)} or use --layouts")
        archs.append((VARIANTS[depth], depth))
    for text in layouts:
        try:
            layout = tuple(int(n) for n in text.split(","))
        except ValueError:
            raise UserError(f"--layouts: {text!r} is not comma-separated blocks per stage, e.g. 8,8,8,8") from None
        if len(layout) != 4 or min(layout) < 1:
            raise UserError(f"--layouts: {text!r} needs four positive blocks-per-stage counts, e.g. 8,8,8,8")
        archs.append((layout, None))
    for kind in downsampling:
        if kind not in DOWNSAMPLING_TYPES:
            raise UserError(f"--downsampling: {kind!r} is unknown; choose from {DOWNSAMPLING_TYPES}")
    if not archs:
        raise UserError("nothing to train: give --depths and/or --layouts")
    cells = [
        Cell(layout, shortcut, kind, seed, depth)
        for (layout, depth), shortcut, kind, seed in itertools.product(archs, shortcuts, downsampling, seeds)
    ]
    return list(dict.fromkeys(cells))  # a layout given twice is trained once


@dataclass
class CellResult:
    cell: str
    layers: int
    blocks_per_stage: str
    shortcut: bool
    downsampling: str
    seed: int
    params: int
    steps: int
    epochs: int
    train_loss_final: float
    train_loss_best: float
    train_err_final: float
    train_err_best: float
    val_err_final: float
    val_err_best: float
    test_err: float
    fit_seconds: float
    status: str  # "ok", or why the cell has no usable result (e.g. "diverged: ...")
    fit_args: str
    curve: list[tuple[int, float]] = field(default_factory=list, repr=False)


def load_result(path: Path) -> CellResult:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["curve"] = [tuple(p) for p in data.get("curve", [])]
    return CellResult(**data)


def save_result(result: CellResult, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
    os.replace(tmp, path)  # a finished cell is either fully recorded or not at all
