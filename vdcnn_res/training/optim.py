"""Optimizer and learning-rate schedule recipes, as config data.

AdamW with a warm-up followed by cosine decay (the default), a one-cycle schedule, and the
paper's recipe (SGD, lr 0.01, momentum 0.9, lr halved every 3 epochs). ``lr="auto"`` asks for
a learning-rate range test before training (vdcnn_res.training.lr_finder.LRRangeTest), which
replaces it with a number before any optimizer is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vdcnn_res.errors import UserError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "onecycle", "constant")
AUTO = "auto"
# Each optimizer's recipe lr: the fallback of `lr: auto` when its range test is inconclusive.
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.01}


@dataclass
class OptimConfig:
    """How the classifier is optimized; exposed on the command line as `model.optim.*`."""

    # Defaults: the toolkit's recipe (docs/results.md). The paper's: name=sgd, lr=0.01,
    # weight_decay=0, schedule=step (configs/paper/recipe.yaml).
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float | Literal["auto"] = 1e-3  # peak learning rate (paper: 0.01 with SGD); "auto": range test
    momentum: float = 0.9  # SGD only (paper: 0.9)
    weight_decay: float = 0.05  # never applied to biases and norm layers (paper: none)
    schedule: Literal["step", "cosine", "onecycle", "constant"] = "cosine"
    step_epochs: int = 3  # "step": multiply the lr by step_gamma every this many epochs
    step_gamma: float = 0.5  # "step": 0.5 halves the lr, as in the paper
    warmup_fraction: float = 0.05  # "cosine": share of all optimizer steps spent warming up
    # The n-gram bag (model.arch.ngram_orders) trains at lr x this: each of its rows gets a share
    # of a mean over hundreds of n-grams and appears in few texts, so at the CNN's lr it learns
    # slowly (docs/results.md §7).
    ngram_lr_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise UserError(f"optim.name={self.name!r} is unknown; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"optim.schedule={self.schedule!r} is unknown; choose one of {SCHEDULES}")
        if isinstance(self.lr, str):
            if self.lr != AUTO:
                raise UserError(f"optim.lr must be a positive number or 'auto', got {self.lr!r}")
        elif isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise UserError(f"optim.lr must be a positive number or 'auto', got {self.lr!r}")
        if self.weight_decay < 0:
            raise UserError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.step_epochs < 1 or not 0 < self.step_gamma <= 1:
            raise UserError("optim.step_epochs must be >= 1 and optim.step_gamma in (0, 1]")
        if isinstance(self.ngram_lr_scale, bool) or not self.ngram_lr_scale > 0:
            raise UserError(f"optim.ngram_lr_scale must be a positive number, got {self.ngram_lr_scale!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


# Where the network keeps its hashed n-gram tables (model/network.py: the bag and its head, the
# CNN's positional n-grams); these train at lr x ngram_lr_scale (sparse rows, like the bag's).
NGRAM_PREFIXES = ("ngrams.", "ngram_head.", "input_ngrams.")


def parameter_groups(model: nn.Module, weight_decay: float, lr: float | None = None, ngram_lr_scale: float = 1.0) -> list[dict]:
    """Split parameters so weight decay skips biases and normalization weights (1-D tensors);
    with ``lr`` given, the n-gram bag's parameters get their own groups at ``lr * ngram_lr_scale``."""
    split = lr is not None and ngram_lr_scale != 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            bag = split and name.startswith(NGRAM_PREFIXES)
            groups.setdefault((bag, param.ndim > 1), []).append(param)
    out = [{"params": groups.get((False, True), []), "weight_decay": weight_decay}]
    if groups.get((False, False)):
        out.append({"params": groups[(False, False)], "weight_decay": 0.0})
    for decay in (True, False):
        if groups.get((True, decay)):
            out.append({"params": groups[(True, decay)], "weight_decay": weight_decay if decay else 0.0, "lr": lr * ngram_lr_scale})
    return out


def _can_fuse(model: nn.Module) -> bool:
    """Fused (single-kernel) updates need floating-point parameters on a device with fused kernels."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = _get_fused_kernels_supported_devices()
    params = list(model.parameters())
    return bool(params) and all(p.is_floating_point() and p.device.type in supported for p in params)


def _require_number(cfg: OptimConfig) -> None:
    if cfg.lr == AUTO:
        raise UserError(
            "optim.lr='auto' needs the learning-rate range test before the optimizer is built: `vdcnn-res fit` "
            "runs it; in Python add vdcnn_res.training.lr_finder.LRRangeTest() to the Trainer's callbacks"
        )


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer, fused where the device allows it (benchmarks/bench.py: the fused
    AdamW update is a measurable share of a CPU training step)."""
    _require_number(cfg)
    groups = parameter_groups(model, cfg.weight_decay, cfg.lr, cfg.ngram_lr_scale)
    fused = _can_fuse(model) or None
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> dict | None:
    """Return a Lightning `lr_scheduler` config dict, or None for a constant learning rate."""
    _require_number(cfg)
    if cfg.schedule == "constant":
        return None
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_epochs, gamma=cfg.step_gamma)
        return {"scheduler": sched, "interval": "epoch"}
    total_steps = max(1, int(total_steps))
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps
        )
        return {"scheduler": sched, "interval": "step"}
    warmup = int(cfg.warmup_fraction * total_steps)

    def warmup_cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    return {"scheduler": sched, "interval": "step"}
