"""Overlays of inference results, saved as PNG at the image's own size.

A colour per mask / phrase / region (tinted fill plus an opaque outline; captioned regions are drawn
as outlines only), and a legend box in the top-left corner listing each colour's text, with an
optional title (the answer or caption) on top. Works on any list of masks and labels
(:func:`render_overlay`) or directly on pipeline results (:func:`draw_result`).
"""
from __future__ import annotations

import os
import textwrap
from typing import Any, Sequence

import numpy as np

try:  # share the palette with the data-side overlay when present
    from ..data.overlay import PALETTE
except ImportError:  # pragma: no cover
    PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]

__all__ = ["render_overlay", "draw_result", "save_overlay", "color"]


def color(i: int) -> tuple[int, int, int]:
    return tuple(PALETTE[i % len(PALETTE)])


def _edge(m: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``m`` within ``width`` pixels of its border (4-neighbourhood erosion)."""
    inner = m.copy()
    for _ in range(max(1, width)):
        e = inner.copy()
        e[1:, :] &= inner[:-1, :]
        e[:-1, :] &= inner[1:, :]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        e[0, :] = e[-1, :] = False
        e[:, 0] = e[:, -1] = False
        inner = e
    return m & ~inner


def render_overlay(image, masks: Sequence[np.ndarray] = (), labels: Sequence[str] | None = None,
                   title: str | None = None, outlines: Sequence[np.ndarray] = (),
                   outline_labels: Sequence[str] | None = None, alpha: float = 0.45):
    """Draw ``masks`` (tinted + outlined) and ``outlines`` (outline only) over ``image``.

    Colours: mask i gets colour i, outline j gets colour ``len(masks) + j``. The legend lists
    ``labels`` then ``outline_labels``; ``title`` goes above them. Returns an RGB ``PIL.Image`` of the
    image's size.
    """
    from PIL import Image, ImageDraw, ImageFont

    base = image.convert("RGB")
    w, h = base.size
    arr = np.asarray(base, dtype=np.float32).copy()
    thick = max(1, round(min(w, h) / 200))
    items = [(m, True) for m in masks] + [(m, False) for m in outlines]
    for i, (m, fill) in enumerate(items):
        m = np.asarray(m).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, the image is {h}x{w}")
        c = np.array(color(i), dtype=np.float32)
        if fill:
            arr[m] = arr[m] * (1 - alpha) + c * alpha
        arr[_edge(m, thick if fill else 2 * thick)] = c
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))

    labs = list(labels or [f"mask {i + 1}" for i in range(len(masks))])
    labs += list(outline_labels or [f"region {j + 1}" for j in range(len(outlines))])
    font = ImageFont.load_default()
    chars = max(16, (w - 30) // 6)
    lines: list[tuple[int | None, str]] = []
    if title:
        lines += [(None, t) for t in textwrap.wrap(title, chars)[:6]]
    for i, lab in enumerate(labs[: len(items)]):
        wrapped = textwrap.wrap(str(lab), chars - 3)[:3] or [""]
        lines += [(i, wrapped[0])] + [(-1, t) for t in wrapped[1:]]
    if not lines:
        return out
    lh = 12
    box_w = min(w, 8 + max(len(t) for _, t in lines) * 6 + 16)
    box_h = min(h, 4 + lh * len(lines))
    legend = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(legend)
    d.rectangle([0, 0, box_w, box_h], fill=(255, 255, 255, 190))
    y = 2
    for idx, text in lines:
        if y + lh > h:
            break
        x = 3
        if idx is not None and idx >= 0:
            d.rectangle([x, y + 2, x + 8, y + 10], fill=color(idx) + (255,))
        if idx is not None:
            x += 13
        d.text((x, y), text, fill=(0, 0, 0, 255), font=font)
        y += lh
    return Image.alpha_composite(out.convert("RGBA"), legend).convert("RGB")


def draw_result(image, result: Any, regions: Sequence[np.ndarray] = ()):
    """Overlay of a pipeline result: a list of :class:`RegionText` (region outlines + texts), a
    :class:`SegmentationResult` (masks + answer) or a :class:`GroundingResult` (a colour per phrase +
    caption). ``regions``: the input region masks (outlined)."""
    from .results import GroundingResult, RegionText, SegmentationResult

    if isinstance(result, GroundingResult):
        masks = [p.mask for p in result.phrases if p.mask is not None] + list(result.unmatched_masks)
        labels = [p.text for p in result.phrases if p.mask is not None] + ["[SEG]"] * len(result.unmatched_masks)
        return render_overlay(image, masks, labels, title=result.caption)
    if isinstance(result, SegmentationResult):
        labels = [f"mask {i + 1}" for i in range(len(result.masks))]
        return render_overlay(image, result.masks, labels, title=result.text or "(no answer)",
                              outlines=list(regions), outline_labels=[f"input region {j + 1}" for j in range(len(regions))])
    if isinstance(result, (list, tuple)) and all(isinstance(r, RegionText) for r in result):
        return render_overlay(image, outlines=list(regions),
                              outline_labels=[f"{r.region + 1}: {r.text}" for r in result])
    raise TypeError(f"cannot draw a {type(result).__name__}")


def save_overlay(path: str, image, result: Any, regions: Sequence[np.ndarray] = ()) -> str:
    """:func:`draw_result` saved as PNG at ``path`` (folders created); returns the path."""
    im = draw_result(image, result, regions)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    im.save(path, format="PNG")
    return path
