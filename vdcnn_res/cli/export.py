"""`vdcnn-res export`: a checkpoint as safe model files (safetensors + JSON) with a model card,
optionally ONNX and int8 ONNX, optionally pushed to a Hugging Face Hub repository.

    vdcnn-res export --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt --out_dir exports/agnews [--onnx] [--int8]
    vdcnn-res export --ckpt_path CKPT --out_dir exports/agnews --push_to_hub org/agnews-vdcnn [--private] [--language en]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import ONNX_FILE, load_checkpoint_safely, read_checkpoint, write_pretrained
from vdcnn_res.inference.onnx import export_onnx, require_onnx
from vdcnn_res.inference.quantize import CALIBRATION_TEXTS, INT8_ONNX_FILE, Int8Session, agreement, quantize_model, require_onnxruntime

__all__ = ["calibration_texts", "export_checkpoint", "main"]

_DATA_KEYS = ("text_columns", "column_names", "label_column", "file_format", "text_separator")


def calibration_texts(ckpt_path: str | os.PathLike[str], path: str | None, n: int) -> list[str]:
    """`n` texts spread evenly over a file (default: the checkpoint's training file), read with the
    checkpoint's column settings, for int8 calibration."""
    from vdcnn_res.cli.explain import read_texts

    settings = dict(load_checkpoint_safely(ckpt_path).get("datamodule_hyper_parameters") or {})
    if path is None:
        path = settings.get("train")
        if not isinstance(path, str) or not Path(path).is_file():
            raise UserError(
                f"--int8 needs calibration texts: the checkpoint's training file {path!r} is not here; "
                "pass --calibration path/to/train.csv (a few hundred real texts are enough)"
            )
    texts = read_texts(path, {k: settings.get(k) for k in _DATA_KEYS}, limit=10**9)
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def export_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    onnx: bool = False,
    overwrite: bool = False,
    int8: bool = False,
    calibration: str | None = None,
    calibration_size: int = CALIBRATION_TEXTS,
    language: list[str] | None = None,
    name: str | None = None,
) -> list[Path]:
    """Checkpoint -> exported folder with its model card (+ model.onnx, + model.int8.onnx); returns
    the written paths. ``name`` (the card's title and usage line) defaults to the folder's name;
    ``language`` goes into the card's metadata."""
    from vdcnn_res.inference.model_card import build_model_card

    checkpoint = load_checkpoint_safely(ckpt_path)
    loaded = read_checkpoint(ckpt_path, checkpoint)
    card = build_model_card(loaded, checkpoint, ckpt_path, language=language, name=name or Path(out_dir).name)
    del checkpoint  # the weights are in `loaded`; free the rest (optimizer state of a full checkpoint)
    targets = ([Path(out_dir) / ONNX_FILE] if onnx else []) + ([Path(out_dir) / INT8_ONNX_FILE] if int8 else [])
    if onnx:  # before anything is written
        require_onnx()
    texts: list[str] = []
    if int8:
        require_onnxruntime()
        if loaded.model.config.input_channels:
            raise UserError("--int8 is for text models; a series model predicts in float (export it without --int8)")
        if calibration_size < 1:
            raise UserError(f"--calibration_texts must be >= 1, got {calibration_size}")
        texts = calibration_texts(ckpt_path, calibration, calibration_size)
    for target in targets:
        if target.exists() and not overwrite:
            raise UserError(f"{str(target)!r} exists; choose another --out_dir or pass --overwrite")
    paths = write_pretrained(out_dir, loaded.model, loaded.tokenizer, loaded.label_names, loaded.max_length, overwrite, card)
    if onnx:
        paths.append(export_onnx(loaded.model, Path(out_dir) / ONNX_FILE))
    if int8:
        path = quantize_model(loaded.model, loaded.tokenizer, loaded.max_length, texts, Path(out_dir) / INT8_ONNX_FILE)
        checked = texts[:: max(1, len(texts) // 256)]  # a sanity check: a few hundred are enough
        share = agreement(loaded.model.eval(), Int8Session(path), loaded.tokenizer, loaded.max_length, checked)
        print(f"int8: calibrated on {len(texts)} texts; its top class equals float's on {100 * share:.1f} % of {len(checked)} of them")
        paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    """`vdcnn-res export`: its own argparse (it needs no Trainer, data or config)."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res export",
        description="Write a checkpoint as safe model files: model.safetensors, config.json, tokenizer.json and the model "
        "card README.md (and model.onnx with --onnx, model.int8.onnx with --int8); --push_to_hub uploads them. "
        "Load them with Predictor.from_pretrained(out_dir or org/name).",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `vdcnn-res fit`")
    parser.add_argument("--out_dir", required=True, help="folder to write (created if needed)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the onnx extra)")
    parser.add_argument(
        "--int8", action="store_true",
        help="also write model.int8.onnx, int8 CPU inference with ONNX Runtime (Predictor.from_pretrained(dir, int8=True))",
    )
    parser.add_argument("--calibration", help="texts for --int8's activation ranges (default: the checkpoint's training file)")
    parser.add_argument("--calibration_texts", type=int, default=CALIBRATION_TEXTS,
                        help=f"how many texts of it, spread over the file (default {CALIBRATION_TEXTS})")
    parser.add_argument("--overwrite", action="store_true", help="replace model files already in out_dir")
    parser.add_argument("--push_to_hub", metavar="ORG/NAME",
                        help="then upload the folder to this Hugging Face Hub model repository (created if needed; "
                        "log in with `hf auth login` or HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create the repository private")
    parser.add_argument("--language", nargs="+", metavar="CODE",
                        help="the texts' language(s) for the model card's metadata, ISO 639-1 codes (e.g. en); "
                        "the checkpoint does not record it")
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        raise UserError("--private only applies with --push_to_hub ORG/NAME")
    if args.push_to_hub:
        from vdcnn_res.inference.hub import check_push_target

        check_push_target(args.push_to_hub)  # a bad id or offline mode: before anything is written
    if (args.calibration or args.calibration_texts != CALIBRATION_TEXTS) and not args.int8:
        raise UserError("--calibration and --calibration_texts only apply with --int8")
    paths = export_checkpoint(
        args.ckpt_path, args.out_dir, onnx=args.onnx, overwrite=args.overwrite,
        int8=args.int8, calibration=args.calibration, calibration_size=args.calibration_texts,
        language=args.language, name=args.push_to_hub,
    )
    size = sum(p.stat().st_size for p in paths)
    print(f"Exported {args.ckpt_path} to {args.out_dir} ({math.ceil(size / 1e6)} MB):")
    for p in paths:
        print(f"  {p}")
    if args.push_to_hub:
        from vdcnn_res.inference.hub import push_folder

        url = push_folder(args.out_dir, args.push_to_hub, private=args.private)
        print(f"Pushed {args.out_dir} to {args.push_to_hub}: {url}")
        print(f'Load it with Predictor.from_pretrained("{args.push_to_hub}") or `vdcnn-res serve --model {args.push_to_hub}`')
