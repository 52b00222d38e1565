"""Model configuration: the `ModelConfig` schema and the table of paper variants.

Plain stdlib on purpose: the CLI exposes `ModelConfig` as `model.arch.*`, and the same
dict is saved as `config.json` next to exported weights, so it must round-trip through
`dataclasses.asdict` and JSON (tuples come back as lists; `__post_init__` converts them).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..errors import UserError

__all__ = ["VARIANTS", "BLOCK_TYPES", "DOWNSAMPLING_TYPES", "HEAD_TYPES", "ModelConfig"]

# Depth -> residual blocks per stage (Conneau et al. 2017, Table 2). A block holds two
# k=3 convs, so depth = 2 * sum(blocks) + 1 (the stem conv), fully connected layers excluded.
VARIANTS: dict[int, tuple[int, ...]] = {
    9: (1, 1, 1, 1),
    17: (2, 2, 2, 2),
    29: (5, 5, 2, 2),
    49: (8, 8, 5, 3),
}

BlockType = Literal["basic", "preact", "bottleneck"]
Downsampling = Literal["conv", "maxpool", "kmax", "none"]
BLOCK_TYPES: tuple[str, ...] = get_args(BlockType)
DOWNSAMPLING_TYPES: tuple[str, ...] = get_args(Downsampling)
HeadNorm = Literal["auto", "none", "batch", "layer"]
HEAD_NORM_TYPES: tuple[str, ...] = ("none", "batch", "layer")  # what "auto" resolves among
HeadType = Literal["kmax_mlp", "global_avg"]
HEAD_TYPES: tuple[str, ...] = get_args(HeadType)
# embedding_dim "auto": the paper's 16 for an alphabet (up to ALPHABET_SIZE symbols, bytes
# included), WIDE_EMBEDDING_DIM for a learned vocabulary larger than that (docs/results.md §16).
ALPHABET_SIZE = 256
PAPER_EMBEDDING_DIM = 16
WIDE_EMBEDDING_DIM = 64


def _positive_int_tuple(name: str, value: object) -> tuple[int, ...]:
    """Validate a non-empty sequence of positive ints (YAML/JSON lists accepted)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise UserError(f"{name} must be a sequence of positive ints, got {value!r}")
    items = tuple(value)  # type: ignore[arg-type]
    if not items:
        raise UserError(f"{name} must have at least one stage, got {value!r}")
    for item in items:
        # bool is an int subclass; True as a block count is almost certainly a mistake.
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise UserError(f"{name} must contain positive ints only, got {value!r}")
    return items


