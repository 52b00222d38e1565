#!/usr/bin/env bash
# The main job on a fresh machine: install, train the quick-start model on the bundled
# AG News sample, test its best checkpoint (the checkpoint alone: no training config needed),
# then predict a few texts from Python.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vdcnn-res fit --config configs/quickstart.yaml
.venv/bin/vdcnn-res test --ckpt_path best --data.test data/ag_news_sample/test.csv
best=$(ls -t lightning_logs/version_*/checkpoints/best-*.ckpt | head -n 1)
.venv/bin/python scripts/predict_examples.py "$best"
