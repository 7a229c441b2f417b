"""Draw masks and labels over an image (PIL only): data checks, inference visualisation.

Every mask gets a colour (tinted fill, or outline only), its outline drawn twice — the colour
inside the mask's border and a contrasting black or white ring just outside it — so it stays
visible on an object of the same colour. The legend (colour swatch + wrapped text, optional title)
goes in a strip *below* the image, never over it; its font scales with the image width, and the
strip is at least :data:`MIN_LEGEND_WIDTH` pixels wide (a small image is centred above it).
"""
from __future__ import annotations

import textwrap

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128)]
MIN_LEGEND_WIDTH = 360  # px: room for ~40 characters even under a thumbnail


def color(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def contrast(c: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black for a light colour, white for a dark one (Rec. 601 luma)."""
    return (0, 0, 0) if 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] > 140 else (255, 255, 255)


def _shrink(m: np.ndarray, width: int) -> np.ndarray:
    """4-neighbourhood erosion, ``width`` times (the image border counts as outside)."""
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
    return inner


def edge(m: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``m`` within ``width`` pixels of its border (4-neighbourhood erosion)."""
    return m & ~_shrink(m, width)


def ring(m: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels outside ``m`` within ``width`` pixels of it (4-neighbourhood dilation)."""
    grown = m.copy()
    for _ in range(max(1, width)):
        g = grown.copy()
        g[1:, :] |= grown[:-1, :]
        g[:-1, :] |= grown[1:, :]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~m


def tint(image, masks=(), outlines=(), alpha: float = 0.45, thickness: int = 1):
    """``image`` with ``masks`` tinted + outlined and ``outlines`` outlined only (mask i: colour i,
    outline j: colour ``len(masks) + j``; each outline doubled by a contrasting ring outside it)
    → RGB ``PIL.Image`` of the same size."""
    from PIL import Image

    base = image.convert("RGB")
    w, h = base.size
    arr = np.asarray(base, dtype=np.float32).copy()
    items = [(m, True) for m in masks] + [(m, False) for m in outlines]
    checked = []
    for i, (m, fill) in enumerate(items):
        m = np.asarray(m).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"mask {i} has shape {m.shape}, the image is {h}x{w}")
        checked.append(m)
        if fill:
            arr[m] = arr[m] * (1 - alpha) + np.array(color(i), dtype=np.float32) * alpha
    for i, ((_, fill), m) in enumerate(zip(items, checked)):  # outlines last: fills never cover them
        t = thickness if fill else 2 * thickness
        arr[ring(m, max(1, (t + 1) // 2))] = contrast(color(i))
        arr[edge(m, t)] = color(i)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def font_size_for(width: int) -> int:
    """Legend font size in px for an image ``width`` px wide: ~1/45 of it, 12 to 64."""
    return int(min(64, max(12, round(width / 45))))


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


def draw_legend(draw, lines, x0: int, y0: int, line_height: int, swatch: int, font=None,
                limit_y: int | None = None) -> None:
    """Draw legend rows (colour swatch + text) from ``(x0, y0)``."""
    from PIL import ImageFont

    font = font or ImageFont.load_default()
    y = y0
    for idx, text in lines:
        if limit_y is not None and y + line_height > limit_y:
            break
        x = x0
        pad = (line_height - swatch) // 2
        if idx is not None and idx >= 0:
            draw.rectangle([x, y + pad, x + swatch, y + pad + swatch], fill=color(idx), outline=(0, 0, 0))
        if idx is not None:
            x += swatch + max(4, swatch // 2)
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
        y += line_height


def legend_canvas(image, title: str | None, labels, max_title_lines: int | None = 6,
                  max_label_lines: int | None = 3):
    """``image`` (already tinted) with the legend in a white strip below it → RGB ``PIL.Image``.

    The canvas is ``max(w, MIN_LEGEND_WIDTH)`` wide; the image keeps its pixels (centred when
    narrower than the canvas). Without a title or labels the image is returned as it is.
    """
    from PIL import Image, ImageDraw, ImageFont

    w, h = image.size
    cw = max(w, MIN_LEGEND_WIDTH)
    size = font_size_for(cw)
    try:
        font = ImageFont.load_default(size=size)
        char_w = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ") / 37)
    except (TypeError, OSError, AttributeError):  # Pillow without FreeType: the fixed bitmap font
        font, size, char_w = ImageFont.load_default(), 11, 6.0
    margin = max(4, size // 3)
    swatch = max(8, int(size * 0.8))
    lines = legend_lines(title, labels, max(16, int((cw - 2 * margin - swatch) / char_w)),
                         max_title_lines, max_label_lines)
    if not lines:
        return image.convert("RGB")
    lh = int(size * 1.3)
    canvas = Image.new("RGB", (cw, h + 2 * margin + lh * len(lines)), (255, 255, 255))
    canvas.paste(image.convert("RGB"), ((cw - w) // 2, 0))
    draw_legend(ImageDraw.Draw(canvas), lines, margin, h + margin, lh, swatch, font=font)
    return canvas


def draw_overlay(image, masks: list[np.ndarray], labels: list[str], title: str | None = None,
                 alpha: float = 0.45, max_label_chars: int = 90):
    """Return a copy of ``image`` with each mask tinted in its colour and a legend of ``labels``.

    ``masks``: HxW bool/0-1 arrays of the image size; ``labels[i]`` names mask i (may be shorter
    than ``masks``). The legend strip (colour swatch + wrapped label, then the optional ``title``)
    is appended below the image (:func:`legend_canvas`).
    """
    w, h = image.size
    out = tint(image, masks, alpha=alpha, thickness=max(1, round(min(w, h) / 200)))
    labels = [str(t)[:max_label_chars] for t in labels]
    return legend_canvas(out, title, labels, None, None)
