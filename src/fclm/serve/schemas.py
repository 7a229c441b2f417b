"""Request parsing: JSON fields, images (base64 / data URL / upload) and regions, with clear 4xx errors.

Every request body is a JSON object (or a multipart form with an ``image`` file and a ``request``
field holding that JSON object). Unknown fields are refused (a typo is not silently ignored).

Regions (``regions``: a list, one item per region) may be:

* a box ``[x0, y0, x1, y1]`` or ``{"box": [x0, y0, x1, y1]}`` (pixels, x1/y1 exclusive), or a COCO
  box ``{"bbox": [x, y, w, h]}``;
* a polygon ``[x0, y0, x1, y1, x2, y2, ...]`` or ``{"polygon": [[...], ...]}`` (union of polygons);
* a COCO RLE ``{"size": [h, w], "counts": "..."}`` (compressed string or uncompressed list);
* a mask image ``{"png": "<base64>"}`` (non-zero pixels — or non-zero alpha — are the region);
* a point ``{"point": [x, y]}``: the connected pixels of similar colour around it (a "magic wand",
  what the demo's click uses; tolerance ``"tolerance"``, default 32).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .limits import APIError, ServeLimits

__all__ = ["ParsedRequest", "parse_body", "parse_task", "decode_image", "parse_regions", "point_region",
           "TASK_FIELDS"]

COMMON = {"image", "max_new_tokens", "return_overlay"}
TASK_FIELDS = {
    "describe": COMMON | {"regions", "detailed", "prompt"},
    "classify": COMMON | {"regions", "prompt"},
    "segment": COMMON | {"text", "regions", "teacher_forced", "answer", "prompt_style"},
    "ground": COMMON | {"prompt"},
}


@dataclass
class ParsedRequest:
    """A checked request: the decoded image, region masks, and the task's options."""

    task: str  # describe | classify | segment | ground | chat
    image: Any  # RGB PIL.Image
    regions: list[np.ndarray] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # task options (prompt, detailed, answer, ...)
    max_new_tokens: int | None = None
    return_overlay: bool = False


def bad(code: str, message: str, param: str | None = None, status: int = 400) -> APIError:
    return APIError(status, code, message, param)


