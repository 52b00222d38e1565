"""Generated malformed input (issue 23): every file either trains with exactly its rows and labels or
ends in one UserError line; any string encodes and predicts. Never a traceback, never invented labels.

Profiles: the default (CI) runs a few hundred derandomized examples per property; a nightly-style
run draws more, with random seeds, and saves failing examples in the Hypothesis database
(.hypothesis/ at the repository root), which replays them first next time:

    HYPOTHESIS_PROFILE=nightly .venv/bin/python -m pytest -p no:warnings tests/data/test_generated_inputs.py

Failures found this way become regular tests in test_bad_input.py (and @example cases here).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from vdcnn_res.data import TextDataModule
from vdcnn_res.data.tokenizer import KINDS, build_tokenizer, encode
from vdcnn_res.errors import UserError

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # tests/conftest.py: tiny tensors, one thread
    pytest.mark.timeout(3600 if os.environ.get("HYPOTHESIS_PROFILE") == "nightly" else 300),
]
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile("vdcnn-ci", derandomize=True, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile(
    "nightly",
    deadline=None,
    suppress_health_check=_SLOW_OK,
    database=DirectoryBasedExampleDatabase(str(REPO / ".hypothesis" / "examples")),
    print_blob=True,
)
PROFILE = "nightly" if os.environ.get("HYPOTHESIS_PROFILE") == "nightly" else "vdcnn-ci"
SCALE = 15 if PROFILE == "nightly" else 1


def budget(examples: int) -> settings:
    """`examples` per property in CI, 15 times as many in the nightly profile."""
    return settings(settings.get_profile(PROFILE), max_examples=examples * SCALE)


MAX_LENGTH = 256
INT = re.compile(r"[+-]?[0-9]+")
BLANKS = st.sampled_from(["", " ", "  ", "\t", "\u3000", "\n"])
# Any character a UTF-8 file can hold: separators, quotes, newlines, NUL, BOM, emoji, CJK ...
UTF8 = st.characters(codec="utf-8")
TEXTS = st.one_of(
    st.text(UTF8, max_size=20),
    st.sampled_from(["", "a,b", 'say "hi"', "two\nlines", "tab\there", "\ufeffbom", "nul\x00nul", "cr\rlf\r\n"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "😀"]), st.integers(1000, 120_000)),
)
LABELS = st.one_of(
    st.sampled_from(["a", "b", "c", "Sports", "sports", "0", "1", "2", "01", "-1", "٣", "a b", "x,y", '"q"']),
    st.text(UTF8, min_size=1, max_size=6),
)


def run(path: str, **kwargs) -> tuple[list[str], Counter, list[str]]:
    """(label names, Counter of (text bytes, label name) over the training rows, warnings), or UserError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = TextDataModule(train=path, valid_fraction=0.0, tokenizer="byte", max_length=MAX_LENGTH, batch_size=4,
                            **kwargs)
        dm.setup("fit")
        seen = Counter()
        for batch in dm.train_dataloader():
            for k in range(len(batch["labels"])):
                ids = batch["input_ids"][k, : int(batch["lengths"][k])].tolist()
                seen[bytes(i - 2 for i in ids), dm.label_names[int(batch["labels"][k])]] += 1
    return dm.label_names, seen, [str(w.message) for w in caught]


def expected_labels(raw: list[object]) -> tuple[list[str], list[str]] | str:
    """(class names, each kept row's class) for label cells already known present, or an error word."""
    keys = [v.strip() if isinstance(v, str) else ("true" if v else "false") if isinstance(v, bool) else v for v in raw]
    if any(isinstance(k, float) for k in keys):
        return "floats"
    if all(isinstance(k, int) or (isinstance(k, str) and INT.fullmatch(k)) for k in keys):
        ints = sorted({int(k) for k in keys})
        if ints[0] < 0 or ints[-1] != len(ints) - 1:
            return "0..K-1"
        names, rows = [str(i) for i in ints], [str(int(k)) for k in keys]
    else:
        names, rows = sorted({str(k) for k in keys}), [str(k) for k in keys]
    return (names, rows) if len(set(rows)) >= 2 else "single class"


