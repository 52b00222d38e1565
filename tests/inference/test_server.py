"""`vdcnn-res serve` as a user meets it: a real server process on 127.0.0.1, a real HTTP client.

Two servers start once per module, in parallel (process start dominates the time): `server`
(float32, default batching) for the endpoints, the comparison with the in-process Predictor
and the bad requests; `slow_server` (2 s batch timeout, batches of 8) to see batches fill and
to stop with SIGTERM while a request waits in the queue.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.tiny import LABELS, REPO, sample_texts

pytest.importorskip("fastapi")  # the `serve` extra (also in `test`)
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

START_TIMEOUT_S = 90  # a cold `import torch, lightning` on a loaded 2-core machine
MAX_BODY = 1 << 20
# One client for the module: each new httpx.Client loads the CA bundle (~0.2 s of CPU);
# trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
HTTP: httpx.Client | None = None  # created on first use by client()


def client() -> httpx.Client:
    global HTTP
    if HTTP is None:
        HTTP = httpx.Client(timeout=30, trust_env=False)
    return HTTP


class ServerProcess:
    """`vdcnn-res serve ... --port 0` in a subprocess (`env`: extra environment variables); its log
    lines are collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or {}
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vdcnn_res.cli", "serve", "--port", "0", "--threads", "1", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env={**os.environ, **self.env},
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = [m for line in self.lines if (m := re.search(r"on (http://127\.0\.0\.1:\d+)", line))]
            if found and not self.url:
                self.url = found[0].group(1)
            if self.url:
                try:
                    if client().get(f"{self.url}/health", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.1)
        pytest.fail("server not ready in time:\n" + "\n".join(self.lines[-20:]))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def export_dir(ckpt, tmp_path_factory) -> Path:
    from vdcnn_res.cli.export import export_checkpoint

    out = tmp_path_factory.mktemp("serve_export")
    export_checkpoint(ckpt, out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def servers(export_dir):
    main = ServerProcess("--model", str(export_dir), "--precision", "fp32")
    slow = ServerProcess("--model", str(export_dir), "--precision", "fp32", "--batch-timeout", "2000", "--max-batch-size", "8")
    try:
        main.start(), slow.start()
        main.wait_ready(), slow.wait_ready()
        yield main, slow
    finally:
        main.stop()
        slow.stop()


@pytest.fixture
def server(servers) -> ServerProcess:
    return servers[0]


@pytest.fixture
def slow_server(servers) -> ServerProcess:
    slow = servers[1]
    if not slow.alive():  # stopped by the SIGTERM test when tests run out of file order
        slow.url = ""
        slow.start().wait_ready()
    return slow


@pytest.fixture(scope="module")
def predictor(export_dir, one_thread):
    from vdcnn_res import Predictor

    return Predictor.from_pretrained(export_dir, bf16=False)


def post(url: str, body: bytes | str | dict, **kwargs) -> httpx.Response:
    content = json.dumps(body) if isinstance(body, dict) else body
    return client().post(f"{url}/predict", content=content, headers={"content-type": "application/json"}, **kwargs)


# ----------------------------------------------------------------------------- endpoints


def test_health_metadata_and_openapi(server, export_dir):
    health = client().get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    meta = client().get(f"{server.url}/metadata").json()
    config = json.loads((export_dir / "config.json").read_text())
    assert meta["task"] == "multiclass" and meta["thresholds"] is None
    assert meta["label_names"] == LABELS == config["label_names"]
    assert meta["max_length"] == config["max_length"] == 128
    assert meta["architecture"] == config["architecture"]
    assert meta["precision"] == "fp32" and meta["limits"]["max_body_bytes"] == MAX_BODY
    from vdcnn_res import __version__

    assert meta["version"] == __version__
    schema = client().get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"texts", "top_k"}
    assert client().get(f"{server.url}/docs").status_code == 200


