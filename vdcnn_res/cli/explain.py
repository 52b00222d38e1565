"""`vdcnn-res explain`: an HTML page (and a PNG) of per-character attributions for a model's predictions.

    vdcnn-res explain --ckpt_path CKPT --text "Stocks rallied after the Fed decision." --out explain.html
    vdcnn-res explain --model exports/agnews --data.predict texts.csv --label Business --out explain.html --png explain.png

Integrated gradients on the character embeddings and, with an n-gram bag, its n-gram
embeddings (vdcnn_res/inference/explain.py says why and how). Every text is explained before
anything is written, and the page is written whole (a temporary file renamed), so an error
never leaves a half-written page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from vdcnn_res.data.sources import SplitSources
from vdcnn_res.data.texts import join_texts
from vdcnn_res.errors import UserError
from vdcnn_res.inference.explain import (
    Explanation,
    explain,
    require_captum,
    to_html,
    to_png,
)
from vdcnn_res.inference.model_files import load_checkpoint_safely
from vdcnn_res.inference.predictor import Predictor

__all__ = ["main", "read_texts"]

_DATA_KEYS = ("text_columns", "column_names", "label_column", "file_format", "text_separator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdcnn-res explain",
        description="Explain predictions character by character (integrated gradients on the character and n-gram embeddings): "
        "an HTML page with each character shaded by its attribution and the top labels, optionally a PNG.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="checkpoint written by `vdcnn-res fit`")
    source.add_argument("--model", help="folder written by `vdcnn-res export` or save_pretrained")
    texts = parser.add_mutually_exclusive_group(required=True)
    texts.add_argument("--text", action="append", help="a text to explain (repeat for several)")
    texts.add_argument("--data.predict", dest="predict", help="a file of texts (CSV/TSV/JSON/JSONL/Parquet)")
    parser.add_argument("--label", help="explain this label instead of each text's predicted one")
    parser.add_argument("--out", default="explain.html", help="the HTML page to write (default: explain.html)")
    parser.add_argument("--png", help="also draw the first explanation as a PNG (e.g. for a README)")
    parser.add_argument("--top_k", type=int, default=3, help="labels shown with their probabilities (default 3)")
    parser.add_argument("--n_steps", type=int, default=50, help="integration steps (default 50)")
    parser.add_argument("--max_texts", type=int, default=20, help="explain at most this many texts of a file (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or e.g. cuda:0")
    data = parser.add_argument_group("reading --data.predict (default: the checkpoint's data settings)")
    data.add_argument("--data.text_columns", dest="text_columns", nargs="+")
    data.add_argument("--data.column_names", dest="column_names", nargs="+", help="columns of a header-less CSV/TSV")
    data.add_argument("--data.label_column", dest="label_column")
    data.add_argument("--data.file_format", dest="file_format", choices=["csv", "tsv", "json", "parquet"])
    data.add_argument("--data.text_separator", dest="text_separator")
    return parser


def read_texts(path: str, settings: dict, limit: int) -> list[str]:
    """The first ``limit`` texts of a prediction file, joined from its text columns as in training."""
    columns = settings.get("text_columns") or ["text"]
    columns = [columns] if isinstance(columns, str) else list(columns)
    sources = SplitSources(
        paths={"train": None, "valid": None, "test": None, "predict": path},
        hub_dataset=None,
        hub_config=None,
        hub_splits={},
        file_format=settings.get("file_format"),
        column_names=settings.get("column_names"),
        text_columns=columns,
        label_column=settings.get("label_column") or "label",
        valid_fraction=0.0,
        seed=0,
        cache_dir=None,
    )
    ds = sources.require("predict")
    return join_texts(ds[: min(limit, len(ds))], columns, settings.get("text_separator") or " ")


def _write_all(files: dict[Path, Callable[[Path], object]]) -> None:
    """Write every file to a temporary name beside it, then rename them all: no half-written output."""
    done: dict[Path, Path] = {}
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, write in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            done[path] = Path(tmp)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the page is an ordinary output file
            write(Path(tmp))
        for path, tmp in done.items():
            os.replace(tmp, path)
    finally:
        for tmp in done.values():
            tmp.unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    """`vdcnn-res explain`: its own argparse (no Trainer; the model and texts are all it needs)."""
    args = _parser().parse_args(argv)
    for name, value, low in (("--top_k", args.top_k, 1), ("--n_steps", args.n_steps, 2), ("--max_texts", args.max_texts, 1)):
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")
    require_captum()  # before loading anything
    settings: dict = {}
    if args.ckpt_path:
        predictor = Predictor.from_checkpoint(args.ckpt_path, device=args.device, bf16=False)
        if args.predict:
            settings = dict(load_checkpoint_safely(args.ckpt_path).get("datamodule_hyper_parameters") or {})
    else:
        predictor = Predictor.from_pretrained(args.model, device=args.device, bf16=False)
    if args.label is not None and args.label not in predictor.label_names:
        names = predictor.label_names
        shown = ", ".join(names) if len(names) <= 20 else ", ".join(names[:20]) + f", ... ({len(names)} in all)"
        raise UserError(f"--label {args.label!r} is not one of the model's labels: {shown}")
    args.top_k = min(args.top_k, len(predictor.label_names))

    if args.predict:
        given = {k: getattr(args, k) for k in _DATA_KEYS if getattr(args, k) is not None}
        settings = {k: settings.get(k) for k in _DATA_KEYS} | given
        texts = read_texts(args.predict, settings, args.max_texts)
    else:
        texts = args.text
    kept = [t for t in texts if t]
    if not kept:
        raise UserError("nothing to explain: every text is empty (an empty text has no characters to attribute)")
    if len(kept) < len(texts):
        warnings.warn(f"{len(texts) - len(kept)} empty text(s) skipped: an empty text has no characters to attribute", stacklevel=1)

    explanations: list[Explanation] = [explain(predictor, t, args.label, n_steps=args.n_steps) for t in kept]
    for i, e in enumerate(explanations, 1):
        top = ", ".join(f"{name} {100 * p:.1f} %" for name, p in e.top_k(args.top_k))
        strongest = [w for w, s in sorted(e.words(), key=lambda w: -w[1])[:5] if s > 0]
        cut = f"; {e.n_cut:,} characters beyond max_length not read" if e.n_cut else ""
        print(f"{i}. {e.label} ({top}); most for it: {' '.join(strongest) or '-'}{cut}")

    page = to_html(explanations, title=f"vdcnn-res explain: {Path(args.ckpt_path or args.model).name}", top_k=args.top_k)
    files: dict[Path, Callable[[Path], object]] = {Path(args.out): lambda tmp: tmp.write_text(page, encoding="utf-8")}
    if args.png:
        files[Path(args.png)] = lambda tmp: to_png(explanations[0], tmp)
    _write_all(files)
    print("Wrote " + " and ".join(map(str, files)), file=sys.stderr)
