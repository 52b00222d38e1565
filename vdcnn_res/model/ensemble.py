"""Several trained networks as one classifier: the mean of their class probabilities.

Averaging independently trained networks (different seeds, or different architectures over
the same input) is a reliable accuracy gain on small training sets that needs no change to the
recipe, only more fits: the errors each network owes to its random start differ, and the mean
cancels part of them (deep ensembles, Lakshminarayanan et al. 2017; for time series, Ismail
Fawaz et al. 2019 "Deep neural network ensembles for time series classification" and
InceptionTime, an ensemble of five; measured here in docs/results.md §5b).

The ensemble is a plain module with the single network's interface: ``forward(input_ids,
lengths)`` gives (B, C) logits, here the log of the members' mean softmax probability, so a
softmax of them is exactly that mean. Every member keeps its own padding, minimum length and
calibration temperature. Single-label classifiers only: a multi-label model's thresholds were
tuned for its own probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError
from .config import ModelConfig
from .network import VDCNN

__all__ = ["Ensemble"]


class Ensemble(nn.Module):
    """Members that read the same input and predict the same classes, averaged in probability."""

    def __init__(self, members: Sequence[VDCNN]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise UserError("an ensemble needs at least one model")
        first = members[0].config
        for i, member in enumerate(members[1:], start=1):
            c = member.config
            for field in ("num_classes", "input_channels", "vocab_size", "padding_idx"):
                if getattr(c, field) != getattr(first, field):
                    raise UserError(
                        f"ensemble member {i} has {field} {getattr(c, field)}, member 0 {getattr(first, field)}: "
                        "ensemble models trained on the same data with the same tokenizer"
                    )
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        """Member 0's configuration: what every member shares (classes, input kind) is read from it."""
        return self.members[0].config

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids (B, L) or series (B, C, L), optional lengths (B,) -> (B, num_classes) float32
        logits: log of the members' mean softmax probability."""
        log_probs = torch.stack([m(input_ids, lengths).float().log_softmax(-1) for m in self.members])
        return log_probs.logsumexp(0) - math.log(len(self.members))
