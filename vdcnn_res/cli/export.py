"""`vdcnn-res export`: a checkpoint as safe model files (safetensors + JSON) and optionally ONNX.

    vdcnn-res export --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt --out_dir exports/agnews [--onnx]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import ONNX_FILE, read_checkpoint, write_pretrained
from vdcnn_res.inference.onnx import export_onnx, require_onnx

__all__ = ["export_checkpoint", "main"]


def export_checkpoint(
    ckpt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], onnx: bool = False, overwrite: bool = False
) -> list[Path]:
    """Checkpoint -> exported folder (+ model.onnx); returns the written paths."""
    loaded = read_checkpoint(ckpt_path)
    onnx_path = Path(out_dir) / ONNX_FILE
    if onnx:  # before anything is written
        require_onnx()
        if onnx_path.exists() and not overwrite:
            raise UserError(f"{str(onnx_path)!r} exists; choose another --out_dir or pass --overwrite")
    paths = write_pretrained(out_dir, loaded.model, loaded.tokenizer, loaded.label_names, loaded.max_length, overwrite)
    if onnx:
        paths.append(export_onnx(loaded.model, onnx_path))
    return paths


def main(argv: list[str]) -> None:
    """`vdcnn-res export`: its own argparse (it needs no Trainer, data or config)."""
    parser = argparse.ArgumentParser(
        prog="vdcnn-res export",
        description="Write a checkpoint as safe model files: model.safetensors, config.json, tokenizer.json "
        "(and model.onnx with --onnx). Load them with Predictor.from_pretrained(out_dir).",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `vdcnn-res fit`")
    parser.add_argument("--out_dir", required=True, help="folder to write (created if needed)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx (needs the onnx extra)")
    parser.add_argument("--overwrite", action="store_true", help="replace model files already in out_dir")
    args = parser.parse_args(argv)
    paths = export_checkpoint(args.ckpt_path, args.out_dir, onnx=args.onnx, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in paths)
    print(f"Exported {args.ckpt_path} to {args.out_dir} ({math.ceil(size / 1e6)} MB):")
    for p in paths:
        print(f"  {p}")
