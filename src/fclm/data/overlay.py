"""Draw masks and labels over an image (PIL only): data checks, inference visualisation."""
from __future__ import annotations

import textwrap

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128)]


def color(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def edge(m: np.ndarray, width: int = 1) -> np.ndarray:
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


def tint(image, masks=(), outlines=(), alpha: float = 0.45, thickness: int = 1):
    """``image`` with ``masks`` tinted + outlined and ``outlines`` outlined only (mask i: colour i,
    outline j: colour ``len(masks) + j``) → RGB ``PIL.Image`` of the same size."""
    from PIL import Image

    base = image.convert("RGB")
    w, h = base.size
    arr = np.asarray(base, dtype=np.float32).copy()
    items = [(m, True) for m in masks] + [(m, False) for m in outlines]
    for i, (m, fill) in enumerate(items):
        m = np.asarray(m).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, the image is {h}x{w}")
        c = np.array(color(i), dtype=np.float32)
        if fill:
            arr[m] = arr[m] * (1 - alpha) + c * alpha
        arr[edge(m, thickness if fill else 2 * thickness)] = c
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def legend_lines(title: str | None, labels, chars: int, title_lines: int | None = None,
                 label_lines: int | None = None) -> list[tuple[int | None, str]]:
    """Wrapped legend rows: ``(None, title text)``, ``(i, first line of label i)``, ``(-1, more)``."""
    lines: list[tuple[int | None, str]] = []
    if title:
        lines += [(None, t) for t in (textwrap.wrap(title, chars) or [""])[:title_lines]]
    for i, lab in enumerate(labels):
        wrapped = (textwrap.wrap(str(lab), chars - 4) or [""])[:label_lines]
        lines += [(i, wrapped[0])] + [(-1, t) for t in wrapped[1:]]
    return lines


def draw_legend(draw, lines, x0: int, y0: int, line_height: int, swatch: int, limit_y: int | None = None) -> None:
    """Draw legend rows (colour swatch + text) from ``(x0, y0)``."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    y = y0
    for idx, text in lines:
        if limit_y is not None and y + line_height > limit_y:
            break
        x = x0
        if idx is not None and idx >= 0:
            c = color(idx)
            draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=c if draw.mode == "RGB" else c + (255,))
        if idx is not None:
            x += swatch + 5
        draw.text((x, y), text, fill=(0, 0, 0) if draw.mode == "RGB" else (0, 0, 0, 255), font=font)
        y += line_height


def draw_overlay(image, masks: list[np.ndarray], labels: list[str], title: str | None = None,
                 alpha: float = 0.45, max_label_chars: int = 90):
    """Return a copy of ``image`` with each mask tinted in its colour and a legend of ``labels``.

    ``masks``: HxW bool/0-1 arrays of the image size; ``labels[i]`` names mask i (may be shorter
    than ``masks``). Mask outlines are drawn opaque; a legend strip (colour swatch + wrapped label,
    then the optional ``title``) is appended below the image.
    """
    from PIL import Image, ImageDraw

    out = tint(image, masks, alpha=alpha)
    w, h = out.size
    lines = legend_lines(title, labels, max(20, min(max_label_chars, w // 7)))
    if not lines:
        return out
    lh = 14
    canvas = Image.new("RGB", (w, h + lh * len(lines) + 6), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw_legend(ImageDraw.Draw(canvas), lines, 4, h + 3, lh, 10)
    return canvas
