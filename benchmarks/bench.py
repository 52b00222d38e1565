"""Training and inference throughput of VDCNN on real texts against the fixed paper-style
reference, in one run, as Markdown tables (issue 16's targets included).

    .venv/bin/python benchmarks/bench.py                      # full run, depths 9 and 29
    .venv/bin/python benchmarks/bench.py --quick              # tiny budget (smoke test)
    .venv/bin/python benchmarks/bench.py --depths 9 --compile # also time torch.compile
    python benchmarks/bench.py --device cuda                  # on a GPU (benchmarks/gpu_check.sh runs it)

Every speed is compared with the reference *of the same run*: `../shared/bench/paper_style_vdcnn.py`
(the paper's network written plainly: every text padded to 1024, fp32, SGD at batch 64, prediction
at batch 256 with tokenization not timed), imported and timed here in the same interleaved
windows as every other row, so the ratios hold on a shared, loaded machine where absolute
numbers do not. Without the script (`--reference`, `VDCNN_BENCH_REFERENCE`) this code's own
paper-style row is the baseline and the header says so.

Training: samples/s over full optimizer steps after warm-up steps, median of several timed
windows. The "default fit" rows run `fit`'s own LightningModule `training_step` (the CLI's
n-gram bag and branch loss, label smoothing, metrics) with `build_optimizer` and this device's
default precision, on batches made as the data module makes them. Inference goes through the
public `vdcnn_res.Predictor` (tokenization, batching and softmax included). Peak memory is the
process's resident-set high-water mark during warm-up (on CUDA: allocated device memory).
Useful GFLOP/s counts only the CNN FLOPs of the texts' real lengths (`vdcnn_res.model.flops`,
training = 3x forward) and is set against the fp32 and bf16 matmul peaks measured at the
start of the run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import inspect
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vdcnn_res import Predictor, create_model
from vdcnn_res.cli.lightning import TEXT_BRANCH_LOSS, TEXT_NGRAMS, default_precision
from vdcnn_res.data.batching import PadCollator, TokenizedSplit
from vdcnn_res.data.datamodule import TextDataModule
from vdcnn_res.data.sampler import LengthBucketBatchSampler
from vdcnn_res.data.tokenizer import build_tokenizer, encode
from vdcnn_res.inference.predictor import native_bf16
from vdcnn_res.model.flops import forward_flops
from vdcnn_res.training.module import VDCNNClassifier
from vdcnn_res.training.optim import build_optimizer

DATA = Path(os.environ.get("VDCNN_BENCH_DATA", "/work/shared/data"))
# The fixed speed reference of the project's speed goals (issue 16), beside the checkout.
REFERENCE = Path(os.environ.get("VDCNN_BENCH_REFERENCE", DATA.parent / "bench" / "paper_style_vdcnn.py"))
PAPER_LENGTH = 1024  # the paper pads/truncates every text to 1024 characters


# --------------------------------------------------------------------------- data


def load_texts(name: str, limit: int | None = None) -> list[str]:
    """Texts of a shared split: `ag_news` (title + description) or `clinc150` (utterances).

    Falls back to the repository's bundled AG News sample when the shared data is missing.
    """
    texts: list[str] = []
    if name == "ag_news":
        path = DATA / "ag_news_7600" / "train.csv"
        if not path.is_file():
            path = Path(__file__).resolve().parents[1] / "data" / "ag_news_sample" / "train.csv"
        with open(path, newline="", encoding="utf-8") as f:
            texts = [f"{row[1]} {row[2]}" for row in csv.reader(f)]
    elif name == "clinc150":
        with open(DATA / "clinc150" / "train.tsv", newline="", encoding="utf-8") as f:
            texts = [row["text"] for row in csv.DictReader(f, delimiter="\t")]
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return texts[:limit] if limit else texts


def make_batches(
    ids: list[list[int]], batch_size: int, bucket: bool, fixed_length: int | None, seed: int = 0, pad_multiple: int = 8
) -> list[dict[str, torch.Tensor]]:
    """Training batches as the data module makes them: bucketed (pad to batch max, a multiple
    of `pad_multiple`) or, paper style, random batches padded to `fixed_length`; random labels
    of 4 classes (the speed does not depend on them)."""
    labels = np.random.default_rng(seed).integers(0, 4, len(ids)).tolist()
    split = TokenizedSplit.from_ids(ids, labels)
    sampler = LengthBucketBatchSampler(split.lengths, batch_size, bucket=bucket, shuffle=True, seed=seed)
    collate = PadCollator(pad_multiple, fixed_length)
    return [collate([split[i] for i in b]) for b in sampler if len(b) == batch_size]


def cycle(items: list) -> Iterator:
    while True:
        yield from items


# --------------------------------------------------------------------------- measurement


def _hwm_mib() -> float:
    """Resident-set high-water mark of this process in MiB (Linux), NaN elsewhere."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return float("nan")


