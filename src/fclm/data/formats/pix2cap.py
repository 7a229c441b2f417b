"""Pix2Cap-COCO: COCO panoptic 2017 with one caption per segment.

Annotation ``pix2cap_coco_{split}.json`` (Pix2Cap's own place: ``<root>/coco/annotations/``; also
found in ``<root>/pix2cap/``) in COCO panoptic format ({images, annotations: [{image_id, file_name
(PNG), segments_info: [{id, category_id, iscrowd, bbox, area, description}]}], categories});
panoptic PNGs in ``<root>/coco/panoptic_{split}2017/`` (segment id = R + 256 G + 256² B); images
``<root>/coco/{split}2017/<png stem>.jpg``. Read as Pix2Cap's registration and dataset mapper do:
the text is under ``description`` (``caption_key`` changes it); crowd segments are skipped; in the
train split an image with any description shorter than 3 characters is dropped whole. Every skip is
counted. Masks are RLE-encoded when a record is read (the PNG holds all of an image's segments).
"""
from __future__ import annotations

import os

import numpy as np

from ..masks import encode_mask
from ..schema import ImageRef, RegionObject, Sample
from .base import IndexedReader, SkipObject, SkipRecord, read_json, require
from .coco import check_box, clean_category, xywh_to_xyxy


class Pix2CapReader(IndexedReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 panoptic_dir: str | None = None, image_dir: str | None = None, caption_key: str = "description",
                 check_images: bool = False):
        super().__init__(name, split, check_images)
        own = os.path.join(root, "coco", "annotations", f"pix2cap_coco_{split}.json")
        self.source = ann_file or (own if os.path.exists(own) else os.path.join(root, "pix2cap", f"pix2cap_coco_{split}.json"))
        self.panoptic_dir = panoptic_dir or os.path.join(root, "coco", f"panoptic_{split}2017")
        self.image_dir = image_dir or os.path.join(root, "coco", f"{split}2017")
        self.caption_key = caption_key

    def _load(self) -> list:
        repaired: list = []
        data = read_json(self.source, repaired)
        require(isinstance(data, dict) and "annotations" in data, "malformed file",
                f"{self.source}: not COCO panoptic (no 'annotations')")
        n = len({w[:2] for w in repaired if len(w) >= 2 and w[0] == "annotations"})
        if n:
            self.stats.load_notes["non-UTF-8 text decoded as cp1252"] += n
        self.images = {im["id"]: im for im in data.get("images", [])}
        self.cats = {c["id"]: c for c in data.get("categories", [])}
        return data["annotations"]

    def _parse(self, index: int, ann: dict) -> Sample:
        from PIL import Image

        img = self.images.get(ann["image_id"])
        require(img is not None, "image not listed", f"image_id {ann['image_id']}")
        h, w = int(img["height"]), int(img["width"])
        segs = ann.get("segments_info") or []
        if self.split == "train":  # Pix2Cap's registration drops such training images whole
            short = [sg.get("id") for sg in segs if len(str(sg.get(self.caption_key) or "")) < 3]
            require(not short, "description shorter than 3 characters (Pix2Cap drops the image)",
                    f"segment(s) {short[:5]}")
        png = os.path.join(self.panoptic_dir, ann["file_name"])
        try:
            with Image.open(png) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
        except FileNotFoundError:
            raise SkipRecord("panoptic PNG not found", png) from None
        except OSError as e:
            raise SkipRecord("unreadable panoptic PNG", f"{png}: {e}") from None
        require(rgb.shape[:2] == (h, w), "bad mask", f"{png} is {rgb.shape[1]}x{rgb.shape[0]}, image {w}x{h}")
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        objs = []
        for seg in segs:
            where = f"{self._where(index)} segment {seg.get('id')}"
            try:
                if seg.get("iscrowd"):
                    raise SkipObject("crowd segment (skipped, as Pix2Cap)")
                cap = str(seg.get(self.caption_key) or "").strip()
                if not cap:
                    raise SkipObject(f"no {self.caption_key}")
                m = ids == int(seg["id"])
                if not m.any():
                    raise SkipObject("empty mask")
                box = check_box(xywh_to_xyxy(seg["bbox"]), h, w) if seg.get("bbox") else None
            except SkipObject as e:
                self.stats.skip_object(e.reason, where, e.detail)
                continue
            cat = self.cats.get(seg.get("category_id"), {}).get("name")
            objs.append(RegionObject(mask=encode_mask(m), box=box, category=clean_category(cat) if cat else None,
                                     caption=cap, extra={"segment_id": seg["id"]}))
        require(bool(objs), "no valid objects")
        return Sample(id=f"pix2cap_{self.split}_{ann['image_id']}", source=self.name,
                      image=ImageRef(path=os.path.join(self.image_dir, os.path.splitext(ann["file_name"])[0] + ".jpg")),
                      height=h, width=w,
                      objects=objs, split=self.split, extra={"image_id": ann["image_id"]})
