"""Soak test of `vdcnn-res serve`: many mixed valid and malformed requests against one server process.

    .venv/bin/python benchmarks/serve_soak.py                         # 10,000 requests, a narrow model (random weights)
    .venv/bin/python benchmarks/serve_soak.py --requests 2000 --model exports/agnews --output soak.md

A server is started on 127.0.0.1 with an API key (``VDCNN_API_KEY``) and ``--concurrency``
clients (coroutines of one asyncio loop, one keep-alive connection each, httpx) send requests
drawn with a fixed seed from a weighted mix of kinds: valid predictions (1-8 AG News texts,
top_k as an int or a whole float), explanations, /health, /metadata and the demo page, and
malformed ones: no key, a wrong key, truncated JSON, invalid UTF-8, random bytes, wrong types,
unknown fields, bounds, too many texts, a body over the size limit, JSON nested 100,000 deep,
unknown paths and methods. Every answer is checked against what its kind must get and against
the statuses the server's own OpenAPI document lists for that path (404/405 for unknown paths
and methods); a 200 must hold one prediction per text. The server's resident memory (VmRSS in
/proc/PID/status) is read after the warm-up and after every 10 % of the requests.

Bounded: ``--requests`` in all, ``--max-seconds`` at most; localhost only. The server is stopped
with SIGTERM at the end. Prints (and with --output writes) a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import AG_NEWS_LABELS, SAMPLE_TEST, SHARED_TEST, load_texts, start_server  # noqa: E402

KEY = "soak-test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Kind:
    """One kind of request: its share of the mix and the statuses it may get."""

    name: str
    weight: float
    expected: frozenset[int]
    count: int = 0
    statuses: Counter = field(default_factory=Counter)


def kinds() -> dict[str, Kind]:
    table = [
        # name, weight, statuses it may get (503: the queue is full, documented, never seen at this load)
        ("predict", 40, {200, 503}), ("predict, top_k as a whole float", 5, {200, 503}), ("explain", 1, {200, 503}),
        ("GET /health", 4, {200}), ("GET /metadata", 2, {200}), ("GET / (the page)", 2, {200}),
        ("no API key", 5, {401}), ("a wrong API key", 5, {401}),
        ("truncated JSON", 4, {400}), ("invalid UTF-8", 3, {400}), ("random bytes", 4, {400, 422}),
        ("a byte of a valid body changed", 6, {200, 400, 422}),
        ("texts not a list of strings", 4, {422}), ("unknown field", 2, {422}), ("no texts", 2, {422}),
        ("top_k out of bounds or not an integer", 4, {422}), ("too many texts", 1, {422}), ("explain an empty text", 1, {422}),
        ("explain an unknown label", 1, {422}), ("body over the limit", 0.5, {413}), ("JSON nested 100,000 deep", 1, {400, 422}),
        ("unknown path", 2, {404}), ("wrong method", 2, {405}),
    ]
    return {name: Kind(name, weight, frozenset(statuses)) for name, weight, statuses in table}


def build(kind: str, pool: list[str], labels: list[str], rng: random.Random) -> tuple[str, str, bytes | None, dict, int]:
    """(method, path, body, headers, texts expected in a 200) of one request of `kind`."""
    texts = rng.sample(pool, rng.randint(1, 8))
    valid = json.dumps({"texts": texts, "top_k": rng.randint(1, len(labels))}).encode()
    if kind == "predict":
        return "POST", "/predict", valid, AUTH | JSON, len(texts)
    if kind == "predict, top_k as a whole float":
        whole = json.dumps({"texts": texts, "top_k": float(rng.randint(1, len(labels)))}).encode()
        return "POST", "/predict", whole, AUTH | JSON, len(texts)
    if kind == "explain":
        return "POST", "/explain", json.dumps({"text": texts[0], "label": rng.choice([None, *labels])}).encode(), AUTH | JSON, 0
    if kind == "GET /health":
        return "GET", "/health", None, {}, 0
    if kind == "GET /metadata":
        return "GET", "/metadata", None, AUTH, 0
    if kind == "GET / (the page)":
        return "GET", "/", None, {}, 0
    if kind == "no API key":
        return "POST", rng.choice(["/predict", "/explain"]), valid, JSON, 0
    if kind == "a wrong API key":
        wrong = rng.choice([KEY[:-1] + "!", KEY + "x", "", KEY[: rng.randint(1, len(KEY) - 1)], "x" * 4000])
        header = f"Bearer {wrong}" if wrong else "Bearer"  # the scheme alone (HTTP allows no trailing space)
        return rng.choice([("POST", "/predict", valid), ("GET", "/metadata", None)]) + ({"Authorization": header} | JSON, 0)
    body: bytes
    if kind == "truncated JSON":
        body = valid[: rng.randint(0, len(valid) - 2)]
    elif kind == "invalid UTF-8":
        cut = rng.randint(10, len(valid) - 3)
        body = valid[:cut] + bytes([rng.choice([0x80, 0xC3, 0xE9, 0xFF])]) + valid[cut:]
    elif kind == "random bytes":
        body = rng.randbytes(rng.randint(1, 2000))
    elif kind == "a byte of a valid body changed":
        i = rng.randrange(len(valid))
        body = valid[:i] + bytes([rng.randrange(256)]) + valid[i + 1 :]
    elif kind == "texts not a list of strings":
        body = json.dumps({"texts": rng.choice([texts[0], None, 3, [1, 2], [texts[0], None], {"a": "b"}, [[texts[0]]]])}).encode()
    elif kind == "unknown field":
        body = json.dumps({"texts": texts, rng.choice(["text", "topk", "threshold", "__proto__"]): 1}).encode()
    elif kind == "no texts":
        body = rng.choice([b"{}", b'{"texts": []}', b"[]", b"null", b'"texts"', b"0"])
    elif kind == "top_k out of bounds or not an integer":
        body = json.dumps({"texts": texts, "top_k": rng.choice([0, -1, len(labels) + 1, 10**30, 1.5, "2", True, None, [1]])}).encode()
    elif kind == "too many texts":
        body = json.dumps({"texts": ["a"] * rng.randint(257, 5000)}).encode()
    elif kind == "explain an empty text":
        return "POST", "/explain", b'{"text": ""}', AUTH | JSON, 0
    elif kind == "explain an unknown label":
        return "POST", "/explain", json.dumps({"text": texts[0], "label": "no such label"}).encode(), AUTH | JSON, 0
    elif kind == "body over the limit":
        body = b'{"texts": ["' + b"a" * (1 << 20) + b'"]}'
    elif kind == "JSON nested 100,000 deep":
        body = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif kind == "unknown path":
        path = rng.choice(["/predictions", "/admin", "/../etc/passwd", "/predict/1", "/%00"])
        return rng.choice(["GET", "POST"]), path, valid, AUTH | JSON, 0
    elif kind == "wrong method":
        return rng.choice([("GET", "/predict"), ("PUT", "/predict"), ("DELETE", "/health"), ("PATCH", "/explain")]) + (None, AUTH, 0)
    else:
        raise ValueError(kind)
    return "POST", "/predict", body, AUTH | JSON, 0


def small_model(out_dir: Path) -> Path:
    """Export a depth-9 model an eighth as wide as the default (16-128 channels, hidden 256), random weights.

    The soak is about the server (statuses, memory), not the model's speed (serve_load.py measures
    the default model): a narrow model lets 10,000 requests, explanations included, run in minutes
    on a shared 2-core machine. It reads 1,024 characters like the default.
    """
    import torch

    from vdcnn_res import Predictor, build_model
    from vdcnn_res.data.tokenizer import build_tokenizer
    from vdcnn_res.model import ModelConfig

    tokenizer = build_tokenizer("char")
    torch.manual_seed(0)
    config = ModelConfig(num_classes=len(AG_NEWS_LABELS), vocab_size=tokenizer.get_vocab_size(), channels=(16, 32, 64, 128),
                         hidden_size=256)
    Predictor(build_model(config), tokenizer, AG_NEWS_LABELS, max_length=1024).save_pretrained(out_dir, overwrite=True)
    return out_dir


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB: resident memory now and its peak so far."""
    values = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(values["VmRSS"].split()[0]), int(values["VmHWM"].split()[0])


