"""Model files, the only loader: safe checkpoint reading and the exported directory format.

An exported model is a directory that loads without unpickling anything:

    model.safetensors   the VDCNN weights (safetensors: raw tensors and a JSON header)
    config.json         {"format_version", "architecture" (= asdict(ModelConfig)),
                         "label_names", "max_length"}, validated strictly on load
    tokenizer.json      the `tokenizers` tokenizer used in training
    README.md           the model card with the Hub's YAML metadata (model_card.py); not read to load
    model.onnx          optional, written by `vdcnn-res export --onnx` (see onnx.py)

A series model (``architecture.input_channels > 0``) has no tokenizer.json: its config.json
(format_version 2) holds ``series`` (the preprocessing: normalize, missing, max_length) in
place of ``max_length``. Text exports keep writing format_version 1, byte for byte as before.

A calibrated model (temperature != 1, training/calibration.py) keeps its temperature as the
scalar tensor ``temperature`` in model.safetensors and is written as format_version 3, so an
older vdcnn-res refuses it with "upgrade" instead of silently ignoring the calibration. An
uncalibrated model's files are unchanged (no tensor, version 1 or 2); a file without the
tensor loads with temperature 1.

A model whose two branches (CNN and n-gram bag) are weighted other than equally (branch weights
fitted with the temperature, training/calibration.py) keeps them as the tensor
``branch_weights`` in model.safetensors and is written as format_version 5, for the same
reason; with equal weights the tensor is left out and the version is unchanged.

A multi-label model (one sigmoid per label, ``data.task=multilabel``) is written as
format_version 4: config.json also holds ``"task": "multilabel"`` and ``thresholds`` (one
decision threshold per label, tuned on the validation split), so an older vdcnn-res refuses it
with "upgrade" instead of reading it as a softmax classifier. Single-label files are unchanged.
The loaders attach the thresholds to the loaded VDCNN (:func:`model_thresholds`), so whatever
writes that model again (an export, ``save_pretrained``, the ONNX graph) carries them.

Lightning checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain data
only, so a checkpoint cannot run code while it is read. They are the user's own files (written by
`vdcnn-res fit`); a model folder, possibly downloaded (inference/hub.py), is read from
safetensors and JSON only: pickle files in it (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``,
...) are never opened, ignored beside model.safetensors and refused without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from vdcnn_res.data.series import SeriesPreprocessing
from vdcnn_res.data.tokenizer import load_tokenizer
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.model import VDCNN, ModelConfig, build_model, upgrade_state_dict

__all__ = [
    "CARD_FILE",
    "CONFIG_FILE",
    "BRANCH_WEIGHTS_FORMAT_VERSION",
    "CALIBRATED_FORMAT_VERSION",
    "FORMAT_VERSION",
    "SERIES_FORMAT_VERSION",
    "TEXT_FORMAT_VERSION",
    "ONNX_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "MULTILABEL_FORMAT_VERSION",
    "LoadedModel",
    "load_checkpoint_safely",
    "model_thresholds",
    "read_checkpoint",
    "read_pretrained",
    "set_model_thresholds",
    "write_pretrained",
]

FORMAT_VERSION = 5  # the newest this version reads; text exports are written as 1
TEXT_FORMAT_VERSION = 1
SERIES_FORMAT_VERSION = 2
CALIBRATED_FORMAT_VERSION = 3  # model.safetensors holds a temperature (text or series)
MULTILABEL_FORMAT_VERSION = 4  # config.json holds task and thresholds
BRANCH_WEIGHTS_FORMAT_VERSION = 5  # model.safetensors holds branch weights other than all 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"
CARD_FILE = "README.md"  # the model card (model_card.py): documentation, never read to load the model
_CONFIG_KEYS = ("format_version", "architecture", "label_names", "max_length")
_SERIES_CONFIG_KEYS = ("format_version", "architecture", "label_names", "series")
_MULTILABEL_KEYS = ("task", "thresholds")
_THRESHOLDS_ATTR = "vdcnn_res_thresholds"  # where a loaded multi-label VDCNN keeps its thresholds
_log = logging.getLogger(__name__)
_DATA_STATE_KEY = "TextDataModule"  # where Lightning keeps TextDataModule.state_dict() in a checkpoint
_SERIES_STATE_KEY = "SeriesDataModule"  # ... and SeriesDataModule.state_dict()


@dataclass
class LoadedModel:
    """Everything a Predictor needs, read from a checkpoint or an exported directory.

    ``tokenizer`` is how raw inputs become model inputs: the text tokenizer, or for a series
    model its :class:`SeriesPreprocessing` (``max_length`` is then the preprocessing's, or None).
    """

    model: VDCNN
    tokenizer: Tokenizer | SeriesPreprocessing
    label_names: list[str]
    max_length: int | None

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label model's per-label decision thresholds; None for a single-label model."""
        return model_thresholds(self.model)


def model_thresholds(model: VDCNN) -> list[float] | None:
    """The per-label decision thresholds a multi-label model was loaded (or marked) with; None: single-label."""
    thresholds = getattr(model, _THRESHOLDS_ATTR, None)
    return None if thresholds is None else list(thresholds)


def set_model_thresholds(model: VDCNN, thresholds: Any, where: str = "thresholds") -> VDCNN:
    """Mark ``model`` as multi-label with these thresholds (checked: one per class, each in [0, 1]);
    None marks it single-label. Returns the model."""
    if thresholds is None:
        if hasattr(model, _THRESHOLDS_ATTR):
            delattr(model, _THRESHOLDS_ATTR)
        return model
    setattr(model, _THRESHOLDS_ATTR, _thresholds(thresholds, model.config, where))
    return model


def _thresholds(values: Any, config: ModelConfig, where: str) -> list[float]:
    if torch.is_tensor(values):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != config.num_classes:
        raise UserError(f"{where}: thresholds must be a list of {config.num_classes} numbers (one per label), got {values!r:.100}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0]
    if bad:
        raise UserError(f"{where}: every threshold must be a probability in [0, 1], got {bad[0]!r}")
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- validation


def _architecture(arch: Any, where: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(arch, strict=True)
    except UserError as err:  # say which file
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
    weights = upgrade_state_dict(weights)
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
    temperature = weights["temperature"]
    if not temperature.is_floating_point() or not bool(torch.isfinite(temperature)) or float(temperature) <= 0:
        raise UserError(
            f"{where}: the temperature must be a positive finite number, got {temperature.tolist()}; "
            "calibrate the model again (`vdcnn-res calibrate`) or export it again"
        )
    branch_weights = weights["branch_weights"]
    if not branch_weights.is_floating_point() or not bool(torch.isfinite(branch_weights).all()) or bool((branch_weights < 0).any()):
        raise UserError(
            f"{where}: the branch weights must be finite and not negative, got {branch_weights.tolist()}; "
            "calibrate the model again (`vdcnn-res calibrate`) or export it again"
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


def read_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any] | None = None) -> LoadedModel:
    """Model, tokenizer, label names and max_length from a checkpoint written by `vdcnn-res fit`
    (full, or a slim best checkpoint); ``checkpoint``: its contents, when already loaded safely."""
    if checkpoint is None:
        checkpoint = load_checkpoint_safely(path)
    where = f"checkpoint {str(path)!r}"
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(checkpoint.get(_SERIES_STATE_KEY), dict) and isinstance(hparams, dict) and "arch" in hparams:
        return _read_series_checkpoint(checkpoint, hparams, where)
    data_state = checkpoint.get(_DATA_STATE_KEY)
    if not isinstance(hparams, dict) or "arch" not in hparams or not isinstance(data_state, dict) or "tokenizer" not in data_state:
        raise UserError(f"{where} is not a vdcnn-res checkpoint (no model config or tokenizer inside); train with `vdcnn-res fit`")
    config = _architecture(hparams["arch"], where)
    # Label names live in the model's hparams; vdcnn-res 0.1.0 also kept a copy in the data state.
    names = hparams.get("label_names") or data_state.get("label_names") or [str(i) for i in range(config.num_classes)]
    labels = _label_names(names, config, where)
    data_hparams = checkpoint.get("datamodule_hyper_parameters") or {}
    max_length = _max_length(data_hparams.get("max_length", 1024), where)
    try:
        tokenizer = load_tokenizer(data_state["tokenizer"])
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise UserError(f"{where}: its tokenizer cannot be read ({err})") from None
    state = checkpoint.get("state_dict") or {}
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = _load_weights(build_model(config), weights, where)
    task = hparams.get("task", "multiclass")
    if task == "multilabel":
        default = hparams.get("threshold") if hparams.get("threshold") is not None else 0.5
        set_model_thresholds(model, state.get("label_thresholds", [default] * config.num_classes), where)
    elif task != "multiclass":
        raise UserError(f"{where}: unknown task {task!r} (multiclass or multilabel); upgrade vdcnn-res")
    return LoadedModel(model, _tokenizer(tokenizer, config, where), labels, max_length)


def _read_series_checkpoint(checkpoint: dict[str, Any], hparams: dict[str, Any], where: str) -> LoadedModel:
    config = _architecture(hparams["arch"], where)
    if not config.input_channels:
        raise UserError(f"{where}: a series data module's checkpoint whose model reads token ids; train with `vdcnn-res fit`")
    labels = _label_names(hparams.get("label_names") or [str(i) for i in range(config.num_classes)], config, where)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    settings = {k: data[k] for k in ("normalize", "missing", "max_length") if k in data}
    try:
        preprocessing = SeriesPreprocessing(**settings)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    state = checkpoint.get("state_dict") or {}
    weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    model = _load_weights(build_model(config), weights, where)
    return LoadedModel(model, preprocessing, labels, preprocessing.max_length)


# ----------------------------------------------------------------------------- exported folder


def write_pretrained(
    out_dir: str | os.PathLike[str],
    model: VDCNN,
    tokenizer: Tokenizer | SeriesPreprocessing,
    label_names: list[str],
    max_length: int | None,
    overwrite: bool = False,
    card: Any = None,
) -> list[Path]:
    """Write model.safetensors, config.json, tokenizer.json and the model card README.md into
    ``out_dir``; returns the paths.

    A series model (``tokenizer`` is its SeriesPreprocessing) gets no tokenizer.json; its
    config.json holds the preprocessing (``max_length`` is then the preprocessing's).
    ``card``: a ``huggingface_hub.ModelCard`` (model_card.py) written as README.md; None writes
    none (callers build it: this module stays below model_card.py, which reads LoadedModel).
    """
    from safetensors.torch import save

    series = isinstance(tokenizer, SeriesPreprocessing)
    if series != bool(model.config.input_channels):
        raise UserError(
            "a series model (input_channels > 0) is saved with its SeriesPreprocessing, a text model with its tokenizer"
        )
    thresholds = model_thresholds(model)
    if series and thresholds is not None:
        raise UserError("multi-label series models are not supported; a series model has one label per series")
    out = Path(out_dir)
    paths = [out / WEIGHTS_FILE, out / CONFIG_FILE] + ([] if series else [out / TOKENIZER_FILE]) + [out / CARD_FILE]
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{str(out)!r} already holds {existing}; choose another --out_dir or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any]
    calibrated = float(model.temperature) != 1.0
    version = CALIBRATED_FORMAT_VERSION if calibrated else SERIES_FORMAT_VERSION if series else TEXT_FORMAT_VERSION
    weighted = bool((model.branch_weights != 1.0).any())
    if thresholds is not None:
        version = MULTILABEL_FORMAT_VERSION
    if weighted:
        version = BRANCH_WEIGHTS_FORMAT_VERSION
    if series:
        config = {
            "format_version": version,
            "architecture": asdict(model.config),
            "label_names": list(label_names),
            "series": tokenizer.to_dict(),
        }
    else:
        config = {
            "format_version": version,
            "architecture": asdict(model.config),
            "label_names": list(label_names),
            "max_length": int(max_length),
        }
        if thresholds is not None:
            config.update(task="multilabel", thresholds=thresholds)
    # Uncalibrated: no temperature tensor, equal weights: no branch_weights tensor, so the files
    # stay readable by versions before them.
    left_out = {name for name, kept in (("temperature", calibrated), ("branch_weights", weighted)) if not kept}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in left_out}
    # Serialized in memory and written like the JSON files, so every file gets the same umask-based
    # mode (safetensors' save_file creates its file with mode 0600).
    paths[0].write_bytes(save(weights, metadata={"format": "pt", "vdcnn_res_format_version": str(config["format_version"])}))
    paths[1].write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if not series:
        tokenizer.save(str(paths[2]))
    if card is None:
        return paths[:-1]
    paths[-1].write_text(str(card), encoding="utf-8")
    return paths


