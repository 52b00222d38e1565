"""The LightningCLI behind `vdcnn-res fit|validate|test|predict`: its signatures are the config schema.

    vdcnn-res fit --data.train train.tsv --data.valid valid.tsv      (the recommended recipe, adaptive budget)
    vdcnn-res fit --config configs/quickstart.yaml --ckpt_path last   (resume: newest last.ckpt under the root dir)
    vdcnn-res test --ckpt_path best --data.test test.tsv             (best checkpoint of the newest run)
    vdcnn-res predict --ckpt_path CKPT --data.predict texts.jsonl     (the checkpoint alone: no training data)
    vdcnn-res export --ckpt_path last.ckpt --out_dir exports/model [--onnx]   (own parser, no Trainer)
    vdcnn-res ablate --config configs/quickstart.yaml --out_dir ablations/x --depths 9 17   (depth x shortcut grid)
    vdcnn-res fit --config configs/series/recipe.yaml --config configs/series/GunPoint.yaml   (time series)
    vdcnn-res fit --print_config

Text or series: the top-level key `data_kind` (text | series, default text) picks the data module
(TextDataModule or SeriesDataModule) before the config is parsed, from the command line, the
--config files (the last that sets it wins) or, for validate/test/predict, the --ckpt_path
checkpoint; every `data.*` key is then that module's argument.

Defaults (the recipe lives here and in the signatures of the model, its OptimConfig and the data
module; configs hold data settings and at most a budget): AdamW + warm-up + cosine, label
smoothing 0.1, length-bucketed batches of 32 cut at 512 characters, bf16-mixed where the device
computes bf16 natively (else 32-true), and an adaptive budget: early stopping on validation
accuracy with a patience, capped at `trainer.max_epochs`; the cosine schedule spans the cap.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
import yaml
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary, RichModelSummary
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from vdcnn_res.cli.help import HelpFormatter, full_help, short_help
from vdcnn_res.data import TextDataModule
from vdcnn_res.errors import UserError
from vdcnn_res.inference.model_files import load_checkpoint_safely
from vdcnn_res.inference.predictor import native_bf16
from vdcnn_res.inference.writer import PredictionWriter
from vdcnn_res.model.config import ModelConfig
from vdcnn_res.training.checkpointing import AtomicCheckpointIO, ModelCheckpointWithLast, require_resumable
from vdcnn_res.training.lr_finder import LRRangeTest
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.mode_gap import EvalModeGap
from vdcnn_res.training.progress import EpochSummary, FlopsModelSummary

__all__ = ["VDCNNCLI", "build_cli", "default_precision", "silence_foreign_noise"]

# The adaptive budget: stop when validation accuracy has not improved for PATIENCE validations,
# at the latest after MAX_EPOCHS (the length of the cosine schedule). Configs may override both.
MAX_EPOCHS = 20
PATIENCE = 4
# The text recipe's bag of hashed character n-grams next to the CNN (docs/results.md §7): fit on
# text uses it unless a config says `model.arch.ngram_orders: []` (the pure CNN: paper, ablation).
TEXT_NGRAMS = {"model.arch.ngram_orders": [1, 2, 3, 4, 5], "model.arch.ngram_buckets": 65536}
# ... and the bag is also trained on its own loss (docs/results.md §9): what `model.branch_loss`
# becomes for fit when the model has a bag and no config sets it (`{ngrams: 0}` turns it off).
TEXT_BRANCH_LOSS = {"ngrams": 1.0}

# ckpt_path values Lightning resolves itself to checkpoints of this run, not paths.
# ("last" and "best" are resolved here, to earlier runs: see _resolve_last and _resolve_best.)
_CKPT_KEYWORDS = ("hpc", "registry")
_EVAL_SUBCOMMANDS = ("validate", "test", "predict")
_SUBCOMMAND_NAMES = ("fit", *_EVAL_SUBCOMMANDS)
DATA_SEED = 42  # data.seed where neither it nor seed_everything gives one
# Data settings a checkpoint does not dictate to test/predict: where the files are, where caches
# go, and how the tokenizer and the classes were made (both come from the checkpoint itself).
_NOT_FROM_CHECKPOINT = frozenset(
    {"train", "valid", "test", "predict", "classes_file", "cache_dir", "num_workers",
     "tokenizer", "lowercase", "max_vocab", "min_frequency"}
)  # fmt: skip
_DATA_STATE_KEY = "TextDataModule"  # where Lightning keeps TextDataModule.state_dict() in a checkpoint
_SERIES_STATE_KEY = "SeriesDataModule"  # ... and SeriesDataModule.state_dict()
DATA_KINDS = ("text", "series")
# model.arch keys the data module links in at instantiation (from the checkpoint's data state for eval).
_LINKED_ARCH = frozenset({"num_classes", "vocab_size", "padding_idx", "input_channels"})
_DERIVED_HELP = {
    "model.arch.num_classes": "number of classes: linked from data.num_classes, never typed",
    "model.arch.vocab_size": "embedding rows: linked from the data module's tokenizer, never typed",
    "model.arch.padding_idx": "padding id: linked from the data module, never typed",
    "model.arch.input_channels": "series channels (0 = text): linked from the data module, never typed",
    "model.label_names": "class names: linked from the data module (or the checkpoint), never typed",
    "model.task": "multiclass | multilabel: linked from data.task (or the checkpoint), never typed",
}


# ----------------------------------------------------------------------------- noise


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes` (exact, foreign messages only)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_FOREIGN_LOG_LINES = (
    "💡 Tip: For seamless cloud ",  # advertisements (litlogger, litmodels) printed by every Trainer
    "Loading `train_dataloader` to estimate number of stepping batches.",  # Lightning internals
)


def silence_foreign_noise() -> None:
    """Silence, at their source, the messages of libraries that say nothing about the user's run.

    Each filter names one exact message (and where it comes from), so every other warning of the
    same libraries still shows. Safe to call more than once.
    """
    # torch deprecated a class that Lightning's own code still constructs
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(_FOREIGN_LOG_LINES))
    # `datasets` draws a progress bar ("Generating train split") for every file it converts,
    # even a test file; HF_DATASETS_DISABLE_PROGRESS_BARS=0 keeps them (the variable has priority).
    import datasets

    if datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None:
        datasets.disable_progress_bars()


# ----------------------------------------------------------------------------- defaults


def default_precision(accelerator: Any = "auto") -> str:
    """bf16-mixed where the device computes bf16 natively (CPU with AVX512-BF16/AMX, CUDA with bf16), else 32-true."""
    name = str(accelerator).lower()
    cuda = name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if native_bf16(torch.device("cuda" if cuda else "cpu")) else "32-true"


# ----------------------------------------------------------------------------- checkpoints


def _newest(files: list[Path]) -> Path:
    return max(files, key=lambda p: p.stat().st_mtime)


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
    return str(_newest(found))


def _resolve_best(root_dir: str | None) -> str:
    """`--ckpt_path best`: the best checkpoint of the newest earlier run under the root dir.

    Lightning would ask this run's (unused) ModelCheckpoint, which has seen no validation. With
    several best-*.ckpt in the run's folder (save_top_k > 1), its last.ckpt says which is best.
    """
    root = Path(root_dir or os.getcwd()).expanduser()
    found = [*root.glob("lightning_logs/version_*/checkpoints/best-*.ckpt"), *root.glob("checkpoints/best-*.ckpt")]
    if not found:
        raise UserError(
            f"--ckpt_path best: no best-*.ckpt under {str(root)!r} (looked in lightning_logs/version_*/checkpoints/ "
            "and checkpoints/); set --trainer.default_root_dir to the training run's folder or give the file's path"
        )
    folder = _newest(found).parent
    candidates = sorted(folder.glob("best-*.ckpt"))
    if len(candidates) == 1:
        return str(candidates[0])
    last = folder / "last.ckpt"
    if last.is_file():
        for key, state in (load_checkpoint_safely(last).get("callbacks") or {}).items():
            if str(key).startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("best_model_path"):
                best = folder / Path(state["best_model_path"]).name
                if best.is_file():
                    return str(best)
    raise UserError(
        f"--ckpt_path best: {str(folder)!r} holds {len(candidates)} best-*.ckpt and no last.ckpt says which is best; "
        "give the file's path"
    )


def _run_dir(ckpt_path: Path) -> Path:
    """The training run a checkpoint belongs to: version_N for version_N/checkpoints/x.ckpt, else its folder."""
    folder = ckpt_path.resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


# ----------------------------------------------------------------------------- parser


def _config_keys(parser: Any) -> list[str]:
    return [a.dest for a in getattr(parser, "_actions", []) if isinstance(getattr(a, "dest", None), str)]


_UNKNOWN_KEY = (
    re.compile(r"does not accept (?:option|nested key) '([^']+)'"),
    re.compile(r"[Uu]nrecognized arguments: (--[^\s=]+)"),
    re.compile(r"[Kk]ey '([^']+)' is not expected"),
)


class VDCNNArgumentParser(LightningArgumentParser):
    """Parse errors as one line naming the problem (and the closest valid key for a typo), exit 2.

    jsonargparse prints the full usage (over a hundred lines) before the error; the user needs the
    key. Nested parsers that do not exit on error (jsonargparse tries alternatives) keep raising.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.data_kind: str | None = None  # set by VDCNNCLI.add_arguments_to_parser: the help then is the toolkit's

    def format_help(self) -> str:
        """The toolkit's help (cli/help.py) for fit/validate/test/predict; jsonargparse's for other parsers."""
        if self.data_kind is None:
            return super().format_help()
        subcommand = self.prog.replace(" [options]", "").split()[-1]
        with short_help(self, self.data_kind, subcommand if subcommand in _SUBCOMMAND_NAMES else "fit"):
            return super().format_help()

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        from jsonargparse._common import debug_mode_active  # the JSONARGPARSE_DEBUG switch

        if not self.exit_on_error or debug_mode_active():
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
        for pattern in _UNKNOWN_KEY:
            found = pattern.search(text)
            if found:
                key = found.group(1).lstrip("-")
                close = difflib.get_close_matches(key, _config_keys(parser), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else f"; `{parser.prog.replace(' [options]', '')} --help` lists every key"
                raise UserError(f"unknown config key {key}{hint}") from None
        raise UserError(f"{text} (`{parser.prog.replace(' [options]', '')} --help` lists every key)") from None


# ----------------------------------------------------------------------------- the CLI


def _input_channels(data: Any) -> int:
    """The model's input channels for a data module: its series channels, 0 for text."""
    return int(getattr(data, "input_channels", 0))


def _task(data: Any) -> str:
    """The model's task for a data module: its data.task (series data: multiclass)."""
    return str(getattr(data, "task", "multiclass"))


class VDCNNCLI(LightningCLI):
    """Links every derived value from the data module into the model, once; test/predict/validate
    take the tokenizer (series: the channel count), label names and data settings from the checkpoint."""

    _checkpoint: dict[str, Any] | None = None  # the eval subcommands' --ckpt_path file, loaded safely
    _trained_run: dict[str, Any] = {}  # ... and how its model was trained (_run_from_checkpoint)

    def __init__(self, *args: Any, data_kind: str = "text", **kwargs: Any) -> None:
        self.data_kind = data_kind  # chosen before parsing (see data_kind_of); LightningCLI parses in __init__
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--data_kind",
            choices=DATA_KINDS,
            default=self.data_kind,
            help="text (TextDataModule, token ids) or series (SeriesDataModule, numeric time series); "
            "read before the rest of the config",
        )
        for action in parser._actions:  # jsonargparse's --help otherwise says "lacks type and help"
            if action.dest in _DERIVED_HELP and not action.help:
                action.help = _DERIVED_HELP[action.dest]
        if isinstance(parser, VDCNNArgumentParser):
            parser.data_kind = self.data_kind  # its --help is the toolkit's (cli/help.py)
        # null: data.seed follows seed_everything (resolved in before_instantiate_classes)
        parser.set_defaults({"data.seed": None})
        parser.link_arguments("data.num_classes", "model.arch.num_classes", apply_on="instantiate")
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.padding_idx", "model.arch.padding_idx", apply_on="instantiate")
        parser.link_arguments("data", "model.arch.input_channels", compute_fn=_input_channels, apply_on="instantiate")
        parser.link_arguments("data.label_names", "model.label_names", apply_on="instantiate")
        parser.link_arguments("data", "model.task", compute_fn=_task, apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpointWithLast, "checkpoint")  # last.ckpt = the last state
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{step}",
            }
        )
        # Optional callbacks (`--early_stopping=null` turns one off; `--early_stopping.patience=8` tunes it).
        parser.add_lightning_class_args(EarlyStopping, "early_stopping", subclass_mode=True, required=False)
        parser.add_lightning_class_args(EpochSummary, "epoch_summary", subclass_mode=True, required=False)
        parser.add_lightning_class_args(EvalModeGap, "eval_mode_gap", subclass_mode=True, required=False)
        parser.set_defaults(
            {
                "early_stopping": {
                    "class_path": "pytorch_lightning.callbacks.EarlyStopping",
                    "init_args": {"monitor": "val/acc", "mode": "max", "patience": PATIENCE, "strict": False},  # no crash when max_steps ends fit before any validation
                },
                "epoch_summary": {"class_path": "vdcnn_res.training.progress.EpochSummary"},
                "eval_mode_gap": {"class_path": "vdcnn_res.training.mode_gap.EvalModeGap"},
            }
        )
        if self.data_kind == "text":
            parser.set_defaults(TEXT_NGRAMS)
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(LRRangeTest, "lr_finder")  # model.optim.lr=auto: a range test before fit

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        """Lightning's parsers; `test` prints its own summary (VDCNNClassifier.on_test_epoch_end), so
        Lightning's table of every logged metric is off unless asked for (--verbose true)."""
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            self._subcommand_parsers["test"].set_defaults({"verbose": False})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Resolve defaults that depend on the machine or the checkpoint, and refuse unsafe
        checkpoints before Lightning reads one (it does so right after parsing)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if config.get("data_kind", self.data_kind) != self.data_kind:  # a source data_kind_of does not read
            raise UserError(
                f"data_kind={config.get('data_kind')!r} must be given on the command line or in a --config file "
                "(it is read before the rest of the config)"
            )
        # A fit: `fit`, or the subcommand-less parse of run=False (the cells of sweep, ablate, tune).
        if subcommand in ("fit", None) and config.get("model.branch_loss") is None and config.get("model.arch.ngram_orders"):
            config["model.branch_loss"] = dict(TEXT_BRANCH_LOSS)
        if not subcommand:
            self._resolve_precision(config, None)
            return
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
        elif str(ckpt_path) == "best":
            if subcommand == "fit":
                raise UserError("--ckpt_path best: fit resumes a run; use --ckpt_path last or a checkpoint's path")
            config.ckpt_path = ckpt_path = _resolve_best(config.get("trainer.default_root_dir"))
            print(f"Best checkpoint of the newest run: {ckpt_path}", file=sys.stderr)
        if ckpt_path and str(ckpt_path) not in _CKPT_KEYWORDS and not str(ckpt_path).startswith("registry:"):
            if "://" not in str(ckpt_path):
                checkpoint = load_checkpoint_safely(ckpt_path)  # UserError for pickled code or a missing file
                if subcommand == "fit":
                    require_resumable(checkpoint, ckpt_path)  # a slim best-*.ckpt has no optimizer state
                if subcommand in _EVAL_SUBCOMMANDS and isinstance(checkpoint, dict):
                    kind = _checkpoint_kind(checkpoint)
                    if kind is not None and kind != self.data_kind:
                        raise UserError(
                            f"the checkpoint {str(ckpt_path)!r} was trained on {kind} data but data_kind={self.data_kind!r}; "
                            f"drop data_kind (the checkpoint sets it) or use a {self.data_kind} checkpoint"
                        )
                    self._checkpoint = checkpoint
                    defaults = self._parser(subcommand).get_defaults()  # what the user left unset
                    self._data_from_checkpoint(config, subcommand, checkpoint, defaults)
                    self._arch_from_checkpoint(config, checkpoint, defaults)
                    self._run_from_checkpoint(config, checkpoint, Path(ckpt_path), defaults)
        self._resolve_precision(config, self._checkpoint if subcommand in _EVAL_SUBCOMMANDS else None)

    def _resolve_precision(self, config: Any, checkpoint: dict[str, Any] | None) -> None:
        """trainer.precision left unset: for validate/test/predict the precision the checkpoint was
        trained in, where this machine computes it natively (a bf16 model on a machine without bf16
        runs in 32-true); else the fastest exact-enough choice here (bf16-mixed or 32-true)."""
        if config.get("trainer.precision") is not None:
            return
        here = default_precision(config.get("trainer.accelerator") or "auto")
        trained = self._trained_run.get("precision") if checkpoint is not None else None
        native = trained in ("32-true", "32", "64-true", "64") or trained == here
        config["trainer.precision"] = trained if trained and native else here

    def _run_from_checkpoint(self, config: Any, checkpoint: dict[str, Any], ckpt_path: Path, defaults: Any) -> None:
        """How the checkpoint's model was trained (precision, seed): from the checkpoint, else from
        its run's config.yaml; an unset seed_everything takes the training seed."""
        run = checkpoint.get("run") if isinstance(checkpoint.get("run"), dict) else {}
        if not run:
            saved = _run_dir(ckpt_path) / "config.yaml"
            try:
                loaded = yaml.safe_load(saved.read_text(encoding="utf-8")) if saved.is_file() else None
            except (OSError, yaml.YAMLError, UnicodeDecodeError):
                loaded = None
            if isinstance(loaded, dict):
                trainer = loaded.get("trainer") if isinstance(loaded.get("trainer"), dict) else {}
                run = {"precision": trainer.get("precision"), "seed": loaded.get("seed_everything")}
        precision, seed = run.get("precision"), run.get("seed")
        self._trained_run = {"precision": str(precision) if precision is not None else None}
        if isinstance(seed, int) and not isinstance(seed, bool) and config.get("seed_everything") == defaults.get("seed_everything"):
            config["seed_everything"] = seed

    def _data_from_checkpoint(self, config: Any, subcommand: str, checkpoint: dict[str, Any], defaults: Any) -> None:
        """Data settings the user did not set come from the checkpoint (max_length, columns, labels, ...).

        test and predict read only their own split: the training files of a training config are
        dropped, so nothing is re-read and no learned tokenizer is rebuilt from them.
        """
        saved = checkpoint.get("datamodule_hyper_parameters") or {}
        tokenizer = config.get("data.tokenizer")
        if "tokenizer" in saved and tokenizer not in (saved["tokenizer"], defaults.get("data.tokenizer")):
            raise UserError(
                f"data.tokenizer={tokenizer!r} but the checkpoint was trained with {saved['tokenizer']!r}; "
                f"{subcommand} encodes texts with the checkpoint's own tokenizer: drop data.tokenizer"
            )
        from vdcnn_res.data.series import NORMALIZE_KINDS
        from vdcnn_res.data.series_module import AUTO_NORMALIZE

        normalize = config.get("data.normalize")
        if saved.get("normalize") in NORMALIZE_KINDS and normalize not in (saved["normalize"], defaults.get("data.normalize"), AUTO_NORMALIZE):
            raise UserError(
                f"data.normalize={normalize!r} but the checkpoint was trained on series preprocessed with {saved['normalize']!r}; "
                f"{subcommand} preprocesses series as the model was trained: drop data.normalize"
            )
        for key, value in saved.items():
            if key in _NOT_FROM_CHECKPOINT or f"data.{key}" not in defaults:
                continue
            if config.get(f"data.{key}") == defaults.get(f"data.{key}"):
                config[f"data.{key}"] = value
        if subcommand in ("test", "predict"):
            config["data.train"] = config["data.valid"] = None

    def _arch_from_checkpoint(self, config: Any, checkpoint: dict[str, Any], defaults: Any) -> None:
        """The network's shape comes from the checkpoint: every `model.arch` key the user did not
        set takes the checkpoint's value, or ModelConfig's default for a key the checkpoint predates
        (older checkpoints have no n-gram bag, whatever fit's text default is now)."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("arch")
        if not isinstance(saved, dict):
            return
        for field in dataclasses.fields(ModelConfig):
            key = f"model.arch.{field.name}"
            if field.name in _LINKED_ARCH or key not in defaults or config.get(key) != defaults.get(key):
                continue
            if field.name not in saved and field.default is dataclasses.MISSING:
                continue
            value = saved[field.name] if field.name in saved else field.default
            config[key] = list(value) if isinstance(value, tuple) else value

    def before_instantiate_classes(self) -> None:
        """data.seed left unset follows the run's seed (seed_everything, now resolved; 42 without one).
        Give the data module the checkpoint's tokenizer (series: channel count) and label names as
        it is created, before the links copy num_classes / vocab_size / label_names into the model."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "data" in config and config.get("data.seed", DATA_SEED) is None:
            seed = config.get("seed_everything")
            config["data.seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else DATA_SEED
        if self._checkpoint is not None and self.data_kind == "series":
            self._series_from_checkpoint(self._checkpoint)
            return
        vocabulary = _checkpoint_vocabulary(self._checkpoint) if self._checkpoint is not None else None
        if vocabulary is None:
            return

        def with_vocabulary(class_type: type[TextDataModule], *args: Any, **kwargs: Any) -> TextDataModule:
            kwargs.pop("applied_instantiation_links", None)
            data = class_type(*args, **kwargs)
            tokenizer, label_names = vocabulary
            if label_names is None:
                data.set_tokenizer(tokenizer)
            else:
                data.set_vocabulary(tokenizer, label_names)
            return data

        with warnings.catch_warnings():  # the API LightningCLI itself uses; its successor needs jsonargparse>=4.49
            warnings.simplefilter("ignore", DeprecationWarning)
            self.parser.add_instantiator(with_vocabulary, TextDataModule, subclasses=True, prepend=True)

    def _series_from_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from vdcnn_res.data.series_module import SeriesDataModule

        state = checkpoint.get(_SERIES_STATE_KEY)
        if not isinstance(state, dict) or not isinstance(state.get("input_channels"), int):
            return
        names = (checkpoint.get("hyper_parameters") or {}).get("label_names")

        def with_channels(class_type: type[SeriesDataModule], *args: Any, **kwargs: Any) -> SeriesDataModule:
            kwargs.pop("applied_instantiation_links", None)
            data = class_type(*args, **kwargs)
            data.set_checkpoint_state(
                state["input_channels"], [str(n) for n in names] if names else None, state.get("preprocessing")
            )
            return data

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.parser.add_instantiator(with_channels, SeriesDataModule, subclasses=True, prepend=True)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer with this CLI's callbacks, logger and write-then-rename checkpoint saves.

        - `trainer.enable_checkpointing=false` drops the checkpoint callback (Lightning would refuse it);
        - validate/test/predict keep no fit-only callbacks, and log next to the checkpoint's run
          (<run>/test/<checkpoint name>/ ...), so version_N numbers count training runs only.
        """
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        callbacks = [cb for cb in callbacks if cb is not None]
        evaluating = self.subcommand in _EVAL_SUBCOMMANDS
        if evaluating:
            callbacks = [cb for cb in callbacks if not isinstance(cb, (ModelCheckpoint, EarlyStopping, EpochSummary, EvalModeGap))]
            # ... whose saved states evaluation does not need; Lightning asks for them all the same
            warnings.filterwarnings(
                "ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"
            )
        else:
            if trainer_config.get("enable_checkpointing") is False:
                callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
            if not self._validates(trainer_config) and any(isinstance(cb, EarlyStopping) for cb in callbacks):
                callbacks = [cb for cb in callbacks if not isinstance(cb, EarlyStopping)]
                print(f"No validation data: no early stopping, training runs {trainer_config.get('max_epochs')} epochs "
                      "(trainer.max_epochs)", file=sys.stderr)
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if evaluating and self._checkpoint is not None and trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = _eval_logger(Path(ckpt_path), self.subcommand, trainer_config)
        elif self.subcommand == "fit" and trainer_config.get("logger") in (None, True) and _rank_zero():
            trainer_config["logger"] = _fit_logger(trainer_config)
        if trainer_config.get("enable_progress_bar") is None and not _is_terminal(sys.stdout):
            trainer_config["enable_progress_bar"] = False  # a log file gets the epoch lines, not bar frames
        trainer = self._instantiate_trainer(trainer_config, callbacks)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        for i, callback in enumerate(trainer.callbacks):  # Lightning's default summary, with real FLOPs
            if type(callback) in (ModelSummary, RichModelSummary):  # Lightning picks the rich one where rich is installed
                trainer.callbacks[i] = FlopsModelSummary(max_depth=callback._max_depth)
        return trainer

    def _validates(self, trainer_config: dict[str, Any]) -> bool:
        """Whether fit will validate (else early stopping has nothing to watch)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if trainer_config.get("limit_val_batches") == 0:
            return False
        return bool(config.get("data.valid") or config.get("data.valid_fraction") or config.get("data.hub_dataset"))

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if self.trainer.is_global_zero and callback is not None and callback.best_model_path:
            score = callback.best_model_score
            if score is not None and callback.monitor:
                print(f"Best checkpoint ({callback.monitor}={float(score):.4f}): {callback.best_model_path}")
            print(f"Last checkpoint: {callback.last_model_path or callback.best_model_path}")


def _is_terminal(stream: Any) -> bool:
    """Whether output goes to a terminal (not a file, a pipe or a test's capture)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _checkpoint_kind(checkpoint: dict[str, Any]) -> str | None:
    """'series' or 'text' for a vdcnn-res checkpoint (by its data module's state), None for other files."""
    if not isinstance(checkpoint, dict):
        return None
    if isinstance(checkpoint.get(_SERIES_STATE_KEY), dict):
        return "series"
    if isinstance(checkpoint.get(_DATA_STATE_KEY), dict):
        return "text"
    return None


def _flag_values(args: list[str], flag: str) -> list[tuple[int, str]]:
    """(position, value) of every `--flag value` / `--flag=value` in args."""
    found = []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found.append((i, args[i + 1]))
        elif arg.startswith(flag + "="):
            found.append((i, arg.split("=", 1)[1]))
    return found


def data_kind_of(args: list[str]) -> str:
    """The data kind a command line asks for, read before parsing (the parser's data group depends on it).

    In command-line order, the last of: `--data_kind X`, a `data_kind:` key in a `--config` file
    (top level or under the subcommand). Without either, validate/test/predict take it from the
    `--ckpt_path` checkpoint; else text. Unreadable files are left to the parser to report.
    """
    subcommand = next((a for a in args if not a.startswith("-")), None)
    settings: list[tuple[int, str]] = list(_flag_values(args, "--data_kind"))
    for position, path in _flag_values(args, "--config"):
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(loaded, dict):
            nested = loaded.get(subcommand) if isinstance(loaded.get(subcommand), dict) else {}
            kind = nested.get("data_kind", loaded.get("data_kind"))
            if isinstance(kind, str):
                settings.append((position, kind))
    if settings:
        kind = max(settings)[1]
        if kind not in DATA_KINDS:
            raise UserError(f"data_kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
        return kind
    ckpt = _flag_values(args, "--ckpt_path")
    if subcommand in _EVAL_SUBCOMMANDS and ckpt:
        value = ckpt[-1][1]
        root = ([None] + [v for _, v in _flag_values(args, "--trainer.default_root_dir")])[-1]
        try:
            resolved = {"last": _resolve_last, "best": _resolve_best}[value](root) if value in ("last", "best") else value
            path = Path(os.path.expanduser(resolved))
            if path.is_file():
                return _checkpoint_kind(load_checkpoint_safely(path)) or "text"
        except UserError:
            pass  # parse_arguments reports the missing or unreadable checkpoint
    return "text"


def _checkpoint_vocabulary(checkpoint: dict[str, Any]) -> tuple[str, list[str] | None] | None:
    """(tokenizer JSON, label names or None) saved in a vdcnn-res checkpoint; None for other files."""
    state = checkpoint.get(_DATA_STATE_KEY)
    if not isinstance(state, dict) or not isinstance(state.get("tokenizer"), str):
        return None
    hparams = checkpoint.get("hyper_parameters") or {}
    names = hparams.get("label_names") or state.get("label_names")  # vdcnn-res 0.1.0 kept them in the data state
    return state["tokenizer"], [str(n) for n in names] if names else None


def _rank_zero() -> bool:
    """Whether this process is the first of its job (always, outside multi-process launches)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _fit_logger(trainer_config: dict[str, Any]) -> TensorBoardLogger:
    """Lightning's default logger with the next lightning_logs/version_N reserved by an atomic mkdir,
    so fits started at the same moment in one folder get different runs (Lightning counts the
    folders without reserving one, and the second fit would then stop on the first's config.yaml).
    Other ranks of a multi-process job keep Lightning's logger: rank zero's folder is broadcast."""
    root = Path(trainer_config.get("default_root_dir") or os.getcwd())
    logs = root / "lightning_logs"
    logs.mkdir(parents=True, exist_ok=True)
    taken = (p.name.removeprefix("version_") for p in logs.glob("version_*"))
    version = max((int(n) for n in taken if n.isdigit()), default=-1) + 1
    while True:
        try:
            (logs / f"version_{version}").mkdir()
            return TensorBoardLogger(save_dir=root, version=version)
        except FileExistsError:
            version += 1


def _eval_logger(ckpt_path: Path, subcommand: str, trainer_config: dict[str, Any]) -> TensorBoardLogger:
    """<run>/<subcommand>/<checkpoint name>[-2, -3, ...]/ beside the checkpoint's training run; where
    that run's folder is not writable, <root>/lightning_logs/<subcommand>/<checkpoint name>/."""
    run = _run_dir(ckpt_path)
    if not os.access(run, os.W_OK):
        run = Path(trainer_config.get("default_root_dir") or os.getcwd()) / "lightning_logs"
    version, n = ckpt_path.stem, 1
    while (run / subcommand / version).exists():  # a second test of the same checkpoint keeps the first
        n += 1
        version = f"{ckpt_path.stem}-{n}"
    return TensorBoardLogger(save_dir=run, name=subcommand, version=version, default_hp_metric=False)


def _describe(subcommand: str, kind: str) -> str:
    """A subcommand's --help description: its line of `vdcnn-res --help` and where the rest is."""
    from vdcnn_res.cli.help import COMMANDS

    other = "text" if kind == "series" else "series"
    return (f"vdcnn-res {subcommand}: {COMMANDS[subcommand]}. Options for {kind} data; "
            f"`--data_kind {other} --help` shows the {other} ones, `--help_all` every Lightning Trainer option.")


def build_cli(args: ArgsType = None, run: bool = True) -> VDCNNCLI:
    """The CLI with its defaults; `run=False` parses a fit config (no subcommand) and builds
    model, data and Trainer without running them (as `vdcnn-res ablate` does per cell)."""
    silence_foreign_noise()
    with warnings.catch_warnings():
        # In-process callers (ablate, sweep, tune, tests) pass args while sys.argv holds their own
        # command line: LightningCLI's warning that it ignores sys.argv is then expected.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        return _build(args, run)


def _build(args: ArgsType, run: bool) -> VDCNNCLI:
    listed = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
    if "--help_all" in listed:  # every option, with Lightning's own descriptions (cli/help.py)
        with full_help():
            return _build([a if a != "--help_all" else "--help" for a in listed], run)
    kind = data_kind_of(listed)
    if kind == "series":
        from vdcnn_res.data.series_module import SeriesDataModule

        data_class: type = SeriesDataModule
    else:
        data_class = TextDataModule
    return VDCNNCLI(
        VDCNNClassifier,
        data_class,
        data_kind=kind,
        args=args,
        run=run,
        parser_class=VDCNNArgumentParser,
        seed_everything_default=42,
        parser_kwargs={
            "description": "Train, evaluate and apply very deep residual 1D CNN classifiers of text and time series; "
            "`vdcnn-res --help` lists every subcommand.",
            **{name: {"description": _describe(name, kind)} for name in _SUBCOMMAND_NAMES},
        },
        auto_configure_optimizers=False,  # the module's optim config owns optimizer and schedule
        trainer_defaults={
            # the data module shards its own length-bucketed batches across ranks
            "use_distributed_sampler": False,
            "log_every_n_steps": 10,
            "max_epochs": MAX_EPOCHS,  # the cap of the adaptive budget (early_stopping ends most runs sooner)
        },
    )
