"""Inference inputs: images and regions in every form a user has them, checked with clear errors.

Images: a file path (``str`` / ``os.PathLike``), encoded bytes, a ``PIL.Image`` or an array
(HxW grey, HxWx3 RGB, HxWx4 RGBA). Pixel values are read by their type's range, never clipped:
uint8 0-255; uint16 and 16-bit PNG/TIFF 0-65535 (scaled to 8 bits, value / 257); bool 0/1; other
integers must lie in 0-255; floats in [0, 1] (or, when some value is above 1, in [0, 255]).
Anything else (negative values, e.g. a normalised tensor; integers above their range) is refused.
Images above :data:`~fclm.data.schema.MAX_IMAGE_PIXELS` pixels are refused before decoding.

Regions (one per ``<region>`` slot), all turned into an HxW boolean mask of the image's size:

* a mask file path (PNG or any image PIL reads), or a ``.json`` file holding any of the forms below;
* a 2-D array (bool or numbers) or a torch tensor;

Raster masks (files and arrays) are binarised by one rule, :func:`binarize_mask`: a pixel is in
the region when its value is above half of the mask's full scale — the scale is 1 when every value
lies in [0, 1] (bool, 0/1 labels, float probabilities: > 0.5), else 255 when every value is at most
255 (8-bit masks: > 127), else 65535 (16-bit masks: > 32767). So anti-aliased edges and faint
JPEG-like background noise stay outside. The value read from a file is its alpha channel when the
image has transparency that is used, else the brightest channel. A mask file or numeric array
covering at least 95 % of the image after binarisation is kept but warned about
(:class:`FCLMInputWarning`): it is usually an inverted mask (white background). Boxes, polygons and RLE are taken exactly as given.
* a COCO RLE dict ``{"size": [h, w], "counts": str | bytes | list}`` (compressed or not);
* a polygon: a flat list ``[x0, y0, x1, y1, x2, y2, ...]`` of at least 3 points, or a list of such
  polygons (their union) — COCO's ``segmentation`` layout;
* a box ``[x0, y0, x1, y1]`` (exactly four numbers; absolute pixels, x1/y1 exclusive): it becomes
  the filled rectangle mask of pixels ``floor(y0) <= y < ceil(y1)``, ``floor(x0) <= x < ceil(x1)``,
  clipped to the image (the region prompt then describes "whatever is in that rectangle").
  ``{"box": [...]}`` / ``{"bbox": [x, y, w, h]}`` (COCO box layout) dicts are accepted too.

Every failure raises :class:`fclm.data.schema.FCLMDataError` (or ``FileNotFoundError`` for a
missing file) with a message naming the input.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from ..data.schema import MAX_IMAGE_PIXELS, FCLMDataError

__all__ = ["load_image", "load_region", "load_regions", "check_text_length", "describe_input", "binarize_mask",
           "FCLMInputWarning", "FULL_COVERAGE_WARNING"]

FULL_COVERAGE_WARNING = 0.95  # a raster mask covering this share of the image or more is warned about


class FCLMInputWarning(UserWarning):
    """An input that was accepted but is probably not what was meant (e.g. an inverted mask)."""


def describe_input(x: Any) -> str:
    """A short name for an input in error messages."""
    if isinstance(x, (str, os.PathLike)):
        return str(x)
    if isinstance(x, np.ndarray):
        return f"<array {'x'.join(map(str, x.shape))} {x.dtype}>"
    if isinstance(x, dict):
        return "<RLE dict>" if "counts" in x else f"<dict {sorted(x)[:4]}>"
    if isinstance(x, (list, tuple)):
        return f"<list of {len(x)}>"
    return f"<{type(x).__name__}>"


def _to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    """Pixel values → uint8 by the rule of the module docstring (no silent clipping)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 → 255, rounded
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise FCLMDataError(f"image {label} holds NaN or infinite values")
    lo, hi = float(a.min(initial=0)), float(a.max(initial=0))
    if lo < 0:
        raise FCLMDataError(f"image {label} has negative values (min {lo:g}): give uint8 0-255, uint16 0-65535 or "
                            f"floats in [0, 1] (undo any normalisation first)")
    if arr.dtype.kind == "f":
        if hi <= 1.0:
            a = a * 255.0
        elif hi > 255:
            raise FCLMDataError(f"image {label}: float values up to {hi:g}; give floats in [0, 1] (or [0, 255])")
    elif hi > 255:
        if hi <= 65535:
            raise FCLMDataError(f"image {label}: {arr.dtype} values up to {hi:g}; for 16-bit images give a uint16 "
                                f"array (0-65535), else uint8 0-255")
        raise FCLMDataError(f"image {label}: {arr.dtype} values up to {hi:g} are outside 0-255 / 0-65535")
    return a.round().astype(np.uint8)


