"""Training and inference throughput of VDCNN on real texts, in one run, as a Markdown table.

    .venv/bin/python benchmarks/bench.py                      # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick              # tiny budget (smoke test)
    .venv/bin/python benchmarks/bench.py --depths 9 --compile # also time torch.compile
    python benchmarks/bench.py --device cuda                  # on a GPU (benchmarks/gpu_check.sh runs it)

Every speed is compared with the paper-style baseline *of the same run* (texts padded to
1024, fp32), so the ratios hold on a shared, loaded machine where absolute numbers do not.
Training: samples/s over full optimizer steps (forward, loss, backward, AdamW step), after
warm-up steps, median of several timed windows; peak memory is the process's resident-set
high-water mark (VmHWM), reset before each configuration (on CUDA: the peak of allocated device memory). Inference goes through the public
`vdcnn_res.Predictor` (tokenization, batching and softmax included). Useful GFLOP/s counts
only the FLOPs of the texts' real lengths (`vdcnn_res.model.flops`, training = 3x forward) and is
set against the fp32 and bf16 matmul peaks measured at the start of the run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vdcnn_res import Predictor, create_model
from vdcnn_res.data.batching import PadCollator, TokenizedSplit
from vdcnn_res.model.flops import forward_flops
from vdcnn_res.data.sampler import LengthBucketBatchSampler
from vdcnn_res.data.tokenizer import build_tokenizer, encode

DATA = Path(os.environ.get("VDCNN_BENCH_DATA", "/work/shared/data"))
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
    ids: list[list[int]], batch_size: int, bucket: bool, fixed_length: int | None, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Training batches as the data module makes them: bucketed (pad to batch max, multiple
    of 8) or, paper style, random batches padded to `fixed_length`."""
    split = TokenizedSplit.from_ids(ids, [0] * len(ids))
    sampler = LengthBucketBatchSampler(split.lengths, batch_size, bucket=bucket, shuffle=True, seed=seed)
    collate = PadCollator(8, fixed_length)
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