def parse_body(raw: bytes) -> dict:
    """Request body bytes → JSON object (400 with the parser's message when malformed)."""
    try:
        body = json.loads(raw.decode("utf-8") if raw else "")
    except UnicodeDecodeError as e:
        raise bad("invalid_json", f"the request body is not UTF-8: {e}") from e
    except json.JSONDecodeError as e:
        raise bad("invalid_json", f"the request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from e
    if not isinstance(body, dict):
        raise bad("invalid_json", f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def b64_bytes(s: Any, param: str) -> bytes:
    """Base64 text (optionally a ``data:...;base64,`` URL) → bytes."""
    if not isinstance(s, str) or not s:
        raise bad("invalid_field", f"{param} must be a non-empty base64 string", param)
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise bad("invalid_field", f"{param}: only base64 data URLs are accepted", param)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad("invalid_base64", f"{param} is not valid base64: {e}", param) from e


def decode_image(data: bytes, limits: ServeLimits, param: str = "image"):
    """Encoded image bytes → RGB PIL image; the pixel count is checked from the header first (413)."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
    except Exception as e:  # PIL raises many types for bad data
        raise bad("invalid_image", f"{param} is not a readable image: {e}", param) from e
    if w * h > limits.max_image_pixels:
        raise APIError(413, "image_too_large", f"{param} is {w}x{h} = {w * h} pixels, above this server's "
                       f"limit of {limits.max_image_pixels}", param)
    if w == 0 or h == 0:
        raise bad("invalid_image", f"{param} is empty ({w}x{h})", param)
    try:
        im.load()
        return im, im.convert("RGB")
    except Exception as e:
        raise bad("invalid_image", f"{param} cannot be decoded: {e}", param) from e


def point_region(image, x: float, y: float, tolerance: int = 32) -> np.ndarray:
    """The connected pixels whose colour is within ``tolerance`` of the pixel at (x, y) (flood fill);
    a disc of radius min(H, W)/20 when that area is under 9 pixels."""
    from PIL import ImageDraw

    w, h = image.size
    xi, yi = int(x), int(y)
    arr = np.asarray(image)
    # a fill colour absent from the image, so the filled pixels are exactly the region
    fill = next(c for c in ((255, 0, 255), (1, 2, 3), (0, 255, 1), (254, 1, 253), (3, 254, 7))
                if not (arr == np.array(c, np.uint8)).all(-1).any())
    im = image.copy()
    ImageDraw.floodfill(im, (xi, yi), fill, thresh=tolerance)
    m = (np.asarray(im) == np.array(fill, np.uint8)).all(-1)
    if m.sum() < 9:
        r = max(3.0, min(w, h) / 20)
        yy, xx = np.mgrid[:h, :w]
        m = (yy - yi) ** 2 + (xx - xi) ** 2 <= r * r
    return m


def _png_mask(spec: Any, h: int, w: int, limits: ServeLimits, param: str) -> np.ndarray:
    mim, _ = decode_image(b64_bytes(spec, param), limits, param)
    if mim.size != (w, h):
        raise bad("region_size_mismatch", f"{param}: mask is {mim.size[0]}x{mim.size[1]} (WxH) but the image is "
                  f"{w}x{h}", param)
    if mim.mode in ("RGBA", "LA") or (mim.mode == "P" and "transparency" in mim.info):
        return np.asarray(mim.convert("RGBA"))[..., 3] > 0
    a = np.asarray(mim.convert("RGB") if mim.mode not in ("1", "L", "I", "I;16", "F") else mim)
    return (a != 0).any(-1) if a.ndim == 3 else a != 0


def parse_regions(regions: Any, image, limits: ServeLimits, param: str = "regions") -> list[np.ndarray]:
    """``regions`` (a list of region specs, see the module docstring) → HxW bool masks."""
    from ..data.schema import FCLMDataError
    from ..infer.inputs import load_region

    if not isinstance(regions, list):
        raise bad("invalid_field", f"{param} must be a list of regions (boxes, polygons, RLE, PNG or points)", param)
    if len(regions) > limits.max_regions:
        raise APIError(413, "too_many_regions", f"{param} has {len(regions)} regions, above this server's limit "
                       f"of {limits.max_regions}", param)
    w, h = image.size
    out = []
    for i, spec in enumerate(regions):
        p = f"{param}[{i}]"
        try:
            if isinstance(spec, dict) and "png" in spec:
                m = _png_mask(spec["png"], h, w, limits, p)
                if not m.any():
                    raise FCLMDataError(f"{p}: mask is empty")
            elif isinstance(spec, dict) and "point" in spec:
                pt = spec["point"]
                if not (isinstance(pt, list) and len(pt) == 2 and all(isinstance(v, (int, float)) for v in pt)):
                    raise FCLMDataError(f"{p}: point must be [x, y]")
                if not (0 <= pt[0] < w and 0 <= pt[1] < h):
                    raise FCLMDataError(f"{p}: point {pt} lies outside the {w}x{h} image")
                tol = spec.get("tolerance", 32)
                if not isinstance(tol, int) or not 0 <= tol <= 255:
                    raise FCLMDataError(f"{p}: tolerance must be an integer in [0, 255]")
                m = point_region(image, pt[0], pt[1], tol)
            else:
                if isinstance(spec, dict) and "polygon" in spec:
                    spec = spec["polygon"]
                if isinstance(spec, dict) and "counts" in spec and isinstance(spec.get("size"), list) \
                        and list(spec["size"]) != [h, w]:
                    raise FCLMDataError(f"{p}: RLE size {spec['size']} (HxW) does not match the {h}x{w} image")
                m = load_region(spec, h, w, p)
        except APIError:
            raise
        except (FCLMDataError, TypeError, ValueError, KeyError) as e:
            code = "region_size_mismatch" if "does not match" in str(e) or "but the image is" in str(e) else "invalid_region"
            raise bad(code, str(e) if str(e).startswith(p) else f"{p}: {e}", p) from e
        out.append(m)
    return out


def _opt(body: dict, name: str, kind, default=None, task: str = ""):
    v = body.get(name, default)
    if v is None or v is default:
        return v
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        names = {str: "a string", bool: "true or false", int: "an integer"}
        raise bad("invalid_field", f"{name} must be {names.get(kind, kind.__name__)}", name)
    return v


def check_text(text: str, name: str, limits: ServeLimits) -> str:
    if len(text) > limits.max_text_chars:
        raise APIError(413, "text_too_long", f"{name} has {len(text)} characters, above this server's limit of "
                       f"{limits.max_text_chars}", name)
    return text


def parse_max_new_tokens(v: Any, limits: ServeLimits, name: str = "max_new_tokens") -> int | None:
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise bad("invalid_field", f"{name} must be a positive integer", name)
    if v > limits.max_new_tokens:
        raise bad("invalid_field", f"{name}={v} is above this server's limit of {limits.max_new_tokens}", name)
    return v


def parse_task(task: str, body: dict, limits: ServeLimits, image_bytes: bytes | None = None) -> ParsedRequest:
    """Check a task request body (plus an uploaded image, when given) → :class:`ParsedRequest`."""
    if task not in TASK_FIELDS:
        raise APIError(404, "unknown_task", f"unknown task {task!r}; tasks: {sorted(TASK_FIELDS)}")
    unknown = sorted(set(body) - TASK_FIELDS[task])
    if unknown:
        raise bad("unknown_field", f"unknown field(s) {unknown} for {task}; accepted: {sorted(TASK_FIELDS[task])}",
                  unknown[0])
    if image_bytes is None:
        if "image" not in body:
            raise bad("missing_field", "image is required (base64 / data URL in JSON, or a multipart upload)", "image")
        image_bytes = b64_bytes(body["image"], "image")
    elif "image" in body:
        raise bad("invalid_field", "give the image once: as an upload or as a JSON field, not both", "image")
    _, image = decode_image(image_bytes, limits)
    req = ParsedRequest(task, image, max_new_tokens=parse_max_new_tokens(body.get("max_new_tokens"), limits),
                        return_overlay=bool(_opt(body, "return_overlay", bool, False)))
    prompt = _opt(body, "prompt", str)
    if prompt is not None:
        req.options["prompt"] = check_text(prompt, "prompt", limits)
    if task in ("describe", "classify"):
        if "regions" not in body:
            raise bad("missing_field", f"regions is required for {task}", "regions")
        req.regions = parse_regions(body["regions"], image, limits)
        if not req.regions:
            raise bad("invalid_field", "regions is empty: give at least one region", "regions")
        if prompt is not None and prompt.count("<region>") != 1:
            raise bad("invalid_field", "prompt must hold exactly one <region> slot", "prompt")
        if task == "describe":
            req.options["detailed"] = _opt(body, "detailed", bool, True)
    elif task == "segment":
        text = _opt(body, "text", str)
        if not text or not text.strip():
            raise bad("missing_field", "text is required for segment (a referring expression, question or caption)",
                      "text")
        check_text(text, "text", limits)
        req.regions = parse_regions(body["regions"], image, limits) if body.get("regions") is not None else []
        style = _opt(body, "prompt_style", str, "auto")
        if style not in ("auto", "raw", "res", "reason", "dlres"):
            raise bad("invalid_field", f"prompt_style {style!r} is not one of auto, raw, res, reason, dlres", "prompt_style")
        n_slots = text.count("<region>")
        if n_slots != len(req.regions):
            raise bad("region_count_mismatch", f"text has {n_slots} <region> slot(s) but {len(req.regions)} region(s) "
                      f"were given", "regions")
        answer = _opt(body, "answer", str)
        if answer is not None:
            check_text(answer, "answer", limits)
        req.options.update(text=text, prompt_style=style, answer=answer,
                           teacher_forced=_opt(body, "teacher_forced", bool, False))
    return req
