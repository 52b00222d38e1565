"""Prediction from Python without a Trainer.

    from vdcnn_res import Predictor
    predictor = Predictor.from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")
    predictor.predict(["Stocks rallied after the Fed decision."], top_k=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from vdcnn_res.config import ModelConfig
from vdcnn_res.data import TextDataModule, texts_to_batches
from vdcnn_res.errors import MissingFileError, UserError
from vdcnn_res.model import VDCNN, build_model
from vdcnn_res.tokenizer import load_tokenizer

Prediction = dict[str, Any]  # {"label": str, "score": float, "top_k": [(label, prob), ...]}


class Predictor:
    """A trained classifier with its tokenizer and label names, ready for raw texts.

    Texts are encoded exactly as in training, sorted by length into batches (each padded only
    to its own longest text) and returned in input order. Runs in eval and inference mode.
    """

    def __init__(
        self,
        model: VDCNN,
        tokenizer: Tokenizer,
        label_names: Sequence[str],
        max_length: int = 1024,
        device: str | torch.device = "cpu",
        bf16: bool = False,
    ) -> None:
        if len(label_names) != model.config.num_classes:
            raise UserError(f"{len(label_names)} label names for a model with {model.config.num_classes} classes")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length
        self.bf16 = bf16

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", bf16: bool = False) -> Predictor:
        """Load a Lightning checkpoint written by `vdcnn-res fit`; never unpickles code."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"checkpoint {str(path)!r} does not exist; pass the path of a .ckpt file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise UserError(
                f"cannot load checkpoint {str(path)!r} safely ({type(err).__name__}: {str(err)[:200]}); "
                "it may be truncated, corrupted or not written by vdcnn-res"
            ) from None
        hparams = checkpoint.get("hyper_parameters", {})
        data_state = checkpoint.get(TextDataModule.__qualname__) or {}
        if "arch" not in hparams or "tokenizer" not in data_state:
            raise UserError(f"{str(path)!r} is not a vdcnn-res checkpoint (no model config or tokenizer inside)")
        model = build_model(ModelConfig(**hparams["arch"]))
        weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(weights)
        max_length = checkpoint.get("datamodule_hyper_parameters", {}).get("max_length", 1024)
        return cls(model, load_tokenizer(data_state["tokenizer"]), data_state["label_names"], max_length, device, bf16)

    @torch.inference_mode()
    def predict_proba(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape (n_texts, n_classes), columns in `label_names` order."""
        texts = _as_list(texts)
        probs = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if not texts:
            return probs
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext()
        for batch in texts_to_batches(self.tokenizer, texts, max_length=self.max_length, batch_size=batch_size):
            with autocast:
                logits = self.model(batch["input_ids"].to(self.device), batch["lengths"].to(self.device))
            probs[batch["index"].numpy()] = logits.float().softmax(-1).cpu().numpy()
        return probs

    def predict(
        self, texts: str | Sequence[str], top_k: int = 1, batch_size: int = 64
    ) -> Prediction | list[Prediction]:
        """Best label, its probability and the `top_k` (label, probability) pairs per text.

        One string in gives one result; a list gives a list in input order.
        """
        if not 1 <= top_k <= len(self.label_names):
            raise UserError(f"top_k must be between 1 and {len(self.label_names)}, got {top_k}")
        probs = self.predict_proba(texts, batch_size=batch_size)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        results = [
            {
                "label": self.label_names[row[0]],
                "score": float(p[row[0]]),
                "top_k": [(self.label_names[j], float(p[j])) for j in row],
            }
            for p, row in zip(probs, order)
        ]
        return results[0] if isinstance(texts, str) else results


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"every text must be a string, got {type(bad).__name__}: {bad!r:.60}")
    return list(texts)
