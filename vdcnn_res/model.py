"""VDCNN: very deep character-level (residual) CNN text classifier, plain PyTorch.

File order is dependency order: helpers, residual blocks, the stage builder, the network,
then the registry (`list_models`, `create_model`, `build_model`).

Padding invariance. In eval mode a text's logits do not depend on how much right padding
its batch adds. Every activation carries a (B, 1, L) padding mask (True at padding) and
padded positions are zeroed after each layer whose output feeds a conv or the residual
stream, so a conv sees zeros past a text's end exactly as zero padding at a sequence end.
Max pooling fills padding with the dtype's lowest value first; k-max pooling only ever
selects valid positions. Texts shorter than `min_length` are right-padded to it and the
padded part counts as real (zero-embedding) content, so the head always has `kmax`
positions to choose from. In training mode BatchNorm's batch statistics still include the
padded zeros (and a one-position conv spill past each text's end, zeroed right after the
BN): accepted, the alternative is a masked BatchNorm that torch does not provide.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VARIANTS, ModelConfig
from .layers import KMaxDownsample, KMaxPool1d, MaskedMaxPool1d, halve_lengths, padding_mask
from .errors import UserError

__all__ = [
    "BasicConvResBlock",
    "PreActConvResBlock",
    "BottleneckConvResBlock",
    "Stage",
    "VDCNN",
    "build_model",
    "create_model",
    "list_models",
]


def conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv1d:
    """k=3 conv, 'same' padding; no bias (a BatchNorm follows)."""
    return nn.Conv1d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv1d:
    """1x1 conv; no bias (a BatchNorm follows)."""
    return nn.Conv1d(in_channels, out_channels, 1, stride=stride, bias=False)


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Projection shortcut: 1x1 conv with the block's stride + BatchNorm."""
    return nn.Sequential(conv1(in_channels, out_channels, stride), nn.BatchNorm1d(out_channels))


# --------------------------------------------------------------------------- blocks
# Every block is called as block(x, pad_in, pad_out): x (B, C_in, L_in) with its padding
# already zero, pad_in (B, 1, L_in) and pad_out (B, 1, L_out) the padding masks before and
# after the block's stride. `shortcut=False` builds a plain block: no addition and no
# projection module at all (honest parameter counts, DDP without find_unused_parameters).


class BasicConvResBlock(nn.Module):
    """conv(k3, stride) -> BN -> ReLU -> conv(k3) -> BN -> (+ shortcut) -> ReLU (paper).

    Only the first conv strides; the second always has stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: bool = True,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_shortcut(in_channels, out_channels, stride, shortcut, projection)
        self.conv1 = conv3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = conv3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.shortcut = shortcut
        self.projection = projection

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor, pad_in: Tensor, pad_out: Tensor) -> Tensor:
        keep = ~pad_out
        out = F.relu(self.bn1(self.conv1(x)).mul(keep))  # (B, C, L_out)
        out = self.bn2(self.conv2(out)).mul(keep)
        if self.shortcut:
            identity = x if self.projection is None else self.projection(x).mul(keep)
            out = out + identity
        return F.relu(out)


class PreActConvResBlock(nn.Module):
    """BN -> ReLU -> conv(k3, stride) -> BN -> ReLU -> conv(k3) (+ shortcut), no post-add ReLU.

    "Identity Mappings in Deep Residual Networks" ordering. The projection shortcut takes
    the pre-activated input, as in that paper; the network adds a final BN-ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: bool = True,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_shortcut(in_channels, out_channels, stride, shortcut, projection)
        self.bn1 = nn.BatchNorm1d(in_channels)
        self.conv1 = conv3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.conv2 = conv3(out_channels, out_channels)
        self.shortcut = shortcut
        self.projection = projection

    def zero_init_last(self) -> None:
        # Not bn2's gamma: with gamma = beta = 0 the ReLU after it outputs 0 with zero
        # gradient and the branch would never wake up. Zeroing conv2 keeps it trainable.
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor, pad_in: Tensor, pad_out: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x).mul(~pad_in))  # (B, C_in, L_in)
        keep = ~pad_out
        out = F.relu(self.bn2(self.conv1(pre)).mul(keep))  # (B, C, L_out)
        out = self.conv2(out).mul(keep)
        if self.shortcut:
            identity = x if self.projection is None else self.projection(pre).mul(keep)
            out = out + identity
        return out


