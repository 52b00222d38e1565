#!/usr/bin/env bash
# The main job on a fresh machine: install, train the quick-start model on the bundled
# AG News sample, report its test error, then predict a few texts from Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vdcnn-res fit --config configs/quickstart.yaml
best=$(ls -t lightning_logs/version_*/checkpoints/best-*.ckpt | head -n 1)
.venv/bin/vdcnn-res test --config configs/quickstart.yaml --ckpt_path "$best"
.venv/bin/python scripts/predict_examples.py "$best"
