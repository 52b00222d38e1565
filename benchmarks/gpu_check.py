"""One short check of the toolkit on a CUDA machine, as users train there: one JSON file, one Markdown table.

    python benchmarks/gpu_check.py --out gpu_check_out              # on a CUDA machine (gpu_check.sh installs first)
    python benchmarks/gpu_check.py --out /tmp/gc --dry-run          # CPU, tiny budgets: checks every step, measures nothing

Steps, each recorded as ok / skipped (with the reason) / failed (with the error):

1. `vdcnn-res fit` in bf16-mixed, 16-mixed and 32-true on the bundled sample (configs/quickstart.yaml)
   and on the shared AG News split (configs/shared/ag_news_7600.yaml, when ../shared/data or
   --shared-data has it), each followed by `vdcnn-res test` of its best checkpoint in the same
   precision. Training samples/s counts the training batches only (data loading included,
   validation excluded), from the second epoch on when there are several (the first pays cuDNN's
   autotuning and the allocator's warm-up); test accuracy is the CLI's `test/acc`.
2. The `Predictor` on CUDA (bf16 where the GPU has it, and float32) and on the CPU, on the test
   texts of the best bf16-mixed fit: texts/s (best of 3 passes after a warm-up) and accuracy.
3. The benchmark harness (benchmarks/bench.py) with `--device cuda`.

The fits run in this process through the same `build_cli` as the `vdcnn-res` command; their logs
and checkpoints go to --work (a temporary folder by default), the results to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")
# Dry run: enough of each fit to run every code path (two epochs, so the throughput rule is used).
DRY_FIT = [
    "--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
    "--data.max_length=64", "--data.batch_size=8", "--model.arch.channels=[8, 8, 16, 16]",
    "--model.arch.hidden_size=16", "--early_stopping=null",
]
DRY_TEST = ["--trainer.limit_test_batches=2"]

try:  # a Lightning callback when Lightning is there; the module stays importable for --help without it
    import pytorch_lightning as pl

    _Callback: type = pl.Callback
except ImportError:  # pragma: no cover
    _Callback = object


class TrainThroughput(_Callback):
    """Times each training epoch's batches (from the epoch's start to its last batch's end, the
    device synchronised there), so validation and checkpointing are not counted."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []  # (samples, seconds) per epoch
        self._start = 0.0
        self._samples = 0

    @staticmethod
    def _sync(pl_module: Any) -> None:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._sync(pl_module)
        self._start, self._samples = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._samples += len(batch["labels"])
        if batch_idx + 1 == trainer.num_training_batches:
            self._sync(pl_module)
            self.epochs.append((self._samples, time.perf_counter() - self._start))

    def samples_per_second(self) -> float:
        timed = self.epochs[1:] if len(self.epochs) > 1 else self.epochs
        return sum(n for n, _ in timed) / sum(s for _, s in timed)


