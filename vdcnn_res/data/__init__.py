"""Reading, labelling, tokenizing and batching texts (Hugging Face `datasets` and `tokenizers`)."""

from vdcnn_res.data.datamodule import FORMATS, TextDataModule

__all__ = ["FORMATS", "TextDataModule"]
