"""Inference texts/s with one autocast region per batch vs one around all batches (weight-cast cache), depth 9, one thread.

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/autocast_region.py
A one-off probe behind docs/performance.md ("Tried afterwards"); not part of the harness.
"""

import csv, time, torch
from vdcnn_res import create_model
from vdcnn_res.data.tokenizer import build_tokenizer
from vdcnn_res.data.batching import texts_to_batches
torch.set_num_threads(1)
texts = [f"{t} {d}" for _, t, d in csv.reader(open("../shared/data/ag_news_7600/test.csv", newline=""))][:512]
batches = list(texts_to_batches(build_tokenizer("char"), texts, max_length=1024, batch_size=64))
model = create_model("vdcnn9", num_classes=4).eval()
def per_batch():
    for x in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16): model(x["input_ids"], x["lengths"])
def outside():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x in batches: model(x["input_ids"], x["lengths"])
res = {}
with torch.inference_mode():
    for r in range(3):
        for f in (per_batch, outside):
            t = time.perf_counter(); f(); res.setdefault(f.__name__, []).append(time.perf_counter() - t)
print({k: round(len(texts) / min(v), 1) for k, v in res.items()})