def prepare_inference(
    depth: int,
    texts: list[str],
    tokenizer,
    budget: dict,
    *,
    fixed: bool,
    bf16: bool,
    compile: bool = False,
    device: torch.device = torch.device("cpu"),
) -> tuple[Step, dict]:
    """Raw texts -> probabilities through `Predictor.predict_proba` (tokenization included),
    one chunk of texts per call. `fixed=True` is the paper-style baseline: the same API with
    every text padded to 1024."""
    import vdcnn_res.inference.predictor as predict_module

    mem_before = _memory_before(device)
    torch.manual_seed(0)
    model = create_model(f"vdcnn{depth}", num_classes=4, vocab_size=tokenizer.get_vocab_size())
    predictor = Predictor(model, tokenizer, ["a", "b", "c", "d"], max_length=PAPER_LENGTH, device=device, bf16=bf16)
    if compile:
        predictor.model = torch.compile(model, dynamic=True)  # warm-up chunk pays the compilation
    original = predict_module.texts_to_batches

    def fixed_batches(*args, **kwargs):
        return original(*args, **{**kwargs, "fixed_length": True})

    chunk = budget["infer_texts"]
    chunks = cycle([texts[i : i + chunk] for i in range(0, len(texts) - chunk + 1, chunk)])

    def step() -> tuple[int, float]:
        if fixed:
            predict_module.texts_to_batches = fixed_batches
        try:
            return len(predictor.predict_proba(next(chunks), batch_size=64)), 0.0
        finally:
            predict_module.texts_to_batches = original

    for _ in range(budget["infer_warmup"]):
        step()
    return step, {"peak_mib": _peak_extra(device, mem_before)}


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[9, 29])
    parser.add_argument("--dataset", default="ag_news", choices=["ag_news", "clinc150"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow warm-up)")
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the harness, not the speed")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where models train and predict")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)

    quick = args.quick
    budget = (
        {"warmup": 1, "windows": 1, "steps": 1, "infer_texts": 8, "infer_warmup": 0, "texts": 64, "batch": 4}
        if quick
        else {"warmup": 2, "windows": 5, "steps": 3, "infer_texts": 512, "infer_warmup": 1, "texts": 4096, "batch": 64}
    )
    paper_len = 64 if quick else PAPER_LENGTH
    texts = load_texts(args.dataset, budget["texts"])
    tokenizer = build_tokenizer("char")
    lengths = np.array([len(i) for i in encode(tokenizer, texts, PAPER_LENGTH)])
    bs = budget["batch"]
    configs = [
        TrainConfig("paper-style: pad to 1024, fp32", bucket=False, max_length=paper_len, batch_size=bs),
        TrainConfig("bf16 autocast alone", bucket=False, max_length=paper_len, batch_size=bs, bf16=True),
        TrainConfig("length buckets alone", max_length=paper_len, batch_size=bs),
        TrainConfig("buckets + max_length 512", max_length=min(512, paper_len), batch_size=bs),
        TrainConfig("default fit in fp32 (buckets, 512, batch 32)", max_length=min(512, paper_len), batch_size=max(2, bs // 2)),
        TrainConfig("buckets + fused AdamW", max_length=paper_len, batch_size=bs, fused_adamw=True),
        TrainConfig("buckets + bf16", max_length=paper_len, batch_size=bs, bf16=True),
        TrainConfig("buckets + bf16 + fused AdamW", max_length=paper_len, batch_size=bs, bf16=True, fused_adamw=True),
        TrainConfig(
            "default fit (buckets, 512, batch 32, bf16, fused AdamW)",
            max_length=min(512, paper_len),
            batch_size=max(2, bs // 2),
            bf16=True,
            fused_adamw=True,
        ),
    ]
    if args.compile:
        configs += [
            TrainConfig("buckets + torch.compile", max_length=paper_len, batch_size=bs, compile=True),
            TrainConfig("buckets + bf16 + torch.compile", max_length=paper_len, batch_size=bs, bf16=True, compile=True),
        ]

    peak32 = matmul_peak(torch.float32, 512 if quick else 2048, 0.05 if quick else 1.0, device)
    peak16 = matmul_peak(torch.bfloat16, 512 if quick else 2048, 0.05 if quick else 1.0, device)
    gpu = f"; device {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    memory = "peak extra CUDA MiB" if device.type == "cuda" else "peak extra RSS MiB"
    lines = [
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average at start {os.getloadavg()[0]:.2f}{gpu}"
        ),
        (
            f"Data: {args.dataset}, {len(texts)} texts, median length {int(np.median(lengths))}, "
            f"p90 {int(np.percentile(lengths, 90))} characters"
        ),
        f"Matmul peak (2048^2 on {device.type}, this run): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s",
        "",
        f"| depth | workload | configuration | samples/s | x baseline | useful GFLOP/s | % fp32 peak | % bf16 peak | {memory} | mean padded length |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for depth in args.depths:
        model = create_model(f"vdcnn{depth}", num_classes=4, vocab_size=tokenizer.get_vocab_size())  # FLOP counts, CPU
        cache: dict[int, int] = {}

        def flops_of(n: int, model=model, cache=cache) -> int:
            n = max(n, 1)
            if n not in cache:
                cache[n] = forward_flops(model, n)
            return cache[n]

        train = [prepare_train(depth, cfg, texts, tokenizer, budget["warmup"], flops_of, device) for cfg in configs]
        inference = [
            ("paper-style: pad to 1024, fp32", True, False, False),
            ("Predictor (length-sorted batches), fp32", False, False, False),
            ("Predictor, bf16=True", False, True, False),
        ]
        if args.compile:
            inference.append(("Predictor, bf16=True, torch.compile", False, True, True))
        infer = [
            prepare_inference(depth, texts, tokenizer, budget, fixed=f, bf16=b, compile=c, device=device)
            for _, f, b, c in inference
        ]
        results = interleaved_windows([s for s, _ in train], budget["windows"], budget["steps"], device)
        results_inf = interleaved_windows([s for s, _ in infer], budget["windows"], 1, device)
        base = results[0][0]
        for cfg, (_, info), (rate, flop_rate) in zip(configs, train, results):
            gflops = flop_rate / 1e9
            lines.append(
                f"| {depth} | train | {cfg.name} | {rate:.1f} | {rate / base:.2f} | "
                f"{gflops:.0f} | {100 * gflops / peak32:.0f} | {100 * gflops / peak16:.0f} | "
                f"{info['peak_mib']:.0f} | {info['mean_len']:.0f} |"
            )
        base = results_inf[0][0]
        for (name, *_), (_, info), (rate, _) in zip(inference, infer, results_inf):
            lines.append(f"| {depth} | inference | {name} | {rate:.1f} | {rate / base:.2f} | | | | {info['peak_mib']:.0f} | |")
        print("\n".join(lines[-len(configs) - len(inference) :]), file=sys.stderr, flush=True)
        del train, infer
    table = "\n".join(lines)
    print(table)
    if args.output:
        args.output.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
