"""The HTTP prediction server behind `vdcnn-res serve`: FastAPI + uvicorn and a dynamic batcher.

    POST /predict   {"texts": ["...", ...], "top_k": 3} -> {"predictions": [{"label", "probability", "top_k"}]}
                    (multi-label models: [{"labels", "probabilities", "top_k" if asked}]; "threshold" overrides)
    GET  /health    {"status": "ok", "pending_texts": queued, "batches_run": model calls, "texts_run": texts}
    POST /explain   {"text": "...", "label": optional} -> per-character integrated-gradients attributions
                    (single-label text models with Captum installed; else 501)
    GET  /metadata  label names, max_length, task, architecture, package version, server limits
    GET  /          the demo page: a text box, the top labels as bars, the explanation as a heatmap
    GET  /docs      the OpenAPI page FastAPI generates (/openapi.json)

With an API key (``--api-key`` or the ``VDCNN_API_KEY`` environment variable), /predict,
/explain and /metadata answer 401 unless the request carries ``Authorization: Bearer KEY``
(compared in constant time); /health, the demo page (static, no model data) and the API
description stay open. A server bound beyond loopback without a key logs a warning at start.

Only exported folders are served (safetensors + JSON, never a pickle). Concurrent requests are
queued and run together: the batcher waits at most ``batch_timeout_ms`` after the oldest queued
request for ``max_batch_size`` texts (one full forward pass), then takes every queued request up
to ``max_gather`` texts, sorts those texts by length and cuts them into forward passes of at most
``max_batch_size`` texts of similar lengths (:func:`length_groups`), each one ``Predictor.predict``
call in a worker thread. A batch is padded to its longest text, so grouping by length is what
keeps the server's cost per text near the in-process Predictor's (which sorts all of its texts
at once); a request is answered as soon as the passes holding its texts are done. While the
model runs, new requests queue up, so under load batches fill by themselves and an idle server
adds at most the timeout to a lone request.

Bad requests get a 4xx with ``{"detail": "<one line>"}``; an unexpected failure gets a 500 with
a one-line message (the traceback goes to the server log only). SIGTERM/SIGINT stop accepting
connections, let in-flight requests finish (up to ``graceful_timeout_s``), then exit.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request,
# the request model), which are local to create_app, at run time.
import asyncio
import hashlib
import hmac
import importlib.resources
import importlib.util
import ipaddress
import json
import math
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from vdcnn_res.errors import UserError

__all__ = [
    "API_KEY_ENV", "ServeSettings", "check_api_key", "create_app", "demo_page", "explain_problem", "is_loopback",
    "length_groups", "load_predictor", "require_serve", "serve",
]

logger = logging.getLogger("vdcnn_res.serve")
_SETTINGS_ENV = "VDCNN_RES_SERVE_SETTINGS"  # settings for the worker processes of --workers K > 1
API_KEY_ENV = "VDCNN_API_KEY"  # the API key, when --api-key is not given
_MIN_KEY_CHARS = 16
_MAX_EXPLAIN_PENDING = 8  # /explain requests queued or running before new ones get 503
_PRECISIONS = {"auto": None, "bf16": True, "fp32": False}


def require_serve() -> None:
    """Raise a UserError naming the extra to install when FastAPI or uvicorn is missing."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("the server needs fastapi and uvicorn: pip install 'vdcnn-res[serve]'") from None