def read_pretrained(directory: str | os.PathLike[str]) -> LoadedModel:
    """Read an exported folder: JSON and safetensors only, nothing unpickled; validated strictly."""
    d = Path(directory)
    if not d.is_dir():
        hint = " (a .ckpt file loads with Predictor.from_checkpoint)" if d.is_file() else ""
        raise MissingFileError(f"{str(d)!r} is not a folder{hint}; give the --out_dir of `vdcnn-res export`")
    _refuse_pickles(d)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise MissingFileError(f"{str(d)!r} has no {name}; export the model again with `vdcnn-res export`")
    where = str(d / CONFIG_FILE)
    try:
        raw = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{where} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must hold a JSON object, got {type(raw).__name__}")
    series = isinstance(raw.get("architecture"), dict) and bool(raw["architecture"].get("input_channels"))
    keys = _SERIES_CONFIG_KEYS if series else _CONFIG_KEYS
    if not series and "task" in raw:
        keys = keys + _MULTILABEL_KEYS
    unknown = sorted(set(raw) - set(keys))
    missing = [k for k in keys if k not in raw]
    if unknown or missing:
        problem = "; ".join(filter(None, [unknown and f"unknown key(s) {unknown}", missing and f"missing {missing}"]))
        raise UserError(f"{where}: {problem}; the file holds exactly {list(keys)}")
    version = raw["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{where}: format_version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{where}: format_version {version} is newer than this vdcnn-res reads ({FORMAT_VERSION}); upgrade vdcnn-res"
        )
    config = _architecture(raw["architecture"], where)
    labels = _label_names(raw["label_names"], config, where)
    if series:
        preprocessing = SeriesPreprocessing.from_dict(raw["series"], where)
        model = _load_weights(build_model(config), _safetensors(d), str(d))
        return LoadedModel(model, preprocessing, labels, preprocessing.max_length)
    max_length = _max_length(raw["max_length"], where)
    if not (d / TOKENIZER_FILE).is_file():
        raise MissingFileError(f"{str(d)!r} has no {TOKENIZER_FILE}; export the model again with `vdcnn-res export`")
    try:
        tokenizer = load_tokenizer(str(d / TOKENIZER_FILE))
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exceptions
        raise UserError(f"{d / TOKENIZER_FILE} cannot be read as a tokenizer ({err})") from None
    model = _load_weights(build_model(config), _safetensors(d), str(d))
    if "task" in raw:
        if raw["task"] != "multilabel" or version < MULTILABEL_FORMAT_VERSION:
            raise UserError(
                f"{where}: task must be 'multilabel' in a format_version {MULTILABEL_FORMAT_VERSION} file, "
                f"got {raw['task']!r} in version {version}; export the model again"
            )
        set_model_thresholds(model, raw["thresholds"], where)
    return LoadedModel(model, _tokenizer(tokenizer, config, str(d / TOKENIZER_FILE)), labels, max_length)


def _refuse_pickles(d: Path) -> None:
    """Pickle files in a model folder are never opened: with model.safetensors beside them they are
    ignored (one warning line), without it the folder is refused in one line."""
    from vdcnn_res.inference.hub import pickle_files

    pickles = pickle_files([p.name for p in d.iterdir() if p.is_file()])
    if not pickles:
        return
    if not (d / WEIGHTS_FILE).is_file():
        raise UserError(
            f"{str(d)!r} holds its weights only as pickle files {pickles[:5]}, which vdcnn-res never unpickles (they can "
            f"run code); load a folder with {WEIGHTS_FILE} (`vdcnn-res export`), or your own .ckpt with Predictor.from_checkpoint"
        )
    _log.warning("%s: ignoring %s (pickle files are never opened); reading %s and JSON only", d, pickles, WEIGHTS_FILE)


def _safetensors(d: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(d / WEIGHTS_FILE)
    except Exception as err:  # noqa: BLE001 - SafetensorError and OSError
        raise UserError(f"{d / WEIGHTS_FILE} cannot be read as safetensors ({err}); export the model again") from None