class BottleneckConvResBlock(nn.Module):
    """1x1 reduce (C // 4) -> k3 (stride) -> 1x1 expand to C, BN after each, ReLU between,
    (+ shortcut) -> ReLU.

    The stride sits on the k3 conv (ResNet v1.5): a strided 1x1 conv would just drop every
    other position. The last conv never strides.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        shortcut: bool = True,
        projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_shortcut(in_channels, out_channels, stride, shortcut, projection)
        mid = max(1, out_channels // 4)
        self.conv1 = conv1(in_channels, mid)
        self.bn1 = nn.BatchNorm1d(mid)
        self.conv2 = conv3(mid, mid, stride)
        self.bn2 = nn.BatchNorm1d(mid)
        self.conv3 = conv1(mid, out_channels)
        self.bn3 = nn.BatchNorm1d(out_channels)
        self.shortcut = shortcut
        self.projection = projection

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor, pad_in: Tensor, pad_out: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)).mul(~pad_in))  # (B, C/4, L_in)
        keep = ~pad_out
        out = F.relu(self.bn2(self.conv2(out)).mul(keep))  # (B, C/4, L_out)
        out = self.bn3(self.conv3(out)).mul(keep)  # (B, C, L_out)
        if self.shortcut:
            identity = x if self.projection is None else self.projection(x).mul(keep)
            out = out + identity
        return F.relu(out)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicConvResBlock,
    "preact": PreActConvResBlock,
    "bottleneck": BottleneckConvResBlock,
}


def _check_shortcut(
    in_channels: int, out_channels: int, stride: int, shortcut: bool, projection: nn.Module | None
) -> None:
    if projection is not None and not shortcut:
        raise ValueError("a projection was given to a block built with shortcut=False")
    if shortcut and projection is None and (stride != 1 or in_channels != out_channels):
        raise ValueError(
            f"identity shortcut impossible for {in_channels}->{out_channels} channels, "
            f"stride {stride}: the stage builder must pass a projection"
        )


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

    def __init__(self, blocks: list[nn.Module], halves: bool, downsample: nn.Module | None) -> None:
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
) -> Stage:
    """Build one stage; decides the projection and hands it to the first block only."""
    block_cls = BLOCKS[block]
    stride = 2 if halves and downsampling == "conv" else 1
    proj = None
    if shortcut and (stride != 1 or in_channels != out_channels):
        proj = projection(in_channels, out_channels, stride)
    blocks = [block_cls(in_channels, out_channels, stride, shortcut, proj)]
    blocks += [block_cls(out_channels, out_channels, 1, shortcut, None) for _ in range(num_blocks - 1)]
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
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim, padding_idx=c.padding_idx)
        self.stem = nn.Conv1d(c.embedding_dim, c.channels[0], 3, padding=1)  # paper: first conv
        in_channels = c.channels[0]
        stages = []
        for i, (out_channels, num_blocks) in enumerate(zip(c.channels, c.layout)):
            stages.append(
                make_stage(c.block, in_channels, out_channels, num_blocks, i > 0, c.downsampling, c.shortcut)
            )
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        # Pre-activation blocks end without BN-ReLU; the network adds it once before the head.
        self.final_norm = nn.BatchNorm1d(in_channels) if c.block == "preact" else None
        self.pool = KMaxPool1d(c.kmax)
        self.head = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c.num_features, c.hidden_size),
                act1=nn.ReLU(),
                drop1=nn.Dropout(c.dropout),
                fc2=nn.Linear(c.hidden_size, c.hidden_size),
                act2=nn.ReLU(),
                drop2=nn.Dropout(c.dropout),
                fc=nn.Linear(c.hidden_size, c.num_classes),
            )
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for convs and hidden linears (paper), BN to identity, zero biases.

        The classifier layer gets std 0.01 instead: He init there gives logits of std ~3 at
        the start (loss far above ln C), and small-data runs spend their first epochs, or
        all of them, undoing it.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.fc.weight, std=0.01)
        if self.config.zero_init_residual:
            # Each block starts as the identity, which helps very deep nets train early.
            for m in self.modules():
                if isinstance(m, tuple(BLOCKS.values())):
                    m.zero_init_last()

    @property
    def min_length(self) -> int:
        """Shortest effective length; shorter texts are right-padded to it."""
        return self.config.min_length

    @property
    def num_features(self) -> int:
        """Width of forward_features' output (channels[-1] * kmax)."""
        return self.config.num_features

    def stage_lengths(self, length: int) -> list[int]:
        """Valid length after each stage for a text of `length` tokens."""
        return self.config.stage_lengths(length)

    def _prepare(self, input_ids: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """Derive/check lengths, pad to min_length; returns (ids, effective lengths)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        B, L = input_ids.shape
        pad_id = self.config.padding_idx
        if lengths is None:
            lengths = (input_ids != pad_id).sum(dim=1)  # right padding assumed
        else:
            lengths = torch.as_tensor(lengths, device=input_ids.device).long()
            if lengths.shape != (B,):
                raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
            if not torch.compiler.is_compiling() and bool(((lengths < 0) | (lengths > L)).any()):
                raise ValueError(f"lengths must lie in [0, {L}] (the padded length), got {lengths.tolist()}")
        if L < self.min_length:
            input_ids = F.pad(input_ids, (0, self.min_length - L), value=pad_id)
        # Positions below min_length that are padding count as real zero content.
        return input_ids, lengths.clamp(min=self.min_length)

    def forward_features(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids (B, L) [+ lengths (B,)] -> flattened k-max features (B, C * kmax)."""
        input_ids, lengths = self._prepare(input_ids, lengths)
        pad = padding_mask(lengths, input_ids.shape[1])  # (B, 1, L)
        keep = ~pad
        x = self.embedding(input_ids).transpose(1, 2).mul(keep)  # (B, E, L)
        x = self.stem(x).mul(keep)  # (B, C0, L)
        for stage in self.stages:
            x, lengths, pad = stage(x, lengths, pad)  # (B, C_i, ceil(L / 2**i))
        if self.final_norm is not None:
            x = F.relu(self.final_norm(x))  # padding left as is: the k-max skips it
        x = self.pool(x, pad)  # (B, C, kmax)
        return x.flatten(1)  # (B, C * kmax)

    def forward_head(self, features: Tensor) -> Tensor:
        """Features (B, C * kmax) -> logits (B, num_classes)."""
        return self.head(features)

    def forward(self, input_ids: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Token ids (B, L), optional lengths (B,) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(input_ids, lengths))


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
