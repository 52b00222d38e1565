"""The HTTP prediction server behind `vdcnn-res serve`: FastAPI + uvicorn and a dynamic batcher.

    POST /predict   {"texts": ["...", ...], "top_k": 3} -> {"predictions": [{"label", "probability", "top_k"}]}
                    (multi-label models: [{"labels", "probabilities", "top_k" if asked}]; "threshold" overrides)
    GET  /health    {"status": "ok", "pending_texts": queued, "batches_run": model calls, "texts_run": texts}
    GET  /metadata  label names, max_length, task, architecture, package version, server limits
    GET  /docs      the OpenAPI page FastAPI generates (/openapi.json)

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
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vdcnn_res.errors import UserError

__all__ = ["ServeSettings", "create_app", "length_groups", "load_predictor", "require_serve", "serve"]

logger = logging.getLogger("vdcnn_res.serve")
_SETTINGS_ENV = "VDCNN_RES_SERVE_SETTINGS"  # settings for the worker processes of --workers K > 1
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
        path = Path(self.model)
        if path.is_file() or path.suffix == ".ckpt":
            raise UserError(
                f"--model {self.model!r} is a checkpoint; the server loads only exported folders (safetensors + JSON, "
                f"no pickle): run `vdcnn-res export --ckpt_path {self.model} --out_dir exports/NAME` and serve exports/NAME"
            )


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


def create_app(predictor: Any, settings: ServeSettings) -> Any:
    """The ASGI app serving `predictor` (a Predictor) with `settings`' limits and batching."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from vdcnn_res import __version__

    _configure_logging()
    n_classes = len(predictor.label_names)

    multilabel = getattr(predictor, "thresholds", None) is not None
    task = "multilabel" if multilabel else "multiclass"  # the vocabulary of data.task and config.json

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        texts: list[str] = Field(min_length=1, description=f"1 to {settings.max_texts} texts; longer than max_length are cut")
        top_k: int = Field(1, ge=1, le=n_classes, description="how many (label, probability) pairs per text")

    class MultiLabelRequest(PredictRequest):
        top_k: int | None = Field(None, ge=1, le=n_classes, description="also rank the k most probable labels")
        threshold: float | list[float] | None = Field(
            None, description="replaces the model's per-label thresholds: one in [0, 1], or one per label")

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

    RequestBody = MultiLabelRequest if multilabel else PredictRequest  # noqa: N806 - a class
    usage = f'{{"texts": ["..."], "top_k": 1..{n_classes}' + (', "threshold": 0.5}' if multilabel else "}")

    batcher = Batcher(predictor, settings.max_batch_size, settings.batch_timeout_ms / 1e3, settings.max_queue_texts,
                      settings.max_gather)

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

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "; ".join(str(e.get("msg")) for e in exc.errors()[:1]) or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal server error; the server log has the details")

    @app.post(
        "/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        summary="Label (multi-label: label set), probabilities and the top_k labels of each text, in input order",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": RequestBody.model_json_schema()}}}},
        responses={400: {"description": "not UTF-8 or not JSON"}, 413: {"description": "body too large"},
                   422: {"description": "wrong fields or values"}, 503: {"description": "queue full, retry"}},
    )
    async def predict(request: Request) -> Any:
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
            parsed = RequestBody.model_validate_json(bytes(body))
        except ValidationError as err:
            kind = err.errors(include_url=False)[0]["type"]
            if kind == "json_invalid":
                return error(400, f"request body is not valid JSON ({_one_line(err).removeprefix('Invalid JSON: ')})")
            return error(422, f"{_one_line(err)}; send {usage}")
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

    @app.get("/health", summary="Liveness: ok while the server accepts requests")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "pending_texts": batcher.pending_texts, "batches_run": batcher.batches_run,
                "texts_run": batcher.texts_run}

    @app.get("/metadata", summary="What the model predicts and how the server is set up")
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
            "limits": {
                "max_texts": settings.max_texts,
                "max_body_bytes": settings.max_body_bytes,
                "max_batch_size": settings.max_batch_size,
                "max_gather": settings.max_gather,
                "batch_timeout_ms": settings.batch_timeout_ms,
                "max_queue_texts": settings.max_queue_texts,
            },
        }

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
    logger.info("serving %s on http://%s:%d (%d worker%s; docs at /docs)", settings.model, shown, port,
                settings.workers, "s" if settings.workers > 1 else "")
    server = uvicorn.Server(config)
    if settings.workers == 1:
        server.run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    del predictor  # each worker process loads its own
    os.environ[_SETTINGS_ENV] = json.dumps(asdict(settings))
    Multiprocess(config, sockets=[sock]).run()  # as uvicorn.run does; SIGTERM reaches every worker