def _rss_mib() -> float:
    """Current resident set of this process in MiB (Linux), NaN elsewhere."""
    try:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return float("nan")


def _reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_before(device: torch.device) -> float:
    """Start of a configuration's peak-memory window: host RSS on CPU, allocated memory on CUDA (MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    rss = _rss_mib()
    _reset_hwm()
    return rss


def _peak_extra(device: torch.device, before: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20 - before
    return _hwm_mib() - before


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, device: torch.device = torch.device("cpu")) -> float:
    """GFLOP/s of a square n x n matmul in `dtype` (the machine's practical peak)."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or reps < 3:
        a @ b
        reps += 1
        if reps % 10 == 0:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - t0
    return 2 * n**3 * reps / elapsed / 1e9


Step = Callable[[], tuple[int, float]]  # one timed call -> (samples, useful FLOPs)


def interleaved_windows(
    steps: list[Step], windows: int, calls: int, device: torch.device = torch.device("cpu")
) -> list[tuple[float, float]]:
    """Per step function, medians over `windows` of samples/s and useful FLOP/s.

    The windows are interleaved (window 1 of every configuration, then window 2, ...), so
    a change in the machine's load while the run goes on hits every configuration alike
    and the ratios between them stay fair on a shared machine.
    """
    rates: list[list[tuple[float, float]]] = [[] for _ in steps]
    for _ in range(windows):
        for i, step in enumerate(steps):
            _sync(device)
            n, flops, t0 = 0, 0.0, time.perf_counter()
            for _ in range(calls):
                dn, df = step()
                n, flops = n + dn, flops + df
            _sync(device)
            seconds = time.perf_counter() - t0
            rates[i].append((n / seconds, flops / seconds))
    return [(statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for rs in rates]


def _release_memory() -> None:
    """Free the previous configuration's tensors before the peak RSS is reset.

    Not `malloc_trim`: handing the heap back to the OS made every later step ~10x slower
    (fresh pages faulted in on each allocation), so the peak RSS of a configuration also
    holds heap kept from earlier ones; compare it within a depth, first rows are cleanest.
    """
    gc.collect()


@dataclass
class TrainConfig:
    name: str
    bucket: bool = True
    max_length: int = PAPER_LENGTH
    batch_size: int = 64
    bf16: bool = False
    compile: bool = False
    fused_adamw: bool = False  # one fused kernel for the whole AdamW update instead of foreach ops


def prepare_train(
    depth: int,
    cfg: TrainConfig,
    texts: list[str],
    tokenizer,
    warmup: int,
    flops_of: Callable[[int], int],
    device: torch.device = torch.device("cpu"),
) -> tuple[Step, dict]:
    """Build one training configuration, run its warm-up steps; returns its step function and
    its peak memory (resident-set high-water mark during warm-up minus the RSS before it)."""
    mem_before = _memory_before(device)
    torch.manual_seed(0)
    ids = encode(tokenizer, texts, cfg.max_length)
    batches = make_batches(ids, cfg.batch_size, cfg.bucket, None if cfg.bucket else cfg.max_length)
    model = create_model(f"vdcnn{depth}", num_classes=4, vocab_size=tokenizer.get_vocab_size()).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cfg.fused_adamw or None)
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    # FLOPs of each batch's real lengths, counted before timing (the counter runs a forward).
    flops = [3 * sum(flops_of(int(n)) for n in b["lengths"]) for b in batches]  # training = 3x forward
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    it = cycle(list(zip(batches, flops)))

    def step() -> tuple[int, float]:
        batch, useful = next(it)
        with autocast:
            logits = forward(batch["input_ids"], batch["lengths"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(batch["labels"]), useful

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    info = {
        "peak_mib": _peak_extra(device, mem_before),
        "warmup_s": time.perf_counter() - t0,
        "mean_len": float(np.mean([b["input_ids"].shape[1] for b in batches])),
    }
    return step, info


# --------------------------------------------------------------------------- the fixed reference


def load_reference(path: Path) -> ModuleType | None:
    """The paper-style reference script (`../shared/bench/paper_style_vdcnn.py`) as a module, or
    None when it is not beside the checkout (the project's own paper-style row then stands in)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("paper_style_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_reference(
    ref: ModuleType,
    depth: int,
    texts: list[str],
    length: int,
    batch_size: int,
    warmup: int,
    flops_of: Callable[[int], int],
    train: bool,
    device: torch.device = torch.device("cpu"),
) -> tuple[Step, dict]:
    """The reference's own network and step, exactly as its script times them: texts encoded by
    its `encode` (padded to `length`, not timed), SGD steps (momentum 0.9) for training,
    `inference_mode` forward passes for prediction."""
    mem_before = _memory_before(device)
    torch.manual_seed(0)
    model = ref.vdcnn(depth, 4).to(device)
    x = ref.encode(texts, length)
    real = (x != 0).sum(1).tolist()  # the script maps unknown characters to 1 and pads with 0
    y = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(0))
    starts = range(0, len(x) - batch_size + 1, batch_size)
    batches = [
        (x[i : i + batch_size].to(device), y[i : i + batch_size].to(device), sum(flops_of(n) for n in real[i : i + batch_size]))
        for i in starts
    ]
    it = cycle(batches)
    if train:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step() -> tuple[int, float]:
            xb, yb, useful = next(it)
            optimizer.zero_grad()
            F.cross_entropy(ref.forward(model, xb), yb).backward()
            optimizer.step()
            return len(yb), 3 * useful  # training = 3x forward

    else:
        model.eval()

        def step() -> tuple[int, float]:
            xb, _, useful = next(it)
            with torch.inference_mode():
                ref.forward(model, xb)
            return len(xb), useful

    for _ in range(warmup):
        step()
    _sync(device)
    return step, {"peak_mib": _peak_extra(device, mem_before), "mean_len": float(length)}


# --------------------------------------------------------------------------- the defaults


def data_defaults() -> dict[str, Any]:
    """`fit`'s data defaults (max_length, batch_size, pad_multiple), read from the data module."""
    params = inspect.signature(TextDataModule.__init__).parameters
    return {k: params[k].default for k in ("max_length", "batch_size", "pad_multiple")}


def default_classifier(depth: int, vocab_size: int, ngrams: bool = True, masked_norm: bool = True) -> VDCNNClassifier:
    """The LightningModule `vdcnn-res fit` builds for text by default (the CLI's n-gram bag and
    branch loss included); `ngrams=False` is the pure CNN of the paper and the ablation;
    `masked_norm=False` torch's BatchNorm (statistics over padding too) instead of the masked one."""
    arch: dict[str, Any] = {"depth": depth, "num_classes": 4, "vocab_size": vocab_size, "masked_norm": masked_norm}
    if ngrams:
        arch.update({key.rsplit(".", 1)[1]: value for key, value in TEXT_NGRAMS.items()})
    return VDCNNClassifier(arch=arch, branch_loss=dict(TEXT_BRANCH_LOSS) if ngrams else None)


def prepare_fit(
    depth: int,
    texts: list[str],
    tokenizer,
    warmup: int,
    flops_of: Callable[[int], int],
    *,
    ngrams: bool,
    masked_norm: bool = True,
    batch_size: int | None = None,
    max_length: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> tuple[Step, dict]:
    """`fit`'s own training step: the default LightningModule's `training_step` (branch losses,
    label smoothing, metrics), its optimizer (`build_optimizer`: fused AdamW, the bag's own
    learning rate), the default precision of this device and the data module's batches."""
    mem_before = _memory_before(device)
    torch.manual_seed(0)
    data = data_defaults()
    ids = encode(tokenizer, texts, max_length or data["max_length"])
    batches = make_batches(ids, batch_size or data["batch_size"], True, None, pad_multiple=data["pad_multiple"])
    module = default_classifier(depth, tokenizer.get_vocab_size(), ngrams, masked_norm).to(device).train()
    optimizer = build_optimizer(module.model, module.optim)
    precision = default_precision(device.type)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else nullcontext()
    flops = [3 * sum(flops_of(int(n)) for n in b["lengths"]) for b in batches]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    it = cycle(list(zip(batches, flops)))

    def step() -> tuple[int, float]:
        batch, useful = next(it)
        with warnings.catch_warnings(), autocast:  # `self.log` outside a Trainer warns
            warnings.simplefilter("ignore")
            out = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        (out["loss"] if isinstance(out, dict) else out).backward()
        optimizer.step()
        return len(batch["labels"]), useful

    for _ in range(warmup):
        step()
    _sync(device)
    info = {
        "peak_mib": _peak_extra(device, mem_before),
        "mean_len": float(np.mean([b["input_ids"].shape[1] for b in batches])),
        "precision": precision,
    }
    return step, info


def prepare_inference(
    build: Callable[[], Predictor],
    texts: list[str],
    budget: dict,
    flops_of: Callable[[int], int],
    *,
    fixed: bool = False,
    device: torch.device = torch.device("cpu"),
) -> tuple[Step, dict]:
    """Raw texts -> probabilities through `Predictor.predict_proba` (tokenization included), one
    chunk of texts per call. `fixed=True` pads every text to the Predictor's max_length (the
    paper's way, through the same API). Useful FLOPs: the CNN's over the texts' cut lengths."""
    import vdcnn_res.inference.predictor as predict_module

    mem_before = _memory_before(device)
    torch.manual_seed(0)
    predictor = build()
    original = predict_module.texts_to_batches

    def fixed_batches(*args, **kwargs):
        return original(*args, **{**kwargs, "fixed_length": True})

    chunk = budget["infer_texts"]
    parts = [texts[i : i + chunk] for i in range(0, len(texts) - chunk + 1, chunk)]
    chunks = cycle([(part, sum(flops_of(len(ids)) for ids in encode(predictor.tokenizer, part, predictor.max_length))) for part in parts])

    def step() -> tuple[int, float]:
        part, useful = next(chunks)
        if fixed:
            predict_module.texts_to_batches = fixed_batches
        try:
            return len(predictor.predict_proba(part)), useful  # the default batch size
        finally:
            predict_module.texts_to_batches = original

    for _ in range(budget["infer_warmup"]):
        step()
    return step, {"peak_mib": _peak_extra(device, mem_before)}


# --------------------------------------------------------------------------- report

# Issue 16's goals for the default rows, against the reference: (workload, depth) -> minimum ratio.
GOALS = {("train", 9): 6.0, ("train", 29): 6.0, ("inference", 9): 12.0, ("inference", 29): 15.0}
GFLOPS_GOAL = 50.0  # % of the bf16 matmul peak (fp32's where bf16 is emulated), useful GFLOP/s in training
FIT_DATA = data_defaults()  # fit's data defaults, named in the default rows
DEFAULT_TRAIN = (
    f"default fit (CNN + n-gram bag, buckets, max_length {FIT_DATA['max_length']}, batch {FIT_DATA['batch_size']}, "
    "default precision, fused AdamW)"
)
DEFAULT_INFER = f"Predictor, defaults (CNN + n-gram bag, max_length {FIT_DATA['max_length']}, bf16 where native)"
INT8_INFER = "Predictor, int8 (ONNX Runtime, the default model)"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=None, help="default: 9 29 (9 with --quick)")
    parser.add_argument("--dataset", default="ag_news", choices=["ag_news", "clinc150"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow warm-up)")
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the harness, not the speed")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where models train and predict")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="the paper-style reference script (default: %(default)s)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 Predictor row (its export and calibration take a while)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    quick = args.quick
    args.depths = args.depths or ([9] if quick else [9, 29])
    budget = (
        {"warmup": 1, "windows": 1, "steps": 1, "infer_texts": 8, "infer_warmup": 0, "texts": 64, "batch": 4, "ref_infer_batch": 8}
        if quick
        else {"warmup": 2, "windows": 5, "steps": 3, "infer_texts": 512, "infer_warmup": 1, "texts": 4096, "batch": 64, "ref_infer_batch": 256}
    )
    paper_len = 64 if quick else PAPER_LENGTH
    texts = load_texts(args.dataset, budget["texts"])
    tokenizer = build_tokenizer("char")
    lengths = np.array([len(i) for i in encode(tokenizer, texts, PAPER_LENGTH)])
    bs = budget["batch"]
    data = FIT_DATA
    fit_batch = max(2, bs // 2) if quick else None
    fit_length = min(data["max_length"], paper_len)
    ref = load_reference(args.reference)
    bf16 = native_bf16(device)
    int8 = not args.no_int8 and device.type == "cpu" and importlib.util.find_spec("onnxruntime") is not None

    def project(name: str, **kw) -> TrainConfig:
        return TrainConfig(name, max_length=paper_len, batch_size=bs, **kw)

    levers = [
        project("paper-style in this code: pad to 1024, fp32, AdamW, batch 64", bucket=False),
        project("length buckets (batch 64, AdamW)"),
        project("buckets + fused AdamW", fused_adamw=True),
    ]
    if bf16:  # emulated bf16 is many times slower than fp32: not worth timing where it is not native
        levers.append(project("buckets + bf16 + fused AdamW", bf16=True, fused_adamw=True))
    if args.compile:
        levers.append(project("buckets + fused AdamW + torch.compile", fused_adamw=True, compile=True))

    peak32 = matmul_peak(torch.float32, 512 if quick else 2048, 0.05 if quick else 1.0, device)
    peak16 = matmul_peak(torch.bfloat16, 512 if quick else 2048, 0.05 if quick else 1.0, device)
    # The goal is stated against bf16's peak; where bf16 is emulated, fp32 is the machine's peak.
    goal_peak, peak_name = (peak16, "bf16") if bf16 else (peak32, "fp32 (bf16 is not native here)")

    def bf16_pct(gflops: float) -> str:
        return f"{100 * gflops / peak16:.0f}" if bf16 else "-"

    gpu = f"; device {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    memory = "peak extra CUDA MiB" if device.type == "cuda" else "peak extra RSS MiB"
    base_name = "reference" if ref is not None else "paper-style in this code (the reference script was not found)"
    lines = [
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; native bf16: {'yes' if bf16 else 'no'}; "
            f"load average at start {os.getloadavg()[0]:.2f}{gpu}"
        ),
        (
            f"Data: {args.dataset}, {len(texts)} texts, median length {int(np.median(lengths))}, "
            f"p90 {int(np.percentile(lengths, 90))} characters"
        ),
        f"Reference: {args.reference if ref is not None else 'not found at ' + str(args.reference)}",
        f"Matmul peak (2048^2 on {device.type}, this run): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s{'' if bf16 else ' (emulated)'}",
        "",
        f"| depth | workload | configuration | samples/s | x {'reference' if ref is not None else 'paper-style'} | useful GFLOP/s | % fp32 peak | % bf16 peak | {memory} | mean padded length |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets: list[str] = []
    for depth in args.depths:
        model = create_model(f"vdcnn{depth}", num_classes=4, vocab_size=tokenizer.get_vocab_size())  # FLOP counts, CPU
        cache: dict[int, int] = {}

        def flops_of(n: int, model=model, cache=cache) -> int:
            n = max(n, 1)
            if n not in cache:
                cache[n] = forward_flops(model, n)
            return cache[n]

        train: list[tuple[str, Callable[[], tuple[Step, dict]]]] = []
        if ref is not None:
            train.append(("reference: paper_style_vdcnn.py (pad to 1024, fp32, SGD, batch 64)",
                          lambda: prepare_reference(ref, depth, texts, paper_len, bs, budget["warmup"], flops_of, True, device)))
        train += [(cfg.name, lambda cfg=cfg: prepare_train(depth, cfg, texts, tokenizer, budget["warmup"], flops_of, device)) for cfg in levers]
        fit = dict(batch_size=fit_batch, max_length=fit_length, device=device)
        train += [
            (DEFAULT_TRAIN, lambda: prepare_fit(depth, texts, tokenizer, budget["warmup"], flops_of, ngrams=True, **fit)),
            ("default fit without the n-gram bag (the pure CNN)",
             lambda: prepare_fit(depth, texts, tokenizer, budget["warmup"], flops_of, ngrams=False, **fit)),
            ("default fit with torch's BatchNorm (model.arch.masked_norm false: statistics over padding too)",
             lambda: prepare_fit(depth, texts, tokenizer, budget["warmup"], flops_of, ngrams=True, masked_norm=False, **fit)),
            ("default fit at batch 64 (the documented fast option)",
             lambda: prepare_fit(depth, texts, tokenizer, budget["warmup"], flops_of, ngrams=True, **{**fit, "batch_size": bs})),
        ]
        labels = ["a", "b", "c", "d"]
        vocab = tokenizer.get_vocab_size()

        def predictor(ngrams: bool = True, max_length: int = fit_length, bf16: bool | None = None) -> Predictor:
            torch.manual_seed(0)
            return Predictor(default_classifier(depth, vocab, ngrams).model, tokenizer, labels, max_length=max_length, device=device, bf16=bf16)

        inference: list[tuple[str, Callable[[], tuple[Step, dict]]]] = []
        if ref is not None:
            inference.append(("reference: paper_style_vdcnn.py (pad to 1024, fp32, batch 256, tokenization not timed)",
                              lambda: prepare_reference(ref, depth, texts, paper_len, budget["ref_infer_batch"], budget["infer_warmup"], flops_of, False, device)))
        inference += [
            ("paper-style through Predictor: pure CNN, pad to 1024, fp32",
             lambda: prepare_inference(lambda: predictor(False, paper_len, False), texts, budget, flops_of, fixed=True, device=device)),
            ("Predictor, pure CNN, fp32", lambda: prepare_inference(lambda: predictor(False, bf16=False), texts, budget, flops_of, device=device)),
            (DEFAULT_INFER, lambda: prepare_inference(predictor, texts, budget, flops_of, device=device)),
        ]
        if int8:
            inference.append((INT8_INFER, lambda: prepare_inference(lambda: predictor(bf16=False).use_int8(texts[:256]), texts, budget, flops_of, device=device)))
        if args.compile:
            def compiled() -> Predictor:
                p = predictor()
                p.model = torch.compile(p.model, dynamic=True)  # the warm-up chunk pays the compilation
                return p

            inference.append(("Predictor, defaults, torch.compile", lambda: prepare_inference(compiled, texts, budget, flops_of, device=device)))

        prepared_train = [prepare() for _, prepare in train]
        prepared_infer = [prepare() for _, prepare in inference]
        results = interleaved_windows([s for s, _ in prepared_train], budget["windows"], budget["steps"], device)
        results_inf = interleaved_windows([s for s, _ in prepared_infer], budget["windows"], 1, device)
        rates: dict[tuple[str, str], float] = {}
        useful: dict[tuple[str, str], float] = {}
        base = results[0][0]
        best_pct = 0.0
        for (name, _), (_, info), (rate, flop_rate) in zip(train, prepared_train, results):
            gflops = flop_rate / 1e9
            best_pct = max(best_pct, 100 * gflops / goal_peak)
            rates["train", name] = rate
            useful["train", name] = flop_rate / rate  # useful FLOPs per sample
            lines.append(
                f"| {depth} | train | {name} | {rate:.1f} | {rate / base:.2f} | "
                f"{gflops:.0f} | {100 * gflops / peak32:.0f} | {bf16_pct(gflops)} | "
                f"{info['peak_mib']:.0f} | {info['mean_len']:.0f} |"
            )
        base_inf = results_inf[0][0]
        for (name, _), (_, info), (rate, flop_rate) in zip(inference, prepared_infer, results_inf):
            gflops = flop_rate / 1e9
            rates["inference", name] = rate
            useful["inference", name] = flop_rate / rate  # useful FLOPs per text
            lines.append(
                f"| {depth} | inference | {name} | {rate:.1f} | {rate / base_inf:.2f} | {gflops:.0f} | "
                f"{100 * gflops / peak32:.0f} | {bf16_pct(gflops)} | {info['peak_mib']:.0f} | |"
            )
        print("\n".join(lines[-len(train) - len(inference) :]), file=sys.stderr, flush=True)
        default_pct = 100 * results[[n for n, _ in train].index(DEFAULT_TRAIN)][1] / 1e9 / goal_peak
        for workload, row, rate_base in (("train", DEFAULT_TRAIN, base), ("inference", DEFAULT_INFER, base_inf)):
            ratio, goal = rates[workload, row] / rate_base, GOALS.get((workload, depth))
            verdict = "" if goal is None else ("met" if ratio >= goal else "missed")
            # The most this row could reach: every useful FLOP at the matmul peak, nothing else costing.
            ceiling = goal_peak * 1e9 / useful[workload, row] / rate_base if useful[workload, row] else float("nan")
            targets.append(
                f"| {depth} | {workload}: {row} | {ratio:.2f}x | {'' if goal is None else f'>= {goal:g}x'} | {verdict} | {ceiling:.1f}x |"
            )
        if int8:
            ratio = rates["inference", INT8_INFER] / base_inf
            targets.append(f"| {depth} | inference: {INT8_INFER} | {ratio:.2f}x | (its own ratio) | | |")
        targets.append(
            f"| {depth} | useful GFLOP/s in training, % of the {peak_name} matmul peak: default fit / best row | "
            f"{default_pct:.0f} % / {best_pct:.0f} % | >= {GFLOPS_GOAL:g} % | {'met' if default_pct >= GFLOPS_GOAL else 'missed'} | |"
        )
        del prepared_train, prepared_infer
    lines += [
        "",
        f"Targets (issue 16), ratios against the {base_name} of this run:",
        "",
        "| depth | what | this run | goal | | ceiling: every useful FLOP at the matmul peak |",
        "|---|---|---|---|---|---|",
        *targets,
    ]
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
