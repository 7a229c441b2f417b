"""Helpers for the serving tests and the load benchmark: a tiny model whose answers depend on the input,
and a minimal loopback JSON client (standard library only)."""
from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

__all__ = ["varied_tiny_pipeline", "png_b64", "post_json", "get_json"]


def varied_tiny_pipeline(seed: int = 0, texts=None):
    """An in-memory tiny random FCLM pipeline with an untied, unit-variance LM head and 6x sharper
    language-model attention (query/key weights scaled).

    A freshly initialised tiny model answers every prompt with the same token; this one's greedy answers
    differ from image to image and region to region (16 of 16 synthetic scenes give 16 different
    descriptions), so a load test can tell whose answer a response holds."""
    import torch

    from ..infer import FCLMPipeline
    from ..model.builders import build_tiny

    model, proc = build_tiny(None, seed=seed, texts=texts)
    head = model.get_output_embeddings()
    g = torch.Generator().manual_seed(seed)
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=g, dtype=head.weight.dtype))
    with torch.no_grad():  # sharper attention: the answer then depends on the image and region, not only the prompt
        for name, p in model.named_parameters():
            if name.startswith("model.language_model.") and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    return FCLMPipeline(model, proc)


def png_b64(image) -> str:
    """A PIL image → base64 PNG text."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def post_json(url: str, body=None, headers: dict | None = None, data: bytes | None = None,
              timeout: float = 120.0) -> tuple[int, dict]:
    """POST ``body`` as JSON (or raw ``data``) → (status, parsed JSON answer); HTTP errors are returned too."""
    h = {"Content-Type": "application/json", **(headers or {})}
    raw = data if data is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, raw, h, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get_json(url: str, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