def test_predict_matches_the_in_process_predictor(server, predictor):
    texts, _ = sample_texts("test", 24)
    texts += ["", "x" * 5000, "a\x00b", "😀 emoji", "東京の株価", "שלום עולם", "   "]
    response = post(server.url, {"texts": texts, "top_k": 3})
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    expected = predictor.predict(texts, top_k=3)
    assert len(got) == len(texts)
    for g, e in zip(got, expected):
        assert g["label"] == e["label"]
        assert g["probability"] == pytest.approx(e["probability"], abs=1e-5)
        assert [r["label"] for r in g["top_k"]] == [label for label, _ in e["top_k"]]
        np.testing.assert_allclose([r["probability"] for r in g["top_k"]], [p for _, p in e["top_k"]], atol=1e-5)
    # Long texts are cut to max_length like everywhere else.
    cut = post(server.url, {"texts": ["x" * 128]}).json()["predictions"][0]
    assert cut["probability"] == pytest.approx(got[texts.index("x" * 5000)]["probability"], abs=1e-6)
    # top_k defaults to 1.
    one = post(server.url, {"texts": texts[:2]}).json()["predictions"]
    assert [len(p["top_k"]) for p in one] == [1, 1] and one[0]["label"] == expected[0]["label"]


def test_top_k_written_as_a_whole_float_is_accepted_as_the_schema_says(server):
    schema = client().get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    top_k = body["properties"]["top_k"]
    assert (top_k["type"], top_k["minimum"], top_k["maximum"], top_k["default"]) == ("integer", 1, 4, 1)
    assert body["properties"]["texts"]["maxItems"] == 256  # what the server accepts, published
    response = post(server.url, {"texts": ["Stocks rallied."], "top_k": 4.0})  # JSON Schema: 4.0 is an integer
    assert response.status_code == 200 and len(response.json()["predictions"][0]["top_k"]) == 4


def test_explain_answers_what_the_in_process_explanation_says(server, predictor):
    pytest.importorskip("captum")
    text = "Stocks rallied after the Fed decision. " * 4  # 160 characters: the model reads 128
    response = client().post(f"{server.url}/explain", json={"text": text, "label": "Sports"})
    assert response.status_code == 200, response.text
    got = response.json()
    expected = predictor.explain(text, "Sports")
    assert got["label"] == "Sports" and got["predicted"] == expected.predicted
    assert got["text"] == text[:128] and got["n_cut"] == expected.n_cut == len(text) - 128
    np.testing.assert_allclose(got["attributions"], expected.attributions[:128], rtol=1e-5, atol=1e-7)
    assert [r["label"] for r in got["probabilities"]] == [label for label, _ in expected.top_k(4)]
    assert got["delta"] == pytest.approx(expected.delta, abs=1e-5) and got["n_steps"] == 50
    assert client().get(f"{server.url}/metadata").json()["explain"] is True
    for bad in ({"text": ""}, {"text": "a", "label": "Weather"}, {"text": "a", "n_steps": 5}, {"texts": ["a"]}):
        refused = client().post(f"{server.url}/explain", json=bad)
        assert refused.status_code == 422 and "\n" not in refused.json()["detail"], refused.text
    assert client().post(f"{server.url}/explain", content=b'{"text": "a"').status_code == 400


def test_concurrent_requests_each_get_their_own_answers(server, predictor):
    texts, _ = sample_texts("test", 40)
    groups = [texts[5 * i : 5 * i + 1 + i % 5] for i in range(8)]  # 1 to 5 texts each
    results: dict[int, list] = {}

    def call(i: int) -> None:
        results[i] = post(server.url, {"texts": groups[i], "top_k": 2}).json()["predictions"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for i, group in enumerate(groups):
        assert [p["label"] for p in results[i]] == [e["label"] for e in predictor.predict(group)]


def test_batches_fill_before_the_timeout(slow_server):
    before = client().get(f"{slow_server.url}/health").json()
    start = time.monotonic()
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda i=i: statuses.append(post(slow_server.url, {"texts": [f"text {i}"]}).status_code))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - start
    after = client().get(f"{slow_server.url}/health").json()
    assert statuses == [200] * 8
    # 8 one-text requests fill one batch of 8, which runs at once instead of after the 2 s timeout.
    assert after["batches_run"] - before["batches_run"] == 1
    assert after["texts_run"] - before["texts_run"] == 8
    assert elapsed < 2.0


