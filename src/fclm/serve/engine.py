"""What the batch worker runs: checked requests → one pipeline call per batch → JSON answers.

Requests are grouped by a key (task + decoding options); a group runs through the pipeline's
multi-item entry points (``describe_many``, ``classify_many``, ``run_grounding``, ``ground_many``),
which decode all their rows together. ``segment`` and the chat endpoint share ``run_grounding``.
"""
from __future__ import annotations

import base64
import io
import logging
from typing import Any, Hashable

from .limits import APIError
from .schemas import ParsedRequest

__all__ = ["batch_key", "rows_of", "execute", "to_json", "as_api_error"]

log = logging.getLogger("fclm.serve")


def batch_key(req: ParsedRequest) -> Hashable:
    o, n = req.options, req.max_new_tokens
    if req.task == "describe":
        return ("describe", o["detailed"], o.get("prompt"), n)
    if req.task == "classify":
        return ("classify", o.get("prompt"), n)
    if req.task in ("segment", "chat"):
        return ("grounding", n)
    if req.task == "ground":
        return ("ground", o.get("prompt"), n)
    raise ValueError(f"unknown task {req.task}")


def rows_of(req: ParsedRequest) -> int:
    """Decode rows a request adds to a batch (a row per region for describe / classify)."""
    return len(req.regions) if req.task in ("describe", "classify") else 1


def grounding_query(pipe, req: ParsedRequest) -> tuple:
    """(image, prompt, answer, regions) for ``run_grounding``."""
    from ..infer.pipeline import PROMPTS

    o = req.options
    if req.task == "chat":
        return (req.image, o["prompt"], None, req.regions)
    prompt = pipe.build_segment_prompt(o["text"], o["prompt_style"])
    answer = o.get("answer")
    if o.get("teacher_forced") and answer is None:
        answer = PROMPTS["seg_answer"]
    return (req.image, prompt, answer, req.regions)


def execute(pipe, key: Hashable, reqs: list[ParsedRequest]) -> list[Any]:
    """Run one batch of compatible requests; one pipeline result per request."""
    task, n = key[0], key[-1]
    gen = {"max_new_tokens": n} if n is not None else {}
    if task == "describe":
        return pipe.describe_many([(r.image, r.regions) for r in reqs], key[1], key[2], **gen)
    if task == "classify":
        return pipe.classify_many([(r.image, r.regions) for r in reqs], key[1], **gen)
    if task == "grounding":
        return pipe.run_grounding([grounding_query(pipe, r) for r in reqs], **gen)
    if task == "ground":
        return pipe.ground_many([r.image for r in reqs], key[1], **gen)
    raise ValueError(f"unknown batch key {key!r}")


def as_api_error(e: BaseException) -> APIError:
    """Exceptions from the pipeline → HTTP errors (bad input 400, anything else 500)."""
    from ..data.schema import FCLMDataError

    if isinstance(e, APIError):
        return e
    if isinstance(e, (FCLMDataError, ValueError, TypeError)):
        return APIError(400, "invalid_input", str(e))
    log.error("request failed", exc_info=e)
    return APIError(500, "internal_error", f"{type(e).__name__}: {e}")


def _png_b64(im) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def to_json(req: ParsedRequest, result: Any) -> dict:
    """A pipeline result → the response body; ``return_overlay`` adds ``overlay_png`` (base64 PNG) and
    the overlay colour of each region / mask / phrase."""
    from ..data.overlay import color

    h, w = req.image.size[1], req.image.size[0]
    if req.task in ("describe", "classify"):
        out = {"task": req.task, "image_size": [h, w], "regions": [r.to_dict() for r in result]}
        if req.task == "classify":
            out["labels"] = [r.text for r in result]
    elif req.task == "ground":
        out = {"task": "ground", **result.to_dict()}
    else:
        out = {"task": "segment", **result.to_dict()}
    if req.return_overlay:
        from ..infer.visualize import draw_result

        out["overlay_png"] = _png_b64(draw_result(req.image, result, req.regions, legend=False))  # the client shows the legend
        if req.task in ("describe", "classify"):
            out["colors"] = [list(color(i)) for i in range(len(result))]
        elif req.task == "ground":
            k = 0
            for p, pj in zip(result.phrases, out["phrases"]):
                pj["color"] = list(color(k)) if p.mask is not None else None
                k += p.mask is not None
        else:
            out["colors"] = [list(color(i)) for i in range(len(result.masks))]
    return out