def check(
    path: str, texts: list[bytes], labels: list[object], error: str | None, tolerated: tuple[str, ...] = (), **kwargs
) -> None:
    """The property: the expected classes and rows, or one UserError line (with ``error`` in it).

    ``tolerated``: words of one-line errors accepted instead of the expected classes (a known limit).
    """
    present = [lab is not None and not (isinstance(lab, str) and not lab.strip()) for lab in labels]
    if error is None and not all(present) and kwargs.get("missing_labels", "error") == "error":
        error = "have no label"
    if error is None and not any(present):
        error = "has no rows" if not labels else "no labelled row is left"
    outcome = error if error is not None else expected_labels([lab for lab, p in zip(labels, present) if p])
    note(f"expected: {outcome!r}")
    try:
        names, seen, caught = run(path, **kwargs)
    except UserError as err:
        assert "\n" not in str(err), str(err)
        if any(words in str(err) for words in tolerated):
            return
        assert isinstance(outcome, str), f"unexpected error: {err}"
        assert outcome in str(err), f"expected {outcome!r}, got: {err}"
        return
    assert not isinstance(outcome, str), f"expected an error with {outcome!r}, got classes {names}"
    classes, row_labels = outcome
    assert names == classes
    kept = [t for t, p in zip(texts, present) if p]
    assert seen == Counter(zip(kept, row_labels))
    if not all(present):
        assert any(m.startswith(f"dropped {len(labels) - sum(present)} of {len(labels)} rows") for m in caught), caught


# ----------------------------------------------------------------------------- CSV / TSV


@dataclass
class Table:
    fmt: str
    texts: list[str]
    labels: list[str]  # cells as written ('' or blanks: missing)
    header: list[str] | None  # None: header-less, read with data.column_names
    extra: dict[int, int] = field(default_factory=dict)  # row -> extra fields appended
    short: set[int] = field(default_factory=set)  # rows whose label cell (last) is left out


@st.composite
def tables(draw) -> tuple[Table, bytes, str | None, dict]:
    fmt = draw(st.sampled_from(["csv", "tsv"]))
    pool = draw(st.lists(LABELS, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(0, 9))
    texts = draw(st.lists(TEXTS, min_size=n, max_size=n))
    labels = [
        draw(st.one_of(
            st.builds(lambda a, lab, b: a + lab + b, BLANKS, st.sampled_from(pool), BLANKS),
            st.sampled_from(pool),
            BLANKS,
        ))
        for _ in range(n)
    ]
    layout = draw(st.sampled_from(["text,label", "label,text", "text,label,extra", "text,label,text", "label,,text",
                                   "headerless", "no label column"]))
    header = None if layout == "headerless" else layout.split(",") if layout != "no label column" else ["text", "x"]
    columns = ["label", "text"] if header is None else header
    table = Table(fmt, texts, labels, header)
    if n and draw(st.booleans()) and draw(st.booleans()):
        row = draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            table.extra[row] = 1
        elif columns[-1] == "label":
            table.short.add(row)
    out = io.StringIO()
    writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t",
                        quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    if header is not None:
        writer.writerow(header)
    for i, (text, label) in enumerate(zip(texts, labels)):
        cells = {"text": text, "label": label}
        row = [cells.get(c, "filler") for c in columns]
        seen_text = False
        for j, c in enumerate(columns):  # a second 'text' column holds something else
            if c == "text":
                row[j] = text if not seen_text else "other"
                seen_text = True
        if i in table.short:
            row = row[:-1]
        writer.writerow(row + ["surplus"] * table.extra.get(i, 0))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "mixed"]))
    content = out.getvalue()
    error = None
    if encoding in ("latin-1", "mixed"):
        lines = content.splitlines(keepends=True)
        target = content if encoding == "latin-1" else draw(st.sampled_from(lines)) if lines else ""
        try:
            bad = target.encode("latin-1")
        except UnicodeEncodeError:
            bad = target.encode("utf-8")
        data = content.encode("utf-8").replace(target.encode("utf-8"), bad, 1) if target else content.encode()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            error = "is not UTF-8"
        else:
            assume(data == content.encode("utf-8"))  # latin-1 bytes that happen to be valid UTF-8
    else:
        data = content.encode(encoding)
    if error is None and table.extra:
        error = "fields"
    if error is None and n and header is not None and "label" not in header:
        error = "no column 'label'"
    if error is None and n and header is None and [labels[0], texts[0]] == ["label", "text"] and 0 not in table.short:
        error = "header row equal to data.column_names"
    kwargs = {"file_format": None, "missing_labels": draw(st.sampled_from(["error", "drop"]))}
    if header is None:
        kwargs["column_names"] = ["label", "text"]
    if table.extra:  # with bytes that are not UTF-8 too, the reader may name either fault (found by the nightly run)
        kwargs["tolerated"] = ("fields",)
    return table, data, error, kwargs


