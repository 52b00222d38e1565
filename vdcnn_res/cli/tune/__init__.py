"""`vdcnn-res tune`: an Optuna search over the recipe's knobs within a time budget (see run.py)."""

from vdcnn_res.cli.tune.run import main

__all__ = ["main"]
