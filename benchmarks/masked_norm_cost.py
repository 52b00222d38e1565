"""What masked BatchNorm (``model.arch.masked_norm``, the default) costs per training step, against
torch's BatchNorm, timed in the same interleaved windows (bench.py's harness), as a Markdown table.

    .venv/bin/python benchmarks/masked_norm_cost.py --threads 1           # text depth 9 + the series recipe
    .venv/bin/python benchmarks/masked_norm_cost.py --quick               # smoke test of the harness

Text: `fit`'s own training step of the default model (bench.prepare_fit) on length-bucketed batches
of AG News. Series: the series recipe's network (configs/series/recipe.yaml's architecture), AdamW,
fp32, on two kinds of batches: the ones a recipe fit on PLAID trains on (SeriesDataModule with the
recipe's data settings: length-bucketed batches of 16, a third of them without padding; only when
../shared is there), and random batches of 16 series with lengths drawn from PLAID's training
lengths (100-1,344; uniformly from that range without ../shared), unbucketed: far more padding
than a fit sees, the worst case for masked statistics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the harness beside this file)

from vdcnn_res.data.tokenizer import build_tokenizer  # noqa: E402
from vdcnn_res.model import ModelConfig, build_model  # noqa: E402

PLAID = bench.DATA / "series" / "PLAID" / "train.jsonl"
SeriesBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs (B, 1, L), lengths, labels
SERIES_ARCH = dict(
    num_classes=11, input_channels=1, blocks_per_stage=(1, 1, 1), channels=(64, 128, 128),
    kernel_sizes=(8, 5, 3), downsampling="none", head="global_avg", hidden_size=0,
)  # fmt: skip


def series_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if PLAID.is_file():
        pool = np.array([len(json.loads(line)["series"][0]) for line in PLAID.open()])
        return rng.choice(pool, n)
    return rng.integers(100, 1345, n)


def random_series_batches(batches: int, batch_size: int, max_len: int | None) -> list[SeriesBatch]:
    """Unbucketed padded batches of random series with PLAID's training lengths."""
    torch.manual_seed(0)
    data = []
    for b in range(batches):
        lengths = torch.as_tensor(series_lengths(batch_size, seed=b))
        if max_len:
            lengths = lengths.clamp(max=max_len)
        x = torch.randn(batch_size, 1, int(lengths.max())) * (torch.arange(int(lengths.max())) < lengths[:, None])[:, None]
        data.append((x, lengths, torch.randint(0, 11, (batch_size,))))
    return data


def plaid_fit_batches(batches: int) -> list[SeriesBatch]:
    """The first ``batches`` batches a recipe fit on PLAID draws (SeriesDataModule, the recipe's data settings)."""
    from vdcnn_res.data.series_module import SeriesDataModule

    data = SeriesDataModule(
        train=str(PLAID), label_offset=0, normalize="auto", missing="interpolate", valid_fraction=0.0,
        batch_size="auto", seed=0,
    )  # fmt: skip
    data.setup("fit")
    return [(b["input_ids"], b["lengths"], b["labels"]) for b in data.train_dataloader()][:batches]


def prepare_series(masked_norm: bool, data: list[SeriesBatch]) -> bench.Step:
    """A training step of the series recipe's network (AdamW, fp32) on ``data``, cycled."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SERIES_ARCH, masked_norm=masked_norm)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = bench.cycle(data)

    def step() -> tuple[int, float]:
        x, lengths, labels = next(it)
        loss = F.cross_entropy(model(x, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(labels), 0.0

    step()
    return step


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the harness, not the speed")
    parser.add_argument("--windows", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    windows, calls = (1, 1) if args.quick else (args.windows, 3)
    texts = bench.load_texts("ag_news", 64 if args.quick else 2048)
    tokenizer = build_tokenizer("char")
    flops = lambda n: 0  # noqa: E731  (only samples/s are compared here)
    fit = dict(batch_size=4, max_length=64) if args.quick else {}
    rows = [
        ("text, default fit (depth 9, CNN + n-gram bag), masked BatchNorm",
         bench.prepare_fit(9, texts, tokenizer, 1, flops, ngrams=True, masked_norm=True, **fit)[0]),
        ("text, default fit, torch's BatchNorm",
         bench.prepare_fit(9, texts, tokenizer, 1, flops, ngrams=True, masked_norm=False, **fit)[0]),
    ]  # fmt: skip
    series = dict(batches=2, batch_size=2, max_len=64) if args.quick else dict(batches=8, batch_size=16, max_len=None)
    if PLAID.is_file():
        fit_batches = plaid_fit_batches(2 if args.quick else 34)  # a fit on PLAID draws 34 batches per epoch
        rows += [
            ("series recipe, a PLAID fit's own batches, masked BatchNorm", prepare_series(True, fit_batches)),
            ("series recipe, a PLAID fit's own batches, torch's BatchNorm", prepare_series(False, fit_batches)),
        ]  # fmt: skip
    unbucketed = random_series_batches(**series)
    rows += [
        ("series recipe network, PLAID lengths unbucketed, masked BatchNorm", prepare_series(True, unbucketed)),
        ("series recipe network, PLAID lengths unbucketed, torch's BatchNorm", prepare_series(False, unbucketed)),
    ]
    rates = bench.interleaved_windows([step for _, step in rows], windows, calls)
    lines = ["| training step | samples/s | masked / torch's |", "|---|---:|---:|"]
    for i, ((name, _), (rate, _)) in enumerate(zip(rows, rates)):
        ratio = f"{rate / rates[i + 1][0]:.2f}" if i % 2 == 0 else ""
        lines.append(f"| {name} | {rate:.1f} | {ratio} |")
    text = "\n".join(lines) + f"\n\n(threads: {torch.get_num_threads()}, windows: {windows} x {calls} steps, median)\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
