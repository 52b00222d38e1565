"""Model files: safe checkpoint loading, the exported directory format, ONNX, `vdcnn-res export`.

An exported model is a directory that loads without unpickling anything:

    model.safetensors   the VDCNN weights (safetensors: raw tensors and a JSON header)
    config.json         {"format_version", "architecture" (= asdict(ModelConfig)),
                         "label_names", "max_length"}, validated strictly on load
    tokenizer.json      the `tokenizers` tokenizer used in training
    model.onnx          optional (--onnx): inputs input_ids (B, L) int64 and lengths (B,)
                        int64, output logits (B, num_classes); B and L are dynamic

    vdcnn-res export --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt --out_dir exports/agnews [--onnx]

Lightning checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain data
only, so a checkpoint cannot run code while it is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import types
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn

from vdcnn_res.config import ModelConfig
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.model import VDCNN, build_model
from vdcnn_res.tokenizer import load_tokenizer

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "ONNX_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "LoadedModel",
    "export_checkpoint",
    "export_onnx",
    "load_checkpoint_safely",
    "main",
    "read_checkpoint",
    "read_pretrained",
    "write_pretrained",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
_CONFIG_KEYS = ("format_version", "architecture", "label_names", "max_length")
_DATA_STATE_KEY = "TextDataModule"  # where Lightning keeps TextDataModule.state_dict() in a checkpoint


@dataclass
class LoadedModel:
    """Everything a Predictor needs, read from a checkpoint or an exported directory."""

    model: VDCNN
    tokenizer: Tokenizer
    label_names: list[str]
    max_length: int


# ----------------------------------------------------------------------------- validation


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


def _architecture(arch: Any, where: str, require_all: bool) -> ModelConfig:
    """A ModelConfig from a dict, refusing unknown keys and wrong types (and missing keys if asked)."""
    if not isinstance(arch, dict):
        raise UserError(f"{where}: the architecture must be a JSON object of ModelConfig fields, got {type(arch).__name__}")
    hints = get_type_hints(ModelConfig)
    known = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(arch) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown architecture key(s) {unknown}; valid keys: {known}")
    missing = [k for k in known if k not in arch]
    if require_all and missing:
        raise UserError(f"{where}: architecture lacks {missing}; re-export the model with `vdcnn-res export`")
    for key, value in arch.items():
        if not _matches(value, hints[key]):
            raise UserError(
                f"{where}: architecture.{key} must be {_describe(hints[key])}, got {value!r} ({type(value).__name__})"
            )
    try:
        return ModelConfig(**arch)
    except UserError as err:  # its own value checks; say which file
        raise UserError(f"{where}: {err}") from None


def _label_names(names: Any, config: ModelConfig, where: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{where}: label_names must be a list of strings, got {names!r:.100}")
    if len(names) != config.num_classes:
        raise UserError(
            f"{where}: {len(names)} label names for architecture.num_classes={config.num_classes}; "
            "list exactly one name per class"
        )
    if len(set(names)) != len(names):
        raise UserError(f"{where}: label_names must be distinct, got {names}")
    return list(names)


def _max_length(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: max_length must be a positive int, got {value!r}")
    return value


def _load_weights(model: VDCNN, weights: dict[str, Tensor], where: str) -> VDCNN:
    """Load weights after checking names and shapes against the model the config describes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    problems = []
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    if missing:
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: {got[k]} in the file, {expected[k]} from the config" for k in expected if k in got and got[k] != expected[k]]
    if wrong:
        problems.append("shape mismatch " + "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
    if problems:
        raise UserError(
            f"{where}: the weights do not match the architecture ({', '.join(problems)}); "
            "the files must come from one export of one model"
        )
    model.load_state_dict(weights)
    return model.eval()


def _tokenizer(tokenizer: Tokenizer, config: ModelConfig, where: str) -> Tokenizer:
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise UserError(
            f"{where}: the tokenizer has {tokenizer.get_vocab_size()} ids but architecture.vocab_size is "
            f"{config.vocab_size}; use the tokenizer the model was trained with"
        )
    return tokenizer


# ----------------------------------------------------------------------------- checkpoints


def load_checkpoint_safely(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a local file; pickled code is refused with a UserError.

    weights_only unpickles only tensors and plain containers/numbers/strings; a global such
    as ``os.system`` in the file stops loading before anything is called.
    """
    path = Path(path)
    if path.is_dir():
        raise MissingFileError(
            f"checkpoint {str(path)!r} is a folder; give a .ckpt file (an exported folder loads with Predictor.from_pretrained)"
        )
    if not path.is_file():
        raise MissingFileError(f"checkpoint {str(path)!r} does not exist; pass the path of a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ... all mean "refuse"
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found or re.search(r"Unsupported (global|class)", str(err)):
            what = f" (it references {found.group(1)!r})" if found else ""
            raise UserError(
                f"refusing to load checkpoint {str(path)!r}: it holds pickled Python objects{what} that could run "
                "code when loaded; only checkpoints of plain tensors and data are loaded (torch.load weights_only=True). "
                "Use a checkpoint written by `vdcnn-res fit`, or an exported folder (`vdcnn-res export`)"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(err)) or re.search(r"(.+)", str(err))
        raise UserError(
            f"cannot read checkpoint {str(path)!r} ({type(err).__name__}: {detail.group(1)[:200] if detail else ''}); "
            "it may be truncated, corrupted or not a PyTorch checkpoint"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{str(path)!r} is not a Lightning checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


def read_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Model, tokenizer, label names and max_length from a checkpoint written by `vdcnn-res fit`."""
    checkpoint = load_checkpoint_safely(path)
    where = f"checkpoint {str(path)!r}"
    hparams = checkpoint.get("hyper_parameters")
    data_state = checkpoint.get(_DATA_STATE_KEY)
    if not isinstance(hparams, dict) or "arch" not in hparams or not isinstance(data_state, dict) or "tokenizer" not in data_state:
        raise UserError(f"{where} is not a vdcnn-res checkpoint (no model config or tokenizer inside); train with `vdcnn-res fit`")
    config = _architecture(hparams["arch"], where, require_all=False)
    labels = _label_names(data_state.get("label_names"), config, where)
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    max_length = _max_length(data_hparams.get("max_length", 1024), where)
    try:
        tokenizer = load_tokenizer(data_state["tokenizer"])
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise UserError(f"{where}: its tokenizer cannot be read ({err})") from None
    state = checkpoint.get("state_dict") or {}
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = _load_weights(build_model(config), weights, where)
    return LoadedModel(model, _tokenizer(tokenizer, config, where), labels, max_length)


# ----------------------------------------------------------------------------- exported folder


def write_pretrained(
    out_dir: str | os.PathLike[str],
    model: VDCNN,
    tokenizer: Tokenizer,
    label_names: list[str],
    max_length: int,
    overwrite: bool = False,
) -> list[Path]:
    """Write model.safetensors, config.json and tokenizer.json into ``out_dir``; returns the paths."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    paths = [out / WEIGHTS_FILE, out / CONFIG_FILE, out / TOKENIZER_FILE]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{str(out)!r} already holds {existing}; choose another --out_dir or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": asdict(model.config),
        "label_names": list(label_names),
        "max_length": int(max_length),
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, paths[0], metadata={"format": "pt", "vdcnn_res_format_version": str(FORMAT_VERSION)})
    paths[1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer.save(str(paths[2]))
    return paths


def read_pretrained(directory: str | os.PathLike[str]) -> LoadedModel:
    """Read an exported folder: JSON and safetensors only, nothing unpickled; validated strictly."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        hint = " (a .ckpt file loads with Predictor.from_checkpoint)" if d.is_file() else ""
        raise MissingFileError(f"{str(d)!r} is not a folder{hint}; give the --out_dir of `vdcnn-res export`")
    for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
        if not (d / name).is_file():
            raise MissingFileError(f"{str(d)!r} has no {name}; export the model again with `vdcnn-res export`")
    where = str(d / CONFIG_FILE)
    try:
        raw = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_CONFIG_KEYS))
    missing = [k for k in _CONFIG_KEYS if k not in raw]
    if unknown or missing:
        problem = "; ".join(filter(None, [unknown and f"unknown key(s) {unknown}", missing and f"missing {missing}"]))
        raise UserError(f"{where}: {problem}; the file holds exactly {list(_CONFIG_KEYS)}")
    version = raw["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{where}: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{where}: format_version {version} is newer than this vdcnn-res reads ({FORMAT_VERSION}); upgrade vdcnn-res"
        )
    config = _architecture(raw["architecture"], where, require_all=True)
    labels = _label_names(raw["label_names"], config, where)
    max_length = _max_length(raw["max_length"], where)
    try:
        tokenizer = load_tokenizer(str(d / TOKENIZER_FILE))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise UserError(f"{d / TOKENIZER_FILE} cannot be read as a tokenizer ({err})") from None
    try:
        weights = load_file(d / WEIGHTS_FILE)
    except Exception as err:  # noqa: BLE001 - SafetensorError and OSError
        raise UserError(f"{d / WEIGHTS_FILE} cannot be read as safetensors ({err}); export the model again") from None
    model = _load_weights(build_model(config), weights, str(d))
    return LoadedModel(model, _tokenizer(tokenizer, config, str(d / TOKENIZER_FILE)), labels, max_length)


