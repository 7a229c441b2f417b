"""`fclm demo`: a one-page browser UI on top of the HTTP API (plain HTML + JavaScript, no build step).

The page (``static/demo.html``) is served at ``/``; it calls the same ``/v1/*`` endpoints a client
would, with ``return_overlay`` set, and shows the server-drawn overlay. Example images are held-out
scenes of the synthetic world (``/demo/examples``), so the quickstart model works with no data.

Why not gradio: every gradio release that installs beside this project's pillow 13 is from 2023
(3.36, older than gradio-client 2); all current ones pin ``pillow<13``.
"""
from __future__ import annotations

import functools
import io
import os

__all__ = ["add_demo_routes", "example_scenes"]

N_EXAMPLES = 6
STATIC = os.path.join(os.path.dirname(__file__), "static")


@functools.lru_cache(maxsize=1)
def example_scenes() -> list[dict]:
    """Held-out synthetic test scenes: PNG bytes and a referring expression to try."""
    from ..data.synthetic import generate_scenes

    out = []
    for s in generate_scenes(N_EXAMPLES, "test", seed=0):
        buf = io.BytesIO()
        s.image.open().save(buf, format="PNG")
        o = s.objects[0]
        hint = (o.expressions[0] if o.expressions else o.category) or ""
        out.append({"png": buf.getvalue(), "hint": hint, "name": s.id})
    return out


def add_demo_routes(app) -> tuple[str, ...]:
    """Add ``/`` and ``/demo/...`` to ``app``; returns those paths (they hold no model output, so they
    are reachable without the API key; the page asks for the key and sends it with its API calls)."""
    from fastapi import Response
    from fastapi.responses import HTMLResponse

    from .limits import APIError

    with open(os.path.join(STATIC, "demo.html"), encoding="utf-8") as f:
        page = f.read()

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    @app.get("/demo/examples", include_in_schema=False)
    async def examples():
        return [{"name": e["name"], "url": f"/demo/examples/{i}.png", "hint": e["hint"]}
                for i, e in enumerate(example_scenes())]

    @app.get("/demo/examples/{index}.png", include_in_schema=False)
    async def example(index: int):
        ex = example_scenes()
        if not 0 <= index < len(ex):
            raise APIError(404, "not_found", f"no example {index}; there are {len(ex)}")
        return Response(ex[index]["png"], media_type="image/png")

    return ("/", "/demo/*")
