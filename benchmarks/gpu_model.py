"""Training-step throughput of the bare model on a GPU: fp32, bf16 and fp16 autocast, paper-style
padding to 1024 vs length buckets. Needs only torch (the model imports nothing else), so it runs on a
GPU machine without the data stack:

    python benchmarks/gpu_model.py            # depth 9 and 29, batch 256, AG News sample lengths

Lengths come from data/ag_news_sample/train.csv (title + description, in characters); token ids are
random, which does not change the work done. Prints a Markdown table; ratios against fp32 pad-1024.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vdcnn_res import create_model  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "ag_news_sample" / "train.csv"


def lengths() -> list[int]:
    with open(SAMPLE, newline="", encoding="utf-8") as f:
        return [min(1024, len(f"{title} {body}")) for _, title, body in csv.reader(f)]


def batches(lens: list[int], batch: int, bucket: bool, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = sorted(range(len(lens)), key=lens.__getitem__) if bucket else list(range(len(lens)))
    out = []
    for i in range(0, len(order) - batch + 1, batch):
        n = torch.tensor([lens[j] for j in order[i : i + batch]])
        width = -(-int(n.max()) // 8) * 8 if bucket else 1024
        ids = torch.randint(2, 72, (batch, width))
        ids[torch.arange(width)[None, :] >= n[:, None]] = 0
        out.append((ids.to(device), n.to(device)))
    return out


def throughput(depth: int, data: list, precision: str, passes: int = 3) -> float:
    """Samples/s over `passes` passes through `data`, after one warm-up pass (every shape seen once)."""
    torch.manual_seed(0)
    model = create_model(f"vdcnn{depth}", num_classes=4).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    labels = torch.randint(0, 4, (data[0][0].shape[0],), device="cuda")

    def step(ids: torch.Tensor, n: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(ids, n).float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for ids, n in data:
        step(ids, n)
    torch.cuda.synchronize()
    t = time.perf_counter()
    done = 0
    for _ in range(passes):
        for ids, n in data:
            loss = step(ids, n)
            done += ids.shape[0]
    torch.cuda.synchronize()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss with {precision}")
    return done / (time.perf_counter() - t)


def main() -> None:
    lens = lengths()
    torch.backends.cudnn.benchmark = False  # bucketed shapes vary; autotuning each would dominate
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; AG News sample lengths, median "
          f"{sorted(lens)[len(lens) // 2]}")
    print("| depth | batching | precision | samples/s | x fp32 pad-1024 |\n|---|---|---|---:|---:|")
    for depth in (9, 29):
        base = None
        for bucket in (False, True):
            data = batches(lens, 256, bucket, "cuda")
            for precision in ("32-true", "bf16-mixed", "16-mixed"):
                rate = throughput(depth, data, precision)
                base = base or rate
                name = "length buckets" if bucket else "pad to 1024"
                print(f"| {depth} | {name} | {precision} | {rate:.0f} | {rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