@dataclass(frozen=True)
class ServeSettings:
    """Everything `vdcnn-res serve` is told; checked by :meth:`validate` before anything starts."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64  # texts per forward pass (the Predictor's batch_size)
    max_gather: int = 256  # queued texts taken at once and sorted by length into forward passes
    batch_timeout_ms: float = 10.0  # longest wait after the oldest queued request for more texts
    workers: int = 1  # server processes, each with its own model and batcher
    max_texts: int = 256  # texts in one request
    max_body_bytes: int = 1 << 20
    max_queue_texts: int = 4096  # queued texts before new requests get 503
    precision: str = "auto"  # auto (bf16 where native) | bf16 | fp32
    device: str = "cpu"
    threads: int | None = None  # torch threads per worker process; None keeps torch's default
    graceful_timeout_s: float = 30.0
    api_key: str | None = field(default=None, repr=False)  # None: no key asked (warned about beyond loopback)

    def validate(self) -> None:
        positive_ints = ("max_batch_size", "max_gather", "workers", "max_texts", "max_body_bytes", "max_queue_texts")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise UserError(f"--threads must be a positive integer, got {self.threads!r}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535 (0 picks a free port), got {self.port}")
        if not 0 <= self.batch_timeout_ms <= 10_000:
            raise UserError(f"--batch-timeout must be between 0 and 10000 ms, got {self.batch_timeout_ms}")
        if self.graceful_timeout_s < 0:
            raise UserError(f"--graceful-timeout must be >= 0 seconds, got {self.graceful_timeout_s}")
        if self.precision not in _PRECISIONS:
            raise UserError(f"--precision must be one of {sorted(_PRECISIONS)}, got {self.precision!r}")
        if self.max_gather < self.max_batch_size:
            raise UserError(f"--max-gather ({self.max_gather}) must be at least --max-batch-size ({self.max_batch_size})")
        if self.max_queue_texts < self.max_texts:
            raise UserError(f"--max-queue-texts ({self.max_queue_texts}) must be at least --max-texts ({self.max_texts})")
        if self.api_key is not None:
            check_api_key(self.api_key)
        path = Path(self.model)
        if path.is_file() or path.suffix == ".ckpt":
            raise UserError(
                f"--model {self.model!r} is a checkpoint; the server loads only exported folders (safetensors + JSON, "
                f"no pickle): run `vdcnn-res export --ckpt_path {self.model} --out_dir exports/NAME` and serve exports/NAME"
            )


def check_api_key(key: str) -> None:
    """Refuse, in one line, an API key that is too short to guess slowly or cannot travel in a header."""
    make = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
    if len(key) < _MIN_KEY_CHARS:
        raise UserError(f"the API key has {len(key)} characters; use at least {_MIN_KEY_CHARS}, e.g. from {make}")
    if not all("!" <= ch <= "~" for ch in key):
        raise UserError(f"the API key must be printable ASCII without spaces (it travels in an HTTP header); make one with {make}")


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to listen on) reaches this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to any interface
        return False


def load_predictor(settings: ServeSettings):  # -> Predictor (imported lazily: torch is heavy)
    """The Predictor of an exported folder, with the settings' device, precision and threads."""
    import torch

    from vdcnn_res.inference.predictor import Predictor

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    return Predictor.from_pretrained(settings.model, device=settings.device, bf16=_PRECISIONS[settings.precision])


# ----------------------------------------------------------------------------- batching


# Fixed cost of one forward pass, in padded characters: measured for the default depth-9 model
# on one CPU thread (a pass of 1 text cost as much as ~1,400 characters of a long batch;
# docs/performance.md, "Serving"). It only decides where length groups are cut: larger merges
# more texts into fewer, more padded passes.
PASS_COST_CHARS = 1400
_PAD_MULTIPLE = 8  # batches are padded to a multiple of 8 ids (data/batching.py)