def documented(schema: dict) -> dict[tuple[str, str], set[int]]:
    """(METHOD, path) -> the statuses the OpenAPI document lists for it."""
    return {(method.upper(), path): {int(code) for code in op["responses"]}
            for path, ops in schema["paths"].items() for method, op in ops.items()}


async def soak(url: str, plan: list[tuple[str, tuple]], concurrency: int, max_seconds: float, pid: int,
               mix: dict[str, Kind], docs: dict[tuple[str, str], set[int]]) -> dict:
    import httpx

    queue = list(reversed(plan))
    stop_at = time.monotonic() + max_seconds
    report = {"sent": 0, "transport errors": 0, "wrong answers": [], "undocumented": Counter(), "rss": []}
    checkpoints = {len(plan) * i // 10 for i in range(1, 11)}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, trust_env=False) as http:

        async def client() -> None:
            while queue and time.monotonic() < stop_at:
                kind, (method, path, body, headers, n_texts) = queue.pop()
                try:
                    response = await http.request(method, path, content=body, headers=headers)
                except httpx.HTTPError as err:
                    report["transport errors"] += 1
                    report["wrong answers"].append(f"{kind}: {type(err).__name__}")
                    continue
                status = response.status_code
                mix[kind].count += 1
                mix[kind].statuses[status] += 1
                known = docs.get((method, path))
                allowed = known if known is not None else ({405} if any(p == path for _, p in docs) else {404})
                if status not in allowed:
                    report["undocumented"][(method, path, status)] += 1
                if status not in mix[kind].expected:
                    report["wrong answers"].append(f"{kind}: {status} {response.text[:120]}")
                elif status == 200 and n_texts and len(response.json()["predictions"]) != n_texts:
                    report["wrong answers"].append(f"{kind}: {n_texts} texts, {len(response.json()['predictions'])} answers")
                elif status >= 400 and "json" in response.headers.get("content-type", "") and "\n" in response.json()["detail"]:
                    report["wrong answers"].append(f"{kind}: a detail of several lines")
                report["sent"] += 1
                if report["sent"] in checkpoints:
                    report["rss"].append((report["sent"], *rss_kib(pid)))

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return report


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="exported folder (default: a narrow depth-9 model, random weights)")
    parser.add_argument("--data", type=Path, default=SHARED_TEST if SHARED_TEST.is_file() else SAMPLE_TEST)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop sending after this long")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    import httpx  # the `test` extra, as in serve_load.py

    pool = load_texts(args.data)
    rng = random.Random(args.seed)
    mix = kinds()
    names, weights = list(mix), [k.weight for k in mix.values()]
    with tempfile.TemporaryDirectory(prefix="vdcnn_serve_soak_") as tmp:
        model = args.model or small_model(Path(tmp) / "model")
        labels = json.loads((model / "config.json").read_text())["label_names"]
        plan = [(kind, build(kind, pool, labels, rng)) for kind in rng.choices(names, weights, k=args.requests)]
        before = os.environ.get("VDCNN_API_KEY")
        os.environ["VDCNN_API_KEY"] = KEY  # the server started next reads its key here
        try:
            proc, url = start_server(model, args.threads, "auto", [])
        finally:
            if before is None:
                del os.environ["VDCNN_API_KEY"]
            else:
                os.environ["VDCNN_API_KEY"] = before
        try:
            with httpx.Client(base_url=url, trust_env=False, timeout=120) as http:
                docs = documented(http.get("/openapi.json").json())
                for text in pool[:16]:  # warm-up: the allocator's first passes, one explanation
                    http.post("/predict", json={"texts": [text] * 8}, headers=AUTH)
                http.post("/explain", json={"text": pool[0]}, headers=AUTH)
            start_rss = rss_kib(proc.pid)
            start = time.perf_counter()
            report = asyncio.run(soak(url, plan, args.concurrency, args.max_seconds, proc.pid, mix, docs))
            seconds = time.perf_counter() - start
            with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
                health = http.get("/health").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    statuses = Counter()
    for k in mix.values():
        statuses.update(k.statuses)
    lines = [f"model {args.model or 'small_model() (random weights)'}, {args.threads} torch threads; "
             f"{report['sent']:,} requests in {seconds:.0f} s ({args.concurrency} clients), seed {args.seed}; "
             f"statuses: {', '.join(f'{s}: {n:,}' for s, n in sorted(statuses.items()))}; "
             f"5xx: {sum(n for s, n in statuses.items() if s >= 500)}; transport errors: {report['transport errors']}; "
             f"answers not what their kind must get: {len(report['wrong answers'])}; statuses the OpenAPI document does "
             f"not list for their path: {sum(report['undocumented'].values())}; /health after: {health['status']}",
             "", "| kind | requests | statuses |", "|---|---:|---|"]
    for k in mix.values():
        lines.append(f"| {k.name} | {k.count:,} | {', '.join(f'{s} x{n:,}' for s, n in sorted(k.statuses.items()))} |")
    lines += ["", "| after requests | VmRSS MiB | VmHWM (peak) MiB |", "|---:|---:|---:|",
              f"| 0 (after the warm-up) | {start_rss[0] / 1024:.1f} | {start_rss[1] / 1024:.1f} |"]
    lines += [f"| {n:,} | {rss / 1024:.1f} | {hwm / 1024:.1f} |" for n, rss, hwm in report["rss"]]
    for problem in report["wrong answers"][:20]:
        lines.append(f"- {problem}")
    for (method, path, status), n in report["undocumented"].most_common(20):
        lines.append(f"- undocumented: {method} {path} -> {status} x{n}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
