#!/usr/bin/env bash
# Create .venv (if missing) and install vdcnn-res with its test tools. Safe to re-run.
# torch is pinned to 2.13.0 in pyproject.toml: on CPU-only machines with the local wheel that
# is the CPU build; an unpinned torch would pull a newer release with gigabytes of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
