"""Micro-benchmark, one thread: stable sort vs a topk threshold + cumsum tie-break for the k-max head (same picks).

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/kmax_threshold.py
A one-off probe behind docs/performance.md ("Tried afterwards"); not part of the harness.
"""

import time, torch
torch.set_num_threads(1)
def bench(f, n=10):
    f(); t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e3
def ref(x, k):
    idx = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k].sort(dim=-1).values
    return x.gather(-1, idx)
def thresh(x, k):
    kth = x.topk(k, dim=-1, sorted=True).values[..., -1:]          # (B,C,1) k-th largest value (tie-order free)
    greater = x > kth
    equal = x == kth
    need = k - greater.sum(-1, keepdim=True)                      # how many ties to take, earliest first
    sel = greater | (equal & (equal.cumsum(-1) <= need))
    slot = sel.cumsum(-1) - 1                                      # output position of each selected value
    slot = torch.where(sel, slot, k)                               # unselected -> dump slot k
    out = x.new_zeros(*x.shape[:-1], k + 1).scatter_(-1, slot, x)
    return out[..., :k]
for dt in (torch.float32, torch.bfloat16):
    for L in (40, 128):
        x = torch.relu(torch.randn(64, 512, L)).to(dt)
        print(dt, L, "equal:", torch.equal(ref(x, 8), thresh(x, 8)), "sort", round(bench(lambda: ref(x, 8)),2), "thresh", round(bench(lambda: thresh(x, 8)),2))
x = torch.randint(0, 3, (64, 512, 40)).float()  # heavy ties
print("ties equal:", torch.equal(ref(x, 8), thresh(x, 8)))