@budget(150)
@given(tables())
@example((Table("tsv", ["x", "y", "z"], ["a", "", "b"], ["text", "label"]),
          b"text\tlabel\nx\ta\ny\t\nz\tb\n", None, {"missing_labels": "error"}))  # the finding
def test_generated_csv_and_tsv_files(case):
    table, data, error, kwargs = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"train.{table.fmt}")
        Path(path).write_bytes(data)
        labels = ["" if i in table.short else lab for i, lab in enumerate(table.labels)]
        texts = [t.encode("utf-8")[:MAX_LENGTH] for t in table.texts]
        if not table.texts and error is None:
            error = "has no rows"
        check(path, texts, labels, error, **{k: v for k, v in kwargs.items() if v is not None})


# ----------------------------------------------------------------------------- JSON / JSONL

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5,
)
MISSING = object()


@st.composite
def json_files(draw) -> tuple[str, bytes, list, list, str | None, tuple[str, ...]]:
    n = draw(st.integers(0, 8))
    text_kind = draw(st.sampled_from(["str", "str", "mixed"]))
    label_kind = draw(st.sampled_from(["str", "int", "mixed", "bool"]))
    pool = draw(st.lists(LABELS, min_size=1, max_size=3, unique=True))
    rows, texts, labels = [], [], []
    extra_types: set[type] = set()
    for _ in range(n):
        text = draw(TEXTS if text_kind == "str" else st.one_of(TEXTS, JSON_VALUES, st.just(MISSING)))
        label = draw({
            "str": st.one_of(st.sampled_from(pool), BLANKS),
            "int": st.integers(0, 2),
            "bool": st.booleans(),
            "mixed": st.one_of(st.sampled_from(pool), st.integers(0, 2), st.none(), st.just(MISSING), BLANKS),
        }[label_kind])
        row = {k: v for k, v in (("text", text), ("label", label)) if v is not MISSING}
        if draw(st.booleans()) and draw(st.booleans()):
            # Scalars only: pyarrow refuses a column of lists whose element types differ (reported, not fixed).
            row["extra"] = draw(JSON_SCALARS | st.text(max_size=5))
            extra_types.add(type(row["extra"]))
        rows.append(row)
        texts.append(text)
        labels.append(None if label is MISSING else label)
    extra_kinds = len(extra_types - {type(None)})
    layout = draw(st.sampled_from(["jsonl", "jsonl", "json"]))
    ascii_only = draw(st.booleans())
    if layout == "json":
        content = json.dumps(rows, ensure_ascii=ascii_only)
    else:
        blank = draw(st.sampled_from(["", "\n"]))
        content = "".join(blank + json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)
    bom = draw(st.booleans())
    error = None
    if n and all("text" not in r for r in rows):
        error = "no column 'text'"
    elif n and all("label" not in r for r in rows):
        error = "no column 'label'"
    elif not n:
        error = ""  # some one-line error: no rows, or no such column in an empty JSON array
    # A column whose values change type is refused in one line naming it ("changed from string to
    # number" or "Conversion failed for column"): the `datasets` fallback for it crashed the process
    # (segfault) on generated files.
    mixed = "mixed" in (label_kind, text_kind) or extra_kinds > 1
    tolerated = ("changed from", "Conversion failed for column") if mixed else ()
    return layout, (b"\xef\xbb\xbf" if bom else b"") + content.encode("utf-8"), texts, labels, error, tolerated


