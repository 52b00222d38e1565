"""Reading, labelling, tokenizing and batching texts (Hugging Face `datasets` and `tokenizers`).

`TextDataModule` and `SeriesDataModule` (and with them PyTorch Lightning) are imported on first
use, so code that only encodes and batches inputs (the Predictor, the server) does not pay for
Lightning's import.
"""

from typing import Any

__all__ = ["FORMATS", "SeriesDataModule", "TextDataModule"]


def __getattr__(name: str) -> Any:
    if name == "SeriesDataModule":
        from vdcnn_res.data.series_module import SeriesDataModule

        return SeriesDataModule
    if name in __all__:
        from vdcnn_res.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'vdcnn_res.data' has no attribute {name!r}")
