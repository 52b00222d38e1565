"""Micro-benchmarks, one thread: stable sort vs eight argmax rounds for the k-max head; masked_fill vs multiply for padding masks.

Run from the repository root with ../shared/data beside it: .venv/bin/python benchmarks/probes/kmax_and_masks.py
A one-off probe behind docs/performance.md ("Tried afterwards"); not part of the harness.
"""

import time, torch
torch.set_num_threads(1)
def bench(f, n=20):
    f(); t=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t)/n*1e3
def top_iter(s, n):
    s = s.detach().clone(); picks = []
    for _ in range(n):
        i = s.argmax(dim=-1, keepdim=True); picks.append(i); s.scatter_(-1, i, float("-inf"))
    return torch.cat(picks, -1)
for dt in (torch.float32, torch.bfloat16):
    x = torch.relu(torch.randn(64, 512, 40)).to(dt)
    a = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :8]
    b = top_iter(x, 8)
    print(dt, "same picks:", torch.equal(a, b))
    print(dt, "sort", round(bench(lambda: torch.sort(x, dim=-1, descending=True, stable=True)),3), "iter-argmax", round(bench(lambda: top_iter(x, 8)),3))
    y = torch.randn(64, 64, 300).to(dt); m = torch.zeros(64, 1, 300, dtype=torch.bool); m[:, :, 250:] = True
    print(dt, "masked_fill", round(bench(lambda: y.masked_fill(m, 0.0)),3), "mul bool", round(bench(lambda: y * ~m),3), "mul dtype", round(bench(lambda: y * (~m).to(dt)),3), "where", round(bench(lambda: torch.where(m, 0.0, y)),3))
def top_iter_t(x, n):
    s = x.detach().transpose(1, 2).contiguous()  # (B, L, C)
    picks = []
    for _ in range(n):
        i = s.argmax(dim=1, keepdim=True)  # (B, 1, C)
        picks.append(i); s.scatter_(1, i, float("-inf"))
    return torch.cat(picks, 1).transpose(1, 2)  # (B, C, n)
for dt in (torch.float32, torch.bfloat16):
    x = torch.relu(torch.randn(64, 512, 40)).to(dt)
    a = torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :8]
    print(dt, "same picks T:", torch.equal(a, top_iter_t(x, 8)), "iter-T", round(bench(lambda: top_iter_t(x, 8)),3), "ms")
