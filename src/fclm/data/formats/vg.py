"""Visual Genome region captions (COCO format with a ``caption`` per annotation).

Two published variants: Osprey's ``vg_train_with_mask.json`` (``segmentation`` per region) and
GLaMM's box-only file. Default ``<root>/vg/vg_train_with_mask.json`` (pass ``ann_file`` for the
other), images ``<root>/vg/images``. The short region caption goes to ``expressions``. As Osprey's
VG dataset: annotations flagged ``ignore`` are skipped, the mask (not the box) decides; box-only
regions with degenerate boxes (< 1 px after clipping) or regions without caption are skipped. All
skips are counted.
"""
from __future__ import annotations

import os

from ..schema import ImageRef, Sample
from .base import CocoImagesReader, SkipObject
from .coco import ann_to_object, image_objects


class VGReader(CocoImagesReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 image_dir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        self.source = ann_file or os.path.join(root, "vg", "vg_train_with_mask.json")
        self.image_dir = image_dir or os.path.join(root, "vg", "images")

    def _parse(self, index: int, img: dict) -> Sample:
        h, w = self.coco.image_size(img)

        def build(ann):
            cap = str(ann.get("caption") or "").strip()
            if not cap:
                raise SkipObject("no caption", f"annotation {ann.get('id')}")
            if ann.get("ignore", False):  # Osprey's VG dataset skips these
                raise SkipObject("ignore flag (skipped, as Osprey)", f"annotation {ann.get('id')}")
            if ann.get("bbox") is None and not ann.get("segmentation"):
                raise SkipObject("no region", f"annotation {ann.get('id')}")
            try:
                ob = ann_to_object(ann, h, w, require_mask=False)
            except SkipObject as e:
                if e.reason != "degenerate box" or not ann.get("segmentation"):
                    raise
                # Osprey reads the mask only: a bad box next to a usable mask is not a reason to drop it
                ob = ann_to_object({k: v for k, v in ann.items() if k != "bbox"}, h, w)
            ob.expressions = [cap]
            return ob

        objs = image_objects(self.stats, self._where(index), self.coco.anns_by_image[img["id"]], build)
        path = os.path.join(self.image_dir, img["file_name"])
        return Sample(id=f"vg_{img['id']}", source=self.name, image=ImageRef(path=path),
                      height=h, width=w, objects=objs, split=self.split, extra={"image_id": img["id"]})
