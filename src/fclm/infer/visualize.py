"""Overlays of inference results, saved as PNG.

A colour per mask / phrase / region (tinted fill plus a double outline — the colour and a
contrasting ring; captioned regions are drawn as outlines only). The legend — the optional title
(the answer or caption), then each colour's text — sits in a strip below the image, never over
it, in a font scaled to the image (:func:`fclm.data.overlay.legend_canvas`). Works on any list of
masks and labels (:func:`render_overlay`) or directly on pipeline results (:func:`draw_result`).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..data.overlay import color, legend_canvas, tint

__all__ = ["render_overlay", "draw_result", "save_overlay", "color"]


def render_overlay(image, masks: Sequence[np.ndarray] = (), labels: Sequence[str] | None = None,
                   title: str | None = None, outlines: Sequence[np.ndarray] = (),
                   outline_labels: Sequence[str] | None = None, alpha: float = 0.45, legend: bool = True):
    """Draw ``masks`` (tinted + outlined) and ``outlines`` (outline only) over ``image``.

    Colours: mask i gets colour i, outline j gets colour ``len(masks) + j``. The legend lists
    ``labels`` then ``outline_labels``; ``title`` goes above them. Returns an RGB ``PIL.Image``: the
    image (its pixels only tinted and outlined; centred when narrower than the legend's minimum
    width) with the legend strip below it; ``legend=False``: the image alone, at its own size (for
    callers that show the legend themselves, like the web demo).
    """
    w, h = image.size
    out = tint(image, masks, outlines, alpha, thickness=max(1, round(min(w, h) / 200)))
    if not legend:
        return out
    labs = list(labels or [f"mask {i + 1}" for i in range(len(masks))])
    labs += list(outline_labels or [f"region {j + 1}" for j in range(len(outlines))])
    return legend_canvas(out, title, labs[: len(masks) + len(outlines)])


def draw_result(image, result: Any, regions: Sequence[np.ndarray] = (), legend: bool = True):
    """Overlay of a pipeline result: a list of :class:`RegionText` (region outlines + texts), a
    :class:`SegmentationResult` (masks + answer) or a :class:`GroundingResult` (a colour per phrase +
    caption). ``regions``: the input region masks (outlined). ``legend``: as in :func:`render_overlay`."""
    from .results import GroundingResult, RegionText, SegmentationResult

    if isinstance(result, GroundingResult):
        masks = [p.mask for p in result.phrases if p.mask is not None] + list(result.unmatched_masks)
        labels = [p.text for p in result.phrases if p.mask is not None] + ["[SEG]"] * len(result.unmatched_masks)
        return render_overlay(image, masks, labels, title=result.caption, legend=legend)
    if isinstance(result, SegmentationResult):
        labels = [f"mask {i + 1}" for i in range(len(result.masks))]
        return render_overlay(image, result.masks, labels, title=result.text or "(no answer)",
                              outlines=list(regions), outline_labels=[f"input region {j + 1}" for j in range(len(regions))], legend=legend)
    if isinstance(result, (list, tuple)) and all(isinstance(r, RegionText) for r in result):
        return render_overlay(image, outlines=list(regions),
                              outline_labels=[f"{r.region + 1}: {r.text}" for r in result], legend=legend)
    raise TypeError(f"cannot draw a {type(result).__name__}")


def save_overlay(path: str, image, result: Any, regions: Sequence[np.ndarray] = ()) -> str:
    """:func:`draw_result` saved as PNG at ``path`` (folders created); returns the path."""
    im = draw_result(image, result, regions)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    im.save(path, format="PNG")
    return path
