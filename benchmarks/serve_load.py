"""Load test of `vdcnn-res serve`: N concurrent clients x M requests on 127.0.0.1, as a Markdown table.

    .venv/bin/python benchmarks/serve_load.py                          # default depth-9 model, random weights
    .venv/bin/python benchmarks/serve_load.py --model exports/agnews   # an exported model
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:8000 --model exports/agnews  # a running server

Each request carries 1-32 texts drawn (fixed seed) from a shared AG News split (Zhang CSV,
title + description), so every concurrency level sends the same kind of traffic. The clients
are coroutines of one asyncio event loop in this process, each with its own HTTP/1.1 keep-alive
connection (httpx), and the request bodies are encoded before the clock starts, so the load
generator costs little CPU next to the server; its CPU seconds per level are reported. Per
level: throughput (texts/s over the level's wall time), p50/p95/p99 request latency, errors
(any non-200 answer, wrong number of predictions or transport failure), the server's CPU
seconds (its process and its worker processes) and texts per forward pass.

The in-process Predictor runs the texts of the largest level in one `predict_proba` call with
the same batch size cap, threads and precision, --reference-passes times in the same run (all
but one before the levels, one after; the CPU may be shared with other work): the fastest pass
is the reference the server is compared with, in texts/s and in texts per CPU-second, and the
load average is printed with the table. Throughput does not depend on the weights, so without
--model a default-architecture (depth 9, 64-512 channels) model with random weights is
exported to a temporary folder. Everything is bounded: M requests per client and --max-seconds
per level; the server started here is stopped with SIGTERM at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_TEST = REPO.parent / "shared" / "data" / "ag_news_7600" / "test.csv"
SAMPLE_TEST = REPO / "data" / "ag_news_sample" / "test.csv"
AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


@dataclass
class Level:
    concurrency: int
    requests: int
    texts: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float | None = None  # CPU time the server's processes used during the level
    model_calls: int = 0  # forward passes the server ran during the level (its /health counters)
    client_cpu_s: float = 0.0  # CPU time of this process (the load generator) during the level

    @property
    def per_cpu_second(self) -> float | None:
        return self.texts / self.server_cpu_s if self.server_cpu_s else None

    @property
    def throughput(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def load_texts(path: Path) -> list[str]:
    """title + " " + description of every row of a header-less Zhang CSV ("class","title","description")."""
    with open(path, newline="", encoding="utf-8") as f:
        return [f"{row[1]} {row[2]}" for row in csv.reader(f)]


def random_default_model(out_dir: Path) -> Path:
    """Export the default architecture (depth 9) with random weights and the char tokenizer."""
    import torch

    from vdcnn_res import Predictor, build_model
    from vdcnn_res.data.tokenizer import build_tokenizer
    from vdcnn_res.model import ModelConfig

    tokenizer = build_tokenizer("char")
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=len(AG_NEWS_LABELS), vocab_size=tokenizer.get_vocab_size()))
    Predictor(model, tokenizer, AG_NEWS_LABELS, max_length=1024).save_pretrained(out_dir, overwrite=True)
    return out_dir


def start_server(model: Path, threads: int, precision: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`vdcnn-res serve --port 0` in a subprocess; returns it and its URL once /health answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vdcnn_res.cli", "serve", "--model", str(model), "--port", "0",
         "--threads", str(threads), "--precision", precision, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def drain() -> None:  # read the log in a thread, so a silent server cannot block the benchmark
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 120
    url = ""
    while not url and time.monotonic() < deadline and proc.poll() is None:
        found = [m for line in list(lines) if (m := re.search(r"on (http://[\d.]+:\d+)", line))]
        url = found[0].group(1) if found else ""
        time.sleep(0.1)
    if not url:
        proc.kill()
        raise RuntimeError(f"the server did not start (exit {proc.poll()}): {''.join(lines[-5:])}")
    while time.monotonic() < deadline:
        try:
            if request(url, "GET", "/health")[0] == 200:
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not answer /health in time")


def request(url: str, method: str, path: str, body: bytes | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    parsed = urlparse(url)
    own = conn is None
    conn = conn or http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def make_requests(pool: list[str], n: int, max_texts: int, rng: random.Random) -> list[list[str]]:
    return [rng.sample(pool, rng.randint(1, max_texts)) for _ in range(n)]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time so far of a process and its child processes (the workers of
    `--workers K`; Linux /proc), None where unknown."""
    if pid is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    total = None
    for p in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _send_all(url: str, per_client: list[list[tuple[bytes, int]]], stop_at: float) -> tuple[list[float], dict[str, int]]:
    """Every client sends its pre-encoded requests one after another on its own keep-alive connection."""
    import httpx  # the `test` extra; imported here so that the rest of this file needs only the package

    latencies: list[float] = []
    counts = {"requests": 0, "texts": 0, "errors": 0}
    n = len(per_client)
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, trust_env=False) as http:

        async def client(requests: list[tuple[bytes, int]]) -> None:
            for body, n_texts in requests:
                if time.monotonic() > stop_at:
                    return
                start = time.perf_counter()
                try:
                    response = await http.post("/predict", content=body, headers=headers)
                    ok = response.status_code == 200 and len(json.loads(response.content)["predictions"]) == n_texts
                except (httpx.HTTPError, ValueError, KeyError):
                    ok = False
                elapsed = (time.perf_counter() - start) * 1e3
                counts["requests"] += 1
                if ok:
                    counts["texts"] += n_texts
                    latencies.append(elapsed)
                else:
                    counts["errors"] += 1

        await asyncio.gather(*(client(requests) for requests in per_client))
    return latencies, counts


