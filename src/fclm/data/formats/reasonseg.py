"""ReasonSeg (LISA): ``<root>/reason_seg/ReasonSeg/{train,val,test}/*.jpg`` + LabelMe ``.json`` beside.

Each JSON: ``text`` (list of queries), ``is_sentence``, ``shapes`` [{label, points, shape_type}].
Mask rule (LISA's): drop ``flag`` shapes, fill the remaining polygons largest area first (outline
included, points truncated to int), ``ignore`` shapes paint 255 (→ ``Sample.ignore_mask``), others 1
(→ the one target object). Some files are cp1252, not UTF-8.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from ..masks import encode_mask
from ..schema import ImageRef, Question, RegionObject, Sample
from .base import IndexedReader, SkipRecord, read_json, require

SPLITS = ("train", "val", "test")


def _poly_mask(points, height: int, width: int, value: int, canvas=None):
    from PIL import Image, ImageDraw

    img = canvas if canvas is not None else Image.new("L", (width, height), 0)
    pts = [(int(float(x)), int(float(y))) for x, y in points]
    ImageDraw.Draw(img).polygon(pts, fill=value, outline=value)
    return img


def labelme_mask(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """LabelMe shapes → uint8 HxW mask with 0 background, 1 target, 255 ignore (LISA's rule)."""
    from PIL import Image

    polys = []
    for k, sh in enumerate(shapes):
        label = str(sh.get("label", ""))
        if label.lower() == "flag":
            continue
        pts = sh.get("points") or []
        if len(pts) < 3:
            raise SkipRecord("degenerate polygon", f"shape {k} has {len(pts)} point(s)")
        area = int(np.asarray(_poly_mask(pts, height, width, 1)).sum())
        polys.append((area, k, pts, 255 if "ignore" in label.lower() else 1))
    polys.sort(key=lambda p: -p[0])  # stable: equal areas keep file order
    canvas = Image.new("L", (width, height), 0)
    for _, _, pts, value in polys:
        _poly_mask(pts, height, width, value, canvas)
    return np.asarray(canvas)


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
        anno = read_json(js)  # utf-8, falling back to cp1252
        texts = [t.strip() for t in anno.get("text") or [] if isinstance(t, str) and t.strip()]
        require(bool(texts), "no query text")
        image = ImageRef(path=jpg)
        h, w = anno.get("imageHeight"), anno.get("imageWidth")
        if not (h and w):
            try:
                from PIL import Image

                with Image.open(jpg) as im:
                    w, h = im.size
            except OSError as e:
                raise SkipRecord("unreadable image", f"{jpg}: {e}") from e
        h, w = int(h), int(w)
        mask = labelme_mask(anno.get("shapes") or [], h, w)
        target = mask == 1
        require(bool(target.any()), "empty mask", "no target polygon")
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
