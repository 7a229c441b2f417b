"""The HTTP API (FastAPI): task endpoints, an OpenAI-compatible chat endpoint, health, auth, limits.

Endpoints (JSON in, JSON out; masks as COCO RLE; see ``docs/serving.md``):

* ``POST /v1/describe | /v1/classify | /v1/segment | /v1/ground`` — the pipeline's four tasks;
  the body is a JSON object with a base64 ``image``, or a multipart form with an ``image`` file and
  a ``request`` field holding the other fields as JSON.
* ``POST /v1/chat/completions`` — OpenAI chat format (one user message: text + one ``image_url``
  data URL); extension field ``regions`` gives one region per ``<region>`` in the text, and the
  answer's ``[SEG]`` masks come back in ``choices[i].message.masks``.
* ``GET /health`` — status, model, queue length, batch statistics and limits.

Every error is ``{"error": {"message", "type", "code", "param"}}`` with a 4xx/5xx status.
"""
# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (locally imported Request)

import asyncio
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from .engine import as_api_error, batch_key, execute, rows_of, to_json
from .limits import APIError, ServeLimits
from .schemas import (ParsedRequest, b64_bytes, check_text, decode_image, parse_body, parse_max_new_tokens,
                      parse_regions, parse_task)

__all__ = ["create_app", "ServerThread", "is_loopback"]