def find_shared(explicit: str | None) -> Path | None:
    """The folder holding ag_news_7600/: --shared-data, $VDCNN_SHARED_DATA, then $VDCNN_SHARED_DIR/data
    when that is set (the tests' name for the shared folder), else ../shared/data or shared/data."""
    shared_dir = os.environ.get("VDCNN_SHARED_DIR")
    beside = [Path(shared_dir) / "data"] if shared_dir else [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    candidates = [explicit] if explicit else [os.environ.get("VDCNN_SHARED_DATA"), *beside]
    for c in candidates:
        if c and (Path(c) / "ag_news_7600" / "train.csv").is_file():
            return Path(c).resolve()
    return None


def datasets(shared: Path | None) -> list[tuple[str, list[str], Path | None, str | None]]:
    """(name, config flags, test file, why skipped) for the sample and the shared split."""
    sample = REPO / "data" / "ag_news_sample"
    out: list[tuple[str, list[str], Path | None, str | None]] = [
        ("ag_news_sample", ["--config", str(REPO / "configs" / "quickstart.yaml")], sample / "test.csv", None)
    ]
    if shared is None:
        out.append(("ag_news_7600", [], None, "no ag_news_7600/ in ../shared/data, shared/data or --shared-data"))
    else:
        d = shared / "ag_news_7600"
        flags = ["--config", str(REPO / "configs" / "shared" / "ag_news_7600.yaml")]
        flags += [f"--data.{s}={d / f'{s}.csv'}" for s in ("train", "valid", "test")] + [f"--data.classes_file={d / 'classes.txt'}"]
        out.append(("ag_news_7600", flags, d / "test.csv", None))
    return out


def run_fit(
    name: str, flags: list[str], test_file: Path, precision: str, accelerator: str, work: Path, dry: bool
) -> dict[str, Any]:
    """fit + test in one precision; returns the row of the results table."""
    from vdcnn_res.cli.lightning import build_cli

    root = work / f"{name}_{precision}"
    common = [f"--trainer.precision={precision}", f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
              "--trainer.enable_progress_bar=false"]
    t0 = time.perf_counter()
    fit = build_cli(["fit", *flags, *common, f"--trainer.default_root_dir={root}",
                     "--trainer.callbacks+=gpu_check.TrainThroughput", *(DRY_FIT if dry else [])])
    fit_seconds = time.perf_counter() - t0
    timer = next(cb for cb in fit.trainer.callbacks if type(cb).__name__ == "TrainThroughput")
    best = fit.trainer.checkpoint_callback.best_model_path
    test = build_cli(["test", f"--ckpt_path={best}", f"--data.test={test_file}", *common,
                      *(DRY_TEST if dry else [])])
    return {
        "data": name, "precision": precision, "resolved_precision": str(fit.trainer.precision),
        "epochs": len(timer.epochs), "steps": int(fit.trainer.global_step),
        "train_samples_per_s": round(timer.samples_per_second(), 1), "fit_seconds": round(fit_seconds, 1),
        "best_val_acc": round(100 * float(fit.trainer.checkpoint_callback.best_model_score), 2),
        "test_acc": round(100 * float(test.trainer.callback_metrics["test/acc"]), 2), "checkpoint": best,
    }


def read_test(path: Path) -> tuple[list[str], list[int]]:
    """Texts and 0-based labels of an AG News CSV (label 1-4, title, description; no header)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [f"{r[1]} {r[2]}" for r in rows], [int(r[0]) - 1 for r in rows]


def run_predictor(checkpoint: str, test_file: Path, device: str, bf16: bool | None, limit: int | None) -> dict[str, Any]:
    """texts/s (best of 3 timed passes after one warm-up) and accuracy of Predictor.predict_proba."""
    import numpy as np
    import torch

    from vdcnn_res import Predictor

    texts, labels = read_test(test_file)
    texts, labels = texts[:limit], labels[:limit]
    predictor = Predictor.from_checkpoint(checkpoint, device=device, bf16=bf16)
    predictor.predict_proba(texts[:256])
    rates = []
    for _ in range(3):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probs = predictor.predict_proba(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return {
        "device": device, "bf16": predictor.bf16, "texts": len(texts), "texts_per_s": round(max(rates), 1),
        "accuracy": round(100 * float(np.mean(probs.argmax(1) == np.array(labels))), 2),
    }


def environment(device: str) -> dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpus": os.cpu_count(), "device": device, "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        from importlib.metadata import version

        env["pytorch_lightning"] = version("pytorch-lightning")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return env


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    where = env.get("gpu", f"CPU ({env['cpus']} cores)")
    lines = [
        f"GPU check{' (DRY RUN on CPU: tiny budgets, the numbers mean nothing)' if results['dry_run'] else ''}: "
        f"{where}, torch {env['torch']} (CUDA {env['cuda']}), Python {env['python']}, {env['time_utc']}",
        "",
        "| data | precision | epochs | steps | train samples/s | fit s (all) | best val acc % | test acc % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["fits"]:
        lines.append(f"| {r['data']} | {r['precision']} | {r['epochs']} | {r['steps']} | {r['train_samples_per_s']} | "
                     f"{r['fit_seconds']} | {r['best_val_acc']} | {r['test_acc']} |")
    if results["predictor"]:
        lines += ["", "| Predictor on | device | precision | texts | texts/s | accuracy % |", "|---|---|---|---:|---:|---:|"]
        for r in results["predictor"]:
            lines.append(f"| {r['data']} | {r['device']} | {'bf16' if r['bf16'] else 'fp32'} | {r['texts']} | "
                         f"{r['texts_per_s']} | {r['accuracy']} |")
    lines += ["", "| step | status | note |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s.get('note', '')} |" for s in results["steps"]]
    if results.get("bench"):
        lines += ["", "Benchmark harness (`benchmarks/bench.py`):", "", results["bench"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "gpu_check_out", help="gpu_check.json and gpu_check.md go here")
    parser.add_argument("--work", type=Path, default=None, help="logs and checkpoints (default: a temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny budgets: runs every step, measures nothing")
    parser.add_argument("--shared-data", default=None, help="folder holding ag_news_7600/ (default: ../shared/data)")
    parser.add_argument("--bench-depths", type=int, nargs="+", default=[9, 29])
    parser.add_argument("--skip", nargs="*", default=[], choices=["fit", "predictor", "bench"], help="steps to leave out")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))  # `--trainer.callbacks+=gpu_check.TrainThroughput`, `import bench`

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on such machines; everything here is local files
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_check: error: no CUDA device here; --dry-run checks the steps on the CPU", file=sys.stderr)
        return 2
    device = "cpu" if args.dry_run else "cuda"
    accelerator = "cpu" if args.dry_run else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="vdcnn_gpu_check_"))
    os.chdir(REPO)  # the configs name data/ paths relative to the repository root
    shared = find_shared(args.shared_data)
    results: dict[str, Any] = {"environment": environment(device), "dry_run": args.dry_run, "shared_data": str(shared),
                               "steps": [], "fits": [], "predictor": [], "bench": None}

    def step(name: str, status: str, note: str = "") -> None:
        results["steps"].append({"step": name, "status": status, "note": note})
        print(f"gpu_check: {name}: {status}{': ' + note if note else ''}", file=sys.stderr, flush=True)

    def attempt(name: str, fn: Any) -> Any:
        try:
            value = fn()
        except BaseException as err:  # noqa: BLE001 - a failed step is recorded and the check goes on
            if isinstance(err, KeyboardInterrupt):
                raise
            traceback.print_exc()
            step(name, "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300])
            return None
        step(name, "ok")
        return value

    best_for_predictor: tuple[str, Path, str] | None = None
    for data_name, flags, test_file, why in datasets(shared):
        for precision in PRECISIONS:
            name = f"fit+test {data_name} {precision}"
            if "fit" in args.skip:
                step(name, "skipped", "--skip fit")
            elif why:
                step(name, "skipped", why)
            elif precision == "16-mixed" and device == "cpu":
                step(name, "skipped", "fp16 autocast is CUDA-only (Lightning runs bf16-mixed instead on a CPU)")
            elif precision == "bf16-mixed" and device == "cuda" and not torch.cuda.is_bf16_supported():
                step(name, "skipped", "this GPU has no bf16")
            else:
                row = attempt(name, lambda: run_fit(data_name, flags, test_file, precision, accelerator, work, args.dry_run))
                if row:
                    results["fits"].append(row)
                    if best_for_predictor is None or precision == "bf16-mixed":
                        best_for_predictor = (row["checkpoint"], test_file, data_name)
        _write(args.out, results)

    if "predictor" in args.skip:
        step("predictor", "skipped", "--skip predictor")
    elif best_for_predictor is None:
        step("predictor", "skipped", "no fit finished, so no checkpoint to load")
    else:
        checkpoint, test_file, data_name = best_for_predictor
        runs = [("cuda", None), ("cuda", False), ("cpu", False)] if device == "cuda" else [("cpu", False), ("cpu", None)]
        if device == "cpu":
            step("predictor cuda", "skipped", "dry run: no CUDA device")
        for dev, bf16 in runs:
            row = attempt(f"predictor {dev} bf16={bf16}",
                          lambda: run_predictor(checkpoint, test_file, dev, bf16, 64 if args.dry_run else None))
            if row:
                results["predictor"].append({"data": data_name, **row})
    _write(args.out, results)

    if "bench" in args.skip:
        step("bench", "skipped", "--skip bench")
    else:
        if shared is not None:
            os.environ["VDCNN_BENCH_DATA"] = str(shared)
        import bench

        bench_args = ["--device", device, "--depths", *map(str, args.bench_depths)]
        if args.dry_run:
            bench_args = ["--device", "cpu", "--quick", "--depths", "9", "--no-int8"]  # int8 is CPU-only: not a GPU step
        results["bench"] = attempt("bench " + " ".join(bench_args), lambda: bench.main(bench_args))
    _write(args.out, results)
    print(markdown(results))
    failed = [s["step"] for s in results["steps"] if s["status"] == "failed"]
    print(f"gpu_check: results in {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}"
          f"{'; FAILED: ' + ', '.join(failed) if failed else ''}", file=sys.stderr)
    return 1 if failed else 0


def _write(out: Path, results: dict[str, Any]) -> None:
    """Rewritten after every step, so a run cut short still leaves what it measured."""
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))


if __name__ == "__main__":
    sys.exit(main())