def _pil_to_rgb(im, label: str):
    """A PIL image of any mode → RGB; 16-bit and 32-bit modes by their value range, not clipped."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im)
        if im.mode.startswith("I;16") or (im.mode == "I" and arr.min(initial=0) >= 0 and arr.max(initial=0) > 255):
            arr = arr.astype(np.uint16) if arr.max(initial=0) <= 65535 else arr
        grey = _to_uint8(arr, label)
        return Image.fromarray(np.stack([grey] * 3, -1))
    return im.convert("RGB")


def _open_encoded(src, label: str, max_pixels: int):
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL warns from half its limit on; the limit is ours to say
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(src)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise FCLMDataError(f"image {label} has {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
            if w == 0 or h == 0:
                raise FCLMDataError(f"image {label} is empty ({w}x{h})")
            im.load()
            return _pil_to_rgb(im, label)
    except FCLMDataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files (DecompressionBombError included)
        raise FCLMDataError(f"cannot read image {label}: {e}") from e


def load_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None):
    """Any supported image input → RGB ``PIL.Image`` (see the module docstring)."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.exists(path):
            raise FileNotFoundError(f"image not found: {path}")
        if os.path.isdir(path):
            raise FCLMDataError(f"image {path} is a folder, not an image file")
        return _open_encoded(path, name or path, max_pixels)
    if isinstance(image, (bytes, bytearray)):
        import io

        return _open_encoded(io.BytesIO(bytes(image)), name or "<image bytes>", max_pixels)
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise FCLMDataError(f"image {name or '<PIL image>'} has {w}x{h} = {w * h} pixels, "
                                f"above the limit of {max_pixels}")
        if w == 0 or h == 0:
            raise FCLMDataError(f"image {name or '<PIL image>'} is empty ({w}x{h})")
        return _pil_to_rgb(image, name or "<PIL image>")
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(image, np.ndarray):
        label = name or describe_input(image)
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW → HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise FCLMDataError(f"image {label}: expected an HxW, HxWx3 or HxWx4 array, got shape {image.shape}")
        h, w = arr.shape[:2]
        if h * w > max_pixels:
            raise FCLMDataError(f"image {label} has {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
        if h == 0 or w == 0:
            raise FCLMDataError(f"image {label} is empty")
        arr = _to_uint8(arr, label)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        return Image.fromarray(arr[..., :3].copy())
    raise FCLMDataError(f"unsupported image input {describe_input(image)}: give a path, bytes, a PIL image or an array")


# ------------------------------------------------------------------ regions
def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def binarize_mask(values: np.ndarray, label: str = "mask") -> np.ndarray:
    """Raster mask values → bool: above half of the full scale (1, 255 or 65535; module docstring)."""
    v = np.asarray(values)
    if v.dtype == bool:
        return v
    if v.dtype.kind not in "iuf":
        raise FCLMDataError(f"{label}: mask values must be numbers, got dtype {v.dtype}")
    if v.size == 0:
        return v.astype(bool)
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise FCLMDataError(f"{label}: mask holds NaN or infinite values")
    lo, hi = float(v.min()), float(v.max())
    if lo < 0:
        raise FCLMDataError(f"{label}: mask has negative values (min {lo:g}); give 0/1, 0-255 or 0-65535 values")
    scale = 1.0 if hi <= 1 else 255.0 if hi <= 255 else 65535.0 if hi <= 65535 else None
    if scale is None:
        raise FCLMDataError(f"{label}: mask values up to {hi:g} are above 65535; give 0/1, 0-255 or 0-65535 values")
    return v > scale / 2


def _warn_coverage(m: np.ndarray, label: str) -> None:
    """Warn when a binarised raster mask (a file or a numeric array; not a bool array, which says
    exactly what it means) covers nearly the whole image."""
    share = float(m.mean()) if m.size else 0.0
    if share >= FULL_COVERAGE_WARNING:
        warnings.warn(f"{label}: the mask covers {100 * share:.1f} % of the image; if the region is the dark part "
                      f"(a white background), invert the mask", FCLMInputWarning, stacklevel=3)


def _mask_from_file(path: str, height: int, width: int, label: str) -> np.ndarray:
    from PIL import Image

    if not os.path.exists(path):
        raise FileNotFoundError(f"{label}: mask file not found: {path}")
    if path.lower().endswith(".json"):
        try:
            with open(path) as f:
                obj = json.load(f)
        except (OSError, ValueError) as e:
            raise FCLMDataError(f"{label}: cannot read JSON region {path}: {e}") from e
        return region_to_mask(obj, height, width, label)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise FCLMDataError(f"{label}: mask {path} has {w}x{h} pixels, above the limit of {MAX_IMAGE_PIXELS}")
            im.load()
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"))[..., 3]
                if arr.min() == 255:  # fully opaque: the colour carries the mask
                    arr = np.asarray(im.convert("RGB")).max(-1)
            elif im.mode == "1" or im.mode == "L" or im.mode.startswith("I") or im.mode == "F":
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB")).max(-1)
    except FCLMDataError:
        raise
    except Exception as e:
        raise FCLMDataError(f"{label}: cannot read mask image {path}: {e}") from e
    m = binarize_mask(arr, label)
    _warn_coverage(m, label)
    return m


def region_to_mask(region: Any, height: int, width: int, label: str = "region") -> np.ndarray:
    """One region in any supported form → HxW bool mask (not yet checked for emptiness)."""
    from ..data.masks import box_to_mask, decode_rle, polygons_to_rle

    if isinstance(region, (str, os.PathLike)):
        return _mask_from_file(os.fspath(region), height, width, f"{label} ({os.fspath(region)})")
    try:
        import torch

        if isinstance(region, torch.Tensor):
            region = region.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(region, np.ndarray) and region.ndim == 2:
        m = binarize_mask(region, label)
        if region.dtype != bool:
            _warn_coverage(m, label)
        return m
    if isinstance(region, np.ndarray) and region.ndim == 1:
        region = region.tolist()
    if isinstance(region, np.ndarray):
        raise FCLMDataError(f"{label}: a mask array must be 2-D (HxW), got shape {region.shape}")
    if isinstance(region, dict):
        if "counts" in region and "size" in region:
            size = [int(v) for v in region["size"]]
            if size != [height, width]:
                raise FCLMDataError(f"{label}: RLE mask has size {size[1]}x{size[0]} (WxH) "
                                    f"but the image is {width}x{height}")
            try:
                return decode_rle(region)
            except FCLMDataError as e:
                raise FCLMDataError(f"{label}: {e}") from e
        if "box" in region:
            return region_to_mask(list(region["box"]), height, width, label)
        if "bbox" in region:  # COCO [x, y, w, h]
            x, y, w, h = (float(v) for v in region["bbox"])
            return region_to_mask([x, y, x + w, y + h], height, width, label)
        if "segmentation" in region:
            return region_to_mask(region["segmentation"], height, width, label)
        raise FCLMDataError(f"{label}: a region dict needs 'size'+'counts' (RLE), 'box', 'bbox' or "
                            f"'segmentation'; got keys {sorted(region)}")
    if isinstance(region, (list, tuple)):
        if len(region) == 4 and all(_is_number(v) for v in region):
            x0, y0, x1, y1 = (float(v) for v in region)
            if not (x1 > x0 and y1 > y0):
                raise FCLMDataError(f"{label}: box {list(region)} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
            try:
                return box_to_mask([x0, y0, x1, y1], height, width)
            except FCLMDataError as e:
                raise FCLMDataError(f"{label}: box {list(region)} lies outside the {width}x{height} image") from e
        polys = [list(region)] if region and all(_is_number(v) for v in region) else list(region)
        if not polys or not all(isinstance(p, (list, tuple)) and all(_is_number(v) for v in p) for p in polys):
            raise FCLMDataError(f"{label}: a list region must be a box [x0, y0, x1, y1], a polygon "
                                f"[x0, y0, x1, y1, x2, y2, ...] or a list of polygons")
        for p in polys:
            if len(p) < 6 or len(p) % 2:
                raise FCLMDataError(f"{label}: a polygon needs an even number (>= 6) of coordinates, got {len(p)}")
        try:
            return decode_rle(polygons_to_rle([[float(v) for v in p] for p in polys], height, width))
        except FCLMDataError as e:
            raise FCLMDataError(f"{label}: {e}") from e
    raise FCLMDataError(f"{label}: unsupported region input {describe_input(region)}; give a mask file, a 2-D "
                        f"array, a COCO RLE dict, a polygon or a box [x0, y0, x1, y1]")


def load_region(region: Any, height: int, width: int, label: str = "region") -> np.ndarray:
    """A region → checked HxW bool mask: right size, not empty."""
    m = region_to_mask(region, height, width, label)
    if m.shape != (height, width):
        raise FCLMDataError(f"{label}: mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image is {width}x{height}")
    if not m.any():
        raise FCLMDataError(f"{label}: mask is empty (no pixel inside the {width}x{height} image)")
    return m


def load_regions(regions: Any, height: int, width: int) -> list[np.ndarray]:
    """A region or a sequence of regions → list of checked masks.

    A single 2-D array, RLE dict, path or box is one region; a list whose items are regions is many.
    A flat list of 4 numbers is one box, a flat list of >= 6 numbers one polygon.
    """
    if regions is None:
        return []
    single = (isinstance(regions, (str, os.PathLike, dict))
              or (isinstance(regions, np.ndarray) and regions.ndim == 2)
              or (isinstance(regions, (list, tuple)) and regions and all(_is_number(v) for v in regions)))
    try:
        import torch

        single = single or (isinstance(regions, torch.Tensor) and regions.ndim == 2)
        if isinstance(regions, torch.Tensor) and regions.ndim == 3:
            regions = list(regions)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(regions, np.ndarray) and regions.ndim == 3:
        regions = list(regions)
    items = [regions] if single else list(regions)
    return [load_region(r, height, width, f"region {i}") for i, r in enumerate(items)]


def check_text_length(n_tokens: int, max_length: int, text: str, what: str = "prompt") -> None:
    """Raise a clear error when a conversation is longer than the processor allows."""
    if n_tokens > max_length:
        short = text if len(text) <= 80 else text[:77] + "..."
        raise FCLMDataError(f"{what} is too long: {n_tokens} tokens with the image, above the model's "
                            f"max_length={max_length} (text: {short!r})")

