"""Training-step time of the default text model with and without the n-gram bag (depth 9, fp32, one thread).

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/ngram_step_cost.py
Batches of 32 AG News training texts cut at 512 characters, forward + cross-entropy + backward +
the fused AdamW step of training/optim.py (the bag's groups at lr x 10), 3 interleaved rounds of
20 steps after 3 warm-up steps; prints ms per step. A one-off probe; not part of the harness.
"""

import csv, statistics, time, torch
from torch import nn
from vdcnn_res import VDCNN, ModelConfig
from vdcnn_res.data.tokenizer import build_tokenizer, encode
from vdcnn_res.training.optim import OptimConfig, build_optimizer

torch.set_num_threads(1)
torch.manual_seed(0)
rows = list(csv.reader(open("../shared/data/ag_news_7600/train.csv", newline="", encoding="utf-8")))[:32 * 23]
ids = encode(build_tokenizer("char"), [f"{r[1]} {r[2]}" for r in rows], 512)
batches = []
for s in range(0, len(ids), 32):
    chunk = ids[s:s + 32]
    x = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
    for i, row in enumerate(chunk):
        x[i, :len(row)] = torch.tensor(row)
    batches.append((x, torch.tensor([len(r) for r in chunk]), torch.tensor([int(r[0]) - 1 for r in rows[s:s + 32]])))
variants = {"CNN alone": {}, "CNN + bag (fit's text default)": {"ngram_orders": (1, 2, 3, 4, 5), "ngram_buckets": 65536}}
setups = {}
for name, extra in variants.items():
    model = VDCNN(ModelConfig(num_classes=4, **extra))
    setups[name] = (model, build_optimizer(model, OptimConfig()))
def steps(model, opt, todo):
    for x, lengths, y in todo:
        loss = nn.functional.cross_entropy(model(x, lengths), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for model, opt in setups.values():
    steps(model, opt, batches[:3])
times = {n: [] for n in setups}
for _ in range(3):
    for name, (model, opt) in setups.items():
        t0 = time.perf_counter(); steps(model, opt, batches[3:23]); times[name].append((time.perf_counter() - t0) / 20 * 1000)
base = statistics.median(times["CNN alone"])
for name, t in times.items():
    print(f"{name}: {statistics.median(t):.0f} ms/step (rounds {', '.join(f'{v:.0f}' for v in t)}), {statistics.median(t) / base:.2f}x")
