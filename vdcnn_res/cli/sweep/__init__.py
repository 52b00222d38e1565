"""`vdcnn-res sweep`: a grid over any fit config keys x seeds on the validation split (never test):
grid (axes, points, rows), run (cells, checks), report (mean +- sd per point, paired differences to a
baseline). Cell folders, claims, resuming and --workers are shared with `vdcnn-res ablate`."""

from vdcnn_res.cli.sweep.run import main, run_sweep, train_cell

__all__ = ["main", "run_sweep", "train_cell"]
