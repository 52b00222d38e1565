"""benchmarks/gpu_check.sh (issue 16): its CPU dry run runs every step and writes results that agree."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    out, nothing = tmp_path / "out", tmp_path / "no_shared"
    nothing.mkdir()
    # As on a user's clone, whatever lies beside this checkout: no shared split, no reference script.
    env = {**os.environ, "PYTHON": sys.executable, "VDCNN_BENCH_DATA": str(nothing),
           "VDCNN_BENCH_REFERENCE": str(nothing / "paper_style_vdcnn.py")}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--no-install", "--out", str(out), "--",
         "--work", str(tmp_path / "work"), "--shared-data", str(nothing)],
        capture_output=True, text=True, env=env, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["dry_run"] is True
    status = {s["step"]: s for s in results["steps"]}
    assert all(s["status"] in ("ok", "skipped") for s in results["steps"])
    # fp16 autocast has no CPU path: it is reported as skipped, never run as something else
    assert status["fit+test ag_news_sample 16-mixed"]["status"] == "skipped"
    assert "CUDA-only" in status["fit+test ag_news_sample 16-mixed"]["note"]
    assert status["predictor cuda"]["status"] == "skipped"
    fits = {(r["data"], r["precision"]): r for r in results["fits"]}
    assert {("ag_news_sample", "bf16-mixed"), ("ag_news_sample", "32-true")} <= fits.keys()
    shared = status["fit+test ag_news_7600 32-true"]
    assert results["shared_data"] == "None"  # the split is optional; its absence is said, not hidden
    assert shared["status"] == "skipped" and "ag_news_7600" in shared["note"]
    for row in results["fits"]:
        assert row["epochs"] == 2 and row["train_samples_per_s"] > 0
        assert 0 <= row["test_acc"] <= 100 and Path(row["checkpoint"]).is_file()
    assert fits[("ag_news_sample", "32-true")]["resolved_precision"] == "32-true"
    assert results["predictor"] and all(r["device"] == "cpu" and r["texts"] == 64 for r in results["predictor"])
    assert "| 9 | inference |" in results["bench"]
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("GPU check (DRY RUN")
    rows = [line.split(" | ")[1] for line in table.splitlines() if line.startswith("| ag_news_sample | ")]
    # two fits, then the Predictor on the sample's bf16 fit (there is no shared split) in fp32 and the default
    assert sorted(rows) == ["32-true", "bf16-mixed", "cpu", "cpu"] and len(results["predictor"]) == 2
    assert "| fit+test ag_news_sample 16-mixed | skipped |" in table
    assert (out / "gpu_check.log").read_text().count("gpu_check: ") >= len(results["steps"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu_check = _load_gpu_check()
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpu_check: error: no CUDA device here; --dry-run checks the steps on the CPU"]
    assert not any(tmp_path.iterdir())


def test_throughput_leaves_out_the_first_epoch_when_there_are_more() -> None:
    timer = _load_gpu_check().TrainThroughput()
    timer.epochs = [(100, 10.0)]
    assert timer.samples_per_second() == 10.0
    timer.epochs = [(100, 10.0), (100, 1.0), (300, 2.0)]  # the first epoch pays the warm-up
    assert timer.samples_per_second() == pytest.approx(400 / 3.0)


def test_shared_split_is_found_or_reported(tmp_path: Path) -> None:
    gpu_check = _load_gpu_check()
    assert gpu_check.find_shared(str(tmp_path)) is None
    (tmp_path / "ag_news_7600").mkdir()
    (tmp_path / "ag_news_7600" / "train.csv").write_text("")
    assert gpu_check.find_shared(str(tmp_path)) == tmp_path.resolve()
    names = [(name, why) for name, _, _, why in gpu_check.datasets(None)]
    assert names[0] == ("ag_news_sample", None) and names[1][0] == "ag_news_7600" and "ag_news_7600" in names[1][1]
