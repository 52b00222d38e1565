"""vdcnn-res: very deep character-level residual CNN text classifiers (VDCNN).

    from vdcnn_res import create_model, Predictor
    model = create_model("vdcnn29", num_classes=4, shortcut=True)     # plain PyTorch
    predictor = Predictor.from_checkpoint("path/to/last.ckpt")        # trained with vdcnn-res fit
"""

from vdcnn_res.errors import UserError
from vdcnn_res.model import VARIANTS, VDCNN, ModelConfig, build_model, create_model, list_models, model_summary

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "VDCNN",
    "ModelConfig",
    "Predictor",
    "UserError",
    "build_model",
    "create_model",
    "list_models",
    "model_summary",
]


def __getattr__(name: str):
    # The Predictor pulls in `datasets` and `tokenizers`; import it only when asked for, so
    # `import vdcnn_res` for the model alone stays a plain-PyTorch import.
    if name == "Predictor":
        from vdcnn_res.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'vdcnn_res' has no attribute {name!r}")
