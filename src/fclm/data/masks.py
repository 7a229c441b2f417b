"""Mask conversions: COCO RLE (compressed or not), polygons, boxes, arrays.

All functions return / accept COCO RLE dicts with ``counts`` as ``bytes`` (pycocotools' own form)
or ``str`` (JSON form); both are accepted everywhere.
"""
from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from .schema import FCLMDataError


def _norm_rle(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    if isinstance(counts, str):
        return {"size": list(rle["size"]), "counts": counts.encode("ascii")}
    return rle


def encode_mask(mask: np.ndarray) -> dict:
    """Binary HxW array → compressed RLE with ``str`` counts (JSON-serialisable)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    rle["size"] = [int(x) for x in rle["size"]]
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed or uncompressed) → HxW bool array."""
    try:
        return mask_utils.decode(_norm_rle(rle)).astype(bool)
    except Exception as e:
        raise FCLMDataError(f"cannot decode RLE mask (size={rle.get('size')!r}): {e}") from e


def rle_area(rle: dict) -> int:
    return int(mask_utils.area(_norm_rle(rle)))


def polygons_to_rle(polygons: list[list[float]], height: int, width: int) -> dict:
    """COCO polygons (union, binarised) → compressed RLE with ``str`` counts."""
    polys = [p for p in polygons if len(p) >= 6]
    if not polys:
        raise FCLMDataError("polygon segmentation with no polygon of >= 3 points")
    rles = mask_utils.frPyObjects(polys, height, width)
    rle = mask_utils.merge(rles)
    rle["counts"] = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    return rle


def segmentation_to_rle(seg, height: int, width: int) -> dict:
    """Any COCO ``segmentation`` field (polygon list, uncompressed or compressed RLE) → RLE."""
    if isinstance(seg, list):
        return polygons_to_rle(seg, height, width)
    if isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, *seg["size"])
            rle["counts"] = rle["counts"].decode("ascii")
            return rle
        return {"size": list(seg["size"]),
                "counts": seg["counts"].decode("ascii") if isinstance(seg["counts"], bytes) else seg["counts"]}
    raise FCLMDataError(f"unknown segmentation format: {type(seg).__name__}")


def box_to_mask(box, height: int, width: int) -> np.ndarray:
    """[x0, y0, x1, y1] → HxW bool rectangle mask (a box region becomes a rectangle mask)."""
    x0, y0, x1, y1 = box
    m = np.zeros((height, width), dtype=bool)
    xa, ya = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    xb, yb = min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))
    if xb <= xa or yb <= ya:
        raise FCLMDataError(f"degenerate box {list(box)} for a {width}x{height} image")
    m[ya:yb, xa:xb] = True
    return m


def mask_to_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise FCLMDataError("empty mask has no box")
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


# ---------------------------------------------------------------------------------------------
# the reference implementations' own rasterisation rules


def polygon_cover(seg, height: int, width: int) -> np.ndarray:
    """uint8 HxW count of the COCO polygons covering each pixel (LISA's and PixelLM's ground truth).

    Both decode ``pycocotools.frPyObjects(polygons)`` and *sum* the per-polygon masks into uint8;
    their IoU (``torch.histc(bins=2, min=0, max=1)``) then counts only value-1 pixels as target, so
    a pixel covered by two polygons of one annotation is background for the metric. An RLE
    segmentation decodes to 0/1.
    """
    if isinstance(seg, dict):
        return mask_utils.decode(_norm_rle(seg)).astype(np.uint8)
    if not isinstance(seg, list) or not seg:
        raise FCLMDataError("empty segmentation")
    if all(isinstance(v, (int, float)) for v in seg):
        seg = [seg]
    m = mask_utils.decode(mask_utils.frPyObjects(seg, height, width))
    if m.ndim == 3:
        m = m.sum(axis=2)
    return m.astype(np.uint8)


def cv2_polygon_fill(canvas: np.ndarray, points, value: int) -> np.ndarray:
    """Draw one polygon as LISA's ``data_processing.get_mask_from_json`` does (in place).

    Points are cast to int32 (truncation toward zero), the closed outline is drawn 1 px wide with
    ``cv2.polylines`` and the inside filled with ``cv2.fillPoly``. Needs opencv
    (``pip install 'fclm[eval]'``); PIL's polygon fill gives other edge pixels on slanted sides.
    """
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FCLMDataError("drawing LabelMe polygons as LISA does needs opencv: "
                            "pip install 'fclm[eval]' (opencv-python-headless)") from e
    pts = np.array([points], dtype=np.int32)
    cv2.polylines(canvas, pts, True, int(value), 1)
    cv2.fillPoly(canvas, pts, int(value))
    return canvas


def ann_to_rle(seg, height: int, width: int) -> dict:
    """A COCO ``segmentation`` as ``pycocotools.COCO.annToRLE`` reads it (DAM's ``annToMask``,
    Osprey's): polygons ``frPyObjects`` + ``merge`` as given (no polygon dropped), uncompressed RLE
    converted, compressed RLE as is. Empty masks are returned, not refused. ``str`` counts."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict) and "counts" in seg:
        rle = seg
    else:
        raise FCLMDataError(f"unknown segmentation format: {type(seg).__name__}")
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
