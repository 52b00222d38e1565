"""Where the time of the defaults goes: one `fit` training step and one `Predictor` call, profiled.

Run from the repository root: .venv/bin/python benchmarks/probes/profile_defaults.py [--depth 9] [--threads 2]
Builds exactly what benchmarks/bench.py times as "default fit" and "Predictor, defaults" (the
CLI's text defaults, this machine's default precision), on AG News texts, and prints the
torch.profiler table of each, sorted by self CPU time, plus the Predictor's tokenization share
(timed outside the profiler). A probe behind docs/performance.md; not part of the harness.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness's builders
import bench  # noqa: E402

from vdcnn_res import Predictor  # noqa: E402
from vdcnn_res.data.batching import texts_to_batches  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--depth", type=int, default=9)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--rows", type=int, default=22)
args = parser.parse_args()
torch.set_num_threads(args.threads)
warnings.simplefilter("ignore")
texts = bench.load_texts("ag_news", 4096)
tokenizer = bench.build_tokenizer("char")
flops_of = lambda n: 0  # noqa: E731  (FLOPs are not needed here)

step, info = bench.prepare_fit(args.depth, texts, tokenizer, 2, flops_of, ngrams=True)
with profile(activities=[ProfilerActivity.CPU]) as p:
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = time.perf_counter() - t0
print(f"default fit, depth {args.depth}, {info['precision']}, {args.steps} steps: {1000 * wall / args.steps:.0f} ms per step (under the profiler)")
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))

model = bench.default_classifier(args.depth, tokenizer.get_vocab_size()).model
data = bench.data_defaults()
predictor = Predictor(model, tokenizer, ["a", "b", "c", "d"], max_length=data["max_length"])
chunk = texts[:512]
predictor.predict_proba(chunk)
t0 = time.perf_counter()
batches = list(texts_to_batches(tokenizer, chunk, max_length=data["max_length"], batch_size=64))
tok = time.perf_counter() - t0
t0 = time.perf_counter()
predictor.predict_proba(chunk)
total = time.perf_counter() - t0
print(f"Predictor, defaults (bf16={predictor.bf16}), 512 texts: {total * 1000:.0f} ms, of which tokenization and batching {tok * 1000:.0f} ms ({100 * tok / total:.0f} %)")
with profile(activities=[ProfilerActivity.CPU]) as p:
    predictor.predict_proba(chunk)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
