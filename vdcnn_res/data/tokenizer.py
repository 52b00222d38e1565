"""Character-level tokenizers, each a plain `tokenizers.Tokenizer`.

Three kinds, all with one id per input unit (character or byte), so positions never shift:

- ``char``:    the fixed alphabet of Zhang et al. (2015), lower-cased, plus space; anything
               else maps to ``<unk>`` (never dropped).
- ``learned``: the most frequent characters of the training texts (any script, e.g. Chinese).
- ``byte``:    the 256 UTF-8 byte values; no unknowns, no vocabulary to learn.

Every setting that changes the ids (lower-casing, the vocabulary) lives inside the tokenizer's
JSON, so the JSON stored in a checkpoint alone reproduces the training-time encoding.

Implementation: a BPE model with an empty merge list and no pre-tokenizer splits the whole
text into single characters and maps each to its id or to ``<unk>``; it is the fastest
character splitter `tokenizers` offers (REFERENCE numbers in docs/performance.md).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from vdcnn_res.errors import MissingFileError, UserError

__all__ = [
    "ALPHABET",
    "KINDS",
    "PAD_ID",
    "PAD_TOKEN",
    "UNK_ID",
    "UNK_TOKEN",
    "build_tokenizer",
    "encode",
    "load_tokenizer",
]

KINDS: tuple[str, ...] = ("char", "learned", "byte")

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# Zhang et al. (2015) list 70 characters: 69 printable ones, '-' among them twice, plus newline;
# deduplicated that is 68 + newline. ASCII quotes on purpose: PDF copies carry typographic ones.
_ZHANG_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{}\n"
ALPHABET: str = "".join(dict.fromkeys(_ZHANG_ALPHABET))

# Default case folding per kind: the paper lower-cases; a learned or byte vocabulary keeps case.
_DEFAULT_LOWERCASE = {"char": True, "learned": False, "byte": False}

# Characters kept beyond max_length before encoding, so that a normalizer looking at the
# following characters (context-dependent case mappings) sees the same context as untruncated.
_TRUNCATION_SLACK = 16


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable character table that `tokenizers`' ByteLevel uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _make(vocab_chars: Iterable[str], lowercase: bool, byte_level: bool = False) -> Tokenizer:
    vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID}
    for ch in vocab_chars:
        vocab.setdefault(ch, len(vocab))
    # <pad>/<unk> stay plain vocabulary entries, not added special tokens: added tokens are
    # matched in the raw text, so a text containing "<pad>" would encode to the pad id.
    # With no merges BPE never produces a multi-character entry, so they are unreachable.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN, fuse_unk=False))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:
        tok.decoder = decoders.Fuse()
    return tok


def _learn_chars(
    texts: Iterable[str], lowercase: bool, max_vocab: int | None, min_frequency: int
) -> list[str]:
    """Characters by descending frequency (ties by code point), after the tokenizer's own normalizer."""
    normalizer = normalizers.Lowercase() if lowercase else None
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        n_texts += 1
        counts.update(normalizer.normalize_str(text) if normalizer else text)
    if n_texts == 0:
        raise UserError("the learned tokenizer needs training texts, got none")
    for unit in [c for c in counts if "\ud800" <= c <= "\udfff"]:  # surrogates: see `encode`
        counts["\ufffd"] += counts.pop(unit)
    ranked = sorted((c for c, n in counts.items() if n >= min_frequency), key=lambda c: (-counts[c], c))
    if max_vocab is not None:
        ranked = ranked[: max_vocab - 2]
    if not ranked:
        raise UserError(f"no character occurs at least min_frequency={min_frequency} times in the training texts")
    return ranked


def build_tokenizer(
    kind: str,
    texts: Iterable[str] | None = None,
    *,
    lowercase: bool | None = None,
    max_vocab: int | None = None,
    min_frequency: int = 1,
) -> Tokenizer:
    """Build a ``char``, ``learned`` or ``byte`` tokenizer (pad id 0, unknown id 1).

    ``texts`` (the training split) is required for ``learned`` and ignored otherwise.
    ``lowercase=None`` takes the kind's default (``char``: True, others: False).
    ``max_vocab`` counts every id, the two specials included; ``max_vocab`` and
    ``min_frequency`` only apply to ``learned``.
    """
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(KINDS)}")
    if lowercase is None:
        lowercase = _DEFAULT_LOWERCASE[kind]
    if kind != "learned" and (max_vocab is not None or min_frequency != 1):
        raise UserError(f"max_vocab / min_frequency only apply to the 'learned' tokenizer, not {kind!r}")
    if kind == "char":
        return _make([" ", *ALPHABET], lowercase)
    if kind == "byte":
        table = _bytes_to_unicode()
        return _make([table[b] for b in range(256)], lowercase, byte_level=True)
    if texts is None:
        raise UserError("the 'learned' tokenizer needs the training texts (texts=...)")
    if max_vocab is not None and max_vocab < 3:
        raise UserError(f"max_vocab={max_vocab} leaves no room for characters next to <pad> and <unk>; use >= 3")
    if min_frequency < 1:
        raise UserError(f"min_frequency must be >= 1, got {min_frequency}")
    return _make(_learn_chars(texts, lowercase, max_vocab, min_frequency), lowercase)


def encode(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Ids of each text, truncated to ``max_length`` (batched; an empty text gives ``[]``).

    The raw text is cut first, so a 1,000,000-character text costs as much as a short one;
    every unit yields at least one id, so cutting at ``max_length`` (+ slack) loses nothing kept.
    Surrogate code points (which only a Python string can hold, never UTF-8 text) are joined
    where they form a pair and otherwise become U+FFFD, i.e. ``<unk>`` unless it is in the vocabulary.
    """
    if max_length < 1:
        raise UserError(f"max_length must be >= 1, got {max_length}")
    clipped = [t[: max_length + _TRUNCATION_SLACK] for t in texts]
    try:
        encodings = tokenizer.encode_batch(clipped, add_special_tokens=False)
    except TypeError:  # `tokenizers` takes only strings that encode to UTF-8
        clipped = [_without_surrogates(t) for t in clipped]
        encodings = tokenizer.encode_batch(clipped, add_special_tokens=False)
    return [e.ids[:max_length] for e in encodings]


def _without_surrogates(text: str) -> str:
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def load_tokenizer(path_or_json: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer.json`` path, a folder holding one, or its JSON string."""
    text = os.fspath(path_or_json)
    if text.lstrip().startswith("{"):
        return Tokenizer.from_str(text)
    path = os.path.join(text, "tokenizer.json") if os.path.isdir(text) else text
    if not os.path.isfile(path):
        raise MissingFileError(f"no tokenizer file at {path!r}; give a tokenizer.json path, its folder, or its JSON string")
    return Tokenizer.from_file(path)