def run_level(url: str, per_client: list[list[list[str]]], max_seconds: float, server_pid: int | None = None) -> Level:
    """One concurrency level: len(per_client) clients, each sending its requests in turn."""
    encoded = [[(json.dumps({"texts": texts}).encode(), len(texts)) for texts in batches] for batches in per_client]
    cpu_start = cpu_seconds(server_pid)
    calls_start = json.loads(request(url, "GET", "/health")[1])["batches_run"]
    client_cpu, start = time.process_time(), time.perf_counter()
    latencies, counts = asyncio.run(_send_all(url, encoded, time.monotonic() + max_seconds))
    seconds = time.perf_counter() - start
    client_cpu = time.process_time() - client_cpu
    cpu_end = cpu_seconds(server_pid)
    calls = json.loads(request(url, "GET", "/health")[1])["batches_run"] - calls_start
    cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    return Level(len(per_client), counts["requests"], counts["texts"], counts["errors"], seconds, latencies, cpu, calls,
                 client_cpu)


def load_predictor(model: Path, threads: int, precision: str):
    import torch

    from vdcnn_res import Predictor

    torch.set_num_threads(threads)
    return Predictor.from_pretrained(model, bf16={"auto": None, "bf16": True, "fp32": False}[precision])


def in_process(predictor, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(texts/s, texts per CPU-second) of the in-process Predictor on `texts` in one `predict_proba` call."""
    cpu, start = time.process_time(), time.perf_counter()
    predictor.predict_proba(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - start), len(texts) / (time.process_time() - cpu)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def table(levels: list[Level], reference: float, reference_cpu: float, n_reference: int, batch_size: int) -> str:
    """Wall-clock throughput (what a client sees) and texts per CPU-second of the server's processes
    (less sensitive to other work on a shared CPU, not immune), each against the in-process Predictor;
    the load generator's own CPU seconds."""
    lines = [
        (
            "| concurrency | requests | texts | errors | texts/s | p50 ms | p95 ms | p99 ms | vs in-process "
            "| texts/CPU-s | CPU vs in-process | server CPU s | client CPU s | texts per forward pass |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        per_cpu = lv.per_cpu_second
        cpu_cells = f"{per_cpu:.1f} | {per_cpu / reference_cpu:.0%} | {lv.server_cpu_s:.1f}" if per_cpu else "- | - | -"
        lines.append(
            f"| {lv.concurrency} | {lv.requests} | {lv.texts} | {lv.errors} | {lv.throughput:.1f} | {lv.percentile(50):.1f} "
            f"| {lv.percentile(95):.1f} | {lv.percentile(99):.1f} | {lv.throughput / reference:.0%} | {cpu_cells} "
            f"| {lv.client_cpu_s:.2f} | {lv.texts / lv.model_calls if lv.model_calls else float('nan'):.1f} |"
        )
    lines.append(f"| in-process Predictor | - | {n_reference} | - | {reference:.1f} | - | - | - | 100% | {reference_cpu:.1f} "
                 f"| 100% | {n_reference / reference_cpu:.1f} | - | {min(n_reference, batch_size)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="exported folder (default: the depth-9 architecture with random weights)")
    parser.add_argument("--url", help="load an already running server instead of starting one (needs --model for the reference)")
    parser.add_argument("--data", type=Path, default=SHARED_TEST if SHARED_TEST.is_file() else SAMPLE_TEST)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=20, help="requests per client per level")
    parser.add_argument("--max-texts", type=int, default=32, help="texts per request are drawn from 1..this")
    parser.add_argument("--max-seconds", type=float, default=60, help="time limit per level")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server and of the in-process run")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--max-batch-size", type=int, default=64, help="texts per forward pass, server and in-process")
    parser.add_argument("--max-gather", type=int, default=256, help="the server's --max-gather")
    parser.add_argument("--batch-timeout", type=float, default=10.0, help="ms")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers (each with --threads torch threads)")
    parser.add_argument("--reference-passes", type=int, default=3, help="in-process passes; the fastest is the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if args.url and not args.model:
        parser.error("--url needs --model (the same exported folder) for the in-process reference")

    pool = load_texts(args.data)
    rng = random.Random(args.seed)
    plans = {c: [make_requests(pool, args.requests, args.max_texts, rng) for _ in range(c)] for c in args.concurrency}
    with tempfile.TemporaryDirectory(prefix="vdcnn_serve_load_") as tmp:
        model = args.model or random_default_model(Path(tmp) / "model")
        proc = None
        url = args.url
        if url is None:
            proc, url = start_server(model, args.threads, args.precision,
                                     ["--max-batch-size", str(args.max_batch_size), "--max-gather", str(args.max_gather),
                                      "--batch-timeout", str(args.batch_timeout), "--workers", str(args.workers)])
        load_before = load_average()
        try:
            # The reference runs while the server is idle, before and after the levels (the CPU
            # may be shared: the fastest pass is the one compared with).
            biggest = [t for batches in plans[max(args.concurrency)] for texts in batches for t in texts]
            predictor = load_predictor(model, args.threads, args.precision)
            predictor.predict_proba(biggest[: args.max_batch_size], batch_size=args.max_batch_size)  # warm-up
            passes = [in_process(predictor, biggest, args.max_batch_size) for _ in range(max(1, args.reference_passes - 1))]
            run_level(url, [make_requests(pool, 4, args.max_texts, rng) for _ in range(4)], args.max_seconds)  # warm-up
            pid = proc.pid if proc is not None else None
            levels = [run_level(url, plans[c], args.max_seconds, pid) for c in args.concurrency]
            if args.reference_passes > 1:
                passes.append(in_process(predictor, biggest, args.max_batch_size))
            reference, reference_cpu = max(p[0] for p in passes), max(p[1] for p in passes)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    text = table(levels, reference, reference_cpu, len(biggest), args.max_batch_size)
    text += (f"\n{args.data.name}: {len(pool)} texts, 1-{args.max_texts} per request, {args.requests} requests per client; "
             f"{args.threads} torch threads x {args.workers} server worker(s); precision {args.precision}; max batch "
             f"{args.max_batch_size}, max gather {args.max_gather}, timeout {args.batch_timeout:g} ms; in-process passes "
             f"(texts/s, in order; the last after the levels): {', '.join(f'{p[0]:.1f}' for p in passes)}; "
             f"load average {load_before} at the start, {load_average()} at the end\n")
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
