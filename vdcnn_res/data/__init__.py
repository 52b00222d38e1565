"""Reading, labelling, tokenizing and batching texts (Hugging Face `datasets` and `tokenizers`).

`TextDataModule` (and with it PyTorch Lightning) is imported on first use, so code that only
encodes and batches texts (the Predictor, the server) does not pay for Lightning's import.
"""

from typing import Any

__all__ = ["FORMATS", "TextDataModule"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vdcnn_res.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'vdcnn_res.data' has no attribute {name!r}")
