"""ONNX export of a trained VDCNN: dynamic batch and length axes, verified against PyTorch.

    model.onnx   inputs input_ids (B, L) int64 right-padded with the padding id and lengths (B,)
                 int64; output logits (B, num_classes); B and L are dynamic
                 (a series model: inputs series (B, C, L) float32, already preprocessed and
                 right-padded, and lengths (B,) int64; B and L dynamic, C fixed)

The logits are the model's: its branches' logits times its branch weights, summed and divided
by its calibration temperature (constants of the graph; 1.0 for an uncalibrated model), so softmax(logits) are the same calibrated probabilities as
the Predictor's. A multi-label model's logits are one per label (sigmoid them); its graph
carries the task and the per-label thresholds as metadata properties
(``vdcnn_res.task`` = ``multilabel``, ``vdcnn_res.label_thresholds`` a JSON list in label
order; read them with ``onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map``).

What tracing needs (no data-dependent checks, a max pooling with a dynamic length, the stable
sort as ONNX TopK) is swapped in here; the model itself is written as the paper reads.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import model_thresholds
from vdcnn_res.logs import quiet_loggers
from vdcnn_res.model import VDCNN
from vdcnn_res.model.layers import MaskedMaxPool1d

__all__ = ["ONNX_OPSET", "export_onnx", "onnx_task", "require_onnx"]

ONNX_OPSET = 18


class _ExportMaxPool1d(MaskedMaxPool1d):
    """The same windows' max via unfold: torch.export fixes max_pool1d's length to the example's
    (no dynamic length in ONNX), unfold stays dynamic. Identical values; eager keeps the kernel."""

    def pool(self, x: Tensor) -> Tensor:
        return F.pad(x, (1, 1), value=torch.finfo(x.dtype).min).unfold(-1, 3, 2).amax(-1)


class _OnnxModel(nn.Module):
    """The VDCNN with explicit lengths and export-friendly pooling, for tracing only.

    The model's input checks are data-dependent Python branches that torch.export would fix
    to the example's outcome; this wrapper skips them (`features` pads to min_length with
    `sym_max`, so one graph serves every length).
    """

    def __init__(self, model: VDCNN) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for stage in self.model.stages:
            if isinstance(stage.downsample, MaskedMaxPool1d):
                stage.downsample = _ExportMaxPool1d()

    def forward(self, input_ids: Tensor, lengths: Tensor) -> Tensor:
        return self.model.forward_head(self.model.features(input_ids, lengths))


def _sort_stable(self: Any, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """aten::sort.stable as ONNX TopK over the whole axis.

    The ONNX spec has TopK break ties by the lower index, so this is the stable sort the
    k-max pooling relies on; torch's exporter has no translation for the stable overload.
    """
    from onnxscript import opset18 as op

    n = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    values, indices = op.TopK(self, n, axis=dim, largest=descending, sorted=True)
    return values, indices


def require_onnx() -> None:
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
    require_onnx()
    import onnx

    path = Path(path)
    wrapper = _OnnxModel(model).eval()
    example_ids, example_lengths = _example_inputs(model, batch=3, length=2 * model.min_length + 5)
    name, time_axis = _input_name(model), example_ids.dim() - 1
    dims = {"input_ids": {0: torch.export.Dim("batch"), time_axis: torch.export.Dim("length")}, "lengths": {0: torch.export.Dim("batch")}}
    # quiet: "torchvision is not installed" and similar noise
    with quiet_loggers(("torch.onnx",), logging.ERROR), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example_ids, example_lengths),
            str(path),
            dynamo=True,
            input_names=[name, "lengths"],
            output_names=["logits"],
            dynamic_shapes=dims,
            custom_translation_table={torch.ops.aten.sort.stable: _sort_stable},
            opset_version=ONNX_OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    thresholds = model_thresholds(model)
    if thresholds is not None:  # single-label graphs stay exactly as before
        proto = onnx.load(str(path), load_external_data=False)
        onnx.helper.set_model_props(
            proto, {"vdcnn_res.task": "multilabel", "vdcnn_res.label_thresholds": json.dumps(thresholds)}
        )
        onnx.save(proto, str(path))
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    shape = list(graph_input.type.tensor_type.shape.dim)
    if not (shape[0].dim_param and shape[-1].dim_param and all(d.dim_param or d.dim_value for d in shape)):
        raise RuntimeError(f"ONNX export fixed an input axis of {path} (dims {graph_input.type.tensor_type.shape.dim})")
    if verify:
        _verify_onnx(model, path)
    return path


def onnx_task(path: str | os.PathLike[str]) -> tuple[str, list[float] | None]:
    """(task, per-label thresholds or None) of a graph written by :func:`export_onnx`."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if props.get("vdcnn_res.task") == "multilabel":
        return "multilabel", [float(t) for t in json.loads(props["vdcnn_res.label_thresholds"])]
    return "multiclass", None


def _input_name(model: VDCNN) -> str:
    return "series" if model.config.input_channels else "input_ids"


def _example_inputs(model: VDCNN, batch: int, length: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    padding = torch.arange(length)[None, :] >= lengths[:, None]  # (B, L)
    if model.config.input_channels:
        values = torch.randn(batch, model.config.input_channels, length, generator=g)
        return values.masked_fill(padding[:, None, :], 0.0), lengths
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g)
    ids[padding] = model.config.padding_idx
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
        got = session.run(None, {_input_name(model): ids.numpy(), "lengths": lengths.numpy()})[0]
        scale = max(1.0, float(np.abs(expected).max()))
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
            raise RuntimeError(
                f"ONNX export of {path} disagrees with PyTorch on a ({batch}, {length}) input: "
                f"max abs difference {float(np.abs(got - expected).max()):.3g}"
            )
