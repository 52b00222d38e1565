"""`vdcnn-res calibrate`: fit a checkpoint's temperature on a validation split and store it in the checkpoint.

    vdcnn-res calibrate --ckpt_path best --data.valid my/valid.tsv
    vdcnn-res calibrate --config configs/shared/ag_news_7600.yaml --ckpt_path CKPT --out calibrated.ckpt
    vdcnn-res calibrate --ckpt_path best --data.valid my/valid.tsv --branch_weights '{cnn: 1, ngrams: 0}' --out cnn.ckpt

`fit` already calibrates every checkpoint it saves right after a validation (best and last,
training/module.py). This command is for the others: checkpoints of an older vdcnn-res, a
new validation split, or branch weights of your choosing (`--branch_weights '{cnn: 1, ngrams:
0}'`: the CNN alone, with a temperature fitted for it). It runs `vdcnn-res validate` with the same arguments (so the data
settings and the tokenizer come from the checkpoint, and the split from --data.valid, from a
fit config's data, or from data.train + data.valid_fraction), fits the temperature on the
uncalibrated logits (training/calibration.py), and writes the checkpoint with it atomically,
in place or to --out. When anything fails, nothing is written.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import torch
import yaml

from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import load_checkpoint_safely
from vdcnn_res.logs import LIGHTNING_LOGGERS, quiet_loggers
from vdcnn_res.training.checkpointing import atomic_torch_save

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdcnn-res calibrate",
        description="Fit a checkpoint's temperature (temperature scaling) on a validation split and store it in the "
        "checkpoint: test, predict, export, ONNX and the Predictor then give calibrated probabilities. Every "
        "other argument is `vdcnn-res validate`'s (e.g. --data.valid FILE, --config FIT_CONFIG, --trainer.*).",
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to calibrate: a path, best or last")
    parser.add_argument("--out", help="write the calibrated checkpoint here instead of replacing --ckpt_path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--branch_weights",
        help="keep these branch weights instead of fitting them, and fit the temperature for them; a model with the "
        "n-gram bag only, e.g. '{cnn: 1, ngrams: 0}' to predict with the CNN alone, calibrated",
    )
    return parser


def _given_weights(text: str) -> dict[str, float]:
    """--branch_weights' YAML mapping (checked against the model's branches once it is loaded)."""
    try:
        weights = yaml.safe_load(text)
    except yaml.YAMLError:
        weights = None
    if not isinstance(weights, dict):
        raise UserError(f"--branch_weights must be a mapping of branch to weight, e.g. '{{cnn: 1, ngrams: 0}}'; got {text!r}")
    return weights


def main(argv: list[str]) -> None:
    """`vdcnn-res calibrate`: `validate` with the given arguments, then the temperature written into the checkpoint."""
    from vdcnn_res.cli.lightning import build_cli

    args, rest = _parser().parse_known_args(argv)
    out = Path(args.out) if args.out else None
    given = _given_weights(args.branch_weights) if args.branch_weights is not None else None
    if out is not None and out.exists() and not args.overwrite:
        raise UserError(f"--out {str(out)!r} exists; choose another path or pass --overwrite")
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r}: the folder {str(out.parent)!r} does not exist; create it first")
    # Calibrating writes nothing but the checkpoint: validate's logs and config.yaml go to a
    # temporary folder (Lightning would write config.yaml into the current folder without a logger).
    with tempfile.TemporaryDirectory(prefix="vdcnn_res_calibrate_") as scratch, warnings.catch_warnings(), quiet_loggers(LIGHTNING_LOGGERS):
        # Lightning's wording of "no validation split"; the error below says it in ours.
        warnings.filterwarnings("ignore", message=r"Total length of .* across ranks is zero")
        logger = {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": scratch}}
        callbacks = []
        if given is not None:  # calibration keeps these weights and fits only the temperature
            callback = {"class_path": "vdcnn_res.training.callbacks.GivenBranchWeights", "init_args": {"weights": given}}
            callbacks = [f"--trainer.callbacks+={json.dumps(callback)}"]
        cli = build_cli(["validate", "--ckpt_path", args.ckpt_path, *rest, f"--trainer.logger={json.dumps(logger)}", *callbacks])
    ckpt_path = Path(cli.config["validate"]["ckpt_path"])  # best / last resolved
    calibration = cli.model.calibration
    if calibration is None and cli.model.calibration_error is not None:
        raise UserError(f"calibrate: {cli.model.calibration_error}; {str(ckpt_path)!r} is unchanged")
    if calibration is None:
        raise UserError(
            f"calibrate: no validation texts to fit the temperature on; give the split with --data.valid FILE "
            f"(or the fit config with --config, or --data.train FILE with data.valid_fraction > 0); "
            f"{str(ckpt_path)!r} is unchanged"
        )
    if not cli.trainer.is_global_zero:
        return
    checkpoint = load_checkpoint_safely(ckpt_path)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"{str(ckpt_path)!r} holds no state_dict; calibrate a checkpoint written by `vdcnn-res fit`")
    state["model.temperature"] = torch.tensor(calibration.temperature, dtype=torch.float32)
    if calibration.branch_weights is not None:
        state["model.branch_weights"] = torch.tensor(calibration.branch_weights, dtype=torch.float32)
    checkpoint["calibration"] = calibration.to_dict()
    target = out or ckpt_path
    atomic_torch_save(checkpoint, target)
    print(f"Calibrated {ckpt_path}: {calibration.summary()}")
    print(f"Written to {target}")