def test_one_access_log_line_per_request(server):
    post(server.url, {"texts": ["a", "b", "c"]})
    client().get(f"{server.url}/no/such/page")
    deadline = time.monotonic() + 5
    pattern = re.compile(r'127\.0\.0\.1 "POST /predict" 200 texts=3 \d+\.\d ms')
    while time.monotonic() < deadline and not (any(pattern.search(l) for l in server.lines)
                                               and any('"GET /no/such/page" 404 texts=0' in l for l in server.lines)):
        time.sleep(0.05)
    assert any(pattern.search(line) for line in server.lines), server.lines[-5:]
    assert any('"GET /no/such/page" 404 texts=0' in line for line in server.lines)


# ----------------------------------------------------------------------------- bad requests


def _chunks(total: int):
    for _ in range(total // 65536):
        yield b"x" * 65536


BAD_REQUESTS = {
    "truncated JSON": ("POST", b'{"texts": ["a", "b"', 400),
    "not JSON": ("POST", b"texts=a", 400),
    "empty body": ("POST", b"", 400),
    "invalid UTF-8": ("POST", b'{"texts": ["caf\xe9"]}', 400),
    "raw NUL byte": ("POST", b'{"texts": ["a\x00b"]}', 400),
    "lone surrogate escape": ("POST", b'{"texts": ["\\ud800"]}', 400),
    "JSON array": ("POST", b'["a", "b"]', 422),
    "texts is a string": ("POST", b'{"texts": "a text"}', 422),
    "a text is a number": ("POST", b'{"texts": ["a", 3]}', 422),
    "texts is null": ("POST", b'{"texts": null}', 422),
    "texts missing": ("POST", b'{"top_k": 1}', 422),
    "unknown field": ("POST", b'{"text": ["a"]}', 422),
    "empty list": ("POST", b'{"texts": []}', 422),
    "top_k zero": ("POST", b'{"texts": ["a"], "top_k": 0}', 422),
    "top_k above the classes": ("POST", b'{"texts": ["a"], "top_k": 5}', 422),
    "top_k a string": ("POST", b'{"texts": ["a"], "top_k": "2"}', 422),
    "top_k a bool": ("POST", b'{"texts": ["a"], "top_k": true}', 422),
    "top_k a float": ("POST", b'{"texts": ["a"], "top_k": 1.5}', 422),
    "100k texts": ("POST", b'{"texts": [' + b",".join([b'""'] * 100_000) + b"]}", 422),
    "10 MB body": ("POST", b'{"texts": ["' + b"a" * 10_000_000 + b'"]}', 413),
    "10 MB chunked body": ("POST", "chunked", 413),
    "GET /predict": ("GET", None, 405),
    "PUT /health": ("PUT", None, 405),
    "unknown path": ("POST", "/nope", 404),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_a_one_line_4xx(server, case):
    method, body, status = BAD_REQUESTS[case]
    http, url = client(), server.url
    if method == "GET":
        response = http.get(f"{url}/predict")
    elif method == "PUT":
        response = http.put(f"{url}/health", content=b"{}")
    elif body == "/nope":
        response = http.post(f"{url}/nope", content=b'{"texts": ["a"]}')
    elif body == "chunked":  # no Content-Length: the limit applies while reading
        response = http.post(f"{url}/predict", content=_chunks(10 * MAX_BODY))
    else:
        response = http.post(f"{url}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text[:300]
    detail = response.json()["detail"]
    assert isinstance(detail, str) and 0 < len(detail) < 300 and "\n" not in detail and "Traceback" not in detail
    assert client().get(f"{server.url}/health").json()["status"] == "ok"


def test_escaped_control_characters_are_texts_like_any_other(server):
    response = post(server.url, {"texts": ["a\u0000b", "\t\n", "\u202eevil"]})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 3


def test_a_checkpoint_is_refused_with_one_line(ckpt, capsys):
    from vdcnn_res.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(ckpt)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vdcnn-res: error: ") and "\n" not in err and "vdcnn-res export" in err


def test_a_missing_folder_is_refused_with_one_line(tmp_path, capsys):
    from vdcnn_res.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(tmp_path / "nothing_here")])
    assert exit_info.value.code == 2
    assert "vdcnn-res export" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the batcher alone


class FakePredictor:
    """Records the texts of each model call; echoes each text as its label."""

    label_names = ("a", "b", "c")
    max_length = 64

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail = False

    def predict(self, texts: list[str], top_k: int, batch_size: int) -> list[dict]:
        self.calls.append(list(texts))
        if self.fail:
            raise RuntimeError("model failed")
        return [{"label": t, "probability": 0.5, "top_k": [(t, 0.5), ("b", 0.3), ("c", 0.2)][:top_k]} for t in texts]


def _with_batcher(fake: FakePredictor, body, max_batch_size: int = 6, timeout_s: float = 0.3, max_queue_texts: int = 100,
                  max_gather: int | None = None):
    from vdcnn_res.inference.server import Batcher

    async def run():
        batcher = Batcher(fake, max_batch_size, timeout_s, max_queue_texts, max_gather)
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(run())


def test_batcher_fills_batches_keeps_requests_apart_and_slices_top_k():
    fake = FakePredictor()

    async def body(batcher):
        start = time.monotonic()
        results = await asyncio.gather(
            batcher.predict(["a1", "a2", "a3"], 1), batcher.predict(["b1", "b2", "b3"], 2), batcher.predict(["c1"], 3)
        )
        return results, time.monotonic() - start

    (first, second, third), elapsed = _with_batcher(fake, body)
    assert fake.calls == [["a1", "a2", "a3", "b1", "b2", "b3"], ["c1"]]  # the third does not fit into 6
    assert [p["label"] for p in first] == ["a1", "a2", "a3"] and [p["label"] for p in second] == ["b1", "b2", "b3"]
    assert [len(p["top_k"]) for p in first + second + third] == [1, 1, 1, 2, 2, 2, 3]
    assert third[0]["top_k"][0] == {"label": "c1", "probability": 0.5}
    assert 0.25 < elapsed < 5  # the lone third request waited for the timeout, not forever


def test_batcher_refuses_past_its_queue_limit():
    from vdcnn_res.inference.server import Overloaded

    async def body(batcher):
        waiting = asyncio.ensure_future(batcher.predict(["x"] * 3, 1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.predict(["y"] * 2, 1)
        return await waiting

    assert len(_with_batcher(FakePredictor(), body, max_queue_texts=4)) == 3


def test_a_failing_model_call_fails_its_requests_only():
    fake = FakePredictor()

    async def body(batcher):
        fake.fail = True
        failed = await asyncio.gather(batcher.predict(["a"], 1), batcher.predict(["b"], 1), return_exceptions=True)
        fake.fail = False
        return failed, await batcher.predict(["c"], 1)

    failed, later = _with_batcher(fake, body, timeout_s=0.05)
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert later[0]["label"] == "c"


def test_batcher_gathers_the_queue_and_groups_texts_by_length():
    fake = FakePredictor()

    async def body(batcher):
        return await asyncio.gather(batcher.predict(["s1", "L" * 60, "s2"], 1), batcher.predict(["M" * 61, "s3"], 2))

    first, second = _with_batcher(fake, body, max_batch_size=3, max_gather=8)
    # One gather of both requests (5 texts), cut by length into passes of at most 3: the short
    # texts of both requests together, the long ones together.
    assert sorted(map(sorted, fake.calls)) == [["L" * 60, "M" * 61], ["s1", "s2", "s3"]]
    assert [p["label"] for p in first] == ["s1", "L" * 60, "s2"] and [p["label"] for p in second] == ["M" * 61, "s3"]
    assert [len(p["top_k"]) for p in first + second] == [1, 1, 1, 2, 2]


def _pass_cost(lengths, groups, pass_cost):
    from vdcnn_res.inference.server import _PAD_MULTIPLE

    return sum(pass_cost + len(g) * max(-(-max(lengths[i] for i in g) // _PAD_MULTIPLE) * _PAD_MULTIPLE, _PAD_MULTIPLE)
               for g in groups)


@pytest.mark.parametrize("seed", range(5))
def test_length_groups_cover_every_text_once_and_beat_fixed_chunks(seed):
    from vdcnn_res.inference.server import PASS_COST_CHARS, length_groups

    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(0, 1100, size=int(rng.integers(1, 300)))]
    groups = length_groups(lengths, 64)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= 64 for g in groups)
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)  # passes hold neighbours in length order, shortest first
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks = [order[i : i + 64] for i in range(0, len(order), 64)]  # what the Predictor does with one call
    assert _pass_cost(lengths, groups, PASS_COST_CHARS) <= _pass_cost(lengths, chunks, PASS_COST_CHARS)


def test_length_groups_are_optimal_on_small_inputs():
    from itertools import combinations

    from vdcnn_res.inference.server import length_groups

    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = sorted(int(x) for x in rng.integers(0, 300, size=7))
        got = _pass_cost(lengths, length_groups(lengths, 3, pass_cost=100), 100)
        best = min(
            _pass_cost(lengths, [list(range(a, b)) for a, b in zip((0, *cuts), (*cuts, 7))], 100)
            for k in range(7) for cuts in combinations(range(1, 7), k)
            if all(b - a <= 3 for a, b in zip((0, *cuts), (*cuts, 7)))
        )
        assert got == best
    assert length_groups([], 8) == []
    assert length_groups([5, 5, 5], 8) == [[0, 1, 2]]  # equal lengths: one pass, input order


def test_short_and_long_texts_of_one_request_run_in_separate_passes(server, predictor):
    texts = [f"short {i}" for i in range(20)] + [f"a long text {i} " * 12 for i in range(20)]  # 7-8 vs 128+ characters
    before = client().get(f"{server.url}/health").json()
    response = post(server.url, {"texts": texts, "top_k": 2})
    after = client().get(f"{server.url}/health").json()
    assert response.status_code == 200
    assert after["batches_run"] - before["batches_run"] == 2 and after["texts_run"] - before["texts_run"] == 40
    expected = predictor.predict(texts, top_k=2)
    for got, e in zip(response.json()["predictions"], expected):
        assert got["label"] == e["label"] and got["probability"] == pytest.approx(e["probability"], abs=1e-5)


def test_max_gather_below_the_batch_size_is_refused_with_one_line(export_dir, capsys):
    from vdcnn_res.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(export_dir), "--max-batch-size", "64", "--max-gather", "32"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vdcnn-res: error: ") and "\n" not in err and "--max-gather" in err


# ----------------------------------------------------------------------------- the load benchmark


def test_load_benchmark_smoke(server, export_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "load.md"
    table = module.main(["--url", server.url, "--model", str(export_dir), "--concurrency", "1", "3",
                         "--requests", "3", "--max-texts", "4", "--precision", "fp32", "--output", str(out)])
    assert out.read_text().strip() == table.strip()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    header, rule, *body = rows
    assert set(rule) <= {"|", "-", " ", ":"} and all(row.count("|") == header.count("|") for row in body)
    served = [row for row in body if row.split("|")[1].strip().isdigit()]
    assert len(served) == 2
    for row in served:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert int(cells[3]) == 0  # errors
        assert float(cells[4]) > 0  # texts/s
    assert any("in-process" in row for row in body)


# ----------------------------------------------------------------------------- shutdown (last: stops slow_server)


def test_sigterm_lets_the_in_flight_request_finish(slow_server, predictor):
    texts = ["Stocks rallied after the Fed decision.", "The team won the final."]
    result: dict[str, httpx.Response | Exception] = {}

    def call() -> None:
        try:
            result["response"] = post(slow_server.url, {"texts": texts, "top_k": 2})
        except Exception as err:  # noqa: BLE001 - reported below
            result["response"] = err

    caller = threading.Thread(target=call)
    try:
        caller.start()
        deadline = time.monotonic() + 10
        while client().get(f"{slow_server.url}/health").json()["pending_texts"] < 2:  # queued, 2 s batch timeout
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        slow_server.proc.send_signal(signal.SIGTERM)
        refused = False
        deadline = time.monotonic() + 5
        while not refused and time.monotonic() < deadline:
            try:
                client().get(f"{slow_server.url}/health")
                time.sleep(0.05)
            except httpx.TransportError:
                refused = True
        assert refused, "new connections were still accepted after SIGTERM"
        assert "response" not in result, "refused only after the in-flight request had finished; the test proves nothing"
        caller.join(timeout=20)
        response = result["response"]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200
        assert [p["label"] for p in response.json()["predictions"]] == [e["label"] for e in predictor.predict(texts)]
        assert slow_server.proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert any("stopped" in line for line in slow_server.lines)
        assert not any("Traceback" in line for line in slow_server.lines), "\n".join(slow_server.lines)
    finally:
        slow_server.stop()
        caller.join(timeout=5)


@pytest.mark.slow
def test_workers_share_the_port_and_stop_together(export_dir):
    server = ServerProcess("--model", str(export_dir), "--workers", "2")
    try:
        server.start().wait_ready()
        deadline = time.monotonic() + START_TIMEOUT_S  # the second worker may still be loading
        while sum("ready" in line for line in server.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        answers = [post(server.url, {"texts": ["Stocks rallied.", "The team won."]}) for _ in range(6)]
        assert all(a.status_code == 200 and len(a.json()["predictions"]) == 2 for a in answers)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 5
        while sum("stopped" in line for line in server.lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum("stopped" in line for line in server.lines) == 2, "\n".join(server.lines)
    finally:
        server.stop()


def test_a_multilabel_model_answers_label_sets_with_its_thresholds_or_the_requests(tmp_path, one_thread):
    import torch

    from vdcnn_res import Predictor
    from vdcnn_res.data.tokenizer import build_tokenizer
    from vdcnn_res.model import ModelConfig, build_model

    torch.manual_seed(0)
    names, thresholds = ["World", "Sports", "Business"], [0.4, 0.5, 0.6]
    tokenizer = build_tokenizer("char")
    config = ModelConfig(num_classes=3, vocab_size=tokenizer.get_vocab_size(), blocks_per_stage=(1, 1), channels=(8, 16), hidden_size=8)
    Predictor(build_model(config), tokenizer, names, max_length=64, bf16=False, thresholds=thresholds).save_pretrained(tmp_path / "ml")
    predictor = Predictor.from_pretrained(tmp_path / "ml", bf16=False)
    texts = ["Stocks fell.", "A late goal in the final minute.", ""]
    ml = ServerProcess("--model", str(tmp_path / "ml"), "--precision", "fp32").start()
    try:
        ml.wait_ready()
        meta = client().get(f"{ml.url}/metadata").json()
        assert meta["task"] == "multilabel" and meta["thresholds"] == pytest.approx(thresholds)
        for body, kwargs in [({"texts": texts}, {}), ({"texts": texts, "top_k": 2}, {"top_k": 2}),
                             ({"texts": texts, "threshold": 0.0}, {"threshold": 0.0}),
                             ({"texts": texts, "threshold": [1.0, 0.0, 1.0]}, {"threshold": [1.0, 0.0, 1.0]})]:
            response = post(ml.url, body)
            assert response.status_code == 200, response.text
            for got, expected in zip(response.json()["predictions"], predictor.predict(texts, **kwargs)):
                assert got["labels"] == expected["labels"]
                assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
                assert ("top_k" in got) == ("top_k" in expected)
                if "top_k" in got:
                    assert [r["label"] for r in got["top_k"]] == [label for label, _ in expected["top_k"]]
        for bad in (1.5, [0.5, 0.5], "high"):
            response = post(ml.url, {"texts": texts, "threshold": bad})
            assert response.status_code == 422 and "\n" not in response.json()["detail"], response.text
        assert client().get(f"{ml.url}/health").status_code == 200
    finally:
        ml.stop()
