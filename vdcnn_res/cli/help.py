"""What `vdcnn-res fit|validate|test|predict --help` says: the toolkit's options first, one line of
meaning each with its real default, Lightning's Trainer summarised (`--help_all` lists all of it).

jsonargparse builds the help from the signatures and docstrings of the classes the LightningCLI
reads; many of the toolkit's keys have no docstring line there (dataclass fields, `model.*`), and
Lightning's own text for some keys contradicts the defaults this project sets (max_epochs,
precision, log_every_n_steps, checkpoint.dirpath, ckpt_path). :func:`short_help` rewrites the
parser's help texts, group titles and order for the length of one `format_help` call and
:class:`HelpFormatter` shows `(default: X)` instead of jsonargparse's `(type: ..., default: ...)`.
With `--help_all` (see :func:`full_help`) every option shows, in jsonargparse's own format, still
with this module's texts where Lightning's would mislead.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
from collections.abc import Iterator
from typing import Any

from jsonargparse import DefaultHelpFormatter

# Every subcommand with one line of what it does: `vdcnn-res --help` lists them, and the first four
# (the LightningCLI's) use their line as their own --help description.
COMMANDS = {
    "fit": "train a text or time-series classifier; writes best and last checkpoints and logs",
    "validate": "score a checkpoint on the validation split",
    "test": "score a checkpoint on the test split: accuracy, macro-F1, calibration, per-class table",
    "predict": "write a checkpoint's predictions for new texts or series to a JSONL or CSV file",
    "export": "write a checkpoint as safe model files (safetensors + JSON + model card), optionally ONNX; --push_to_hub uploads them",
    "ablate": "fit a depth x shortcut (x downsampling x seed) grid and report the ablation table",
    "sweep": "fit a grid of any config keys x seeds, judged on the validation split",
    "tune": "search the recipe's hyperparameters within a time budget (Optuna, validation split)",
    "serve": "serve an exported model over HTTP with dynamic batching, an optional API key and a demo page",
    "explain": "an HTML page of per-character attributions for a model's predictions",
    "calibrate": "fit a checkpoint's temperature on a validation split and store it in the checkpoint",
}

__all__ = ["COMMANDS", "HELP", "HelpFormatter", "full_help", "help_text", "short_help"]

_FULL = contextvars.ContextVar("vdcnn_res_full_help", default=False)

# One line of meaning per key. Where a key means something else for series data or per
# subcommand, `_BY_KIND` / `_BY_SUBCOMMAND` below hold that line.
HELP: dict[str, str] = {
    "seed_everything": "seed of the run (initialisation, data order, validation hold-out; data.seed follows it "
    "unless set); test/predict take the training run's seed; true: a random seed, false: none",
    "data_kind": "text or series: which data options the config has (read before the rest of the config)",
    # model.*
    "model.label_smoothing": "label smoothing of the training loss (0 = none; the paper used none)",
    "model.class_weights": "per-class loss weights: [w1, ...] in label-id order, or balanced (from the training counts)",
    "model.threshold": "multi-label only: one decision threshold for every label (null: tuned per label on validation)",
    "model.branch_loss": "each branch's own loss weight beside the sum's, e.g. {ngrams: 1.0} (fit's default with the "
    "n-gram bag); keys cnn, ngrams, sum, and distill: the CNN's loss against the bag's softened predictions "
    "(knowledge distillation, the bag as teacher)",
    "model.sum_detach": "branches whose logits enter the summed loss without gradient, e.g. [ngrams] (each needs its "
    "own branch_loss)",
    # model.arch.*
    "model.arch.embedding_dim": "width of the character (token) embedding; auto: the paper's 16 for an alphabet of up "
    "to 256 symbols, 64 for a larger learned vocabulary (e.g. Chinese characters); unused for series",
    "model.arch.depth": "convolutional layers of the paper's variants: 9, 17, 29 or 49 (ignored with blocks_per_stage)",
    "model.arch.blocks_per_stage": "residual blocks per stage, e.g. [1, 1, 1]: a custom layout that overrides depth",
    "model.arch.channels": "feature maps per stage (one entry per stage)",
    "model.arch.block": "residual block: basic (the paper's two convolutions), preact or bottleneck",
    "model.arch.shortcut": "residual shortcuts on (true) or off (false: the plain network of the ablation)",
    "model.arch.downsampling": "how the length halves between stages: maxpool (the paper's best), conv, kmax or none",
    "model.arch.kernel_sizes": "kernel sizes of a basic block's convolutions (text: [3, 3]; series recipe: [8, 5, 3])",
    "model.arch.head": "classifier head: kmax_mlp (k-max pooling + hidden layers, the paper's) or global_avg "
    "(mean over time + one linear layer)",
    "model.arch.kmax": "k of the head's k-max pooling",
    "model.arch.hidden_size": "width of the head's two hidden layers; 0 = one linear layer",
    "model.arch.dropout": "dropout after each hidden layer of the head",
    "model.arch.input_dropout": "in training, zero the CNN's input at each position (character, or series time step) "
    "with this probability (token dropout); for text, not series (docs/results.md §26)",
    "model.arch.zero_init_residual": "start each residual block as the identity (its last BatchNorm scale 0)",
    "model.arch.head_norm": "normalisation of the head's input features: auto (batch with the n-gram bag, none "
    "without), none, batch or layer",
    "model.arch.ngram_orders": "character n-gram orders of the hashed n-gram bag beside the CNN; [] = the CNN alone",
    "model.arch.ngram_buckets": "rows of the n-gram bag's hashed embedding table",
    "model.arch.ngram_dim": "width of the n-gram bag's embedding",
    "model.arch.ngram_dropout": "dropout on the n-gram bag's mean embedding",
    "model.arch.input_ngram_orders": "the CNN reads, at each character, hashed embeddings of the n-grams of these orders starting there ([] = characters only)",
    "model.arch.input_ngram_buckets": "rows of the table of the CNN's input n-grams",
    "model.arch.masked_norm": "BatchNorm statistics over real positions only, not padding (false: torch's BatchNorm)",
    # model.optim.*
    "model.optim.name": "optimizer: adamw or sgd (the paper's, with momentum)",
    "model.optim.lr": "peak learning rate, or auto (a range test before fit, lr_finder.*)",
    "model.optim.momentum": "SGD momentum (sgd only)",
    "model.optim.weight_decay": "decoupled weight decay (never on biases and norm layers)",
    "model.optim.schedule": "learning-rate schedule: cosine (over trainer.max_epochs, after a warm-up), step, "
    "onecycle or constant",
    "model.optim.step_epochs": "step schedule: multiply the lr by step_gamma every this many epochs",
    "model.optim.step_gamma": "step schedule: the factor (0.5 halves the lr, as in the paper)",
    "model.optim.warmup_fraction": "cosine schedule: share of all optimizer steps spent warming up",
    "model.optim.ngram_lr_scale": "the n-gram bag trains at lr times this",
    # data.* (text; series differences in _BY_KIND)
    "data.train": "training file (or glob): CSV, TSV, JSON lines or Parquet",
    "data.valid": "validation file; without it data.valid_fraction of train is held out",
    "data.test": "test file (read by fit only when given, and by test)",
    "data.predict": "file to predict (predict); needs no labels",
    "data.hub_dataset": "a `datasets` name or local dataset folder instead of files",
    "data.hub_config": "the hub dataset's configuration name",
    "data.hub_splits": "the hub dataset's split names, e.g. {train: train, valid: validation, test: test}",
    "data.file_format": "csv, tsv, json or parquet; null: from the file extension",
    "data.column_names": "column names of header-less CSV/TSV files, e.g. [label, title, description]",
    "data.text_columns": "the text column(s); several are joined with data.text_separator",
    "data.text_separator": "what joins several text columns",
    "data.label_column": "the label column: integer or string labels",
    "data.label_offset": "subtracted from integer labels (1 for files that number classes from 1)",
    "data.missing_labels": "rows without a label: error (names the file and the first row) or drop",
    "data.classes_file": "class names, one per line (line 1 = id 0); null: the sorted distinct training labels",
    "data.task": "multiclass (one label per text) or multilabel (a set of labels per text)",
    "data.label_separator": "multi-label only: splits a label cell of a CSV/TSV into its labels",
    "data.valid_fraction": "share of the training split held out (stratified) when there is no data.valid",
    "data.seed": "seed of the hold-out split and the batch order; null: --seed_everything's value",
    "data.tokenizer": "char, learned or byte, or the path of a saved tokenizer.json",
    "data.lowercase": "lowercase texts before tokenizing (null: the tokenizer's default)",
    "data.max_vocab": "learned tokenizer: most tokens to keep",
    "data.min_frequency": "learned tokenizer: least count of a kept token",
    "data.max_length": "texts are cut to this many ids (the paper: 1024)",
    "data.batch_size": "training batch size",
    "data.eval_batch_size": "validation/test/predict batch size (null: data.batch_size)",
    "data.batching": "bucket (pad each batch to its longest item) or fixed (pad every batch to max_length)",
    "data.pad_multiple": "bucket batching: pad lengths up to a multiple of this",
    "data.pool_batches": "bucket batching: this many batches' worth of random items are sorted by length together",
    "data.sampling": "natural (each training item once per epoch) or balanced (every class equally often)",
    "data.num_workers": "data-loading worker processes (0 = in the main process)",
    "data.cache_dir": "the `datasets` cache folder (null: HF_HOME)",
    # checkpoint.*
    "checkpoint.dirpath": "folder of the checkpoints (null: <run>/checkpoints, run = lightning_logs/version_N)",
    "checkpoint.filename": "name of the best checkpoints; {epoch} counts from 1, as the epoch lines do",
    "checkpoint.monitor": "the metric that picks the best checkpoint (null: keep the newest)",
    "checkpoint.mode": "max or min: whether a higher or a lower checkpoint.monitor is better",
    "checkpoint.save_top_k": "how many best checkpoints to keep (-1: all)",
    "checkpoint.save_last": "also write last.ckpt, the latest state (resume with --ckpt_path last)",
    "checkpoint.slim_best": "best checkpoints without the training state (optimizer, schedule): smaller; last.ckpt "
    "stays complete",
    "checkpoint.every_n_epochs": "save only every this many epochs (null: at every validation)",
    "checkpoint.save_weights_only": "checkpoints without the training state (cannot resume)",
    # callbacks
    "early_stopping": "Lightning's EarlyStopping: stop when early_stopping.monitor has not improved for "
    "early_stopping.patience validations; null turns it off (--early_stopping.help EarlyStopping lists its options)",
    "epoch_summary": "the epoch lines; --epoch_summary.monitor follows another metric than checkpoint.monitor, "
    "null turns them off",
    "eval_mode_gap": "after fit, the training accuracy against the same network in eval mode on up to "
    "eval_mode_gap.max_batches training batches: one warning when eval mode is over eval_mode_gap.threshold points "
    "lower (normalisation statistics that differ); null turns it off",
    "prediction_writer.output_path": "file to write, or a folder for predictions.<format> (null: beside the run's logs)",
    "prediction_writer.output_format": "jsonl or csv (null: from the file name, else jsonl)",
    "prediction_writer.top_k": "how many (label, probability) pairs per row, most likely first",
    # trainer (the common ones; `--help_all` lists all)
    "trainer.accelerator": "cpu, gpu or auto",
    "trainer.devices": "how many devices (or which), or auto",
    "trainer.strategy": "distribution strategy, e.g. ddp (auto: single device)",
    "trainer.num_nodes": "machines of a multi-node run",
    "trainer.precision": "32-true or bf16-mixed, ...; default: bf16-mixed where the device computes bf16 natively, "
    "else 32-true; validate/test/predict: the precision the checkpoint was trained in",
    "trainer.max_epochs": "the cap of the adaptive budget: early stopping ends most runs sooner; the cosine "
    "schedule spans it",
    "trainer.max_steps": "stop after this many optimizer steps (-1: no limit)",
    "trainer.max_time": "stop after this long, e.g. 00:01:30:00 (DD:HH:MM:SS)",
    "trainer.min_epochs": "train at least this many epochs, whatever early stopping says",
    "trainer.limit_train_batches": "use only this many training batches per epoch (an int) or this share (a float)",
    "trainer.limit_val_batches": "use only this many validation batches (an int) or this share (a float); 0: none",
    "trainer.limit_test_batches": "use only this many test batches (an int) or this share (a float)",
    "trainer.limit_predict_batches": "predict only this many batches (an int) or this share (a float)",
    "trainer.check_val_every_n_epoch": "validate every this many epochs",
    "trainer.val_check_interval": "validate within epochs: every this many batches (int) or share of an epoch (float)",
    "trainer.num_sanity_val_steps": "validation batches run before training, to catch errors early (null: 2)",
    "trainer.log_every_n_steps": "log training scalars to TensorBoard every this many steps",
    "trainer.enable_progress_bar": "the animated progress bar (null: on a terminal only; redirected output gets "
    "the epoch lines alone)",
    "trainer.enable_checkpointing": "write checkpoints (false: none)",
    "trainer.enable_model_summary": "print the model summary (layers, parameters, FLOPs) before fit",
    "trainer.accumulate_grad_batches": "accumulate gradients over this many batches per optimizer step",
    "trainer.gradient_clip_val": "clip gradients to this norm (null: no clipping)",
    "trainer.deterministic": "use deterministic algorithms only (true, or warn)",
    "trainer.default_root_dir": "where runs go: <dir>/lightning_logs/version_N (null: the current folder)",
    "trainer.use_distributed_sampler": "false here: the data module shards its own length-bucketed batches",
    "trainer.logger": "loggers (null: TensorBoard in <root>/lightning_logs/version_N)",
    "trainer.callbacks": "further Lightning callbacks (class_path and init_args)",
    "trainer.fast_dev_run": "run n batches of train, validation and test to check the setup (no checkpoints)",
    "weights_only": "load checkpoints as plain tensors only (null here means true: vdcnn-res checkpoints hold no code)",
}

_BY_KIND: dict[str, dict[str, str]] = {
    "series": {
        "data.train": "training file (or glob): JSON lines or Parquet, a series and a label per row",
        "data.valid": "validation file; without it data.valid_fraction of train is held out (or data.train_as_valid)",
        "data.predict": "file of series to predict (predict); needs no labels",
        "data.file_format": "json or parquet; null: from the file extension",
        "data.label_column": "the label column: integer or string labels",
        "data.max_length": "keep the first max_length values of a series (null: all)",
        "data.batch_size": "series per training batch, or auto: min(16, n // 10) for n training series",
        "data.series_column": "the column holding each row's series (a list, or a list of channel lists)",
        "data.normalize": "auto (default: zscore when the training series' scales differ > 1,000x, else none), zscore (per series and channel), or none (the values as given)",
        "data.missing": "null / NaN values: interpolate (linear, per channel) or zero (0 after normalisation)",
        "data.train_as_valid": "validate on the training split itself (in eval mode) when there is no validation "
        "split: epoch lines then say train-eval",
    },
}

_BY_SUBCOMMAND: dict[str, dict[str, str]] = {
    "fit": {"ckpt_path": "resume from a checkpoint: its path, or last (the newest last.ckpt under "
            "trainer.default_root_dir)"},
    "validate": {"ckpt_path": "the checkpoint to score: its path, best (the best checkpoint of the newest run under "
                 "trainer.default_root_dir) or last", "verbose": "print the table of the logged metrics"},
    "test": {"ckpt_path": "the checkpoint to test: its path, best (the best checkpoint of the newest run under "
             "trainer.default_root_dir) or last",
             "verbose": "also print Lightning's table of every logged metric (the summary above it says the same)"},
    "predict": {"ckpt_path": "the checkpoint that predicts: its path, best (the best checkpoint of the newest run "
                "under trainer.default_root_dir) or last",
                "return_predictions": "keep predictions in memory too (null here means false: the file has them)"},
}

# Keys whose meaning says their default (a null that is resolved later).
_DEFAULT_IN_TEXT = frozenset({"trainer.precision", "data.seed", "weights_only", "return_predictions"})

# Shown without --help_all: the toolkit's own groups, and these Trainer and checkpoint options.
_TRAINER_SHOWN = (
    "accelerator", "devices", "precision", "max_epochs", "max_steps", "max_time", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "limit_predict_batches", "check_val_every_n_epoch",
    "accumulate_grad_batches", "gradient_clip_val", "enable_progress_bar", "enable_model_summary",
    "default_root_dir", "log_every_n_steps", "deterministic",
)  # fmt: skip
_CHECKPOINT_SHOWN = ("dirpath", "filename", "monitor", "mode", "save_top_k", "save_last", "slim_best")
_FIT_ONLY = ("checkpoint", "early_stopping", "epoch_summary", "eval_mode_gap", "lr_finder")


def help_text(key: str, kind: str = "text", subcommand: str = "fit") -> str | None:
    """The toolkit's one line for a config key (None: jsonargparse's own text stands)."""
    return _BY_SUBCOMMAND.get(subcommand, {}).get(key) or _BY_KIND.get(kind, {}).get(key) or HELP.get(key)


@contextlib.contextmanager
def full_help() -> Iterator[None]:
    """Within it, `--help` lists every option (the `--help_all` of the command line)."""
    token = _FULL.set(True)
    try:
        yield
    finally:
        _FULL.reset(token)


def _show(value: Any) -> str:
    """A default as one would type it in a YAML config."""
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, argparse.Namespace) or hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, str) and value and value.strip() == value and value.isprintable() and ":" not in value:
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter; without --help_all an option's help ends in `(default: X)` only,
    X written as in a YAML config (an empty or blank string quoted, a tuple as a list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _FULL.get() or not action.option_strings or action.default == argparse.SUPPRESS:
            return super()._get_help_string(action)
        if type(action).__name__ in ("ActionConfigFile", "_ActionConfigLoad", "_HelpAction", "_ActionPrintConfig",
                                     "_ActionHelpClassPath"):
            return super()._get_help_string(action)
        if action.dest in _DEFAULT_IN_TEXT or action.dest.endswith("ckpt_path"):
            return text.replace("%", "%%") if "%(" in text else text
        # jsonargparse sets action.default to the parser's real default before asking for this string
        default = _show(action.default).replace("%(", "%%(")
        return f"{text} (default: {default})"


def _group_key(parser: Any, group: Any) -> str | None:
    for key, candidate in getattr(parser, "groups", {}).items():
        if candidate is group:
            return key
    return None


def _titles(kind: str, subcommand: str, trainer_options: int) -> dict[str, str]:
    other = "text" if kind == "series" else "series"
    switch = f"`vdcnn-res {subcommand} --data_kind {other} --help`"
    full = f"`vdcnn-res {subcommand} --help_all`"
    what = "time series" if kind == "series" else "text"
    return {
        "data": f"Data ({'time series' if kind == 'series' else 'text'}; the {other} options: {switch})",
        "model": f"Model: the residual 1D CNN classifier of {what} (model.*)"
        + ("" if subcommand == "fit" else "; every key comes from the checkpoint unless set"),
        "model.arch": "Network (model.arch.*)" + ("" if kind == "series" else ": the CNN and the hashed n-gram bag beside it"),
        "model.optim": "Optimizer and learning-rate schedule (model.optim.*)",
        "checkpoint": "Checkpoints (checkpoint.*): best-epoch=NN-step=N.ckpt and last.ckpt in <run>/checkpoints",
        "early_stopping": "Early stopping (the adaptive budget)",
        "epoch_summary": "Epoch lines",
        "eval_mode_gap": "Training mode against eval mode (the check after fit)",
        "prediction_writer": "Prediction file (prediction_writer.*)",
        "lr_finder": "Learning-rate range test for model.optim.lr=auto (lr_finder.*)",
        "trainer": (f"Lightning Trainer (all {trainer_options} options with Lightning's own descriptions: {full})"
                    if not _FULL.get() else "Lightning Trainer (Lightning's own descriptions, except where this "
                    "project sets another default)"),
        subcommand: {"fit": "Resume", "validate": "Checkpoint", "test": "Checkpoint", "predict": "Checkpoint"}.get(
            subcommand, subcommand
        ),
        "linked": "Linked from the data (never typed)",
    }


def _order(subcommand: str) -> tuple[str, ...]:
    if subcommand == "fit":
        return ("data", "model", "model.arch", "model.optim", "checkpoint", "early_stopping", "epoch_summary",
                "eval_mode_gap", "lr_finder", subcommand, "trainer", "prediction_writer", "linked")  # fmt: skip
    return (subcommand, "data", "prediction_writer", "trainer", "model", "model.arch", "model.optim", "linked",
            "checkpoint", "early_stopping", "epoch_summary", "eval_mode_gap", "lr_finder")  # fmt: skip


@contextlib.contextmanager
def short_help(parser: Any, kind: str, subcommand: str) -> Iterator[None]:
    """For one `format_help`: the toolkit's texts on every key it describes, group titles that say
    what a group holds, the toolkit's groups first; without --help_all also a short usage line,
    only the common Trainer and checkpoint options, and no groups the subcommand does not use."""
    full = _FULL.get()
    saved_help = {id(a): a.help for a in parser._actions}
    saved_groups, saved_usage = list(parser._action_groups), parser.usage
    saved_titles = {id(g): g.title for g in parser._action_groups}
    try:
        keys = {id(g): (_group_key(parser, g) or ("linked" if g.title == "Linked arguments" else None))
                for g in parser._action_groups}
        trainer_options = sum(
            1 for a in parser._actions if a.dest.startswith("trainer.") and a.option_strings
            and not a.dest.endswith(".help") and a.dest != "trainer"
        )
        for action in parser._actions:
            text = help_text(action.dest, kind, subcommand)
            if text:
                action.help = text
            if full:
                continue
            dest = action.dest
            hide = (
                (dest.startswith("trainer.") and dest.removeprefix("trainer.") not in _TRAINER_SHOWN)
                or (dest.startswith("checkpoint.") and dest.removeprefix("checkpoint.") not in _CHECKPOINT_SHOWN)
                or (dest.endswith(".help") and dest != "early_stopping.help")
                or (subcommand != "fit" and dest.split(".")[0] in _FIT_ONLY)
                or (subcommand != "predict" and dest.split(".")[0] == "prediction_writer")
            )
            if hide and action.option_strings:
                action.help = argparse.SUPPRESS
        titles = _titles(kind, subcommand, trainer_options)
        for group in parser._action_groups:
            key = keys[id(group)]
            if key in titles:
                group.title = titles[key]
        order = {key: i for i, key in enumerate(_order(subcommand))}
        parser._action_groups.sort(key=lambda g: order.get(keys[id(g)], -1))  # others (options) first
        if not full:
            parser.usage = (f"vdcnn-res {subcommand} [--config FILE ...] [--KEY VALUE ...]   "
                            f"(--help_all: every option)")
        yield
    finally:
        for action in parser._actions:
            action.help = saved_help.get(id(action), action.help)
        for group in saved_groups:
            group.title = saved_titles[id(group)]
        parser._action_groups[:] = saved_groups
        parser.usage = saved_usage
