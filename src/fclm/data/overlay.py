"""Draw masks and labels over an image (PIL only): data checks, inference visualisation."""
from __future__ import annotations

import textwrap

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128)]


def color(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def draw_overlay(image, masks: list[np.ndarray], labels: list[str], title: str | None = None,
                 alpha: float = 0.45, max_label_chars: int = 90):
    """Return a copy of ``image`` with each mask tinted in its colour and a legend of ``labels``.

    ``masks``: HxW bool/0-1 arrays of the image size; ``labels[i]`` names mask i (may be shorter
    than ``masks``). Mask outlines are drawn opaque; a legend strip (colour swatch + wrapped label,
    then the optional ``title``) is appended below the image.
    """
    from PIL import Image, ImageDraw, ImageFont

    base = image.convert("RGB")
    w, h = base.size
    arr = np.asarray(base, dtype=np.float32).copy()
    for i, m in enumerate(masks):
        m = np.asarray(m).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, image is {h}x{w}")
        c = np.array(color(i), dtype=np.float32)
        arr[m] = arr[m] * (1 - alpha) + c * alpha
        edge = m & ~(_erode(m))
        arr[edge] = c
    out = Image.fromarray(arr.clip(0, 255).astype(np.uint8))

    font = ImageFont.load_default()
    chars = max(20, min(max_label_chars, w // 7))
    lines: list[tuple[int | None, str]] = []
    if title:
        lines += [(None, t) for t in textwrap.wrap(title, chars) or [""]]
    for i, lab in enumerate(labels):
        wrapped = textwrap.wrap(str(lab), chars - 4) or [""]
        lines += [(i, wrapped[0])] + [(-1, t) for t in wrapped[1:]]
    if not lines:
        return out
    lh = 14
    canvas = Image.new("RGB", (w, h + lh * len(lines) + 6), (255, 255, 255))
    canvas.paste(out, (0, 0))
    d = ImageDraw.Draw(canvas)
    y = h + 3
    for idx, text in lines:
        x = 4
        if idx is not None and idx >= 0:
            d.rectangle([x, y + 2, x + 10, y + 12], fill=color(idx))
        if idx is not None:
            x += 16
        d.text((x, y), text, fill=(0, 0, 0), font=font)
        y += lh
    return canvas


def _erode(m: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), for outlines."""
    e = m.copy()
    e[1:, :] &= m[:-1, :]
    e[:-1, :] &= m[1:, :]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e
