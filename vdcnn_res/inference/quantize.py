"""int8 CPU inference: the exported ONNX graph with int8 convolutions and matmuls (ONNX Runtime).

    vdcnn-res export --ckpt_path CKPT --out_dir exports/agnews --int8     # writes model.int8.onnx too
    Predictor.from_pretrained("exports/agnews", int8=True)                # predicts with it
    predictor.use_int8(calibration_texts)                                 # or quantize in memory

How: ONNX Runtime's *static* quantization (`quantize_static`, QDQ format): weights int8 per output
channel, activations uint8 with ranges calibrated on a few hundred real texts (min/max), every
Conv, MatMul and Gemm quantized; BatchNorm is folded into the convolutions by ONNX Runtime's
pre-processing; the k-max head's sort, the padding masks and the softmax stay float.

Why this and not the alternatives (docs/performance.md has the numbers, on an AG News model):
- torch's dynamic quantization (`torch.ao.quantization.quantize_dynamic`) converts only
  ``nn.Linear``: the head holds most of the depth-9 network's parameters but a small share of its
  FLOPs, so it barely speeds anything up, and that API is deprecated in favour of torchao;
- ONNX Runtime's *dynamic* quantization of every op turns the convolutions into ConvInteger,
  which was slower than float; restricted to MatMul/Gemm it was slower than the static graph,
  whose QLinearConv kernels are the ones ONNX Runtime optimises.
Static quantization needs calibration texts: the training texts are the natural ones.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from vdcnn_res.data.batching import texts_to_batches
from vdcnn_res.errors import UserError
from vdcnn_res.inference.onnx import export_onnx
from vdcnn_res.logs import quiet_loggers
from vdcnn_res.model import VDCNN

__all__ = ["CALIBRATION_TEXTS", "INT8_ONNX_FILE", "Int8Session", "agreement", "quantize_model", "require_onnxruntime"]

INT8_ONNX_FILE = "model.int8.onnx"
CALIBRATION_TEXTS = 1024  # texts whose activations set the uint8 ranges (fewer left accuracy less stable: docs/performance.md)


def require_onnxruntime() -> None:
    """A one-line error when ONNX Runtime (or the ONNX exporter it quantizes) is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("int8 inference needs onnx, onnxscript and onnxruntime: pip install 'vdcnn-res[onnx]'") from None


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over the Predictor's own batches."""

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self._it: Iterator[dict[str, Tensor]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {"input_ids": batch["input_ids"].numpy(), "lengths": batch["lengths"].numpy()}


def quantize_model(
    model: VDCNN,
    tokenizer: Tokenizer,
    max_length: int,
    calibration_texts: Sequence[str],
    path: str | os.PathLike[str],
    batch_size: int = 64,
) -> Path:
    """Write `model` as an int8 ONNX graph to `path`, its activation ranges calibrated on `calibration_texts`.

    The texts are batched exactly as the Predictor batches them (sorted by length, each batch
    padded to its longest text). A few hundred spread over the classes are enough.
    """
    require_onnxruntime()
    if model.config.input_channels:
        raise UserError("int8 quantization is for text models; a series model predicts in float")
    texts = [t for t in calibration_texts if isinstance(t, str)]
    if not texts:
        raise UserError("int8 quantization needs calibration texts (a few hundred real inputs, e.g. training texts)")
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = Path(path)
    batches = list(texts_to_batches(tokenizer, texts, max_length=max_length, batch_size=batch_size))
    with tempfile.TemporaryDirectory(prefix="vdcnn_int8_") as tmp:
        float_path, prepared = Path(tmp) / "model.onnx", Path(tmp) / "prepared.onnx"
        export_onnx(model, float_path)
        # Symbolic shape inference cannot follow the graph's dynamic length; ONNX's own inference can.
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        with quiet_loggers(("",), logging.ERROR):  # per-tensor calibration chatter
            quantize_static(
                str(prepared),
                str(path),
                _Batches(batches),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            )
    return path


class Int8Session:
    """An int8 ONNX graph in ONNX Runtime on the CPU, called like the model: (input_ids, lengths) -> logits.

    Uses as many threads as torch does (``torch.get_num_threads()``), so float and int8
    Predictors compare on equal terms.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        require_onnxruntime()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"no int8 model at {str(path)!r}: write one with `vdcnn-res export --int8`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0][:200]})") from None
        self.path = path
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_ids", "lengths"]:
            raise UserError(f"{path}: inputs {names}, expected ['input_ids', 'lengths'] (a vdcnn-res text model)")
        self.num_classes = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64), "lengths": lengths.cpu().numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def __repr__(self) -> str:  # pragma: no cover - for interactive use
        return f"Int8Session({str(self.path)!r})"


def agreement(reference: Any, int8: Int8Session, tokenizer: Tokenizer, max_length: int, texts: Sequence[str]) -> float:
    """Share of `texts` on which the int8 graph's top class equals the float model's (a sanity check)."""
    same = total = 0
    with torch.inference_mode():
        for batch in texts_to_batches(tokenizer, list(texts), max_length=max_length, batch_size=64):
            a = reference(batch["input_ids"], batch["lengths"]).argmax(-1)
            b = int8(batch["input_ids"], batch["lengths"]).argmax(-1)
            same += int((a == b).sum())
            total += len(a)
    return same / max(total, 1)
