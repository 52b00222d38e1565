"""`vdcnn-res serve` under a real API fuzzer, and its API key, against real server processes on 127.0.0.1.

Schemathesis (its CLI, as a user runs it) generates valid and invalid requests from the
server's own OpenAPI document (every check, positive and negative data, a fixed seed and a
bounded number of examples per operation) for two servers: the tiny single-label model with an
API key (so the fuzzer also checks that requests without it are refused) and a multi-label
model without one (its request has a threshold field). Zero failures, no 5xx and no traceback
in the server log, and /health still answers afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny import LABELS

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("schemathesis", reason="the API fuzzer is in the `test` extra: pip install 'vdcnn-res[test]'")

from test_server import ServerProcess, client, export_dir  # noqa: E402, F401 - after the skips (tests/inference is on sys.path); export_dir is a fixture

KEY = "test-key-0123456789abcdef"  # what a user would put in VDCNN_API_KEY
EXAMPLES = {"keyed": 40, "multilabel": 25}  # per operation: ~15 s and ~8 s of fuzzing on a 2-core machine


@pytest.fixture(scope="module")
def multilabel_export(tmp_path_factory) -> Path:
    """A small multi-label model with random weights (what is served matters, not what it learned)."""
    import torch

    from vdcnn_res import Predictor
    from vdcnn_res.data.tokenizer import build_tokenizer
    from vdcnn_res.model import ModelConfig, build_model

    torch.manual_seed(0)
    tokenizer = build_tokenizer("char")
    config = ModelConfig(num_classes=3, vocab_size=tokenizer.get_vocab_size(), blocks_per_stage=(1, 1), channels=(8, 16),
                         hidden_size=8)
    out = tmp_path_factory.mktemp("fuzz_multilabel") / "ml"
    Predictor(build_model(config), tokenizer, ["World", "Sports", "Business"], max_length=64, bf16=False,
              thresholds=[0.4, 0.5, 0.6]).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def servers(export_dir, multilabel_export):
    keyed = ServerProcess("--model", str(export_dir), "--precision", "fp32", env={"VDCNN_API_KEY": KEY})
    multilabel = ServerProcess("--model", str(multilabel_export), "--precision", "fp32")
    try:
        keyed.start(), multilabel.start()
        keyed.wait_ready(), multilabel.wait_ready()
        yield {"keyed": keyed, "multilabel": multilabel}
    finally:
        keyed.stop()
        multilabel.stop()


def schemathesis_cli() -> list[str]:
    """The `schemathesis` console script beside this Python (the package has no __main__)."""
    script = Path(sys.executable).parent / "schemathesis"
    if script.exists():
        return [str(script)]
    found = shutil.which("schemathesis")
    if found is None:
        pytest.skip("the schemathesis command is not installed beside this Python")
    return [found]


# ----------------------------------------------------------------------------- the fuzzer


@pytest.mark.parametrize("which", ["keyed", "multilabel"])
def test_schemathesis_finds_no_failure_and_the_server_stays_healthy(servers, which, tmp_path):
    server = servers[which]
    headers = ["-H", f"Authorization: Bearer {KEY}"] if which == "keyed" else []
    command = [*schemathesis_cli(), "run", f"{server.url}/openapi.json", "--checks", "all", "--mode", "all",
               "--max-examples", str(EXAMPLES[which]), "--seed", "1", "--generation-database", "none",
               "--request-timeout", "30", "--no-color", *headers]
    # cwd: Schemathesis writes a .schemathesis/ folder where it runs.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_COLOR": "1"})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    assert "No issues found" in out, out[-3000:]
    # POST /predict, POST /explain (not published for a multi-label model: it answers 501), GET /health, /metadata, /
    operations = 5 if which == "keyed" else 4
    assert re.search(rf"Tested: {operations}\b", out), out[-3000:]
    generated = int(re.search(r"(\d+) generated", out).group(1))
    assert generated >= operations * 10, out[-3000:]  # it really sent requests, positive and negative
    health = client().get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    log = "\n".join(server.lines)
    assert "Traceback" not in log and not re.search(r'" 5\d\d texts=', log), log[-3000:]
    statuses = set(re.findall(r'" (\d{3}) texts=', log))  # the access log: one line per request
    expected = {"200", "400", "404", "405", "422"} | ({"401"} if which == "keyed" else set())
    assert expected <= statuses, statuses  # valid and invalid requests (and, keyed, ones without the key) were sent


def test_top_k_written_as_a_whole_float_is_the_integer_the_schema_allows(servers):
    server = servers["multilabel"]
    schema = client().get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["texts"]["maxItems"] == 256
    threshold = [s for s in body["properties"]["threshold"]["anyOf"] if s.get("type") == "array"][0]
    assert threshold["minItems"] == threshold["maxItems"] == 3  # one per label, as the server checks
    top_k_schema = [s for s in body["properties"]["top_k"]["anyOf"] if s.get("type") == "integer"][0]
    assert (top_k_schema["minimum"], top_k_schema["maximum"]) == (1, 3)  # on the integer, where JSON Schema applies them
    assert "/explain" not in schema["paths"]  # a multi-label model is not explained:
    refused = client().post(f"{server.url}/explain", json={"text": "a"})
    assert refused.status_code == 501 and "multi-label" in refused.json()["detail"]
    assert client().get(f"{server.url}/metadata").json()["explain"] is False
    for top_k, status in ((2.0, 200), (2, 200), (2.5, 422), ("2", 422), (True, 422), (4.0, 422), (0, 422)):
        response = client().post(f"{server.url}/predict", json={"texts": ["a"], "top_k": top_k})
        assert response.status_code == status, (top_k, response.text)
        if status == 200:
            assert len(response.json()["predictions"][0]["top_k"]) == 2


# ----------------------------------------------------------------------------- the API key


def test_without_or_with_a_wrong_key_the_model_answers_401(servers):
    url, http = servers["keyed"].url, client()
    body = {"texts": ["Stocks rallied."]}
    attempts = {
        "no header": {},
        "a wrong key": {"Authorization": "Bearer " + KEY[:-1] + "X"},
        "a prefix of the key": {"Authorization": "Bearer " + KEY[:8]},
        "the key and more": {"Authorization": "Bearer " + KEY + "0"},
        "another scheme": {"Authorization": "Basic " + KEY},
        "the key without a scheme": {"Authorization": KEY},
        "a non-ASCII key": {"Authorization": "Bearer ключ".encode()},
    }
    for what, headers in attempts.items():
        for method, path in (("POST", "/predict"), ("POST", "/explain"), ("GET", "/metadata")):
            sent = json.dumps({"text": "a"} if path == "/explain" else body)
            response = http.request(method, f"{url}{path}", headers=headers, content=sent if method == "POST" else None)
            assert response.status_code == 401, (what, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            detail = response.json()["detail"]
            assert "\n" not in detail and "Authorization: Bearer" in detail and KEY not in detail
    good = {"Authorization": f"Bearer {KEY}"}
    answer = http.post(f"{url}/predict", json=body, headers=good)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] in LABELS
    assert http.get(f"{url}/metadata", headers=good).json()["label_names"] == LABELS
    assert http.post(f"{url}/explain", json={"text": "Stocks rallied."}, headers=good).status_code == 200


def test_health_the_page_and_the_api_description_stay_open(servers):
    url, http = servers["keyed"].url, client()
    assert http.get(f"{url}/health").json()["status"] == "ok"
    page = http.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    scripts = re.findall(r"<script>(.*?)</script>", page.text, flags=re.S)
    assert len(scripts) == 1 and "loadMetadata" in scripts[0]  # the whole script: nothing in it closes the element
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy  # the browser runs it (and only it)
    schema = http.get(f"{url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/predict"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert any("API key required" in line for line in servers["keyed"].lines)


@pytest.mark.parametrize(("key", "problem"), [("short", "at least 16"), ("sixteen chars with spaces", "printable ASCII")])
def test_a_weak_or_unsendable_key_is_refused_with_one_line(export_dir, capsys, key, problem):
    from vdcnn_res.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(export_dir), "--api-key", key])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vdcnn-res: error: ") and "\n" not in err and problem in err and key not in err


@pytest.mark.parametrize(("host", "key", "warned"), [("0.0.0.0", None, True), ("::", None, True), ("0.0.0.0", KEY, False),
                                                     ("127.0.0.1", None, False), ("localhost", None, False)])
def test_a_server_bound_beyond_loopback_without_a_key_warns_at_start(export_dir, monkeypatch, host, key, warned):
    """serve() as it starts, with the socket bound on 127.0.0.1 whatever the host (nothing listens beyond it)."""
    import logging
    import socket

    import uvicorn

    from vdcnn_res.inference import server as server_module

    def bind_loopback(self) -> socket.socket:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        return sock

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(uvicorn.Config, "bind_socket", bind_loopback)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: sockets[0].close())
    monkeypatch.setattr(server_module, "load_predictor", lambda settings: type("P", (), {"label_names": LABELS})())
    monkeypatch.setattr(server_module, "create_app", lambda predictor, settings: None)
    server_module.logger.addHandler(handler)
    try:
        server_module.serve(server_module.ServeSettings(model=str(export_dir), host=host, port=0, api_key=key))
    finally:
        server_module.logger.removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == int(warned), warnings
    if warned:
        assert "without an API key" in warnings[0] and "VDCNN_API_KEY" in warnings[0] and "\n" not in warnings[0]


# ----------------------------------------------------------------------------- the soak benchmark


def test_soak_benchmark_smoke(export_dir, tmp_path):
    """benchmarks/serve_soak.py, a few dozen requests of every kind: its checks find nothing wrong."""
    import importlib.util

    from fixtures.tiny import REPO

    spec = importlib.util.spec_from_file_location("serve_soak", REPO / "benchmarks" / "serve_soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path / "soak.md"
    report = module.main(["--model", str(export_dir), "--requests", "120", "--threads", "1", "--output", str(out)])
    assert out.read_text() == report and "VDCNN_API_KEY" not in os.environ
    first = report.splitlines()[0]
    assert "120 requests" in first and "5xx: 0;" in first and "transport errors: 0;" in first, first
    assert "must get: 0;" in first and "path: 0;" in first and "/health after: ok" in first, first
    assert re.search(r"200: \d+, 400: \d+, 401: \d+", first), first
    memory = [line for line in report.splitlines() if re.match(r"\| [\d,]+ \|", line)]
    assert len(memory) == 10 and all(float(line.split("|")[2]) > 0 for line in memory)
