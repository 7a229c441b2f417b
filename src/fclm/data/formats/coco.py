"""COCO-format helpers shared by every loader (RefCOCO, PACO-LVIS, VG, Flickr-GCG, DLC-Bench, ...)."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

from ..masks import rle_area, segmentation_to_rle
from ..schema import FCLMDataError, RegionObject
from .base import SkipObject, SkipRecord, as_int, read_json

_DISAMBIG = re.compile(r"_\([^)]*\)")


def clean_category(name: str) -> str:
    """LVIS/PACO category name → plain text: strip ``_(...)`` disambiguators, ``_`` → space.

    ``"bow_(weapon)"`` → ``"bow"``; ``"trash_can:lid"`` → ``"trash can:lid"`` (``obj:part`` kept).
    """
    name = _DISAMBIG.sub("", str(name))
    return ":".join(" ".join(p.replace("_", " ").split()) for p in name.split(":"))


def xywh_to_xyxy(box) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def check_box(box_xyxy: list[float], height: int, width: int) -> list[float]:
    """Clip a box to the image; raise :class:`SkipObject` ("degenerate box") if < 1 px wide/high."""
    x0, y0, x1, y1 = box_xyxy
    cx0, cy0 = max(0.0, x0), max(0.0, y0)
    cx1, cy1 = min(float(width), x1), min(float(height), y1)
    if not (cx1 - cx0 >= 1 and cy1 - cy0 >= 1):
        raise SkipObject("degenerate box", f"box {list(box_xyxy)} in a {width}x{height} image")
    return [cx0, cy0, cx1, cy1]


def seg_to_rle(seg: Any, height: int, width: int) -> dict:
    """COCO ``segmentation`` (polygons / uncompressed RLE / compressed RLE) → compressed RLE.

    Raises :class:`SkipObject`: "empty mask" (nothing drawn) or "bad mask" (unparseable, wrong size).
    """
    if seg is None or (isinstance(seg, list) and not seg):
        raise SkipObject("empty mask", "no segmentation")
    if isinstance(seg, list) and all(isinstance(p, (int, float)) for p in seg):
        seg = [seg]  # a single flat polygon
    try:
        rle = segmentation_to_rle(seg, height, width)
    except (FCLMDataError, TypeError, ValueError, KeyError, IndexError) as e:
        raise SkipObject("bad mask", str(e)) from e
    if [int(v) for v in rle["size"]] != [height, width]:
        raise SkipObject("bad mask", f"RLE size {rle['size']} != image size {[height, width]}")
    if rle_area(rle) == 0:
        raise SkipObject("empty mask", "mask has no pixel")
    return rle


def merge_rles(rles: list[dict]) -> dict:
    """Union of compressed RLEs of one image (str counts kept)."""
    from pycocotools import mask as mask_utils

    if len(rles) == 1:
        return rles[0]
    norm = [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} for r in rles]
    m = mask_utils.merge(norm)
    return {"size": [int(v) for v in m["size"]], "counts": m["counts"].decode("ascii")}


class CocoFile:
    """A COCO-format JSON indexed by image: ``images`` (in file order), anns per image, categories."""

    def __init__(self, path: str, data: dict | None = None):
        self.path = path
        repaired: list = []
        data = read_json(path, repaired) if data is None else data
        if not isinstance(data, dict) or "images" not in data:
            raise FCLMDataError(f"{path}: not a COCO-format file (no 'images' list)")
        # records (images / annotations) whose strings held bytes that are not UTF-8
        self.repaired = len({w[:2] for w in repaired if len(w) >= 2 and isinstance(w[1], int)})
        self.images: list[dict] = list(data["images"])
        self.img_by_id: dict[Any, dict] = {im.get("id"): im for im in self.images}
        self.cats: dict[Any, dict] = {c.get("id"): c for c in data.get("categories", [])}
        self.anns_by_image: dict[Any, list[dict]] = defaultdict(list)
        self.ann_by_id: dict[Any, dict] = {}
        self.orphan_annotations = 0  # annotations whose image_id is not in "images"
        for ann in data.get("annotations", []):
            if ann.get("image_id") not in self.img_by_id:
                self.orphan_annotations += 1
            self.anns_by_image[ann.get("image_id")].append(ann)
            if "id" in ann:
                self.ann_by_id[ann["id"]] = ann
        self.extra = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}

    def count_into(self, stats) -> None:
        """Record in a reader's stats what was found while reading the file."""
        if self.orphan_annotations:
            stats.load_skipped_objects["annotation of an image not in the file"] += self.orphan_annotations
        if self.repaired:
            stats.load_notes["non-UTF-8 text decoded as cp1252"] += self.repaired

    def image_size(self, img: dict) -> tuple[int, int]:
        return as_int(img.get("height"), "height"), as_int(img.get("width"), "width")

    def category_name(self, ann: dict, clean: bool = True) -> str | None:
        cat = self.cats.get(ann.get("category_id"))
        if cat is None:
            return None
        return clean_category(cat["name"]) if clean else cat["name"]