# ----------------------------------------------------------------------------- ONNX


class _OnnxModel(nn.Module):
    """The VDCNN with explicit lengths, padded to at least min_length in the graph itself.

    The model's own padding is a Python `if` on the length, which torch.export would fix to
    the example's branch; `sym_max` keeps one graph for every length. Padding is invisible
    to the outputs (the model masks everything past `lengths`).
    """

    def __init__(self, model: VDCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        short_by = torch.sym_max(self.model.min_length - input_ids.shape[1], 0)
        return self.model(F.pad(input_ids, (0, short_by), value=self.model.config.padding_idx), lengths)


def _sort_stable(self: Any, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """aten::sort.stable as ONNX TopK over the whole axis.

    The ONNX spec has TopK break ties by the lower index, so this is the stable sort the
    k-max pooling relies on; torch's exporter has no translation for the stable overload.
    """
    from onnxscript import opset18 as op

    n = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    values, indices = op.TopK(self, n, axis=dim, largest=descending, sorted=True)
    return values, indices


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter builds the graph with it
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxscript: pip install 'vdcnn-res[onnx]'") from None


def export_onnx(model: VDCNN, path: str | os.PathLike[str], verify: bool = True) -> Path:
    """Export to ONNX (dynamo exporter, opset 18) with dynamic batch and length axes.

    ``verify`` runs the file in onnxruntime (if installed) on two other shapes and compares
    the logits with PyTorch, so a silently specialised axis cannot slip through.
    """
    _require_onnx()
    import onnx

    path = Path(path)
    wrapper = _OnnxModel(model).eval()
    example_ids, example_lengths = _example_inputs(model, batch=3, length=2 * model.min_length + 5)
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}, "lengths": {0: torch.export.Dim("batch")}}
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" and similar noise
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example_ids, example_lengths),
                str(path),
                dynamo=True,
                input_names=["input_ids", "lengths"],
                output_names=["logits"],
                dynamic_shapes=dims,
                custom_translation_table={torch.ops.aten.sort.stable: _sort_stable},
                opset_version=ONNX_OPSET,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    if not all(d.dim_param for d in graph_input.type.tensor_type.shape.dim):
        raise RuntimeError(f"ONNX export fixed an input axis of {path} (dims {graph_input.type.tensor_type.shape.dim})")
    if verify:
        _verify_onnx(model, path)
    return path


def _example_inputs(model: VDCNN, batch: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    ids[torch.arange(length)[None, :] >= lengths[:, None]] = model.config.padding_idx
    return ids, lengths


def _verify_onnx(model: VDCNN, path: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 7), (4, 3 * model.min_length + 1)):
        ids, lengths = _example_inputs(model, batch, length, seed=batch)
        with torch.no_grad():
            expected = model.eval()(ids, lengths).numpy()
        got = session.run(None, {"input_ids": ids.numpy(), "lengths": lengths.numpy()})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
            raise RuntimeError(
                f"ONNX export of {path} disagrees with PyTorch on a ({batch}, {length}) input: "
                f"max abs difference {float(np.abs(got - expected).max()):.3g}"
            )


# ----------------------------------------------------------------------------- command


def export_checkpoint(
    ckpt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], onnx: bool = False, overwrite: bool = False
) -> list[Path]:
    """Checkpoint -> exported folder (+ model.onnx); returns the written paths."""
    loaded = read_checkpoint(ckpt_path)
    onnx_path = Path(out_dir) / ONNX_FILE
    if onnx:  # before anything is written
        _require_onnx()
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


if __name__ == "__main__":
    main(sys.argv[1:])
