"""Profile bf16 inference of the depth-9 model on 256 AG News test texts, one thread (torch.profiler table).

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/profile_inference.py
A one-off probe behind docs/performance.md ("Tried afterwards"); not part of the harness.
"""

import csv, torch
from torch.profiler import profile, ProfilerActivity
from vdcnn_res import create_model
from vdcnn_res.data.tokenizer import build_tokenizer
from vdcnn_res.data.batching import texts_to_batches
torch.set_num_threads(1)
texts = [f"{t} {d}" for _, t, d in csv.reader(open("../shared/data/ag_news_7600/test.csv", newline=""))][:256]
batches = list(texts_to_batches(build_tokenizer("char"), texts, max_length=1024, batch_size=64))
model = create_model("vdcnn9", num_classes=4).eval()
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    for x in batches: model(x["input_ids"], x["lengths"])
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for x in batches: model(x["input_ids"], x["lengths"])
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
