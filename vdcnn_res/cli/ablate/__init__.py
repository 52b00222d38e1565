"""`vdcnn-res ablate`: a depth x shortcut (x downsampling x seed) grid of fits: grid, run (workers),
claims (one worker per cell on a shared folder), stats (over seeds), report."""

from vdcnn_res.cli.ablate.run import main, run_ablation, train_cell

__all__ = ["main", "run_ablation", "train_cell"]
