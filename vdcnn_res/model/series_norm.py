"""Per-series z-scores inside a series model that keep what a z-score throws away.

A z-score per series and channel puts series of very different scales on one footing, which
BatchNorm needs (a batch's statistics are otherwise set by its loudest series), but it erases
each series' level and scale, which can be what tells classes apart (an appliance's current
draw, a sensor's range). :class:`SeriesZScore` does the z-score in the model and hands the
level and log-scale of every channel to the classifier (docs/guides/series.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SeriesZScore"]


class SeriesZScore(nn.Module):
    """``forward(x, keep)``: series (B, C, L) as given, valid positions (B, 1, L) bool ->
    (z-scores (B, C, L), statistics (B, 2C)).

    The z-scores are each channel minus its mean over the series' valid positions, divided by
    its standard deviation (a channel flatter than ``eps`` is only centred), zero at padding.
    The statistics are ``asinh(mean)`` and ``log(sd)`` of every channel, batch-normalised
    across series (so the units they come in do not matter); they feed the classifier.
    """

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.stats_norm = nn.BatchNorm1d(2 * channels, affine=False)  # the classifier after it is affine

    def forward(self, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        keep = keep.to(x.dtype)
        count = keep.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        shift = x[:, :, :1]  # a valid value: moments of x - shift keep the digits of a large level
        offset = (x - shift).mul(keep).sum(dim=-1, keepdim=True) / count  # (B, C, 1)
        centred = (x - shift - offset).mul(keep)
        sd = (centred.square().sum(dim=-1, keepdim=True) / count).sqrt()
        z = centred / torch.where(sd < self.eps, torch.ones_like(sd), sd)
        stats = torch.cat([torch.asinh(shift + offset), torch.log(sd.clamp(min=self.eps))], dim=1).squeeze(-1)
        norm = self.stats_norm
        if self.training and stats.shape[0] == 1:  # one series has no batch statistics: the running ones
            stats = F.batch_norm(stats, norm.running_mean, norm.running_var, training=False, eps=norm.eps)
        else:
            stats = norm(stats)
        return z, stats
