"""Predictor speed against its batch size: the default text model (CNN + n-gram bag, random weights).

Run from the repository root: .venv/bin/python benchmarks/probes/predictor_batch_size.py [--depth 9]
Two chunks of 512 AG News training texts per timing, each batch size in turn, 3 rounds; prints
every round's texts/s and the median. A probe behind docs/performance.md; not part of the harness.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness's builders
import bench  # noqa: E402

from vdcnn_res import Predictor  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--depth", type=int, default=9)
parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256, 512])
args = parser.parse_args()
texts = bench.load_texts("ag_news", 1024)
tokenizer = bench.build_tokenizer("char")
torch.manual_seed(0)
model = bench.default_classifier(args.depth, tokenizer.get_vocab_size()).model
predictor = Predictor(model, tokenizer, list("abcd"), max_length=bench.data_defaults()["max_length"])
chunks = [texts[:512], texts[512:]]
predictor.predict_proba(chunks[0])  # warm-up
rates: dict[int, list[float]] = {size: [] for size in args.sizes}
for _ in range(3):
    for size in args.sizes:
        t0 = time.perf_counter()
        for chunk in chunks:
            predictor.predict_proba(chunk, batch_size=size)
        rates[size].append(sum(map(len, chunks)) / (time.perf_counter() - t0))
for size, r in rates.items():
    print(f"batch_size {size}: {', '.join(f'{x:.0f}' for x in r)} texts/s; median {statistics.median(r):.0f}")
