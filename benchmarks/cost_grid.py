"""Training and prediction cost of the network against depth and text length, as a Markdown table.

    .venv/bin/python benchmarks/cost_grid.py --output /tmp/cost_grid.md   # depths 9-49 x lengths 128-1024
    .venv/bin/python benchmarks/cost_grid.py --quick                       # smoke: depth 9, lengths 64 and 128

Every text of a cell has exactly the cell's length (random character ids: the cost does not depend
on the content), so the table isolates the two shape axes. Training: samples/s over full AdamW
steps on batches of 32 (fp32, the pure CNN: `create_model("vdcnnN")`, no n-gram bag), after one
warm-up step, median of the timed steps. Prediction: texts/s of the model alone in eval mode under
`torch.inference_mode` on batches of 128. "per 1k chars" divides the time per text by the length
in thousands of characters: constant along a row when the cost is linear in length. Ratios within
one run are the result; absolute numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vdcnn_res import create_model
from vdcnn_res.model.flops import forward_flops


def _median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cell(depth: int, length: int, steps: int, vocab: int = 72) -> dict[str, float]:
    """samples/s of training and texts/s of prediction at one (depth, length)."""
    torch.manual_seed(0)
    model = create_model(f"vdcnn{depth}", num_classes=4, vocab_size=vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(2, vocab, (32, length))
    labels = torch.randint(0, 4, (32,))

    def train_step() -> None:
        loss = F.cross_entropy(model(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    train_s = _median_seconds(train_step, steps)
    model.eval()
    batch = torch.randint(2, vocab, (128, length))

    def predict_step() -> None:
        with torch.inference_mode():
            model(batch)

    predict_s = _median_seconds(predict_step, steps)
    return {
        "train": 32 / train_s,
        "predict": 128 / predict_s,
        "gflops": forward_flops(model, length) / 1e9,
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[9, 17, 29, 49])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell and workload")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="depth 9, lengths 64 and 128, one step")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.depths, args.lengths, args.steps = [9], [64, 128], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    head = "| depth | length | forward GFLOP/text | train samples/s | train s per 1k chars | predict texts/s | predict ms per 1k chars |"
    lines = [
        f"Threads: {torch.get_num_threads()}; torch {torch.__version__}; load average at start "
        f"{os.getloadavg()[0]:.2f}; fp32; training batch 32 (AdamW), prediction batch 128.",
        "",
        head,
        "|" + "---:|" * (head.count("|") - 1),
    ]
    for depth in args.depths:
        for length in args.lengths:
            r = cell(depth, length, args.steps)
            per_k = length / 1000
            lines.append(
                f"| {depth} | {length} | {r['gflops']:.2f} | {r['train']:.1f} | {1 / r['train'] / per_k:.3f} | "
                f"{r['predict']:.1f} | {1000 / r['predict'] / per_k:.2f} |"
            )
            print(lines[-1], flush=True)
    out = "\n".join(lines) + "\n"
    if args.output:
        args.output.write_text(out, encoding="utf-8")
    return out


if __name__ == "__main__":
    print(main())
