"""The ablation grid: cells (architecture x shortcut x downsampling x seed) and their result rows."""

from __future__ import annotations

import itertools
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from vdcnn_res.errors import UserError
from vdcnn_res.model import DOWNSAMPLING_TYPES, VARIANTS

RESULT_FILE = "result.json"
COLUMNS = (
    "cell", "layers", "blocks_per_stage", "shortcut", "downsampling", "seed", "params", "steps", "epochs",
    "train_loss_final", "train_loss_best", "train_err_final", "train_err_best",
    "val_err_final", "val_err_best", "test_err", "fit_seconds", "threads", "host", "status", "fit_args",
)  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One architecture of the grid, trained once."""

    layout: tuple[int, ...]
    shortcut: bool
    downsampling: str
    seed: int
    depth: int | None = None  # set when the layout is a paper variant (then passed as --model.arch.depth)
    convs_per_block: int = 2  # the configuration's blocks (ModelConfig.convs_per_block)

    @property
    def layers(self) -> int:
        """Convolutional layers: the first conv plus those of every residual block (the paper's depth)."""
        return 1 + self.convs_per_block * sum(self.layout)

    @property
    def arch(self) -> str:
        """The architecture's name: d<depth> for a paper variant, b<blocks-per-stage> for a layout."""
        return f"d{self.depth}" if self.depth is not None else "b" + "-".join(map(str, self.layout))

    @property
    def name(self) -> str:
        return f"{self.arch}_{'res' if self.shortcut else 'plain'}_{self.downsampling}_seed{self.seed}"

    def arch_args(self) -> list[str]:
        """The arguments that set this cell's stage layout (a paper depth or blocks per stage)."""
        if self.depth is not None:
            return ["--model.arch.depth", str(self.depth), "--model.arch.blocks_per_stage", "null"]
        return ["--model.arch.blocks_per_stage", "[" + ",".join(map(str, self.layout)) + "]"]

    def fit_args(self, base: list[str], budget: list[str], cell_dir: Path) -> list[str]:
        """The `vdcnn-res fit` arguments (without the subcommand) that train this cell."""
        return [
            *base,
            *self.arch_args(),
            "--model.arch.shortcut", str(self.shortcut).lower(),
            "--model.arch.downsampling", self.downsampling,
            "--seed_everything", str(self.seed),
            "--data.seed", str(self.seed),
            *budget,
            "--trainer.default_root_dir", str(cell_dir),
            "--checkpoint.dirpath", str(cell_dir / "checkpoints"),
        ]  # fmt: skip


def grid_depths(given: list[int] | None, stages: int) -> list[int]:
    """The paper depths to train: those given, else all of them where the configuration has their
    four stages (a 3-stage series recipe trains its `--layouts` only)."""
    if given is not None:
        return given
    return sorted(VARIANTS) if all(len(layout) == stages for layout in VARIANTS.values()) else []


def build_cells(
    depths: list[int],
    layouts: list[str],
    shortcuts: list[bool],
    downsampling: list[str],
    seeds: list[int],
    stages: int | None = None,
    convs_per_block: int = 2,
) -> list[Cell]:
    """The grid, in a stable order: architecture, then shortcut on/off, downsampling, seed.

    `stages` (the configuration's number of stages) checks every layout's length, the paper
    depths' four included.
    """
    archs: list[tuple[tuple[int, ...], int | None]] = []
    for depth in depths:
        if depth not in VARIANTS:
            raise UserError(f"--depths: {depth} is not a paper variant; choose from {sorted(VARIANTS)} or use --layouts")
        if stages is not None and len(VARIANTS[depth]) != stages:
            raise UserError(
                f"--depths: the paper's depth {depth} has {len(VARIANTS[depth])} stages but the configuration has "
                f"{stages} (model.arch.channels); use --layouts with one count per stage"
            )
        archs.append((VARIANTS[depth], depth))
    for text in layouts:
        try:
            layout = tuple(int(n) for n in text.split(","))
        except ValueError:
            raise UserError(f"--layouts: {text!r} is not comma-separated blocks per stage, e.g. 8,8,8,8") from None
        if min(layout) < 1:
            raise UserError(f"--layouts: {text!r} needs positive blocks-per-stage counts, e.g. 8,8,8,8")
        if stages is not None and len(layout) != stages:
            raise UserError(
                f"--layouts: {text!r} has {len(layout)} stages but the configuration has {stages} "
                "(model.arch.channels); give one count per stage"
            )
        archs.append((layout, None))
    for kind in downsampling:
        if kind not in DOWNSAMPLING_TYPES:
            raise UserError(f"--downsampling: {kind!r} is unknown; choose from {DOWNSAMPLING_TYPES}")
    if not archs:
        raise UserError("nothing to train: give --depths and/or --layouts")
    cells = [
        Cell(layout, shortcut, kind, seed, depth, convs_per_block)
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
    # Where it ran: results move with the thread count, so a seed's row says what it had (0/"": not recorded).
    threads: int = 0
    host: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list, repr=False)

    @property
    def group(self) -> str:
        """The cell's name without its seed: the seeds of one group are repeats of one configuration."""
        return self.cell.rsplit("_seed", 1)[0]

    @property
    def arch(self) -> str:
        """The architecture (Cell.arch): residual and plain cells of one arch, downsampling and seed pair up."""
        return self.cell.split("_", 1)[0]

    @property
    def ok(self) -> bool:
        """Trained to the end (tested or not); failed cells (e.g. diverged) have no usable numbers."""
        return self.status.startswith("ok")


def load_result(path: Path) -> CellResult:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["curve"] = [tuple(p) for p in data.get("curve", [])]
    return CellResult(**data)


def write_atomically(path: Path, text: str) -> None:
    """Write a file that other workers (or machines) may read at any moment: whole or not at all."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # one per writer
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
