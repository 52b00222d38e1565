"""Local data files: resolve paths and globs, infer the format, read them with `datasets`.

Every user mistake (no such file, a folder, an unknown extension, text that is not UTF-8, a
file `datasets` cannot parse) becomes a one-line :class:`~vdcnn_res.errors.UserError` that
names the ``data.*`` argument; a file without data rows raises :class:`NoRows` so that the
caller can name the split.
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa

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
    else:
        builder = fmt
        if fmt == "json":
            # A column whose values change type ("a" then 1) is an error naming the column: the
            # `datasets` fallback for it (re-parsing lines with ujson) crashed the process at times.
            kwargs["on_mixed_types"] = None
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
    if builder == "json":  # pyarrow's JSON reader keeps bytes that are not UTF-8 in string columns
        try:
            ds.data.table.validate(full=True)
        except Exception as err:
            raise UserError(f"{arg}: {_not_utf8(shown, err)}") from None
    return ds


def locate_row(files: list[str], fmt: str, column_names: list[str] | None, cache_dir: str | None, row: int) -> str:
    """Where row ``row`` (0-based) of the files read together lies: "data row N of 'file'" (N from 1)."""
    for file in files:
        n = len(load_files([file], fmt, column_names, cache_dir, "data")) if len(files) > 1 else row + 1
        if row < n:
            return f"data row {row + 1} of {file!r}"
        row -= n
    raise IndexError(row)
