"""`vdcnn-res serve`: an exported model over HTTP with dynamic batching (inference/server.py).

    vdcnn-res serve --model exports/agnews [--host 127.0.0.1] [--port 8000] [--max-batch-size 64]
                    [--max-gather 256] [--batch-timeout 10] [--workers 1] [--api-key KEY]

With an API key (--api-key, or better the VDCNN_API_KEY environment variable: a command line
is visible to every user of the machine), /predict, /explain and /metadata need the header
``Authorization: Bearer KEY``; /health and the demo page at / stay open.
"""

from __future__ import annotations

import argparse
import os
import sys

from vdcnn_res.inference.server import API_KEY_ENV, ServeSettings, serve

__all__ = ["main"]


def main(argv: list[str]) -> None:
    """`vdcnn-res serve`: its own argparse (no Trainer, data or config)."""
    d = ServeSettings(model="")
    parser = argparse.ArgumentParser(
        prog="vdcnn-res serve",
        description="Serve an exported model (the --out_dir of `vdcnn-res export`) over HTTP: POST /predict, "
        "POST /explain, GET /health, GET /metadata, a demo page at /, OpenAPI page at /docs. "
        "Concurrent requests are batched together.",
    )
    parser.add_argument("--model", required=True, help="exported folder (model.safetensors, config.json, tokenizer.json)")
    parser.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port}; 0 picks a free one, printed at start)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"texts per forward pass (default {d.max_batch_size})")
    parser.add_argument("--max-gather", type=int, default=d.max_gather, metavar="N",
                        help=f"queued texts taken at once and sorted by length into forward passes of similar "
                        f"lengths, so less padding is computed (default {d.max_gather}; at least --max-batch-size)")
    parser.add_argument("--batch-timeout", type=float, default=d.batch_timeout_ms, metavar="MS",
                        help=f"longest wait for more texts after the oldest queued request, ms (default {d.batch_timeout_ms:g})")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help=f"server processes, each with its own copy of the model (default {d.workers})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's choice)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                        help="auto: bf16 where the device computes it natively, else fp32 (default auto)")
    parser.add_argument("--device", default=d.device, help=f"torch device (default {d.device})")
    parser.add_argument("--max-texts", type=int, default=d.max_texts, help=f"texts per request (default {d.max_texts})")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"request body size limit (default {d.max_body_bytes})")
    parser.add_argument("--max-queue-texts", type=int, default=d.max_queue_texts,
                        help=f"queued texts before new requests get 503 (default {d.max_queue_texts})")
    parser.add_argument("--graceful-timeout", type=float, default=d.graceful_timeout_s, metavar="S",
                        help=f"on SIGTERM, longest wait for in-flight requests, s (default {d.graceful_timeout_s:g})")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help=f"require 'Authorization: Bearer KEY' on /predict, /explain and /metadata (default: the "
                        f"{API_KEY_ENV} environment variable, which other users cannot read from the process list; "
                        "none: no key, and a warning when --host is not a loopback address)")
    args = parser.parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(
        model=args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_gather=args.max_gather,
        batch_timeout_ms=args.batch_timeout, workers=args.workers, max_texts=args.max_texts,
        max_body_bytes=args.max_body_bytes, max_queue_texts=args.max_queue_texts, precision=args.precision,
        device=args.device, threads=args.threads, graceful_timeout_s=args.graceful_timeout, api_key=api_key,
    )
    try:
        serve(settings)
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled gracefully
        sys.exit(130)
