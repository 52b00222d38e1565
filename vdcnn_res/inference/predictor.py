"""Prediction from Python without a Trainer.

    from vdcnn_res import Predictor
    predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    predictor.predict("Stocks rallied after the Fed decision.", top_k=2)
    # {"label": "Business", "probability": 0.91, "top_k": [("Business", 0.91), ("World", 0.05)]}
    predictor.save_pretrained("exports/agnews")     # safetensors + JSON, no pickle
    Predictor.from_pretrained("exports/agnews").predict_proba(["...", "..."])  # (2, n_classes)
    Predictor.from_pretrained("org/agnews-vdcnn")   # a Hugging Face Hub repository (docs/sharing.md)

A multi-label model (trained with ``data.task: multilabel``) gives the label set, each label's
sigmoid probability and (when asked) the top-k labels:

    predictor.predict("Stocks fell as the team won.")
    # {"labels": ["Business", "Sports"], "probabilities": {"Business": 0.83, "Sports": 0.77}}
    predictor.predict("...", top_k=3, threshold=0.4)   # + "top_k": [(label, p), ...]; one threshold for all

A series model (trained with ``data_kind: series``) takes arrays instead of strings:

    Predictor.from_checkpoint("series.ckpt").predict(np.array([[0.1, 0.4, ...], [...]]))  # one (C, L) series
    predictor.predict([series_a, series_b])   # a list of series, any lengths

Several fits of one recipe (different seeds) predict better together than alone on small data:

    Predictor.ensemble([Predictor.from_checkpoint(p) for p in best_checkpoints])  # mean probabilities
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tokenizers import Tokenizer

from vdcnn_res.data.batching import texts_to_batches
from vdcnn_res.data.series import SeriesPreprocessing, as_series, series_to_batches
from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import (
    LoadedModel,
    model_thresholds,
    read_checkpoint,
    read_pretrained,
    set_model_thresholds,
    write_pretrained,
)
from vdcnn_res.model import VDCNN, Ensemble

if TYPE_CHECKING:  # explain.py imports Captum lazily; the Predictor never needs it to predict
    from vdcnn_res.inference.explain import Explanation

__all__ = ["InputKindError", "Prediction", "Predictor"]

# {"label": str, "probability": float, "top_k": [(label, probability), ...]}; multi-label:
# {"labels": [str, ...], "probabilities": {label: probability}, "top_k": [...] when asked}
Prediction = dict[str, Any]


class InputKindError(UserError, TypeError):
    """Input of the wrong kind for the model: arrays for a text model, strings for a series model
    (a TypeError too, like the Predictor's other wrong-type errors)."""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (else bf16 autocast is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # Linux reports the x86 extensions that have bf16 dot products; elsewhere assume none
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class Predictor:
    """A trained classifier with its tokenizer and label names, ready for raw texts.

    Texts are encoded exactly as in training (truncated to ``max_length``), sorted by length
    into batches (each padded only to its own longest text, so short texts cost little) and
    returned in input order. The model runs in eval and inference mode, under bfloat16 autocast
    where the device computes bf16 natively (``bf16=None``, the default: CUDA GPUs with bf16,
    CPUs with AVX512-BF16 or AMX; its speed-up is measured in docs/performance.md).
    Probabilities then differ from float32 by up to a few hundredths; ``bf16=False`` gives
    float32 results, ``bf16=True`` forces bf16.

    A series model (``model.config.input_channels = C > 0``) is given its
    :class:`SeriesPreprocessing` as ``tokenizer`` and predicts arrays: one series ``(C, L)``
    (``(L,)`` or a flat list when C = 1) or a list of them, any lengths. Each is checked,
    its missing values filled and normalised exactly as in training (``max_length`` is then
    the preprocessing's).

    Probabilities are calibrated when the model is: its logits are divided by the temperature
    fitted on the validation split (``temperature``; 1.0 = uncalibrated, see
    training/calibration.py). The temperature never changes which label is predicted.

    A multi-label model (``thresholds``: one decision threshold per label, as tuned on the
    validation split; loaders pass them) predicts each label's sigmoid probability
    independently and returns the labels at or above their thresholds (``task`` says which).
    """

    def __init__(
        self,
        model: VDCNN | Ensemble,
        tokenizer: Tokenizer | SeriesPreprocessing,
        label_names: Sequence[str],
        max_length: int | None = 1024,
        device: str | torch.device = "cpu",
        bf16: bool | None = None,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        if len(label_names) != model.config.num_classes:
            raise UserError(f"{len(label_names)} label names for a model with {model.config.num_classes} classes")
        self.is_series = bool(model.config.input_channels)
        if self.is_series != isinstance(tokenizer, SeriesPreprocessing):
            raise UserError(
                "a series model (input_channels > 0) needs its SeriesPreprocessing, a text model its tokenizer"
            )
        if self.is_series:
            max_length = tokenizer.max_length
        elif max_length is None or max_length < 1:
            raise UserError(f"max_length must be >= 1, got {max_length}")
        try:
            self.device = torch.device(device)
            self.model = model.to(self.device).eval()
        except (AssertionError, RuntimeError, TypeError) as err:  # AssertionError: torch built without CUDA
            raise UserError(f"device {device!r} is not usable here ({err}); use e.g. 'cpu' or an available 'cuda:0'") from None
        if thresholds is None:
            thresholds = model_thresholds(model)
        if thresholds is not None:
            if self.is_series:
                raise UserError("multi-label series models are not supported; a series model has one label per series")
            set_model_thresholds(model, thresholds, "Predictor(thresholds=...)")  # saved with the model
        self.thresholds: list[float] | None = model_thresholds(model)
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = None if max_length is None else int(max_length)
        self.bf16 = native_bf16(self.device) if bf16 is None else bool(bf16)
        self.int8: Any = None  # an inference.quantize.Int8Session once use_int8 is called
        self.members: list[Predictor] = []  # an ensemble's Predictors (Predictor.ensemble)

    @property
    def task(self) -> str:
        """``multilabel`` (one sigmoid per label, thresholds) or ``multiclass`` (softmax, one label)."""
        return "multiclass" if self.thresholds is None else "multilabel"

    @property
    def temperature(self) -> float:
        """The model's calibration temperature (1.0 = uncalibrated)."""
        self._single("has one temperature per member: [m.temperature for m in predictor.members]")
        return float(self.model.temperature)

    @property
    def branch_weights(self) -> dict[str, float]:
        """Each branch's weight in the logits (``cnn``, and ``ngrams`` with the bag); all 1 unless
        calibration found a weighting that wins on held-out validation texts."""
        self._single("has branch weights per member: [m.branch_weights for m in predictor.members]")
        return dict(zip(self.model.branch_names, self.model.branch_weights.tolist()))

    @branch_weights.setter
    def branch_weights(self, weights: Mapping[str, float]) -> None:
        """Reweigh the branches, e.g. ``{"cnn": 1, "ngrams": 0}`` to predict with the CNN alone.
        The temperature stays the one fitted for the calibrated weights; for probabilities
        calibrated with the new weights, `vdcnn-res calibrate --branch_weights` refits it."""
        self._single("has branch weights per member: set them on each of predictor.members")
        try:
            values = self.model.branch_weight_values(weights)
        except ValueError as err:
            raise UserError(str(err)) from None
        self.model.branch_weights.copy_(torch.tensor(values, dtype=self.model.branch_weights.dtype))

    def _single(self, fix: str) -> None:
        if self.members:
            raise UserError(f"this Predictor is an ensemble of {len(self.members)} models; it {fix}")

    @classmethod
    def ensemble(cls, predictors: Sequence[Predictor]) -> Predictor:
        """One Predictor from several: the mean of their class probabilities (model/ensemble.py).

        The members must predict the same labels from the same input: equal label names, and
        the same tokenizer and ``max_length`` (texts) or preprocessing (series); typically one
        recipe fitted with different seeds. Single-label models only. The ensemble predicts
        like any Predictor; the members' own Predictors are ``predictor.members`` (save or
        export those: an ensemble has no single model file).
        """
        members = list(predictors)
        if not members or not all(isinstance(p, Predictor) for p in members):
            raise UserError("Predictor.ensemble takes a non-empty list of Predictors (e.g. from Predictor.from_checkpoint)")
        first = members[0]
        for i, p in enumerate(members):
            if p.members:
                raise UserError(f"member {i} is an ensemble already: pass its members instead")
            if p.thresholds is not None:
                raise UserError(f"member {i} is multi-label; ensembles average single-label (softmax) models only")
            if p.int8 is not None:
                raise UserError(f"member {i} predicts with an int8 graph; ensemble the float Predictors")
            if p.label_names != first.label_names:
                raise UserError(f"member {i} predicts the labels {p.label_names}, member 0 {first.label_names}: "
                                "ensemble models trained on the same labels")
            if p.device != first.device:
                raise UserError(f"member {i} is on {p.device}, member 0 on {first.device}: load them on one device")
            if _preprocessing(p) != _preprocessing(first):
                what = "preprocessing" if first.is_series else "tokenizer or max_length"
                raise UserError(f"member {i} reads its input with another {what} than member 0: "
                                "ensemble models trained with the same data settings")
        model = Ensemble([p.model for p in members])
        ensemble = cls(model, first.tokenizer, first.label_names, first.max_length, first.device, first.bf16)
        ensemble.members = members
        return ensemble

    @classmethod
    def _from_loaded(cls, loaded: LoadedModel, device: str | torch.device, bf16: bool | None) -> Predictor:
        return cls(loaded.model, loaded.tokenizer, loaded.label_names, loaded.max_length, device, bf16)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu", bf16: bool | None = None) -> Predictor:
        """Load a Lightning checkpoint written by `vdcnn-res fit`; never unpickles code (weights_only)."""
        return cls._from_loaded(read_checkpoint(path), device, bf16)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        bf16: bool | None = None,
        int8: bool = False,
        revision: str | None = None,
    ) -> Predictor:
        """Load a folder written by `vdcnn-res export` or `save_pretrained`, or a Hugging Face Hub
        repository of one (``"org/name"``): safetensors + JSON, no pickle.

        A local folder wins when it exists; otherwise ``org/name`` is downloaded into (or, with
        ``HF_HUB_OFFLINE=1``, read from) the Hugging Face cache, at ``revision`` (a branch, tag
        or commit; ``"org/name@rev"`` says the same). Only the model's files are fetched: pickle
        files in a repository are never downloaded (inference/hub.py).
        ``int8=True`` predicts with the folder's model.int8.onnx (`vdcnn-res export --int8`) instead.
        """
        from vdcnn_res.inference.hub import resolve_model_source

        folder = resolve_model_source(directory, revision=revision, int8=int8)
        predictor = cls._from_loaded(read_pretrained(folder), device, bf16)
        if int8:
            from vdcnn_res.inference.quantize import INT8_ONNX_FILE

            predictor.use_int8(folder / INT8_ONNX_FILE)
        return predictor

    def use_int8(self, source: str | os.PathLike[str] | Sequence[str]) -> Predictor:
        """Predict with an int8 graph in ONNX Runtime on the CPU (inference/quantize.py; speed and accuracy
        in docs/performance.md): a model.int8.onnx file, or calibration texts (a few hundred training
        texts) to quantize this model with now. Returns the Predictor; the float model stays for the rest.
        """
        from vdcnn_res.inference.quantize import Int8Session, quantize_model

        self._single("has no single graph to quantize; quantize a member (predictor.members[i].use_int8(...))")
        if self.is_series:
            raise UserError("int8 inference is for text models; a series model predicts in float")
        if self.device.type != "cpu":
            raise UserError(f"int8 inference runs on the CPU (ONNX Runtime); load the Predictor with device='cpu', not {self.device}")
        if isinstance(source, (str, os.PathLike)):
            self.int8 = Int8Session(source)
        else:
            with tempfile.TemporaryDirectory(prefix="vdcnn_int8_") as tmp:
                path = quantize_model(self.model, self.tokenizer, self.max_length, list(source), Path(tmp) / "model.int8.onnx")
                self.int8 = Int8Session(path)
        if self.int8.num_classes != len(self.label_names):
            found, self.int8 = self.int8.num_classes, None
            raise UserError(f"the int8 model has {found} classes, this Predictor {len(self.label_names)}: export them together")
        return self

    def save_pretrained(self, directory: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
        """Write model.safetensors, config.json and tokenizer.json (series: no tokenizer.json), what `from_pretrained` reads,
        and the model card README.md."""
        from vdcnn_res.inference.model_card import build_model_card

        self._single("is not one model file: save each member (predictor.members[i].save_pretrained(...))")
        loaded = LoadedModel(self.model, self.tokenizer, list(self.label_names), self.max_length)
        card = build_model_card(loaded, name=Path(directory).name)  # what the model alone tells: no data, no test results
        return write_pretrained(directory, self.model, self.tokenizer, self.label_names, self.max_length, overwrite, card)

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Softmax over the classes, or (multi-label) each label's sigmoid."""
        logits = logits.float()
        return (logits.sigmoid() if self.thresholds is not None else logits.softmax(-1)).cpu().numpy()

    @torch.inference_mode()
    def predict_proba(self, texts: str | Iterable[str] | Any, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (float32), shape (n_inputs, n_classes), columns in `label_names` order.

        A multi-label model gives each label's own probability (sigmoid): rows do not sum to 1.

        One string (series model: one series) gives one row. Empty texts and texts without a
        known character still get a prediction (the model sees padding only); long texts are
        cut to `max_length`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be a positive int, got {batch_size!r}")
        if self.is_series:
            series, _ = self._series_list(texts)
            return self._predict_series(series, batch_size)
        items = _as_list(texts)
        probs = np.zeros((len(items), len(self.label_names)), dtype=np.float32)
        if not items:
            return probs
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        for batch in texts_to_batches(self.tokenizer, items, max_length=self.max_length, batch_size=batch_size):
            if self.int8 is not None:
                logits = self.int8(batch["input_ids"], batch["lengths"])
            else:
                with autocast:
                    logits = self.model(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            probs[batch["index"].numpy()] = self._probabilities(logits)
        return probs

    def predict(
        self,
        texts: str | Iterable[str],
        top_k: int | None = None,
        batch_size: int = 64,
        threshold: float | Sequence[float] | None = None,
    ) -> Prediction | list[Prediction]:
        """Best label, its probability and the `top_k` (label, probability) pairs, most likely first
        (``top_k`` None: 1).

        One string in gives one result; a list gives a list in input order. Ties rank the
        class listed first in `label_names` first.

        A multi-label model returns ``{"labels": [...], "probabilities": {label: p}}``: the labels
        whose probability reaches their threshold (possibly none), in `label_names` order, and
        with ``top_k`` also ``"top_k"``, the k most probable labels whatever the thresholds.
        ``threshold`` (multi-label only) replaces the model's tuned thresholds: one number for
        every label or one per label, each in [0, 1].
        """
        n = len(self.label_names)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n):
            raise UserError(f"top_k must be an int between 1 and {n} (the number of classes), got {top_k!r}")
        if self.thresholds is not None:
            return self._predict_sets(texts, top_k, batch_size, threshold)
        if threshold is not None:
            raise UserError("threshold applies to multi-label models; this one predicts one label per text (softmax)")
        top_k = 1 if top_k is None else top_k
        if self.is_series:
            series, single = self._series_list(texts)
            probs = self._predict_series(series, batch_size)
        else:
            single = isinstance(texts, str)
            probs = self.predict_proba(texts, batch_size=batch_size)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        results = [
            {
                "label": self.label_names[row[0]],
                "probability": float(p[row[0]]),
                "top_k": [(self.label_names[j], float(p[j])) for j in row],
            }
            for p, row in zip(probs, order)
        ]
        return results[0] if single else results

    def _predict_sets(
        self, texts: str | Iterable[str], top_k: int | None, batch_size: int, threshold: float | Sequence[float] | None
    ) -> Prediction | list[Prediction]:
        thresholds = np.asarray(self.resolve_thresholds(threshold), dtype=np.float32)
        probs = self.predict_proba(texts, batch_size=batch_size)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k] if top_k else None
        results = []
        for row, p in enumerate(probs):
            chosen = np.flatnonzero(p >= thresholds)
            result: Prediction = {
                "labels": [self.label_names[j] for j in chosen],
                "probabilities": {self.label_names[j]: float(p[j]) for j in chosen},
            }
            if order is not None:
                result["top_k"] = [(self.label_names[j], float(p[j])) for j in order[row]]
            results.append(result)
        return results[0] if isinstance(texts, str) else results

    def resolve_thresholds(self, threshold: float | Sequence[float] | None) -> list[float]:
        """The per-label thresholds to use (multi-label only): the model's, or ``threshold`` checked
        (one number for every label or one per label, each in [0, 1]; else a one-line UserError)."""
        assert self.thresholds is not None
        if threshold is None:
            return list(self.thresholds)
        n = len(self.label_names)
        values = [threshold] * n if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else threshold
        if isinstance(values, np.ndarray):
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or len(values) != n:
            raise UserError(f"threshold must be a number or a list of {n} numbers (one per label), got {threshold!r:.80}")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0]
        if bad:
            raise UserError(f"threshold must be a probability in [0, 1], got {bad[0]!r}")
        return [float(v) for v in values]

    def explain(self, text: str, label: str | int | None = None, n_steps: int = 50) -> Explanation:
        """Per-character attributions of `text` for `label` (default: the predicted one).

        Integrated gradients on the character embeddings and, with an n-gram bag, its n-gram
        embeddings (Captum); see inference/explain.py and docs/explain.md.
        """
        from vdcnn_res.inference.explain import explain

        self._single("is explained member by member (predictor.members[i].explain(...))")
        if self.thresholds is not None:
            raise UserError("explanations are for single-label models (they attribute a softmax probability); "
                            "this model is multi-label")
        return explain(self, text, label, n_steps=n_steps)

    # ------------------------------------------------------------------ series

    @torch.inference_mode()
    def _predict_series(self, series: list[np.ndarray], batch_size: int) -> np.ndarray:
        probs = np.zeros((len(series), len(self.label_names)), dtype=np.float32)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        for batch in series_to_batches(series, batch_size=batch_size):
            with autocast:
                logits = self.model(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            probs[batch["index"].numpy()] = logits.float().softmax(-1).cpu().numpy()
        return probs

    def _series_list(self, inputs: Any) -> tuple[list[np.ndarray], bool]:
        """(preprocessed series, whether the input was one series).

        One series: an ndarray / tensor (L,) or (C, L), a flat list of numbers, or (C > 1) a list
        of C number lists. Several: an ndarray (N, C, L), or a list of series. For C = 1 a list
        of number lists is several univariate series.
        """
        channels = self.model.config.input_channels
        if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and all(isinstance(v, str) for v in inputs)):
            raise InputKindError(
                f"this is a series model ({channels} channel(s)): give numeric arrays, not strings; "
                "texts need a model trained with data_kind: text"
            )
        if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
            arr = np.asarray(inputs.detach().cpu() if torch.is_tensor(inputs) else inputs)
            if arr.ndim == 3:
                raw, single = list(arr), False
            else:
                raw, single = [arr], True
        elif isinstance(inputs, (list, tuple)):
            if not inputs:
                return [], False
            depth = _nesting(inputs)
            single = depth == 1 or (depth == 2 and channels > 1)
            raw = [inputs] if single else list(inputs)
        else:
            raise InputKindError(
                f"a series model takes an array (channels, length), a list of numbers or a list of series, "
                f"got {type(inputs).__name__}"
            )
        out = []
        for i, value in enumerate(raw):
            where = "the series" if single else f"series {i}"
            if isinstance(value, str):
                raise InputKindError(f"{where} is a string; this series model takes numeric arrays, not text")
            x = as_series(value, where)
            if x.shape[0] != channels:
                raise UserError(
                    f"{where} has {x.shape[0]} channel(s) (shape {x.shape}); the model reads {channels}: "
                    "give (channels, length) arrays, or for several series a list of them"
                )
            out.append(self.tokenizer.apply(x, where))
        return out, single


def _preprocessing(predictor: Predictor) -> Any:
    """What turns a raw input into model input: a series' preprocessing, a text's tokenizer and max_length."""
    if predictor.is_series:
        return predictor.tokenizer
    return predictor.tokenizer.to_str(), predictor.max_length


def _nesting(value: Any) -> int:
    """How deep the first elements of nested lists/arrays go: 1 for [1, 2], 2 for [[1, 2]], ..."""
    depth = 0
    while isinstance(value, (list, tuple, np.ndarray)) or torch.is_tensor(value):
        if isinstance(value, np.ndarray) or torch.is_tensor(value):
            return depth + value.ndim
        depth += 1
        if not value:
            return depth
        value = value[0]
    return depth


def _as_list(texts: str | Iterable[str]) -> list[str]:
    """One string or an iterable of strings (list, tuple, NumPy array, pandas Series) as a list."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, np.ndarray) and texts.dtype.kind in "fiub" or torch.is_tensor(texts):
        raise InputKindError(
            "this is a text model: it takes a string or a list of strings, not a numeric array; "
            "series need a model trained with data_kind: series"
        )
    if isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            if isinstance(text, (list, tuple, np.ndarray)) or isinstance(text, (int, float)) and not isinstance(text, bool):
                raise InputKindError(
                    f"this is a text model: every input must be a string; item {i} is {type(text).__name__} "
                    f"({text!r:.40}); series need a model trained with data_kind: series"
                )
            raise TypeError(f"every text must be a string; item {i} is {type(text).__name__}: {text!r:.60}")
    return items
