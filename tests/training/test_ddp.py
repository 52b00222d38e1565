"""Real 2-process DDP on CPU (gloo): the multi-device path users take on GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny import REPO  # noqa: E402
TRAIN_ROWS = 4000  # data/ag_news_sample/train.csv

pytestmark = pytest.mark.slow


def cli(tmp_path: Path, subcommand: str, devices: int, *extra: str) -> dict[int, dict]:
    """Run `vdcnn-res` in a subprocess on the bundled sample; return each rank's probe record."""
    probe = tmp_path / f"probe_{subcommand}_{devices}"
    args = [
        sys.executable, "-m", "vdcnn_res.cli", subcommand,
        "--config", "configs/quickstart.yaml",
        "--model.arch.channels=[8, 8, 16, 16]", "--model.arch.hidden_size=16", "--model.arch.ngram_buckets=256",
        "--data.max_length=128", "--data.batch_size=32",
        "--model.arch.shortcut=false",  # no projection modules: DDP must not see unused parameters
        "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        "--trainer.strategy=" + ("ddp" if devices > 1 else "auto"),
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks+=" + json.dumps(
            {"class_path": "ddp_probe.RecordBatches", "init_args": {"out_dir": str(probe)}}
        ),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "fixtures")}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    stage = "fit" if subcommand == "fit" else "validate"
    return {r: json.loads((probe / f"{stage}_rank{r}.json").read_text()) for r in range(devices)}


def test_ddp_two_processes_shard_batches_and_aggregate_metrics(tmp_path):
    ranks = cli(tmp_path, "fit", 2, "--trainer.max_epochs=1")
    assert {r["world_size"] for r in ranks.values()} == {2}
    batches = [r["train_batches"] for r in ranks.values()]
    assert len(batches[0]) == len(batches[1]) > 0  # same number of optimizer steps on each rank
    seen = [{i for b in rank for i in b} for rank in batches]
    assert not seen[0] & seen[1]  # disjoint shards
    assert seen[0] | seen[1] == set(range(TRAIN_ROWS))  # one full epoch, every row once
    assert sum(len(b) for rank in batches for b in rank) == TRAIN_ROWS

    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert last.exists()
    two = cli(tmp_path, "validate", 2, "--ckpt_path", str(last))[0]["metrics"]
    one = cli(tmp_path, "validate", 1, "--ckpt_path", str(last))[0]["metrics"]
    # Metrics of 2 ranks are synced over the whole valid split: equal to one process's.
    assert two["val/acc"] == pytest.approx(one["val/acc"], abs=1e-6)
    assert two["val/f1_macro"] == pytest.approx(one["val/f1_macro"], abs=1e-6)
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-3)
