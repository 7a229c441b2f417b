"""ReasonSeg (LISA): ``<root>/reason_seg/ReasonSeg/{train,val,test}/*.jpg`` + LabelMe ``.json`` beside.

Each JSON: ``text`` (list of queries), ``is_sentence``, ``shapes`` [{label, points, shape_type}].
Mask rule (LISA's ``utils/data_processing.py``): drop ``flag`` shapes, draw the remaining polygons
with ``cv2.polylines`` + ``cv2.fillPoly`` (points cast to int32) in ``argsort(area)[::-1]`` order,
``ignore`` shapes paint 255 (→ ``Sample.ignore_mask``), others 1 (→ the one target object, possibly
empty: LISA scores such images too). The canvas is the image's own size. Some files are cp1252, not
UTF-8 (decoded whole as cp1252, as LISA does). Needs opencv (``fclm[eval]``).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from ..masks import cv2_polygon_fill, encode_mask
from ..schema import ImageRef, Question, RegionObject, Sample
from .base import IndexedReader, SkipRecord, image_size_from_file, read_text, require

SPLITS = ("train", "val", "test")


def labelme_mask(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """LabelMe shapes → uint8 HxW mask with 0 background, 1 target, 255 ignore (LISA's rule).

    As LISA's ``get_mask_from_json``: ``flag`` shapes dropped; each remaining polygon's area is
    the pixel count of its own cv2 drawing; polygons are drawn in ``np.argsort(areas)[::-1]``
    order (largest first; numpy's default sort decides ties) onto one canvas, value 255 when the
    label contains ``ignore``, else 1.
    """
    polys, areas = [], []
    for sh in shapes:
        label = str(sh.get("label", ""))
        if label.lower() == "flag":
            continue
        pts = sh.get("points") or []
        if not pts:
            raise SkipRecord("degenerate polygon", f"shape {label!r} has no point")
        tmp = cv2_polygon_fill(np.zeros((height, width), np.uint8), pts, 1)
        areas.append(tmp.sum())
        polys.append((pts, 255 if "ignore" in label.lower() else 1))
    mask = np.zeros((height, width), np.uint8)
    if polys:
        for k in np.argsort(areas)[::-1]:
            cv2_polygon_fill(mask, *polys[int(k)])
    return mask


def _exif_orientation(path: str) -> int:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, TypeError):
        return 1


class ReasonSegReader(IndexedReader):
    def __init__(self, name: str, root: str, split: str = "train", *, data_dir: str | None = None,
                 check_images: bool = False):
        super().__init__(name, split, check_images)
        if split not in SPLITS:
            raise ValueError(f"reasonseg splits are {SPLITS}, not {split!r}")
        self.dir = os.path.join(data_dir or os.path.join(root, "reason_seg", "ReasonSeg"), split)
        self.source = self.dir

    def _load(self) -> list:
        if not os.path.isdir(self.dir):
            raise FileNotFoundError(f"ReasonSeg split directory not found: {self.dir}")
        return sorted(glob.glob(os.path.join(self.dir, "*.jpg")))

    def _where(self, index: int) -> str:
        return self.records[index][:-4] + ".json"

    def _parse(self, index: int, jpg: str) -> Sample:
        js = jpg[:-4] + ".json"
        require(os.path.exists(js), "annotation not found", js)
        try:  # LISA: UTF-8, and the whole file as cp1252 if that fails
            anno = json.loads(read_text(js))
        except json.JSONDecodeError as e:
            raise SkipRecord("invalid JSON", f"{js}: line {e.lineno} column {e.colno}: {e.msg}") from None
        require(isinstance(anno, dict), "malformed record", f"{js}: not a JSON object")
        texts = [t.strip() for t in anno.get("text") or [] if isinstance(t, str)]
        require(bool(texts), "no query text")
        # LISA reads the image with cv2.imread, which applies the EXIF orientation (as LabelMe does
        # when the polygons are drawn), and draws the mask on that image's size, not imageHeight/Width
        image = ImageRef(path=jpg, exif_transpose=True)
        h, w = image_size_from_file(jpg)
        if _exif_orientation(jpg) in (5, 6, 7, 8):  # a quarter turn: width and height swap
            h, w = w, h
        mask = labelme_mask(anno.get("shapes") or [], h, w)
        target = mask == 1
        if not target.any():  # LISA keeps it: an empty prediction scores IoU 1, any other 0
            self.stats.note("no target pixel (kept, scored as LISA does)")
        ignore = mask == 255
        kind = "sentence" if anno.get("is_sentence") else "short"
        stem = os.path.splitext(os.path.basename(jpg))[0]
        return Sample(
            id=f"reasonseg_{self.split}_{stem}", source=self.name, image=image, height=h, width=w,
            objects=[RegionObject(mask=encode_mask(target))], split=self.split,
            questions=[Question(text=t, target_ids=[0], kind=kind) for t in texts],
            ignore_mask=encode_mask(ignore) if ignore.any() else None,
            extra={"is_sentence": bool(anno.get("is_sentence")), "file": os.path.basename(jpg)},
        )