def length_groups(lengths: Sequence[int], max_batch_size: int, pass_cost: float = PASS_COST_CHARS) -> list[list[int]]:
    """Indices of `lengths` cut into forward passes of similar lengths, shortest first.

    A pass costs about ``pass_cost`` plus its size times its longest text (each batch is padded
    to its longest): the cuts of the length-sorted texts into passes of at most
    ``max_batch_size`` that minimise the total are found by dynamic programming (n x
    max_batch_size steps, vectorised). Texts of equal length keep their order.
    """
    import numpy as np

    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lengths.__getitem__)
    width = np.array([max(1, -(-int(lengths[i]) // _PAD_MULTIPLE)) * _PAD_MULTIPLE for i in order], dtype=np.float64)
    best = np.zeros(n + 1)  # best[i]: cheapest cost of the i shortest texts
    start = np.zeros(n + 1, dtype=np.int64)  # where the last pass of that split starts
    for i in range(1, n + 1):
        lo = max(0, i - max_batch_size)
        costs = best[lo:i] + pass_cost + (i - np.arange(lo, i)) * width[i - 1]
        j = int(np.argmin(costs))  # the first minimum: the longest last pass among equals
        best[i], start[i] = costs[j], lo + j
    groups = []
    i = n
    while i > 0:
        groups.append(order[start[i] : i])
        i = int(start[i])
    return groups[::-1]


class Overloaded(Exception):
    """More texts are queued than the server accepts (answered with 503)."""


@dataclass
class _Job:
    texts: list[str]
    top_k: int | None  # None: no ranking (multi-label only; single-label requests always rank)
    future: asyncio.Future
    arrival: float
    thresholds: list[float] | None = None  # multi-label: this request's per-label thresholds (None: the model's)


class Batcher:
    """Queues requests and runs them in as few, as evenly padded forward passes as the limits allow.

    One worker thread runs the model (the Predictor is not meant for concurrent calls; torch
    parallelises inside each call); the event loop keeps reading requests and sending answers
    meanwhile. ``max_gather`` (default ``max_batch_size``) is how many queued texts are taken at
    once and sorted by length into passes of at most ``max_batch_size``; ``predictor`` needs
    ``predict(texts, top_k, batch_size)``, ``label_names`` and ``max_length``; a multi-label one
    (``thresholds`` not None) also ``predict(..., threshold=)``. Each request keeps its own
    ``top_k`` and, multi-label, its own thresholds, applied to the probabilities of the shared pass.
    """

    def __init__(
        self, predictor: Any, max_batch_size: int, timeout_s: float, max_queue_texts: int, max_gather: int | None = None
    ) -> None:
        self.predictor = predictor
        self.thresholds: list[float] | None = getattr(predictor, "thresholds", None)  # None: single-label
        self.max_batch_size = max_batch_size
        self.max_gather = max(max_gather or max_batch_size, max_batch_size)
        self.timeout_s = timeout_s
        self.max_queue_texts = max_queue_texts
        self.pending_texts = 0
        self.batches_run = 0  # forward passes (Predictor calls) since start
        self.texts_run = 0
        self._jobs: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdcnn-res-model")

    async def warm_up(self) -> None:
        """One uncounted forward pass in the model thread: the first of a fresh process is slow."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._run, ["warm-up"])

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="vdcnn-res-batcher")

    async def stop(self) -> None:
        """Stop after the current forward pass; jobs still queued (only after a graceful timeout) fail."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._jobs.clear()
        self._executor.shutdown(wait=True)

    async def predict(
        self, texts: list[str], top_k: int | None, thresholds: list[float] | None = None
    ) -> list[dict[str, Any]]:
        """Predictions for one request's texts, once the passes holding them have run."""
        if self.pending_texts + len(texts) > self.max_queue_texts:
            raise Overloaded
        loop = asyncio.get_running_loop()
        job = _Job(texts, top_k, loop.create_future(), loop.time(), thresholds)
        self._jobs.append(job)
        self.pending_texts += len(texts)
        assert self._wakeup is not None, "Batcher.start() was not awaited"
        self._wakeup.set()
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._jobs:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._jobs[0].arrival + self.timeout_s
            while self.pending_texts < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            jobs = [self._jobs.popleft()]
            n = len(jobs[0].texts)
            while self._jobs and n + len(self._jobs[0].texts) <= self.max_gather:
                jobs.append(self._jobs.popleft())
                n += len(jobs[-1].texts)
            self.pending_texts -= n
            jobs = [job for job in jobs if not job.future.done()]  # cancelled meanwhile (past the graceful timeout)
            if jobs:
                await self._run_jobs(loop, jobs)

    async def _run_jobs(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        """Run the jobs' texts in length groups; answer each job once its last text is done."""
        texts = [text for job in jobs for text in job.texts]
        owner = [j for j, job in enumerate(jobs) for _ in job.texts]
        first = [0]
        for job in jobs:
            first.append(first[-1] + len(job.texts))
        max_length = self.predictor.max_length
        lengths = [min(len(text), max_length) for text in texts]  # characters: close enough to ids to group by
        results: list[dict[str, Any] | None] = [None] * len(texts)
        left = [len(job.texts) for job in jobs]
        for group in length_groups(lengths, self.max_batch_size):
            group = [i for i in group if not jobs[owner[i]].future.done()]  # a failed or cancelled job's texts are skipped
            if not group:
                continue
            try:
                out = await loop.run_in_executor(self._executor, self._run, [texts[i] for i in group])
            except Exception as err:  # noqa: BLE001 - the requests with texts in this pass get it (as a 500)
                for j in {owner[i] for i in group}:
                    if not jobs[j].future.done():
                        jobs[j].future.set_exception(err)
                continue
            self.batches_run += 1
            self.texts_run += len(group)
            for i, result in zip(group, out):
                results[i] = result
                j = owner[i]
                left[j] -= 1
                if left[j] == 0 and not jobs[j].future.done():
                    jobs[j].future.set_result([self._answer(r, jobs[j]) for r in results[first[j] : first[j + 1]]])

    def _run(self, texts: list[str]) -> list[dict[str, Any]]:
        # All classes ranked once by the Predictor (multi-label: every label's probability, at
        # threshold 0); each request keeps its own top_k and thresholds (_answer).
        n_classes = len(self.predictor.label_names)
        if self.thresholds is None:
            return self.predictor.predict(texts, top_k=n_classes, batch_size=self.max_batch_size)
        return self.predictor.predict(texts, top_k=n_classes, batch_size=self.max_batch_size, threshold=0.0)

    def _answer(self, result: dict[str, Any], job: _Job) -> dict[str, Any]:
        """One text's answer from its pass result, with the request's top_k (and thresholds)."""
        ranked = [{"label": label, "probability": p} for label, p in result["top_k"][: job.top_k or 0]]
        if self.thresholds is None:
            return {"label": result["label"], "probability": result["probability"], "top_k": ranked}
        probabilities = result["probabilities"]  # every label's (the pass ran at threshold 0)
        chosen = [n for n, t in zip(self.predictor.label_names, job.thresholds or self.thresholds) if probabilities[n] >= t]
        answer: dict[str, Any] = {"labels": chosen, "probabilities": {n: probabilities[n] for n in chosen}}
        if job.top_k:
            answer["top_k"] = ranked
        return answer


# ----------------------------------------------------------------------------- the app


class _AccessLog:
    """ASGI wrapper: one log line per HTTP request (client, method, path, status, texts, latency)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info(
                '%s "%s %s" %d texts=%d %.1f ms',
                client[0], scope["method"], scope["path"], status, state.get("texts", 0), (time.perf_counter() - start) * 1e3,
            )


def _one_line(err: Any) -> str:
    """A pydantic ValidationError as one line: the first problem, where it is, and how many more."""
    first = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    more = err.error_count() - 1
    return f"{where + ': ' if where else ''}{first['msg']}{f' (and {more} more problems)' if more else ''}"


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 4.0 as the integer 4: a float without a fraction becomes that int (all else stays strict)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finite(x: float) -> float | None:
    """x, or None (JSON null) where it is NaN or infinite: JSON has no such numbers."""
    return float(x) if math.isfinite(x) else None


def explain_problem(predictor: Any) -> str | None:
    """Why POST /explain cannot explain this predictor's predictions, in one line (None: it can)."""
    if getattr(predictor, "thresholds", None) is not None:
        return "explanations are for single-label models (they attribute a softmax probability); this model is multi-label"
    if getattr(predictor, "is_series", False):
        return "explanations attribute a prediction to the characters of a text; this is a series model"
    if getattr(predictor, "members", None):
        return "an ensemble is explained member by member; serve one member's folder to explain it"
    if importlib.util.find_spec("captum") is None:
        return "explanations need Captum on the server: pip install 'vdcnn-res[explain]'"
    return None


def demo_page() -> tuple[str, str]:
    """The demo page (inference/demo.html) and its Content-Security-Policy.

    The policy allows the page's own inline script and style by their SHA-256 only, requests
    to this server only, and nothing else: no external assets, and no script that might be
    injected into the page would run.
    """
    page = importlib.resources.files("vdcnn_res.inference").joinpath("demo.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        import base64
        import re

        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
              "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, policy


def create_app(predictor: Any, settings: ServeSettings) -> Any:
    """The ASGI app serving `predictor` (a Predictor) with `settings`' limits, batching and API key."""
    from fastapi import Depends, FastAPI, HTTPException, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

    from vdcnn_res import __version__

    _configure_logging()
    n_classes = len(predictor.label_names)

    multilabel = getattr(predictor, "thresholds", None) is not None
    task = "multilabel" if multilabel else "multiclass"  # the vocabulary of data.task and config.json
    cannot_explain = explain_problem(predictor)
    # JSON Schema's integer includes 4.0, so the server takes it (and 4.5, "4" or true stay refused). The
    # bounds come before the validator: after it, pydantic publishes them as "ge"/"le", which JSON Schema ignores.
    TopK = Annotated[int, Field(ge=1, le=n_classes), BeforeValidator(_whole_number)]  # noqa: N806 - a type
    Probability = Annotated[float, Field(ge=0.0, le=1.0)]  # noqa: N806 - a type
    LabelName = Literal[tuple(predictor.label_names)]  # type: ignore[valid-type]  # noqa: N806 - a type

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        # maxItems is published; the limit itself is checked after parsing, with a message that says what to do.
        texts: list[str] = Field(min_length=1, json_schema_extra={"maxItems": settings.max_texts},
                                 description=f"1 to {settings.max_texts} texts; longer than max_length are cut")
        top_k: TopK = Field(1, description="how many (label, probability) pairs per text")

    class MultiLabelRequest(PredictRequest):
        top_k: TopK | None = Field(None, description="also rank the k most probable labels")
        threshold: Probability | Annotated[list[Probability], Field(min_length=n_classes, max_length=n_classes)] | None = Field(
            None, description="replaces the model's per-label thresholds: one in [0, 1], or one per label")

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        text: str = Field(min_length=1, description="the text to explain; characters beyond max_length are not read")
        label: LabelName | None = Field(None, description="explain this label (default: the predicted one)")

    class Ranked(BaseModel):
        label: str
        probability: float

    class Prediction(BaseModel):
        label: str
        probability: float
        top_k: list[Ranked]

    class LabelSet(BaseModel):
        labels: list[str]
        probabilities: dict[str, float]
        top_k: list[Ranked] | None = None

    class PredictResponse(BaseModel):
        predictions: list[LabelSet] if multilabel else list[Prediction]  # type: ignore[valid-type]

    class ExplainResponse(BaseModel):
        text: str = Field(description="the characters the model read (the first max_length)")
        label: str = Field(description="the label explained")
        predicted: str
        probabilities: list[Ranked] = Field(description="every label, most probable first")
        attributions: list[float | None] = Field(
            description="one per character of text: + for the label, - against (log-probability units); null: not scored")
        unknown: list[int] = Field(description="positions of characters outside the vocabulary (read as <unk>)")
        n_cut: int = Field(description="characters beyond max_length, not read")
        delta: float | None = Field(description="integrated gradients' completeness error")
        n_steps: int
        ngram_attribution: float | None = Field(description="the part of the attributions that came through the n-gram bag")

    class Problem(BaseModel):
        detail: str = Field(description="what is wrong and what to do, in one line")

    RequestBody = MultiLabelRequest if multilabel else PredictRequest  # noqa: N806 - a class
    usage = f'{{"texts": ["..."], "top_k": 1..{n_classes}' + (', "threshold": 0.5}' if multilabel else "}")

    batcher = Batcher(predictor, settings.max_batch_size, settings.batch_timeout_ms / 1e3, settings.max_queue_texts,
                      settings.max_gather)
    explaining = 0  # /explain requests queued or running
    page, page_policy = demo_page()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.warm_up()
        await batcher.start()
        logger.info("worker %d ready: %s, %d classes, precision %s", os.getpid(), settings.model, n_classes,
                    "bf16" if predictor.bf16 else "fp32")
        yield
        await batcher.stop()
        logger.info("worker %d stopped", os.getpid())

    app = FastAPI(
        title="vdcnn-res",
        version=__version__,
        description="Character-level VDCNN text classifier. Concurrent requests are batched dynamically.",
        lifespan=lifespan,
    )

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status, headers=headers)

    key = settings.api_key.encode() if settings.api_key else None
    bearer = HTTPBearer(auto_error=False, description=f"the server's API key (--api-key or {API_KEY_ENV})")

    async def require_key(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        # Starlette decodes headers as latin-1: encoding back gives the bytes the client sent.
        given = credentials.credentials.encode("latin-1") if credentials is not None else b""
        if not hmac.compare_digest(given, key):
            what = "a wrong API key" if given else "no API key"
            raise HTTPException(401, f"{what}; send the header 'Authorization: Bearer KEY' with the server's key",
                                headers={"WWW-Authenticate": "Bearer"})

    protected = [Depends(require_key)] if key is not None else []
    failures: dict[int | str, dict[str, Any]] = {
        400: {"model": Problem, "description": "not UTF-8 or not JSON"},
        413: {"model": Problem, "description": "body too large"},
        422: {"model": Problem, "description": "wrong fields or values"},
        503: {"model": Problem, "description": "queue full, retry", "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
    }
    if key is not None:
        failures[401] = {"model": Problem, "description": "no or wrong API key",
                         "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}}

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(str(e.get("msg")) for e in exc.errors()[:1]) or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal server error; the server log has the details")

    async def read_json(request: Request, model: type[BaseModel], usage_: str) -> Any:
        """The request body parsed into `model`, or the JSONResponse (4xx, one line) saying why not."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return error(413, f"request body over {settings.max_body_bytes} bytes; send fewer or shorter texts per request")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                return error(413, f"request body over {settings.max_body_bytes} bytes; send fewer or shorter texts per request")
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError as err:
            return error(400, f"request body is not valid UTF-8 (byte {err.start}); send JSON encoded as UTF-8")
        try:
            return model.model_validate_json(bytes(body))
        except ValidationError as err:
            kind = err.errors(include_url=False)[0]["type"]
            if kind == "json_invalid":
                return error(400, f"request body is not valid JSON ({_one_line(err).removeprefix('Invalid JSON: ')})")
            return error(422, f"{_one_line(err)}; send {usage_}")

    def body_schema(model: type[BaseModel]) -> dict[str, Any]:
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        summary="Label (multi-label: label set), probabilities and the top_k labels of each text, in input order",
        openapi_extra=body_schema(RequestBody),
        responses=failures,
        dependencies=protected,
    )
    async def predict(request: Request) -> Any:
        parsed = await read_json(request, RequestBody, usage)
        if isinstance(parsed, JSONResponse):
            return parsed
        if len(parsed.texts) > settings.max_texts:
            return error(422, f"{len(parsed.texts)} texts in one request; at most {settings.max_texts} (split the request)")
        thresholds = None
        if multilabel and parsed.threshold is not None:
            try:
                thresholds = predictor.resolve_thresholds(parsed.threshold)
            except UserError as err:
                return error(422, str(err))
        request.scope.setdefault("state", {})["texts"] = len(parsed.texts)
        try:
            predictions = await batcher.predict(parsed.texts, parsed.top_k, thresholds)
        except Overloaded:
            return error(503, "the server is busy (too many queued texts); retry shortly", {"Retry-After": "1"})
        return {"predictions": predictions}

    @app.post(
        "/explain",
        response_model=ExplainResponse,
        summary="Per-character integrated-gradients attributions of one text for a label (default: the predicted one)",
        openapi_extra=body_schema(ExplainRequest),
        responses=failures,
        dependencies=protected,
        include_in_schema=cannot_explain is None,  # else it only answers 501 with the reason (also in /metadata)
    )
    async def explain(request: Request) -> Any:
        nonlocal explaining
        if cannot_explain is not None:
            return error(501, cannot_explain)
        parsed = await read_json(request, ExplainRequest, '{"text": "...", "label": "<a label name>" (optional)}')
        if isinstance(parsed, JSONResponse):
            return parsed
        if explaining >= _MAX_EXPLAIN_PENDING:
            return error(503, "the server is busy (too many explanations queued); retry shortly", {"Retry-After": "1"})
        request.scope.setdefault("state", {})["texts"] = 1
        explaining += 1
        try:  # in the model's thread: one model call at a time, between the batcher's passes
            e = await asyncio.get_running_loop().run_in_executor(
                batcher._executor, lambda: predictor.explain(parsed.text, parsed.label))
        except UserError as err:
            return error(422, str(err))
        finally:
            explaining -= 1
        n_read = len(e.text) - e.n_cut
        return {
            "text": e.text[:n_read],
            "label": e.label,
            "predicted": e.predicted,
            "probabilities": [{"label": name, "probability": p} for name, p in e.top_k(n_classes)],
            "attributions": [_finite(a) for a in e.attributions[:n_read].tolist()],
            "unknown": [int(i) for i in e.unknown[:n_read].nonzero()[0]],
            "n_cut": e.n_cut,
            "delta": _finite(e.delta),
            "n_steps": e.n_steps,
            "ngram_attribution": None if e.ngram_attribution is None else _finite(e.ngram_attribution),
        }

    @app.get("/health", summary="Liveness: ok while the server accepts requests (open even with an API key)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending_texts": batcher.pending_texts, "batches_run": batcher.batches_run,
                "texts_run": batcher.texts_run}

    @app.get("/metadata", summary="What the model predicts and how the server is set up", dependencies=protected,
             responses={401: failures[401]} if key is not None else None)
    async def metadata() -> dict[str, Any]:
        return {
            "task": task,
            "label_names": list(predictor.label_names),
            "thresholds": list(predictor.thresholds) if multilabel else None,
            "num_classes": n_classes,
            "max_length": predictor.max_length,
            "architecture": asdict(predictor.model.config),
            "version": __version__,
            "precision": "bf16" if predictor.bf16 else "fp32",
            "device": str(predictor.device),
            "explain": cannot_explain is None,
            "explain_problem": cannot_explain,
            "limits": {
                "max_texts": settings.max_texts,
                "max_body_bytes": settings.max_body_bytes,
                "max_batch_size": settings.max_batch_size,
                "max_gather": settings.max_gather,
                "batch_timeout_ms": settings.batch_timeout_ms,
                "max_queue_texts": settings.max_queue_texts,
            },
        }

    @app.get("/", response_class=HTMLResponse, summary="The demo page (static; it calls /metadata, /predict and /explain)")
    async def demo() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_policy, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    return _AccessLog(app)


def app_from_env() -> Any:
    """App factory for the worker processes of ``--workers K`` (uvicorn imports it by name)."""
    raw = json.loads(os.environ[_SETTINGS_ENV])
    settings = ServeSettings(**{f.name: raw[f.name] for f in fields(ServeSettings) if f.name in raw})
    return create_app(load_predictor(settings), settings)


def _configure_logging() -> None:
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# ----------------------------------------------------------------------------- running


def serve(settings: ServeSettings) -> None:
    """Load the model and serve it until SIGTERM/SIGINT (graceful: in-flight requests finish)."""
    require_serve()
    settings.validate()
    import uvicorn

    _configure_logging()
    predictor = load_predictor(settings)  # a bad folder fails here, before the port is taken
    config = uvicorn.Config(
        create_app(predictor, settings) if settings.workers == 1 else "vdcnn_res.inference.server:app_from_env",
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,  # _AccessLog writes one line per request instead
        log_level="warning",
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        limit_concurrency=None,
        server_header=False,
    )
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logs the OS error and exits 1
        raise UserError(f"cannot listen on {settings.host}:{settings.port}; pick another --port or --host") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logger.info("serving %s on http://%s:%d (%d worker%s; demo page at /, docs at /docs%s)", settings.model, shown, port,
                settings.workers, "s" if settings.workers > 1 else "", "; API key required" if settings.api_key else "")
    if settings.api_key is None and not is_loopback(settings.host):
        logger.warning("listening on %s without an API key: anyone who can reach port %d can use the model; "
                       "set %s (or --api-key) to require one", settings.host, port, API_KEY_ENV)
    server = uvicorn.Server(config)
    if settings.workers == 1:
        server.run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    del predictor  # each worker process loads its own
    os.environ[_SETTINGS_ENV] = json.dumps(asdict(settings))
    Multiprocess(config, sockets=[sock]).run()  # as uvicorn.run does; SIGTERM reaches every worker