log = logging.getLogger("fclm.serve")
TASKS = ("describe", "classify", "segment", "ground")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _send_error(send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """ASGI middleware, before any parsing: Bearer auth (401), then the body size limit (413).

    The body is read here (at most ``max_body_bytes``) and replayed to the app, so an oversized
    upload is refused without being stored. ``public`` paths (the demo page; a trailing ``*`` = prefix) skip auth.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, public: tuple[str, ...] = ()):
        self.app, self.api_key, self.max_body, self.public = app, api_key, max_body_bytes, public

    def _public(self, path: str) -> bool:
        return any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in self.public)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and not self._public(scope["path"]):
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                msg = "missing API key: send 'Authorization: Bearer <key>'" if not auth else "invalid API key"
                return await _send_error(send, APIError(401, "invalid_api_key", msg,
                                                        headers={"WWW-Authenticate": "Bearer"}))
        too_big = APIError(413, "request_too_large", f"the request body is above this server's limit of "
                           f"{self.max_body} bytes")
        cl = headers.get("content-length")
        if cl is not None:
            try:
                if int(cl) > self.max_body:
                    return await _send_error(send, too_big)
            except ValueError:
                return await _send_error(send, APIError(400, "invalid_header", "Content-Length is not a number"))
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await _send_error(send, too_big)
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def parse_chat(body: dict, limits: ServeLimits) -> tuple[ParsedRequest, str]:
    """An OpenAI chat request → (request, model name). Unknown fields are ignored (clients send many)."""
    if body.get("stream"):
        raise APIError(400, "unsupported", "stream=true is not supported; send stream=false", "stream")
    if body.get("n", 1) != 1:
        raise APIError(400, "unsupported", "only n=1 is supported", "n")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "missing_field", "messages must be a non-empty list", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "system", "assistant", "developer", "tool"):
            raise APIError(400, "invalid_field", f"messages[{i}] must be an object with a role", "messages")
    if len(msgs) != 1 or msgs[0]["role"] != "user":
        raise APIError(400, "unsupported", "send exactly one user message (the system prompt is fixed by the model; "
                       "multi-turn chat is not served)", "messages")
    content = msgs[0].get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise APIError(400, "invalid_field", "messages[0].content must be a string or a list of parts", "messages")
    texts, images = [], []
    for j, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif kind == "image_url":
            url = p.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url.startswith("data:"):
                raise APIError(400, "invalid_field", f"messages[0].content[{j}]: the image must be a base64 data URL "
                               "(this server fetches nothing)", "messages")
            images.append(url)
        else:
            raise APIError(400, "invalid_field", f"messages[0].content[{j}]: expected a text or image_url part",
                           "messages")
    if len(images) != 1:
        raise APIError(400, "invalid_field", f"send exactly one image_url part, got {len(images)}", "messages")
    text = check_text(" ".join(t.strip() for t in texts).strip(), "messages[0].content", limits)
    if not text:
        raise APIError(400, "missing_field", "the user message has no text", "messages")
    _, image = decode_image(b64_bytes(images[0], "image_url"), limits, "image_url")
    regions = parse_regions(body.get("regions") or [], image, limits)
    if text.count("<region>") != len(regions):
        raise APIError(400, "region_count_mismatch", f"the text has {text.count('<region>')} <region> slot(s) but "
                       f"{len(regions)} region(s) were given in 'regions'", "regions")
    n = body.get("max_completion_tokens", body.get("max_tokens"))
    req = ParsedRequest("chat", image, regions, {"prompt": text}, parse_max_new_tokens(n, limits, "max_tokens"))
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    return req, model


def create_app(pipe, limits: ServeLimits | None = None, api_key: str | None = None, model_name: str = "fclm",
               demo: bool = False, request_timeout_s: float = 600.0):
    """The FastAPI app serving ``pipe`` (an :class:`fclm.infer.FCLMPipeline`). ``demo=True`` adds the
    browser UI at ``/`` (see :mod:`fclm.serve.demo`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServeLimits()
    pipe.max_pixels = limits.max_image_pixels
    pipe.batch_size = max(pipe.batch_size, limits.max_batch_size)
    batcher_box: dict[str, Any] = {}

    def start_batcher():
        from .batching import Batcher

        batcher_box["b"] = Batcher(lambda key, reqs: execute(pipe, key, reqs), limits.max_batch_size,
                                   limits.max_wait_ms, limits.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if "b" in batcher_box:
            batcher_box["b"].close()

    app = FastAPI(title="fclm", description=__doc__, lifespan=lifespan, docs_url="/docs" if demo else None,
                  redoc_url=None, openapi_url="/openapi.json" if demo else None)
    start_batcher()
    app.state.batcher = batcher_box["b"]
    app.state.limits = limits

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        msg = f"no endpoint {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(APIError(e.status_code, code, msg).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e):
        err = as_api_error(e)
        return JSONResponse(err.body(), status_code=err.status)

    async def read_request(request: Request) -> tuple[dict, bytes | None]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=2, max_part_size=limits.max_body_bytes)
            except Exception as e:
                raise APIError(400, "invalid_form", f"cannot read the multipart form: {e}") from e
            extra = sorted(set(form.keys()) - {"image", "request"})
            if extra:
                raise APIError(400, "unknown_field", f"multipart fields are 'image' (file) and 'request' (JSON); "
                               f"got {extra}", extra[0])
            up = form.get("image")
            if up is None or isinstance(up, str):
                raise APIError(400, "missing_field", "multipart requests need an 'image' file part", "image")
            data = await up.read()
            await up.close()
            raw = form.get("request") or "{}"
            return parse_body(raw.encode() if isinstance(raw, str) else await raw.read()), data
        if ctype not in ("application/json", ""):
            raise APIError(415, "unsupported_media_type", f"send application/json or multipart/form-data, not {ctype}")
        return parse_body(await request.body()), None

    async def run(req: ParsedRequest):
        fut = app.state.batcher.submit(batch_key(req), req, rows_of(req))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), request_timeout_s)
        except asyncio.TimeoutError as e:
            raise APIError(503, "timeout", f"the request did not finish within {request_timeout_s:g} s") from e
        except APIError:
            raise
        except Exception as e:
            raise as_api_error(e) from e

    @app.get("/health")
    async def health():
        b = app.state.batcher
        return {"status": "ok", "model": model_name, "tasks": list(TASKS) + ["chat"],
                "queue": b.queue_length(), "batching": dict(b.stats), "limits": limits.to_dict()}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse_body(await request.body())
        req, model = await run_in_threadpool(parse_chat, body, limits)
        res = await run(req)
        msg = {"role": "assistant", "content": res.text, "masks": res.to_rle()}
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model or model_name,
                "choices": [{"index": 0, "message": msg, "finish_reason": _finish(res.finish_reason)}]}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "fclm"}]}

    @app.post("/v1/{task}")
    async def task_endpoint(task: str, request: Request):
        if task not in TASKS:
            raise APIError(404, "unknown_task", f"unknown task {task!r}; endpoints: "
                           + ", ".join(f"/v1/{t}" for t in TASKS) + ", /v1/chat/completions")
        body, image_bytes = await read_request(request)
        req = await run_in_threadpool(parse_task, task, body, limits, image_bytes)
        res = await run(req)
        return JSONResponse(await run_in_threadpool(to_json, req, res))

    public: tuple[str, ...] = ()
    if demo:
        from .demo import add_demo_routes

        public = add_demo_routes(app)
    return GuardMiddleware(app, api_key, limits.max_body_bytes, public)


class ServerThread:
    """Run an ASGI app with uvicorn on a background thread, bound to ``host`` (port 0: a free port).

    >>> srv = ServerThread(app).start(); srv.url   # 'http://127.0.0.1:54321'
    >>> srv.stop()
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)  # connections made before uvicorn runs wait in the backlog
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def start(self, timeout: float = 30.0):
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()
