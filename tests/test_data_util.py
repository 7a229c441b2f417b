"""Helpers shared by the data-loader tests (no tests here): tiny images, polygons, RLEs."""
from __future__ import annotations

import json
import os

import numpy as np
from pycocotools import mask as mask_utils


def square(x0, y0, x1, y1) -> list[float]:
    """A COCO polygon for the axis-aligned rectangle [x0, x1) x [y0, y1) (area (x1-x0)*(y1-y0))."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_mask(h, w, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def rle_str(m: np.ndarray) -> dict:
    """Compressed RLE with str counts (the JSON form)."""
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}


def rle_uncompressed(m: np.ndarray) -> dict:
    """Uncompressed COCO RLE: column-major run lengths starting with a 0-run."""
    flat = m.astype(np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def write_json(path, obj, encoding="utf-8") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding) as f:
        json.dump(obj, f, ensure_ascii=False)
    return str(path)


def write_image(path, w=40, h=30, color=(120, 80, 40), fmt=None) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (w, h), color).save(path, format=fmt)
    return str(path)


def jpeg_bytes(w=40, h=30, color=(10, 200, 30)) -> bytes:
    import io

    from PIL import Image

    b = io.BytesIO()
    Image.new("RGB", (w, h), color).save(b, format="JPEG")
    return b.getvalue()
