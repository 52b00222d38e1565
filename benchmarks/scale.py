"""How the data path scales with the number of rows: tokenization, memory, an epoch's batches.

    .venv/bin/python benchmarks/scale.py --rows 10000 100000 1000000 --output /tmp/scale.md
    .venv/bin/python benchmarks/scale.py --quick                        # smoke: 1,000 and 2,000 rows

For each size a fresh process (so memory is per size) writes a CSV of that many rows drawn with
replacement from the shared AG News and DBpedia training texts (seeded), builds the project's
`TextDataModule` on it (char tokenizer, max_length 512, length-bucketed batches of 32, a
`datasets` cache in a folder of its own), and measures:

- **setup**: reading the CSV, learning the label table and tokenizing into the memory-mapped Arrow
  cache (`prepare_data` + `setup("fit")`), as rows/s;
- **loader epoch**: one full pass over `train_dataloader()` (the bucketing sampler and the padding
  collator; no model), as seconds and rows/s;
- **memory** (from /proc/self/status): anonymous resident memory (RssAnon, the process's own heap:
  what must stay flat) and file-backed resident memory (RssFile: pages of the memory-mapped Arrow
  cache the kernel may drop), both after the loader epoch, and the high-water mark VmHWM, all
  minus what the process held before the data module was created.
- **training**: samples/s of the default depth-9 network (AdamW, fp32) over a fixed number of
  steps on this loader's first batches; an epoch of training costs rows / that rate plus the
  loader epoch (the table states it as an extrapolation, not a measured epoch).

Ratios between sizes of one run are the result (rows/s should not fall as rows grow); absolute
numbers move with the machine's load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(os.environ.get("VDCNN_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = {"ag_news_7600": (1, 2), "dbpedia14_14k": (1,)}  # text columns of each Zhang et al. CSV


def source_texts() -> list[tuple[str, str]]:
    """(text, label) of the shared training splits the synthetic rows are drawn from."""
    rows = []
    for name, columns in SOURCES.items():
        path = DATA / name / "train.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} (set VDCNN_BENCH_DATA to the shared data folder)")
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                rows.append((" ".join(row[c] for c in columns), f"{name[:2]}{row[0]}"))
    return rows


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    """n rows drawn with replacement, header `text,label`."""
    texts = source_texts()
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(n):
            writer.writerow(texts[rng.randrange(len(texts))])


def _status_mib() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def measure(n: int, work: Path, train_steps: int, threads: int) -> dict[str, float]:
    """One size, in this process: the numbers of the module docstring."""
    import torch

    from vdcnn_res.data import TextDataModule
    from vdcnn_res.model import create_model

    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    train, valid = work / "train.csv", work / "valid.csv"
    write_rows(train, n)
    write_rows(valid, 200, seed=1)
    before = _status_mib()
    start = time.perf_counter()
    data = TextDataModule(train=str(train), valid=str(valid), cache_dir=str(work / "cache"), batch_size=32)
    data.prepare_data()
    data.setup("fit")
    setup_s = time.perf_counter() - start
    loader = data.train_dataloader()
    start = time.perf_counter()
    batches = 0
    first: list[dict] = []
    for batch in loader:
        batches += 1
        if len(first) < train_steps + 2:
            first.append(batch)
    epoch_s = time.perf_counter() - start
    after = _status_mib()
    torch.manual_seed(0)
    model = create_model("vdcnn9", num_classes=data.num_classes, vocab_size=data.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, start = 0, None
    for i, batch in enumerate(first):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(batch["input_ids"], batch["lengths"]), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(batch["labels"]) if i >= 2 else 0
    train_rate = seen / (time.perf_counter() - start)
    return {
        "rows": n,
        "setup_s": setup_s,
        "setup_rows_s": n / setup_s,
        "epoch_s": epoch_s,
        "epoch_rows_s": n / epoch_s,
        "batches": batches,
        "rss_anon_mib": after["RssAnon"] - before["RssAnon"],
        "rss_file_mib": after["RssFile"] - before["RssFile"],
        "hwm_mib": after["VmHWM"] - before["VmHWM"],
        "train_samples_s": train_rate,
        "train_epoch_s": n / train_rate + epoch_s,
    }


def table(results: list[dict[str, float]], threads: int) -> str:
    head = (
        "| rows | setup s | setup rows/s | loader epoch s | loader rows/s | batches | RssAnon MiB | RssFile MiB "
        "| VmHWM MiB | train samples/s | training epoch s (extrapolated) |"
    )
    lines = [
        f"Threads: {threads}; load average at start: {os.getloadavg()[0]:.2f}; rows drawn from "
        f"{' + '.join(SOURCES)} training texts; memory = growth over the process before the data module.",
        "",
        head,
        "|" + "---:|" * (head.count("|") - 1),
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['setup_s']:.1f} | {r['setup_rows_s']:,.0f} | {r['epoch_s']:.1f} | "
            f"{r['epoch_rows_s']:,.0f} | {r['batches']:,} | {r['rss_anon_mib']:.0f} | {r['rss_file_mib']:.0f} | "
            f"{r['hwm_mib']:.0f} | {r['train_samples_s']:.1f} | {r['train_epoch_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/vdcnn_scale"), help="CSVs and caches (deleted per size)")
    parser.add_argument("--train_steps", type=int, default=20, help="timed optimizer steps per size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1,000 and 2,000 rows, 1 step: checks the harness")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.train_steps = [1_000, 2_000], 1
    if args.one is not None:
        print(json.dumps(measure(args.one, args.work_dir / f"rows{args.one}", args.train_steps, args.threads)))
        return ""
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for n in args.rows:
        child = [sys.executable, __file__, "--one", str(n), "--work_dir", str(args.work_dir),
                 "--train_steps", str(args.train_steps), "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(child, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"rows={n} failed:\n{done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        subprocess.run(["rm", "-rf", str(args.work_dir / f"rows{n}")], check=False)
        print(f"rows {n:,}: {json.dumps({k: round(v, 2) for k, v in results[-1].items()})}", file=sys.stderr)
    out = table(results, args.threads)
    if args.output:
        args.output.write_text(out, encoding="utf-8")
    print(out)
    return out


if __name__ == "__main__":
    main()
