"""Save a grid PNG of a few synthetic scenes with their masks and referring expressions.

    python -m fclm.data.synthetic_preview --out scenes.png --n 6 --split train --seed 0

Each cell shows the scene (left) and its masks as colour-coded outlines with the first expression of
every object (right), so a user can see what the model is asked to learn.
"""
from __future__ import annotations

import argparse

import numpy as np

from .masks import decode_rle
from .schema import Sample
from .synthetic import SceneConfig, generate_scenes

_OUTLINE = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (200, 0, 200), (0, 150, 150), (200, 120, 0), (0, 0, 0)]


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_sample(sample: Sample, text_width: int = 330):
    """One PIL image: scene, masks overlaid, and a text panel with each object's first expression."""
    from PIL import Image, ImageDraw

    img = np.asarray(sample.image.open())
    over = (img.astype(np.float32) * 0.5 + 127).astype(np.uint8)
    for i, ob in enumerate(sample.objects):
        m = decode_rle(ob.mask)
        col = np.asarray(_OUTLINE[i % len(_OUTLINE)], np.uint8)
        over[m] = (0.5 * over[m] + 0.5 * col).astype(np.uint8)
        over[_outline(m)] = col
    h, w = img.shape[:2]
    canvas = Image.new("RGB", (2 * w + text_width, h), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    canvas.paste(Image.fromarray(over), (w, 0))
    draw = ImageDraw.Draw(canvas)
    y = 4
    for i, ob in enumerate(sample.objects):
        draw.text((2 * w + 6, y), f"{i}: {ob.expressions[0] if ob.expressions else ob.category}",
                  fill=_OUTLINE[i % len(_OUTLINE)])
        y += 14
    for q in sample.questions:
        draw.text((2 * w + 6, y), f"Q: {q.text[:52]}", fill=(0, 0, 0))
        y += 12
        draw.text((2 * w + 6, y), f"   -> {q.target_ids}", fill=(0, 0, 0))
        y += 14
    return canvas


def save_preview(path: str, n: int = 6, split: str = "train", seed: int = 0,
                 config: SceneConfig | None = None, samples: list[Sample] | None = None) -> str:
    """Write a vertical grid of ``n`` scenes (or the given ``samples``) to ``path``; return the path."""
    from PIL import Image

    samples = samples if samples is not None else generate_scenes(n, split, seed, config=config)
    cells = [render_sample(s) for s in samples]
    W = max(c.width for c in cells)
    H = sum(c.height for c in cells) + 4 * (len(cells) - 1)
    grid = Image.new("RGB", (W, H), (128, 128, 128))
    y = 0
    for c in cells:
        grid.paste(c, (0, y))
        y += c.height + 4
    grid.save(path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="synthetic_preview.png")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=256)
    args = ap.parse_args(argv)
    print(save_preview(args.out, args.n, args.split, args.seed, SceneConfig(image_size=args.image_size)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
