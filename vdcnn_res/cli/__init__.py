"""The `vdcnn-res` command line: a table of subcommands over the LightningCLI.

    vdcnn-res fit|validate|test|predict ...   LightningCLI (cli/lightning.py): the config schema
    vdcnn-res export|ablate|sweep|tune|serve|explain|calibrate ...   own small parsers (SUBCOMMANDS)
    vdcnn-res --help                          every subcommand, one line each (COMMANDS)
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from pathlib import Path

from vdcnn_res.cli.help import COMMANDS
from vdcnn_res.errors import UserError

__all__ = ["COMMANDS", "SUBCOMMANDS", "main", "overview"]

# Subcommands with their own small parsers: module whose main(argv) runs them.
SUBCOMMANDS = {
    "export": "vdcnn_res.cli.export",
    "ablate": "vdcnn_res.cli.ablate",
    "tune": "vdcnn_res.cli.tune",
    "serve": "vdcnn_res.cli.serve",
    "sweep": "vdcnn_res.cli.sweep",
    "explain": "vdcnn_res.cli.explain",
    "calibrate": "vdcnn_res.cli.calibrate",
}


_LIGHTNING = ("fit", "validate", "test", "predict")


def overview() -> str:
    """What `vdcnn-res --help` prints: every subcommand, one line each."""
    width = max(map(len, COMMANDS)) + 2
    lines = [
        "usage: vdcnn-res SUBCOMMAND [options]",
        "",
        "Very deep residual 1D CNN classifiers of text and time series.",
        "",
        "subcommands:",
        *(f"  {name:<{width}}{what}" for name, what in COMMANDS.items()),
        "",
        "`vdcnn-res SUBCOMMAND --help` shows a subcommand's options; for fit, validate, test and predict",
        "`--help_all` adds every Lightning Trainer option, and `--data_kind series --help` the time-series data options.",
        "User errors print one line and exit with status 2 (VDCNN_RES_DEBUG=1 shows the trace).",
    ]
    return "\n".join(lines) + "\n"


_PACKAGE = str(Path(__file__).resolve().parents[1])


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """The package's own warnings (about the user's data or run) as one line; others as usual."""
    if str(Path(filename).resolve()).startswith(_PACKAGE) and issubclass(category, UserWarning):
        text = f"vdcnn-res: warning: {message}\n"
    else:
        text = warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


def main(args: list[str] | None = None) -> None:
    """Console entry point. User errors print one line and exit 2 (VDCNN_RES_DEBUG=1 shows the trace)."""
    argv = sys.argv[1:] if args is None else list(args)
    warnings.showwarning = _show_warning
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        # Redirected to a file: each line is written when printed, so stdout and stderr keep their order.
        sys.stdout.reconfigure(line_buffering=True)
    if not any(a in COMMANDS for a in argv) and (not argv or {"-h", "--help", "--help_all"} & set(argv)):
        (sys.stdout if argv else sys.stderr).write(overview())
        sys.exit(0 if argv else 2)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
            return
        from vdcnn_res.cli.lightning import build_cli

        build_cli(args)
    except UserError as err:
        if os.environ.get("VDCNN_RES_DEBUG"):
            raise
        print(f"vdcnn-res: error: {err}", file=sys.stderr)
        sys.exit(2)
