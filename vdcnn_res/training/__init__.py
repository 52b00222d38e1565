"""Training with Lightning: the LightningModule, optimizers, checkpoint files, callbacks, plots."""

from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.optim import OptimConfig

__all__ = ["OptimConfig", "VDCNNClassifier"]