@dataclass
class ModelConfig:
    """Architecture of a VDCNN classifier; validated at construction time.

    Defaults are the paper's depth-9 text network with max-pool downsampling and shortcuts on.
    With ``input_channels > 0`` the stem reads numeric series of that many channels instead of
    token ids (``vocab_size``, ``padding_idx`` and ``embedding_dim`` are then unused); every
    layer after the stem is the same.
    """

    num_classes: int = 2  # output logits; linked from the data module by the CLI
    input_channels: int = 0  # 0 = token ids (text); C > 0 = numeric series of C channels; linked by the CLI
    vocab_size: int = 72  # embedding rows; linked from the tokenizer by the CLI
    padding_idx: int = 0  # id used for right padding; its embedding is the zero vector
    # Width of the token lookup table; "auto": the paper's 16 for an alphabet of <= 256 symbols,
    # 64 for a larger (learned) vocabulary; resolved with ``vocab_size`` (``resolved()``).
    embedding_dim: int | Literal["auto"] = "auto"
    depth: int = 9  # paper variant (a key of VARIANTS); ignored when blocks_per_stage is set
    blocks_per_stage: tuple[int, ...] | None = None  # custom layout; overrides depth
    channels: tuple[int, ...] = (64, 128, 256, 512)  # feature maps per stage (paper)
    block: BlockType = "basic"  # basic = paper; preact / bottleneck are extensions
    shortcut: bool = True  # the ablation switch: residual shortcuts on/off
    downsampling: Downsampling = "maxpool"  # how length halves between stages (paper's best); none keeps it
    kernel_sizes: tuple[int, ...] = (3, 3)  # the convs of a basic block (paper: two k=3); ResNet for series: 8, 5, 3
    head: HeadType = "kmax_mlp"  # kmax_mlp = the paper's k-max + MLP; global_avg = masked mean over time
    kmax: int = 8  # k of the head's k-max pooling (paper: 8 -> 512 * 8 = 4096 features)
    hidden_size: int = 2048  # width of the two hidden fully connected layers (paper); 0 = none, one linear layer
    dropout: float = 0.0  # dropout after each hidden fc layer; the paper uses none
    # In training, the CNN's input at each position (a character's embedding plus its n-grams', or a
    # series' time step) is zeroed with this probability (token dropout); 0 = the paper's, none.
    input_dropout: float = 0.0
    zero_init_residual: bool = False  # zero the last BN gamma of each block (starts as identity)
    # Normalisation of the k-max features before fc1 (docs/longdoc_plateau.md): "batch" centres
    # each of the channels * kmax features. Without it they are all positive with a large common
    # mean, AdamW moves every fc1 pre-activation the same way, and on long texts fc1 dies.
    # "auto": "batch" with the n-gram bag (its calibrated branch weights keep a live CNN from
    # costing short texts, docs/longdoc_plateau.md §13), "none" for the pure CNN (the paper's);
    # resolved when a model is built (``resolved()``), so checkpoints store the concrete choice.
    head_norm: HeadNorm = "auto"
    # Beyond the paper: a bag of hashed character n-grams (ngrams.py) whose linear logits are
    # added to the CNN's; () = off (the pure CNN). E.g. (1, 2, 3, 4, 5) with 2**18 buckets.
    ngram_orders: tuple[int, ...] = ()
    ngram_buckets: int = 262144  # rows of the n-gram embedding table (hash collisions share a row)
    ngram_dim: int = 64  # width of the n-gram embedding
    ngram_dropout: float = 0.5  # dropout on the mean n-gram embedding (fastText-style bags memorise without it)
    # The CNN's own input (text only): at each position, the character's embedding plus hashed
    # embeddings of the n-grams of these orders that start there (() = characters only, the paper).
    input_ngram_orders: tuple[int, ...] = ()
    input_ngram_buckets: int = 262144  # rows of that table (embedding_dim wide)
    # BatchNorm statistics in training over valid positions only (layers.MaskedBatchNorm1d), so
    # an input's output does not depend on its batch-mates' padding and eval-mode statistics
    # match training's; False = torch's BatchNorm over every position, padding included (files
    # written before the field existed load with False: what they were trained with).
    masked_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise UserError(f"num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 2:
            raise UserError(f"num_classes must be >= 2, got {self.num_classes}")
        if isinstance(self.input_channels, bool) or not isinstance(self.input_channels, int) or self.input_channels < 0:
            raise UserError(f"input_channels must be an int >= 0 (0 = token ids), got {self.input_channels!r}")
        if not self.input_channels and not 0 <= self.padding_idx < self.vocab_size:
            raise UserError(
                f"need vocab_size > padding_idx >= 0, got vocab_size={self.vocab_size}, "
                f"padding_idx={self.padding_idx}"
            )
        if self.embedding_dim != "auto" and (
            isinstance(self.embedding_dim, bool) or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1
        ):
            raise UserError(f"embedding_dim must be an int >= 1 or 'auto', got {self.embedding_dim!r}")
        if self.kmax < 1:
            raise UserError(f"kmax must be >= 1, got {self.kmax}")
        if self.hidden_size < 0:
            raise UserError(f"hidden_size must be >= 0 (0 = no hidden layers), got {self.hidden_size}")
        if self.head not in HEAD_TYPES:
            raise UserError(f"unknown head {self.head!r}; valid choices: {list(HEAD_TYPES)}")
        for name in ("dropout", "input_dropout", "ngram_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.head_norm not in get_args(HeadNorm):
            raise UserError(f"unknown head_norm {self.head_norm!r}; valid choices: {list(get_args(HeadNorm))}")
        if self.block not in BLOCK_TYPES:
            raise UserError(f"unknown block {self.block!r}; valid choices: {list(BLOCK_TYPES)}")
        if self.downsampling not in DOWNSAMPLING_TYPES:
            raise UserError(
                f"unknown downsampling {self.downsampling!r}; "
                f"valid choices: {list(DOWNSAMPLING_TYPES)}"
            )

        self.channels = _positive_int_tuple("channels", self.channels)
        self.kernel_sizes = _positive_int_tuple("kernel_sizes", self.kernel_sizes)
        if self.kernel_sizes != (3, 3) and self.block != "basic":
            raise UserError(f"kernel_sizes {list(self.kernel_sizes)} needs block=basic; {self.block} blocks have fixed kernels")
        if self.downsampling == "conv" and self.kernel_sizes[0] % 2 == 0:
            raise UserError(
                f"downsampling=conv strides the first conv of a block, which needs an odd kernel; "
                f"got kernel_sizes {list(self.kernel_sizes)}"
            )
        if self.input_channels and self.ngram_orders:
            raise UserError("ngram_orders hash token ids; a series model (input_channels > 0) cannot use them")
        self.ngram_orders = _positive_int_tuple("ngram_orders", self.ngram_orders) if self.ngram_orders else ()
        if self.input_channels and self.input_ngram_orders:
            raise UserError("input_ngram_orders hash token ids; a series model (input_channels > 0) cannot use them")
        self.input_ngram_orders = (
            _positive_int_tuple("input_ngram_orders", self.input_ngram_orders) if self.input_ngram_orders else ()
        )
        if self.input_ngram_orders and self.input_ngram_buckets < 1:
            raise UserError(f"input_ngram_buckets must be >= 1, got {self.input_ngram_buckets}")
        if self.ngram_orders:
            if self.ngram_buckets < 1 or self.ngram_dim < 1:
                raise UserError(
                    f"ngram_buckets and ngram_dim must be >= 1, got {self.ngram_buckets} and {self.ngram_dim}"
                )
        if self.blocks_per_stage is None:
            if self.depth not in VARIANTS:
                raise UserError(
                    f"unknown depth {self.depth!r}; valid choices: {sorted(VARIANTS)} "
                    "(or give a custom blocks_per_stage)"
                )
        else:
            self.blocks_per_stage = _positive_int_tuple("blocks_per_stage", self.blocks_per_stage)
        if len(self.layout) != len(self.channels):
            raise UserError(
                f"blocks per stage {self.layout} and channels {self.channels} need one entry "
                f"per stage (got {len(self.layout)} and {len(self.channels)})"
            )

        if self.zero_init_residual and not self.shortcut:
            # Without a shortcut a zero-initialised block outputs a constant: the net is dead.
            raise UserError(
                "zero_init_residual=True needs shortcut=True: without a shortcut the "
                "zero-initialised blocks would output constants and block all signal"
            )

    @classmethod
    def from_dict(cls, data: Any, strict: bool = True) -> ModelConfig:
        """The one way a dict (YAML, checkpoint hparams, an exported config.json) becomes a config.

        Missing keys take their defaults (files written before a field existed keep loading),
        except where the default changed what a model computes: files from before ``head_norm``
        had no head norm (``"none"``), files from before ``masked_norm`` plain BatchNorm (False),
        files without ``embedding_dim`` the paper's 16.
        ``strict`` refuses unknown keys and values of the wrong JSON type (lists stand for
        tuples); the dataclass then checks the values themselves. Errors are UserErrors.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise UserError(f"the architecture must be a JSON object (mapping) of ModelConfig fields, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown and strict:
            raise UserError(f"unknown architecture key(s) {unknown}; valid keys: {known}")
        if strict:
            hints = get_type_hints(cls)
            for key, value in data.items():
                if not _matches(value, hints[key]):
                    raise UserError(
                        f"architecture.{key} must be {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
                    )
        old_defaults = {"head_norm": "none", "masked_norm": False, "embedding_dim": PAPER_EMBEDDING_DIM}
        return cls(**{**old_defaults, **{k: v for k, v in data.items() if k in known}})

    def resolved(self) -> ModelConfig:
        """This config with every "auto" made concrete (``head_norm``: "batch" with the n-gram bag,
        else "none"; ``embedding_dim``: 16 for <= 256 symbols, else 64): what a built model and a
        checkpoint hold."""
        concrete = {}
        if self.head_norm == "auto":
            concrete["head_norm"] = "batch" if self.ngram_orders else "none"
        if self.embedding_dim == "auto":
            wide = not self.input_channels and self.vocab_size > ALPHABET_SIZE
            concrete["embedding_dim"] = WIDE_EMBEDDING_DIM if wide else PAPER_EMBEDDING_DIM
        return replace(self, **concrete) if concrete else self

    def widened_note(self) -> str | None:
        """The line a fit prints when ``embedding_dim: auto`` departs from the paper's width, else None."""
        width = self.resolved().embedding_dim
        if self.embedding_dim != "auto" or width == PAPER_EMBEDDING_DIM:
            return None
        return (
            f"model.arch.embedding_dim=auto: {width} (a vocabulary of {self.vocab_size:,} symbols, more than "
            f"{ALPHABET_SIZE}; set a number to override)"
        )

    @property
    def layout(self) -> tuple[int, ...]:
        """Resolved residual blocks per stage (custom layout or the depth's variant)."""
        if self.blocks_per_stage is not None:
            return tuple(self.blocks_per_stage)
        return VARIANTS[self.depth]

    @property
    def num_stages(self) -> int:
        return len(self.channels)

    @property
    def convs_per_block(self) -> int:
        """Convolutions on a residual block's branch: one per kernel size (basic), 2 (preact), 3 (bottleneck)."""
        return {"basic": len(self.kernel_sizes), "preact": 2, "bottleneck": 3}[self.block]

    @property
    def conv_layers(self) -> int:
        """Convolutional layers on the main path, the stem's included: the paper's "depth"."""
        return 1 + self.convs_per_block * sum(self.layout)

    @property
    def halvings(self) -> int:
        """How often the length halves: between consecutive stages, unless downsampling is none."""
        return 0 if self.downsampling == "none" else self.num_stages - 1

    @property
    def min_length(self) -> int:
        """Shortest valid length that still leaves the head enough positions.

        Length halves (rounding up) between consecutive stages, so the last stage sees
        ceil(L / 2**halvings) positions; the k-max head needs `kmax` of them, the global
        average one. Shorter inputs are right-padded to this (the padding counts as content).
        """
        return self.kmax * 2**self.halvings if self.head == "kmax_mlp" else 1

    @property
    def num_features(self) -> int:
        """Width of the CNN's flattened head input: channels[-1] * kmax (k-max) or channels[-1] (average)."""
        return self.channels[-1] * (self.kmax if self.head == "kmax_mlp" else 1)

    def stage_lengths(self, length: int) -> list[int]:
        """Valid length after each stage for an input of `length` positions (after min padding)."""
        n = max(int(length), self.min_length)
        out = [n]
        for _ in range(self.num_stages - 1):
            n = n if self.downsampling == "none" else math.ceil(n / 2)
            out.append(n)
        return out


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a ModelConfig annotation (JSON lists stand for tuples)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str) and value in get_args(hint)
    if origin is tuple:
        item = get_args(hint)[0]
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
