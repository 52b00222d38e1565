"""Local data files: resolve paths and globs, infer the format, read them (CSV, TSV and Parquet
with `datasets`; JSON and JSON Lines with pyarrow, one block per file: see `_load_json`).

Every user mistake (no such file, a folder, an unknown extension, text that is not UTF-8, a
file `datasets` cannot parse) becomes a one-line :class:`~vdcnn_res.errors.UserError` that
names the ``data.*`` argument; a file without data rows raises :class:`NoRows` so that the
caller can name the split.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob
import gzip
import io
import json
import lzma
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import datasets
import datasets.table
import pandas as pd
import pyarrow as pa
import pyarrow.json as paj

from vdcnn_res.errors import MissingFileError, UserError

__all__ = ["FORMATS", "NoRows", "infer_format", "load_files", "locate_row", "read_header", "resolve_files"]

FORMATS: tuple[str, ...] = ("csv", "tsv", "json", "parquet")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
_SEPARATORS = {"csv": ",", "tsv": "\t"}


class NoRows(Exception):
    """The files hold no data rows (the caller names the split)."""


def resolve_files(pattern: str, arg: str) -> list[str]:
    """Absolute paths of the file or the files a glob matches (sorted); ``arg`` names the setting."""
    path = os.path.expanduser(pattern)
    if glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise MissingFileError(f"{arg}: no file matches the glob {pattern!r}")
        return [os.path.abspath(f) for f in files]
    if os.path.isdir(path):
        raise MissingFileError(f"{arg}: {pattern!r} is a folder; give a file or a glob such as '{pattern}/*.csv'")
    if not os.path.isfile(path):
        raise MissingFileError(f"{arg}: file not found: {pattern!r}")
    return [os.path.abspath(path)]


def infer_format(files: list[str], arg: str) -> str:
    """One of :data:`FORMATS` from the files' extensions (compression suffixes ignored)."""
    formats = set()
    for f in files:
        name = f.lower()
        for suffix in _COMPRESSIONS:
            name = name.removesuffix(suffix)
        fmt = _EXTENSIONS.get(os.path.splitext(name)[1])
        if fmt is None:
            raise UserError(
                f"{arg}: cannot tell the format of {f!r} from its extension; supported: "
                f"{', '.join(sorted(_EXTENSIONS))} (optionally {', '.join(_COMPRESSIONS)}), "
                f"or set data.file_format to one of {', '.join(FORMATS)}"
            )
        formats.add(fmt)
    if len(formats) > 1:
        raise UserError(f"{arg}: files of different formats ({', '.join(sorted(formats))}); use one format per split")
    return formats.pop()


def read_header(file: str, fmt: str) -> list[str]:
    """The first row of a CSV/TSV file, as pandas (and so `datasets`) names its columns."""
    try:
        return [str(c) for c in pd.read_csv(file, sep=_SEPARATORS[fmt], nrows=0).columns]
    except pd.errors.EmptyDataError as err:
        raise NoRows from err
    except UnicodeDecodeError as err:
        raise UserError(_not_utf8(file, err)) from None
    except (pd.errors.ParserError, ValueError) as err:  # e.g. a quote that is never closed
        raise UserError(f"could not read the first row of {file!r}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    """The first line of the telling cause: pyarrow's parse error if any, else the innermost one
    (`datasets` chains several parsers' errors, some multi-line)."""
    chain = [err]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    telling = next((e for e in chain if isinstance(e, pa.ArrowException)), chain[-1])
    lines = [line.strip() for line in str(telling).splitlines() if line.strip()]
    return lines[0] if lines else type(telling).__name__


def _not_utf8(file: str, err: UnicodeDecodeError | Exception) -> str:
    where = f" (it holds byte {err.object[err.start]:#04x})" if isinstance(err, UnicodeDecodeError) else ""
    return (
        f"{file!r} is not UTF-8 text{where}: re-save it as UTF-8, "
        f"e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` (texts are never decoded with replacement characters)"
    )


def load_files(
    files: list[str], fmt: str, column_names: list[str] | None, cache_dir: str | None, arg: str
) -> datasets.Dataset:
    """The rows of ``files`` as one dataset (CSV/TSV cells all strings, never parsed as NA).

    ``column_names`` names the columns of header-less CSV/TSV files; a file whose first row
    equals them is refused (the header would be read as a data row). A CSV/TSV row with more
    fields than the header is an error (pandas would silently shift or drop cells).
    """
    if all(os.path.getsize(f) == 0 for f in files):
        raise NoRows
    shown = files[0] if len(files) == 1 else str(files)  # how the UTF-8 messages name the file(s)
    named = repr(files[0] if len(files) == 1 else files)
    kwargs: dict[str, Any] = {}
    if fmt in _SEPARATORS:
        names = list(column_names) if column_names else read_header(files[0], fmt)
        if column_names:
            if read_header(files[0], fmt) == names:
                raise UserError(f"{arg}: {files[0]!r} has a header row equal to data.column_names; drop data.column_names")
            kwargs["column_names"] = names
        # Every cell as a string: pandas would otherwise turn "NA", "null" or "" into missing
        # values and guess types per 10k-row chunk. Labels are parsed later.
        kwargs.update(
            sep=_SEPARATORS[fmt],
            keep_default_na=False,
            index_col=False,  # never take the first column of a row with an extra field as an index
            features=datasets.Features({n: datasets.Value("string") for n in names}),
        )
        builder = "csv"
    elif column_names:
        raise UserError(f"{arg}: data.column_names names the columns of header-less CSV/TSV files, not {fmt}")
    elif fmt == "json":
        return _load_json(files, arg)
    else:
        builder = fmt
    if fmt in _SEPARATORS:
        for file in files:
            _check_carriage_returns(file, _SEPARATORS[fmt], arg)
    try:
        with warnings.catch_warnings():
            # pandas only warns when a row has more fields than the header, and drops them.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, **kwargs)
    except Exception as err:  # pandas / pyarrow parse errors come in many types
        if "corresponds to no data" in str(err):  # what `datasets` says about a split of 0 rows
            raise NoRows from err
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, (UnicodeDecodeError, pd.errors.ParserWarning)):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise UserError(f"{arg}: {_not_utf8(shown, cause)}") from err
        if cause is not None:
            raise UserError(
                f"{arg}: a row of {named} has more fields than its header; quote fields that contain the separator"
            ) from err
        raise UserError(f"{arg}: could not read {fmt} file(s) {named}: {_first_line(err)}") from err
    return ds


_BARE_CR = re.compile(rb"\r(?!\n)")


def _check_carriage_returns(file: str, sep: str, arg: str) -> None:
    """Refuse a carriage return inside an unquoted field of a file whose lines end in ``\n``.

    pandas (and so `datasets`) takes such a ``\r`` for a line break: the row is split in two, the
    first part loses its label and, with some placements, a cell moves to the wrong column,
    silently. Quoted ``\r``, ``\r\n`` line endings and files whose lines all end in ``\r`` read
    as intended. Only files that hold a bare ``\r`` are parsed here (with Python's csv module,
    lines split at ``\n`` only), so other files cost one byte scan.
    """
    newline = bare = False
    for block in _read_blocks(file, arg, 1 << 24):
        newline = newline or b"\n" in block
        bare = bare or bool(_BARE_CR.search(block))  # a block ending in \r: parsed below, harmlessly
        if newline and bare:
            break
    if not (newline and bare):
        return
    try:
        text = _read_bytes(file, arg).decode("utf-8")
    except UnicodeDecodeError:
        return  # the loader names the file and the byte
    reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=sep)
    try:
        for _ in reader:
            pass
    except csv.Error:
        raise UserError(
            f"{arg}: line {reader.line_num} of {file!r} has a carriage return (\\r) inside an unquoted field, "
            "which CSV readers take for a line break; quote that field or remove the \\r"
        ) from None


