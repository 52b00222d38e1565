"""The network in plain PyTorch (imports only torch and the stdlib): config, blocks, layers, registry."""

from .blocks import BLOCKS, BasicConvResBlock, BottleneckConvResBlock, PreActConvResBlock, ResidualBlock
from .config import BLOCK_TYPES, DOWNSAMPLING_TYPES, HEAD_NORM_TYPES, HEAD_TYPES, VARIANTS, ModelConfig
from .ensemble import Ensemble
from .flops import count_parameters, forward_flops, model_summary
from .ngrams import HashedNGramBag
from .network import VDCNN, Stage, build_model, create_model, list_models, make_stage, upgrade_state_dict

__all__ = [
    "BLOCKS",
    "BLOCK_TYPES",
    "DOWNSAMPLING_TYPES",
    "Ensemble",
    "HEAD_NORM_TYPES",
    "HEAD_TYPES",
    "HashedNGramBag",
    "VARIANTS",
    "BasicConvResBlock",
    "BottleneckConvResBlock",
    "ModelConfig",
    "PreActConvResBlock",
    "ResidualBlock",
    "Stage",
    "VDCNN",
    "build_model",
    "count_parameters",
    "create_model",
    "forward_flops",
    "list_models",
    "make_stage",
    "model_summary",
    "upgrade_state_dict",
]
