"""`fclm serve` (HTTP API with dynamic batching) and `fclm demo` (the same API plus a browser UI).

Both bind 127.0.0.1 by default. With --api-key KEY (or the FCLM_API_KEY environment variable) every
API request needs `Authorization: Bearer KEY`; binding any other address without a key is refused
unless --insecure is given. See docs/serving.md.
"""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  fclm serve --model fclm-quickstart/model --port 8000
  curl -s localhost:8000/health
  fclm serve --model DIR --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
  fclm demo                      # the quickstart model, UI at http://127.0.0.1:7860
"""


def _add_common(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--model", metavar="DIR", help="FCLM model folder (default: ./fclm-quickstart/model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=port, help=f"port (default {port}; 0 = any free port)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $FCLM_API_KEY when set)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="default: bfloat16 on GPU, float32 on CPU")
    g = p.add_argument_group("batching and limits")
    g.add_argument("--max-batch-size", type=int, default=16, help="rows decoded together (default 16)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="wait for more requests at most this long (default 10)")
    g.add_argument("--no-batching", action="store_true", help="run every request alone (= --max-batch-size 1)")
    g.add_argument("--max-queue", type=int, default=256, help="requests queued or running; more get 429 (default 256)")
    g.add_argument("--max-body-mb", type=float, default=32.0, help="request body size limit in MiB (default 32)")
    g.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="image size limit (default 4096*4096)")
    g.add_argument("--max-regions", type=int, default=32, help="regions per request (default 32)")
    g.add_argument("--max-text-chars", type=int, default=4000, help="characters of text per field (default 4000)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="the most a request may generate (default 1024)")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take before a 503 (default 600)")


def register(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("serve", help="serve a model over HTTP (JSON API, OpenAI-style chat, dynamic batching)",
                       description=__doc__, epilog=EPILOG, formatter_class=fmt)
    _add_common(p, 8000)
    p.set_defaults(func=run_serve, demo=False)
    p = sub.add_parser("demo", help="browser demo: click a region to describe it, type text to segment it",
                       description=__doc__, epilog=EPILOG, formatter_class=fmt)
    _add_common(p, 7860)
    p.set_defaults(func=run_demo, demo=True)


def _fail(cmd: str, msg: str) -> int:
    print(f"fclm {cmd}: error: {msg}", file=sys.stderr)
    return 2


def run_demo(args) -> int:
    return run_serve(args)


def run_serve(args) -> int:
    cmd = "demo" if args.demo else "serve"
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        return _fail(cmd, f"serving needs FastAPI and uvicorn ({e.name} is missing): pip install 'fclm[serve]'")
    from ..data.schema import FCLMDataError
    from .app import ServerThread, create_app, is_loopback
    from .limits import ServeLimits

    key = args.api_key or os.environ.get("FCLM_API_KEY") or None
    if not is_loopback(args.host) and not key and not args.insecure:
        return _fail(cmd, f"refusing to bind {args.host} (reachable from other machines) without an API key: "
                          f"give --api-key KEY (or set FCLM_API_KEY), or --insecure to serve it open")
    if not 0 <= args.port <= 65535:
        return _fail(cmd, f"--port {args.port} is not a port number (0-65535)")
    try:
        limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
                             max_regions=args.max_regions, max_text_chars=args.max_text_chars,
                             max_new_tokens=args.max_new_tokens, max_queue=args.max_queue,
                             max_batch_size=1 if args.no_batching else args.max_batch_size,
                             max_wait_ms=args.max_wait_ms)
    except ValueError as e:
        return _fail(cmd, str(e))
    from ..infer import FCLMPipeline

    try:
        pipe = FCLMPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, FCLMDataError, ValueError, OSError) as e:
        return _fail(cmd, str(e))
    name = os.path.basename(os.path.normpath(args.model)) if args.model else "fclm-quickstart"
    app = create_app(pipe, limits, key, model_name=name, demo=args.demo, request_timeout_s=args.timeout)
    try:
        srv = ServerThread(app, args.host, args.port, log_level="info")
    except OSError as e:
        return _fail(cmd, f"cannot bind {args.host}:{args.port}: {e.strerror or e}")
    what = "demo" if args.demo else "API"
    print(f"fclm {cmd}: {what} at {srv.url}/ (model {args.model or 'fclm-quickstart/model'}; "
          f"{'API key required' if key else 'no API key'}; batching "
          f"{'off' if limits.max_batch_size == 1 else f'up to {limits.max_batch_size} rows, {limits.max_wait_ms:g} ms'})"
          f"; Ctrl-C stops", flush=True)
    srv.server.run(sockets=[srv.sock])  # Ctrl-C / SIGTERM: uvicorn's graceful shutdown
    return 0