def ann_to_object(ann: dict, height: int, width: int, *, category: str | None = None,
                  mask_key: str = "segmentation", require_mask: bool = True) -> RegionObject:
    """One COCO annotation → :class:`RegionObject` (mask RLE, xyxy box, category, ann id).

    Without a mask (``require_mask=False``) the box alone is kept; boxes are checked and clipped.
    """
    box = None
    if ann.get("bbox") is not None:
        box = check_box(xywh_to_xyxy(ann["bbox"]), height, width)
    seg = ann.get(mask_key)
    if seg is None or (isinstance(seg, list) and not seg):
        if require_mask or box is None:
            raise SkipObject("empty mask", f"annotation {ann.get('id')} has no {mask_key}")
        rle = None
    else:
        rle = seg_to_rle(seg, height, width)
    extra = {"ann_id": ann["id"]} if "id" in ann else {}
    return RegionObject(mask=rle, box=box, category=category, extra=extra)


def summed_object(ann: dict, height: int, width: int, *, seg=None, category: str | None = None,
                  stats=None) -> RegionObject:
    """A COCO annotation read as LISA / PixelLM build their ground truth (RES, MUSE).

    They decode the polygons and *sum* them (uint8); their IoU counts only value-1 pixels as target.
    ``mask`` is the union (what training sees); pixels covered by more than one polygon go into
    ``extra["multi_cover"]`` (RLE) for the reference metric to drop (:func:`reference_gt_mask`). An
    annotation without segmentation becomes an all-zero mask, which the references score.
    """
    from ..masks import encode_mask, polygon_cover

    seg = ann.get("segmentation") if seg is None else seg
    extra = {"ann_id": ann["id"]} if "id" in ann else {}
    if seg is None or (isinstance(seg, list) and not seg):
        if stats is not None:
            stats.note("no segmentation (kept as an all-zero mask, as the reference)")
        return RegionObject(mask=encode_mask(np.zeros((height, width), bool)), category=category, extra=extra)
    try:
        cover = polygon_cover(seg, height, width)
    except Exception as e:  # pycocotools raises bare Exceptions on unknown input
        raise SkipObject("bad mask", f"annotation {ann.get('id')}: {e}") from e
    if cover.shape != (height, width):
        raise SkipObject("bad mask", f"mask {cover.shape} != image size {(height, width)}")
    ob = RegionObject(mask=encode_mask(cover > 0), category=category, extra=extra)
    multi = (cover > 0) & (cover != 1)
    if multi.any():
        ob.extra["multi_cover"] = encode_mask(multi)
        if stats is not None:
            stats.note("overlapping polygons (their shared pixels are not target for the metric)")
    if not (cover == 1).any() and stats is not None:
        stats.note("empty mask (kept, scored as the reference)")
    return ob


def reference_gt_mask(ob: RegionObject) -> np.ndarray:
    """The binary target the reference IoU sees: the mask minus ``extra["multi_cover"]``."""
    from ..masks import decode_rle

    m = decode_rle(ob.mask)
    if ob.extra.get("multi_cover") is not None:
        m &= ~decode_rle(ob.extra["multi_cover"])
    return m


def image_objects(stats, where: str, anns: list[dict], build) -> list[RegionObject]:
    """Apply ``build(ann) -> RegionObject`` to each annotation, skipping (and counting) bad ones."""
    objs = []
    for j, ann in enumerate(anns):
        try:
            objs.append(build(ann))
        except SkipObject as e:
            stats.skip_object(e.reason, f"{where} annotation {ann.get('id', j)}", e.detail)
    if not objs:
        raise SkipRecord("no valid objects", f"{len(anns)} annotation(s), none usable")
    return objs


def coco_image_path(coco_root: str, file_name: str, default_subdir: str, coco_url: str | None = None) -> str:
    """Path of a COCO image named by ``file_name`` (``"x.jpg"`` or ``"train2017/x.jpg"``) or URL.

    A bare name is looked up in ``<coco_root>/<default_subdir>``; a name with a folder or a
    ``coco_url`` (``.../train2017/x.jpg``) keeps its folder.
    """
    import os

    if file_name and "/" in file_name:
        return os.path.join(coco_root, *file_name.split("/")[-2:])
    if not file_name and coco_url:
        return os.path.join(coco_root, *coco_url.rstrip("/").split("/")[-2:])
    if not file_name:
        raise SkipRecord("missing field", "no file_name / coco_url")
    return os.path.join(coco_root, default_subdir, file_name)
