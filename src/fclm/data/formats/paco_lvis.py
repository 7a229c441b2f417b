"""PACO-LVIS training data and the ROC evaluation files (Osprey's LVIS / PACO 1k subsets).

* ``paco_lvis``: ``<root>/paco/paco_lvis_v1_{split}.json`` (COCO format; images from COCO 2017).
  Category names ``obj`` or ``obj:part`` with ``_(...)`` disambiguators stripped.
* ``roc_lvis`` / ``roc_paco``: ``<root>/paco/{lvis,paco}_val_1k_category.json``: a list of
  {file_name, height, width, categories: [str], annotations: [{segmentation}]}, categories[i] ↔
  annotations[i] (4,004 LVIS / 4,263 PACO objects). ``file_name`` is a bare COCO-2017 name that
  Osprey joins to one folder holding all COCO images (``image_dir=``, its ``--img``); without it
  the image is looked up in ``<root>/coco/train2017`` then ``<root>/coco/val2017`` (most LVIS v1
  val images are train2017 images). Masks as Osprey's ``annToMask`` (polygons merged) or its RLE
  decode; every object is kept, an empty mask too (Osprey scores it). Ground-truth categories are
  kept as published (the ROC metric cleans them).
"""
from __future__ import annotations

import os

from ..schema import ImageRef, RegionObject, Sample
from .base import CocoImagesReader, JsonListReader, SkipObject, SkipRecord, as_int, require
from .coco import ann_to_object, coco_image_path, image_objects


class CocoCategoryReader(CocoImagesReader):
    """Any COCO instance file whose objects carry a category label (PACO-LVIS)."""

    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 coco_root: str | None = None, image_subdir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        self.source = ann_file or os.path.join(root, "paco", f"paco_lvis_v1_{split}.json")
        self.coco_root = coco_root or os.path.join(root, "coco")
        self.image_subdir = image_subdir or ("train2017" if split == "train" else "val2017")

    def _parse(self, index: int, img: dict) -> Sample:
        h, w = self.coco.image_size(img)

        def build(ann):
            name = self.coco.category_name(ann)
            if not name:
                raise SkipObject("unknown category", f"category_id {ann.get('category_id')}")
            try:
                return ann_to_object(ann, h, w, category=name)
            except SkipObject as e:
                if e.reason != "degenerate box" or not ann.get("segmentation"):
                    raise
                # LISA reads PACO-LVIS masks with annToMask: the box plays no part
                self.stats.note("degenerate box (mask kept, box dropped)")
                return ann_to_object({k: v for k, v in ann.items() if k != "bbox"}, h, w, category=name)

        objs = image_objects(self.stats, self._where(index), self.coco.anns_by_image[img["id"]], build)
        path = coco_image_path(self.coco_root, img.get("file_name"), self.image_subdir, img.get("coco_url"))
        return Sample(id=f"{self.name}_{img['id']}", source=self.name, image=ImageRef(path=path),
                      height=h, width=w, objects=objs, split=self.split, extra={"image_id": img["id"]})


ROC_FILES = {"roc_lvis": "lvis_val_1k_category.json", "roc_paco": "paco_val_1k_category.json"}


class RocEvalReader(JsonListReader):
    """Osprey's ROC eval lists: one sample per image, object i labelled ``categories[i]``."""

    def __init__(self, name: str, root: str, split: str = "val", *, ann_file: str | None = None,
                 coco_root: str | None = None, image_dir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        self.source = ann_file or os.path.join(root, "paco", ROC_FILES[name])
        coco_root = coco_root or os.path.join(root, "coco")
        self.image_dirs = [image_dir] if image_dir else [os.path.join(coco_root, d) for d in ("train2017", "val2017")]

    def _image_path(self, file_name: str) -> str:
        paths = [os.path.join(d, file_name) for d in self.image_dirs]
        return next((p for p in paths if os.path.exists(p)), paths[-1])

    def _parse(self, index: int, rec: dict) -> Sample:
        from ..masks import ann_to_rle, rle_area

        h, w = as_int(rec.get("height"), "height"), as_int(rec.get("width"), "width")
        cats, anns = rec.get("categories") or [], rec.get("annotations") or []
        require(bool(anns), "no objects")
        require(len(cats) == len(anns), "categories/annotations mismatch",
                f"{len(cats)} categories, {len(anns)} annotations")
        require(bool(rec.get("file_name")), "missing field", "no file_name")
        objs = []
        for j, (cat, ann) in enumerate(zip(cats, anns)):
            seg = ann.get("segmentation")
            try:  # eval ids are object indices: a mask that cannot be read invalidates the record
                rle = ann_to_rle(seg, h, w)  # Osprey: annToMask (polygons merged) or the RLE as is
            except Exception as e:  # pycocotools raises bare Exceptions
                raise SkipRecord("bad mask", f"annotation {j}: {e}") from None
            if [int(v) for v in rle["size"]] != [h, w]:
                raise SkipRecord("bad mask", f"annotation {j}: RLE size {rle['size']} != image size {[h, w]}")
            if not rle_area(rle):
                self.stats.note("empty mask (kept, scored as Osprey)")
            objs.append(RegionObject(mask=rle, category=str(cat), extra={"ann_id": ann["id"]} if "id" in ann else {}))
        path = self._image_path(rec["file_name"])
        sid = rec.get("image_id", rec.get("id", index))
        return Sample(id=f"{self.name}_{sid}", source=self.name, image=ImageRef(path=path), height=h,
                      width=w, objects=objs, split=self.split, extra={"file_name": rec.get("file_name")})
