"""vdcnn-res: very deep character-level residual CNN text classifiers."""

__version__ = "0.1.0"
