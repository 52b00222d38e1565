"""The LightningCLI behind `vdcnn-res fit|validate|test|predict`: its signatures are the config schema.

    vdcnn-res fit --config configs/quickstart.yaml
    vdcnn-res fit --config configs/quickstart.yaml --ckpt_path last   (resume: newest last.ckpt under the root dir)
    vdcnn-res test --config configs/quickstart.yaml --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    vdcnn-res predict --config configs/quickstart.yaml --ckpt_path last.ckpt --data.predict texts.jsonl
    vdcnn-res export --ckpt_path last.ckpt --out_dir exports/model [--onnx]   (own parser, no Trainer)
    vdcnn-res ablate --config configs/quickstart.yaml --out_dir ablations/x --depths 9 17   (depth x shortcut grid)
    vdcnn-res fit --print_config
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI

from vdcnn_res.data import TextDataModule
from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import load_checkpoint_safely
from vdcnn_res.inference.writer import PredictionWriter
from vdcnn_res.training.checkpointing import AtomicCheckpointIO, ModelCheckpointWithLast
from vdcnn_res.training.module import VDCNNClassifier

# ckpt_path values Lightning resolves itself to checkpoints of this run, not paths.
# ("last" is resolved here, to the newest last.ckpt of earlier runs: see _resolve_last.)
_CKPT_KEYWORDS = ("best", "hpc", "registry")


def _resolve_last(root_dir: str | None) -> str:
    """`--ckpt_path last`: the newest last.ckpt an earlier run wrote under the root dir.

    Lightning would look in this run's new, empty version folder and start from scratch.
    """
    root = Path(root_dir or os.getcwd()).expanduser()
    found = [*root.glob("lightning_logs/version_*/checkpoints/last.ckpt"), *root.glob("checkpoints/last.ckpt")]
    if not found:
        raise UserError(
            f"--ckpt_path last: no last.ckpt under {str(root)!r} (looked in lightning_logs/version_*/checkpoints/ "
            "and checkpoints/); set --trainer.default_root_dir to the earlier run's folder or give the file's path"
        )
    return str(max(found, key=lambda p: p.stat().st_mtime))


class VDCNNCLI(LightningCLI):
    """Links every derived value from the data module into the model, once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.arch.num_classes", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.padding_idx", "model.arch.padding_idx", apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.label_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpointWithLast, "checkpoint")  # last.ckpt = the last state
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{step}",
            }
        )
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Refuse unsafe checkpoints before Lightning reads one (it does so right after parsing)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        # Lightning passes weights_only=None on to torch.load, where an environment variable
        # (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) can turn the default into full unpickling.
        if config.get("weights_only") is None:
            config.weights_only = True
        if subcommand == "predict" and config.get("return_predictions") is None:
            config.return_predictions = False  # the prediction writer saves them; don't hold them in memory
        ckpt_path = config.get("ckpt_path")
        if str(ckpt_path) == "last":
            config.ckpt_path = ckpt_path = _resolve_last(config.get("trainer.default_root_dir"))
            print(f"Resuming from {ckpt_path}", file=sys.stderr)
        if ckpt_path and str(ckpt_path) not in _CKPT_KEYWORDS and not str(ckpt_path).startswith("registry:"):
            if "://" not in str(ckpt_path):
                load_checkpoint_safely(ckpt_path)  # UserError for pickled code or a missing file

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, with write-then-rename checkpoint saves unless another CheckpointIO was chosen."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if self.trainer.is_global_zero and callback is not None and callback.best_model_path:
            score = callback.best_model_score
            print(f"Best checkpoint ({callback.monitor}={float(score):.4f}): {callback.best_model_path}")
            print(f"Last checkpoint: {callback.last_model_path}")


def build_cli(args: ArgsType = None, run: bool = True) -> VDCNNCLI:
    """The CLI with its defaults; `run=False` parses a fit config (no subcommand) and builds
    model, data and Trainer without running them (as `vdcnn-res ablate` does per cell)."""
    return VDCNNCLI(
        VDCNNClassifier,
        TextDataModule,
        args=args,
        run=run,
        seed_everything_default=42,
        parser_kwargs={
            "description": "Train, evaluate and apply VDCNN text classifiers. Also: `vdcnn-res export --help` "
            "(safe model files and ONNX, no Trainer) and `vdcnn-res ablate --help` (depth x shortcut grids)."
        },
        auto_configure_optimizers=False,  # the module's optim config owns optimizer and schedule
        trainer_defaults={
            # the data module shards its own length-bucketed batches across ranks
            "use_distributed_sampler": False,
            "log_every_n_steps": 10,
        },
    )