def _text_bytes(value: object) -> bytes | None:
    """The bytes the model must see for a string text; None for other values (converted, only counted)."""
    return value.encode("utf-8")[:MAX_LENGTH] if isinstance(value, str) else None


@budget(120)
@given(json_files(), st.sampled_from(["error", "drop"]))
@example(("jsonl", b'\n{"text": "", "label": "a"}\n\n{"text": "", "label": 0}\n', ["", ""], ["a", 0], None,
          ("changed from",)), "error")  # found by the nightly profile
def test_generated_json_files(case, missing_labels):
    layout, data, texts, labels, error, tolerated = case
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"train.{layout}")
        Path(path).write_bytes(data)
        if all(isinstance(t, str) for t in texts):
            check(path, [_text_bytes(t) for t in texts], labels, error, tolerated, missing_labels=missing_labels)
            return
        try:
            names, seen, caught = run(path, missing_labels=missing_labels)
        except UserError as err:
            assert "\n" not in str(err), str(err)
            return
        present = [lab is not None and not (isinstance(lab, str) and not lab.strip()) for lab in labels]
        outcome = expected_labels([lab for lab, p in zip(labels, present) if p])
        assert not isinstance(outcome, str), f"expected an error with {outcome!r}, got classes {names}"
        assert names == outcome[0]
        assert sum(seen.values()) == sum(present)
        odd = [t for t, p in zip(texts, present) if p and not isinstance(t, str)]
        if odd:
            assert any("text" in m and "rows had" in m or "row had" in m for m in caught), caught


# ----------------------------------------------------------------------------- any string


ANY_STRING = st.one_of(
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=40),
    st.sampled_from(["", "\x00", "\ud800", "a\udfffb", "\ud83d\ude00", "İ", "ß", "\u0301", "x" * 1_000_000]),
)


@budget(300)
@given(st.lists(ANY_STRING, max_size=4), st.sampled_from(KINDS), st.integers(1, 300))
def test_tokenizers_encode_any_string(texts, kind, max_length):
    tok = build_tokenizer(kind, [*texts, "a"] if kind == "learned" else None)
    ids = encode(tok, texts, max_length)
    assert len(ids) == len(texts)
    vocab = tok.get_vocab_size()
    for text, row in zip(texts, ids):
        assert len(row) <= max_length and all(1 <= i < vocab for i in row)  # never the padding id
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        if kind == "byte":
            assert bytes(i - 2 for i in row) == joined.encode("utf-8")[:max_length]
        elif not text:
            assert row == []


@pytest.fixture(scope="module")
def predictor(ckpt):
    from vdcnn_res import Predictor

    return Predictor.from_checkpoint(ckpt, bf16=False)


@budget(100)
@given(st.lists(ANY_STRING, min_size=1, max_size=5))
@example(["\x00", "\ud800", "x" * 1_000_000, ""])
def test_predictor_accepts_any_string(predictor, texts):
    probs = predictor.predict_proba(texts)
    assert probs.shape == (len(texts), len(predictor.label_names)) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    assert [p["label"] for p in predictor.predict(texts)] == [predictor.label_names[i] for i in probs.argmax(1)]


# ----------------------------------------------------------------------------- the command line


@pytest.mark.usefixtures("in_repo")
def test_cli_reports_a_missing_label_in_one_line(tmp_path, capsys):
    from fixtures.tiny import QUIET, TINY

    from vdcnn_res.cli import main

    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\nx\ta\ny\t\nz\tb\n", encoding="utf-8")
    args = ["fit", *TINY, *QUIET, "--data.train", str(train), "--data.valid=null", "--data.column_names=null",
            "--data.text_columns=[text]", "--data.label_offset=0", "--data.classes_file=null",
            "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and not any(line.startswith("Traceback") for line in err)
    assert err[-1].startswith("vdcnn-res: error: 1 of 3 rows of the train split have no label in column 'label'")
