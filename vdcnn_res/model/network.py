"""VDCNN: very deep character-level (residual) CNN text classifier, plain PyTorch.

File order is dependency order: the stage builder, the network, then the registry
(`list_models`, `create_model`, `build_model`). Blocks live in `blocks.py`, masked pooling in
`layers.py`.

Padding invariance. In eval mode a text's logits do not depend on how much right padding
its batch adds. Every activation carries a (B, 1, L) padding mask (True at padding) and
padded positions are zeroed after each layer whose output feeds a conv or the residual
stream, so a conv sees zeros past a text's end exactly as zero padding at a sequence end.
Max pooling fills padding with the dtype's lowest value first; k-max pooling only ever
selects valid positions. Texts shorter than `min_length` are right-padded to it and the
padded part counts as real (zero-embedding) content, so the head always has `kmax`
positions to choose from. In training mode too, with ``masked_norm`` (the default), every
BatchNorm takes its batch statistics over valid positions only (``MaskedBatchNorm1d``), so a
text's outputs depend on its batch-mates only through those statistics, never through their
padding; ``masked_norm=False`` is torch's BatchNorm, whose statistics average the padded zeros
(and a one-position conv spill past each text's end) in.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .blocks import BLOCKS, ResidualBlock, projection
from .config import VARIANTS, ModelConfig
from .layers import (
    KMaxDownsample,
    KMaxPool1d,
    MaskedAvgPool1d,
    MaskedBatchNorm1d,
    MaskedMaxPool1d,
    halve_lengths,
    masked_batch_norm,
    padding_mask,
)
from .ngrams import HashedNGramBag, PositionalNGramEmbedding

__all__ = [
    "Stage",
    "VDCNN",
    "build_model",
    "create_model",
    "list_models",
    "make_stage",
    "upgrade_state_dict",
]


# --------------------------------------------------------------------------- stages
# How the shortcut crosses each kind of downsampling (channels double at the same place):
# - "conv":    the next stage's first block strides its first conv by 2 (k3 conv for the
#              bottleneck) and its shortcut is a 1x1 conv with stride 2 + BN, so both
#              paths halve the length and change the channels together.
# - "maxpool", "kmax": the pooling sits between stages, outside every residual branch;
#              the next stage's first block sees the pooled tensor, and its shortcut is a
#              stride-1 1x1 conv + BN when the channels change (identity when they don't).
# - shortcut=False: no shortcut and no projection module anywhere.


class Stage(nn.Module):
    """Optional halving (pooling, or a strided first block) followed by residual blocks.

    forward(x, lengths, pad) -> (x, lengths, pad) at the stage's output resolution.
    """

    def __init__(self, blocks: list[ResidualBlock], halves: bool, downsample: nn.Module | None) -> None:
        super().__init__()
        self.halves = halves  # True for every stage but the first
        self.downsample = downsample  # MaskedMaxPool1d / KMaxDownsample, None for "conv"
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, lengths: Tensor, pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pad_in = pad
        if self.halves:
            lengths = halve_lengths(lengths)
            pad = padding_mask(lengths, (x.shape[-1] + 1) // 2)  # (B, 1, ceil(L/2))
            if self.downsample is not None:
                x = self.downsample(x, pad_in, lengths, pad)  # (B, C, ceil(L/2))
                pad_in = pad
        for block in self.blocks:
            x = block(x, pad_in, pad)
            pad_in = pad
        return x, lengths, pad


def make_stage(
    block: str,
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    halves: bool,
    downsampling: str,
    shortcut: bool,
    kernel_sizes: tuple[int, ...] = (3, 3),
    masked_norm: bool = True,
) -> Stage:
    """Build one stage; decides every block's shortcut (a projection only for the first block).

    ``kernel_sizes`` other than (3, 3) are for basic blocks only (the config checks it);
    ``masked_norm`` makes every BatchNorm's training statistics count valid positions only.
    """
    block_cls = BLOCKS[block]
    norm_layer = functools.partial(MaskedBatchNorm1d, masked=masked_norm)
    halves = halves and downsampling != "none"
    stride = 2 if halves and downsampling == "conv" else 1
    kernels = {} if tuple(kernel_sizes) == (3, 3) else {"kernel_sizes": tuple(kernel_sizes)}

    def make_shortcut(cin: int, s: int) -> nn.Module | None:
        if not shortcut:
            return None
        if s != 1 or cin != out_channels:
            return projection(cin, out_channels, s, norm_layer)
        return nn.Identity()

    blocks = [block_cls(in_channels, out_channels, stride, make_shortcut(in_channels, stride), norm_layer, **kernels)]
    blocks += [
        block_cls(out_channels, out_channels, 1, make_shortcut(out_channels, 1), norm_layer, **kernels)
        for _ in range(num_blocks - 1)
    ]
    downsample: nn.Module | None = None
    if halves and downsampling == "maxpool":
        downsample = MaskedMaxPool1d()
    elif halves and downsampling == "kmax":
        downsample = KMaxDownsample()
    return Stage(blocks, halves, downsample)


# --------------------------------------------------------------------------- network


class VDCNN(nn.Module):
    """Very deep character CNN: embedding -> conv stem -> stages -> k-max -> 3 fc layers.

    Input: right-padded token ids (B, L) of any length, optional lengths (B,). Output:
    logits (B, num_classes), no softmax. Texts shorter than `min_length` are right-padded
    to it with `padding_idx` inside the model.

    A series model (``config.input_channels = C > 0``) has no embedding: its stem conv reads
    float values (B, C, L), right-padded (the padding is zeroed here), and ``lengths``
    default to L. The head is the paper's k-max + MLP or a masked global average + linear
    layer(s) (``config.head``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config = config.resolved()  # "auto" choices made concrete, as exports record them
        c = config
        if c.input_channels:
            self.embedding = None
            self.stem = nn.Conv1d(c.input_channels, c.channels[0], 3, padding=1)  # the series' channels in
        else:
            self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=c.padding_idx)
            self.stem = nn.Conv1d(c.embedding_dim, c.channels[0], 3, padding=1)  # paper: first conv
        self.input_ngrams = (
            PositionalNGramEmbedding(c.input_ngram_orders, c.input_ngram_buckets, c.embedding_dim)
            if c.input_ngram_orders
            else None
        )
        in_channels = c.channels[0]
        stages = []
        for i, (out_channels, num_blocks) in enumerate(zip(c.channels, c.layout)):
            stages.append(
                make_stage(
                    c.block,
                    in_channels,
                    out_channels,
                    num_blocks,
                    i > 0,
                    c.downsampling,
                    c.shortcut,
                    c.kernel_sizes,
                    c.masked_norm,
                )
            )
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        # Pre-activation blocks end without BN-ReLU; the network adds it once before the head.
        self.final_norm = MaskedBatchNorm1d(in_channels, masked=c.masked_norm) if c.block == "preact" else None
        self.pool = KMaxPool1d(c.kmax) if c.head == "kmax_mlp" else MaskedAvgPool1d()
        head_norm = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}.get(c.head_norm)
        hidden: dict[str, nn.Module] = (
            {
                "fc1": nn.Linear(c.num_features, c.hidden_size),
                "act1": nn.ReLU(),
                "drop1": nn.Dropout(c.dropout),
                "fc2": nn.Linear(c.hidden_size, c.hidden_size),
                "act2": nn.ReLU(),
                "drop2": nn.Dropout(c.dropout),
            }
            if c.hidden_size
            else {}
        )
        self.head = nn.Sequential(
            OrderedDict(
                **({"norm": head_norm(c.num_features)} if head_norm else {}),
                **hidden,
                fc=nn.Linear(c.hidden_size or c.num_features, c.num_classes),
            )
        )
        # Optional bag of hashed n-grams with its own linear classifier; its logits are added.
        self.ngrams = HashedNGramBag(c.ngram_orders, c.ngram_buckets, c.ngram_dim) if c.ngram_orders else None
        self.ngram_head = (
            nn.Sequential(OrderedDict(drop=nn.Dropout(c.ngram_dropout), fc=nn.Linear(c.ngram_dim, c.num_classes)))
            if c.ngram_orders
            else None
        )
        # Temperature scaling (Guo et al. 2017): logits are divided by it. Fitted after training
        # on the validation split (training/calibration.py), never trained; 1.0 = uncalibrated,
        # which is also what files written before it existed load with.
        self.register_buffer("temperature", torch.ones(()))
        # One weight per branch (cnn, then ngrams), fitted with the temperature (calibration.py);
        # training always runs with all ones, the branches' plain sum.
        self.register_buffer("branch_weights", torch.ones(2 if self.ngrams is not None else 1))
        self.reset_parameters()
        self.register_load_state_dict_pre_hook(_upgrade_hook)

    def reset_parameters(self) -> None:
        """He init for convs and hidden linears (paper), BN to identity, zero biases; temperature
        and branch weights 1.

        The classifier layer gets std 0.01 instead: He init there gives logits of std ~3 at
        the start (loss far above ln C), and small-data runs spend their first epochs, or
        all of them, undoing it.
        """
        with torch.no_grad():
            self.temperature.fill_(1.0)
            self.branch_weights.fill_(1.0)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.fc.weight, std=0.01)
        if self.input_ngrams is not None:
            nn.init.normal_(self.input_ngrams.hashing.embedding.weight, std=0.05)
        if self.ngrams is not None:
            nn.init.normal_(self.ngrams.embedding.weight, std=0.05)
            nn.init.normal_(self.ngram_head.fc.weight, std=0.01)
        if self.config.zero_init_residual:
            # Each block starts as the identity, which helps very deep nets train early.
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    @property
    def min_length(self) -> int:
        """Shortest effective length; shorter texts are right-padded to it."""
        return self.config.min_length

    @property
    def num_features(self) -> int:
        """Width of forward_features' output: channels[-1] * kmax (+ ngram_dim with the n-gram bag)."""
        return self.config.num_features + (self.config.ngram_dim if self.ngrams is not None else 0)

    def stage_lengths(self, length: int) -> list[int]:
        """Valid length after each stage for a text of `length` tokens."""
        return self.config.stage_lengths(length)

    def _prepare(self, input_ids: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check the ids (or series values) and derive or check the lengths (B,)."""
        channels = self.config.input_channels
        if channels:
            if input_ids.dim() != 3 or input_ids.shape[1] != channels or not input_ids.is_floating_point():
                raise ValueError(
                    f"a series model takes float values (batch, {channels}, length), got "
                    f"{input_ids.dtype} of shape {tuple(input_ids.shape)}"
                )
            B, L = input_ids.shape[0], input_ids.shape[2]
        elif input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        else:
            B, L = input_ids.shape
        if lengths is None:
            if channels:
                return input_ids, torch.full((B,), L, dtype=torch.long, device=input_ids.device)
            return input_ids, (input_ids != self.config.padding_idx).sum(dim=1)  # right padding assumed
        lengths = torch.as_tensor(lengths, device=input_ids.device).long()
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if bool(((lengths < 0) | (lengths > L)).any()):
            raise ValueError(f"lengths must lie in [0, {L}] (the padded length), got {lengths.tolist()}")
        return input_ids, lengths

    def pad_to_min_length(self, input_ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Right-pad ids shorter than min_length; padding below min_length counts as real zero content
        (a series' padding is zeroed first, so only zeros are ever counted)."""
        short_by = torch.sym_max(self.min_length - input_ids.shape[-1], 0)  # one traced graph for any length
        if self.config.input_channels:  # the caller's padding may hold anything; below min_length it counts
            input_ids = input_ids.mul(~padding_mask(lengths, input_ids.shape[-1]))
        pad_value = 0.0 if self.config.input_channels else self.config.padding_idx
        input_ids = F.pad(input_ids, (0, short_by), value=pad_value)
        return input_ids, lengths.clamp(min=self.min_length)

    def features(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Checked ids (B, L) and lengths (B,) -> features (B, num_features): flattened k-max
        features of the CNN, then the n-gram bag's mean embedding when the model has one."""
        cnn = self.cnn_features(*self.pad_to_min_length(input_ids, lengths))
        if self.ngrams is None:
            return cnn
        return torch.cat([cnn, self.ngrams(input_ids, lengths).to(cnn.dtype)], dim=1)

    def cnn_features(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        """Ids (B, L) or series (B, C_in, L) of at least min_length, lengths (B,) -> flattened
        pooled features (B, num_features): k-max (B, C * kmax) or the masked mean (B, C)."""
        pad = padding_mask(lengths, input_ids.shape[-1])  # (B, 1, L)
        keep = ~pad
        if self.embedding is None:
            x = input_ids.mul(keep)  # (B, C_in, L); whatever the caller padded with becomes zero
        else:
            x = self.embedding(input_ids)  # (B, L, E)
            if self.input_ngrams is not None:
                x = x + self.input_ngrams(input_ids, lengths).to(x.dtype)
            x = x.transpose(1, 2).mul(keep)  # (B, E, L)
        if self.training and self.config.input_dropout:  # dropout1d on (B, L, E) zeroes whole positions
            x = F.dropout1d(x.transpose(1, 2), self.config.input_dropout).transpose(1, 2)
        x = self.stem(x).mul(keep)  # (B, C0, L)
        for stage in self.stages:
            x, lengths, pad = stage(x, lengths, pad)  # (B, C_i, ceil(L / 2**i))
        if self.final_norm is not None:
            x = F.relu(masked_batch_norm(self.final_norm, x, ~pad))  # padding left as is: the pooling skips it
        x = self.pool(x, pad)  # (B, C, kmax) or (B, C, 1)
        return x.flatten(1)  # (B, C * kmax) or (B, C)

    def forward_features(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids (B, L) [+ lengths (B,)] -> features (B, num_features)."""
        return self.features(*self._prepare(input_ids, lengths))

    def branch_logits(self, features: Tensor) -> dict[str, Tensor]:
        """Features (B, num_features) -> each branch's own logits (B, num_classes), before they are
        weighted, summed and divided by ``temperature`` (:meth:`combine`): ``{"cnn": ...}``, plus
        ``"ngrams"`` with the bag.
        Training can supervise each one on its own (``VDCNNClassifier(branch_loss=...)``)."""
        if self.ngrams is None:
            return {"cnn": self.head(features)}
        cnn, ngrams = features.split([self.config.num_features, self.config.ngram_dim], dim=1)
        return {"cnn": self.head(cnn), "ngrams": self.ngram_head(ngrams)}

    @property
    def branch_names(self) -> tuple[str, ...]:
        """The branches, in ``branch_weights`` order: ``("cnn",)``, or ``("cnn", "ngrams")`` with the bag."""
        return ("cnn", "ngrams") if self.ngrams is not None else ("cnn",)

    def branch_weight_values(self, weights: Mapping[str, float]) -> list[float]:
        """``{"cnn": 1, "ngrams": 0}`` -> ``[1.0, 0.0]`` in ``branch_weights`` order; ValueError unless
        every branch has one finite weight >= 0 and one is above 0."""
        names = self.branch_names
        if not isinstance(weights, Mapping) or set(weights) != set(names):
            raise ValueError(f"branch weights need one weight for each of {list(names)}, e.g. {dict.fromkeys(names, 1.0)}; got {weights!r}")
        values = [weights[name] for name in names]
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf for w in values):
            raise ValueError(f"branch weights must be finite numbers >= 0, got {dict(weights)!r}")
        if not any(values):
            raise ValueError("branch weights all 0 leave no logits; give at least one branch a weight above 0")
        return [float(w) for w in values]

    def combine(self, branches: dict[str, Tensor]) -> Tensor:
        """The model's logits from its branches': each times its ``branch_weights`` entry, summed,
        divided by ``temperature``."""
        weighted = [w * z for w, z in zip(self.branch_weights.unbind(), branches.values())]
        return functools.reduce(operator.add, weighted) / self.temperature

    def forward_head(self, features: Tensor) -> Tensor:
        """Features (B, num_features) -> logits (B, num_classes): the branches' weighted sum, divided by ``temperature``."""
        return self.combine(self.branch_logits(features))

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids (B, L), optional lengths (B,) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(input_ids, lengths))


# --------------------------------------------------------------------------- old files

# vdcnn-res 0.1.0 kept a block's projection shortcut under `projection.*`; it is `shortcut.*` now.
_OLD_PROJECTION = re.compile(r"(^|\.)(stages\.\d+\.blocks\.\d+\.)projection\.")


def _new_key(key: str) -> str:
    return _OLD_PROJECTION.sub(r"\1\2shortcut.", key)


def upgrade_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Weights written by an older vdcnn-res with today's key names (a new dict); without a
    temperature (files from before calibration, uncalibrated exports) it is 1.0, without branch
    weights (files from before them, exports with equal weights) they are all 1."""
    upgraded = {_new_key(key): value for key, value in state_dict.items()}
    if upgraded and "temperature" not in upgraded:
        upgraded["temperature"] = torch.ones(())
    if upgraded and "branch_weights" not in upgraded:
        upgraded["branch_weights"] = torch.ones(2 if "ngram_head.fc.weight" in upgraded else 1)
    return upgraded


def _upgrade_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # load_state_dict hands every module the whole dict: rename this model's old keys in place.
    keys = [k for k in state_dict if k.startswith(prefix)]
    for key in keys:
        new = prefix + _new_key(key[len(prefix) :])
        if new != key:
            state_dict[new] = state_dict.pop(key)
    if keys and prefix + "temperature" not in state_dict:
        state_dict[prefix + "temperature"] = torch.ones(())
    if keys and prefix + "branch_weights" not in state_dict:
        state_dict[prefix + "branch_weights"] = torch.ones_like(module.branch_weights)


# --------------------------------------------------------------------------- registry

_NAME_PREFIX = "vdcnn"


def list_models() -> list[str]:
    """Registered model names, one per paper depth: vdcnn9, vdcnn17, vdcnn29, vdcnn49."""
    return [f"{_NAME_PREFIX}{depth}" for depth in sorted(VARIANTS)]


def build_model(config: ModelConfig) -> VDCNN:
    """The one builder: a VDCNN from a validated ModelConfig."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model needs a ModelConfig, got {type(config).__name__}")
    return VDCNN(config)


def create_model(name: str, **overrides: object) -> VDCNN:
    """A registered variant by name, with any ModelConfig field overridden.

    Example: create_model("vdcnn29", num_classes=4, shortcut=False).
    """
    names = list_models()
    if name not in names:
        raise UserError(f"unknown model {name!r}; valid choices: {names}")
    if "depth" in overrides:
        raise UserError(f"depth is set by the model name {name!r}; do not override it")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown ModelConfig field(s) {unknown}; valid: {sorted(fields)}")
    depth = int(name[len(_NAME_PREFIX) :])
    return build_model(ModelConfig(depth=depth, **overrides))  # type: ignore[arg-type]
