"""Parameter and FLOP counting for benchmarks and model cards.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on one dummy forward pass:
convolutions and matmuls only, a multiply-add counted as 2 FLOPs. Embedding lookups,
BatchNorm, ReLU, pooling and the k-max sorts are not counted (they are memory-bound and
small next to the convs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "forward_flops", "model_summary"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def forward_flops(model: nn.Module, length: int, batch_size: int = 1) -> int:
    """FLOPs of one eval-mode forward pass over `batch_size` texts of `length` tokens
    (series models: series of `length` values).

    Texts shorter than the model's `min_length` are padded by the model, so they cost
    as much as `min_length`. The model's train/eval mode is restored afterwards.
    """
    if length < 1 or batch_size < 1:
        raise ValueError(f"length and batch_size must be >= 1, got {length}, {batch_size}")
    config = getattr(model, "config", None)
    pad_id = getattr(config, "padding_idx", 0)
    vocab = getattr(config, "vocab_size", pad_id + 2)
    token = (pad_id + 1) % vocab  # any non-padding id (lengths are passed explicitly anyway)
    device = next(model.parameters()).device
    channels = getattr(config, "input_channels", 0)
    if channels:  # a series model: float values (B, C, L)
        ids = torch.ones((batch_size, channels, length), device=device)
    else:
        ids = torch.full((batch_size, length), token, dtype=torch.long, device=device)
    lengths = torch.full((batch_size,), length, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(ids, lengths)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_summary(model: nn.Module, length: int) -> dict[str, float | int]:
    """Parameters and forward GFLOPs per sample at `length` tokens (for benchmark tables)."""
    flops = forward_flops(model, length, batch_size=1)
    return {
        "params": count_parameters(model),
        "length": int(length),
        "forward_flops_per_sample": flops,
        "forward_gflops_per_sample": flops / 1e9,
    }