# pyarrow's JSON reader takes one block of at most 2**31 - 1 bytes.
MAX_JSON_BYTES = 2**31 - 2


def _load_json(files: list[str], arg: str) -> datasets.Dataset:
    """JSON Lines or JSON array files read by pyarrow, each file in ONE block on one thread.

    `datasets`' JSON builder reads blocks of 320 kB, and pyarrow (26.0.1) crashes the process
    (SIGSEGV) when a column inferred in one block as a scalar or an object is a list in a later one,
    or the reverse: ``{"a": 1}`` then ``{"a": [null]}`` across a block boundary; e.g. a label column
    of strings that turns into lists ~320 kB into the file. Read in one block, the same file is
    refused in one line naming the column ("Column(/label) changed from string to array"). The
    tables are held in memory, not in the `datasets` cache.
    """
    tables = [_read_json_file(file, arg) for file in files]
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise UserError(f"{arg}: the files {files!r} give their columns different types: {_first_line(err)}") from None
    if table.num_rows == 0:
        raise NoRows
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def _read_json_file(file: str, arg: str) -> pa.Table:
    """One JSON Lines or JSON array file (optionally compressed) as a table; a bad file is a one-line UserError."""
    data = _read_bytes(file, arg)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if data.lstrip()[:1] == b"[":  # a JSON array: of objects, or of strings (the texts), as `datasets` reads it
        try:
            items = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"{arg}: {_not_utf8(file, err)}") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{arg}: could not read json file(s) {file!r}: {err}") from None
        items = [item if isinstance(item, dict) else {"text": item} for item in items]
        data = "".join(json.dumps(item) + "\n" for item in items).encode("utf-8")
    if not data.strip():
        return pa.table({})
    if len(data) > MAX_JSON_BYTES:
        raise UserError(f"{arg}: {file!r} holds more than 2 GiB of JSON; split it into several files (a glob) or use Parquet")
    options = paj.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 16))
    try:
        table = paj.read_json(io.BytesIO(data), read_options=options)
        table.validate(full=True)  # pyarrow keeps bytes that are not UTF-8 in string columns
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{arg}: {_not_utf8(file, err)}") from None
        raise UserError(f"{arg}: could not read json file(s) {file!r}: {_first_line(err)}") from None
    return table


def _read_bytes(file: str, arg: str) -> bytes:
    """The file's bytes, decompressed by its suffix (.gz, .bz2, .xz, .zst)."""
    return b"".join(_read_blocks(file, arg, -1))


def _read_blocks(file: str, arg: str, block_size: int) -> Iterator[bytes]:
    """The file's decompressed bytes in blocks of ``block_size`` (-1: one block)."""
    name = file.lower()
    try:
        if name.endswith(".zst"):
            opened: Any = pa.input_stream(file, compression="zstd")
        else:
            opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(os.path.splitext(name)[1], open)
            opened = opener(file, "rb")
        with opened as f:
            if block_size < 0:
                yield f.read()
                return
            while block := f.read(block_size):
                yield block
    except (OSError, EOFError, lzma.LZMAError, pa.ArrowException) as err:
        raise UserError(f"{arg}: could not read {file!r}: {_first_line(err)}") from None


def locate_row(files: list[str], fmt: str, column_names: list[str] | None, cache_dir: str | None, row: int) -> str:
    """Where row ``row`` (0-based) of the files read together lies: "data row N of 'file'" (N from 1)."""
    for file in files:
        n = len(load_files([file], fmt, column_names, cache_dir, "data")) if len(files) > 1 else row + 1
        if row < n:
            return f"data row {row + 1} of {file!r}"
        row -= n
    raise IndexError(row)
