"""DLC-Bench (DAM's detailed localized captioning benchmark): ``<root>/dlc_bench/``.

The release folder (``git clone https://huggingface.co/datasets/nvidia/DLC-Bench``, folder
``DLC-bench``) holds ``annotations/`` — ``annotations.json`` (COCO format: images + one annotation
per evaluated region), ``class_names.json`` {ann_id: class name}, ``qa.json`` {ann_id: [{question,
choices: [[text, score], ...], type: positive|negative}]} — and ``images/`` side by side. Pass the
release folder (or its ``annotations/`` folder, or a flat folder holding all of them) as
``bench_dir``; images are looked up in ``images/`` beside ``annotations/`` first, then inside it.
One sample per image; each object carries ``extra["ann_id"]`` (the evaluation id), ``category``
(class name) and ``extra["qa"]``. Masks as DAM's ``coco.annToMask``.
"""
from __future__ import annotations

import os

from ..masks import ann_to_rle, rle_area
from ..schema import ImageRef, RegionObject, Sample
from .base import IndexedReader, SkipObject, read_json
from .coco import CocoFile, check_box, image_objects, xywh_to_xyxy


class DlcBenchReader(IndexedReader):
    def __init__(self, name: str, root: str, split: str = "test", *, bench_dir: str | None = None,
                 check_images: bool = False):
        super().__init__(name, split, check_images)
        base = bench_dir or os.path.join(root, "dlc_bench")
        self.dir = base
        if not os.path.exists(os.path.join(base, "annotations.json")) and \
                os.path.isdir(os.path.join(base, "annotations")):
            self.dir = os.path.join(base, "annotations")  # the release's own folder name
        self.source = os.path.join(self.dir, "annotations.json")
        candidates = [os.path.join(os.path.dirname(os.path.abspath(self.dir)), "images"),
                      os.path.join(self.dir, "images"), os.path.join(base, "images")]
        self.image_dir = next((d for d in candidates if os.path.isdir(d)), os.path.join(base, "images"))

    def _load(self) -> list:
        self.coco = CocoFile(self.source)
        self.coco.count_into(self.stats)
        self.class_names = {str(k): v for k, v in read_json(os.path.join(self.dir, "class_names.json")).items()}
        qa_path = os.path.join(self.dir, "qa.json")
        self.qa = {str(k): v for k, v in read_json(qa_path).items()} if os.path.exists(qa_path) else {}
        return [im for im in self.coco.images if self.coco.anns_by_image.get(im.get("id"))]

    def _parse(self, index: int, img: dict) -> Sample:
        h, w = self.coco.image_size(img)

        def build(ann):
            aid = str(ann.get("id"))
            if aid not in self.class_names:
                raise SkipObject("no class name", f"ann_id {aid}")
            try:  # DAM: coco.annToMask(ann); the box plays no part
                rle = ann_to_rle(ann.get("segmentation"), h, w)
            except Exception as e:  # noqa: BLE001 - pycocotools raises bare Exceptions
                raise SkipObject("bad mask", f"ann_id {aid}: {e}") from None
            if not rle_area(rle):
                self.stats.note("empty mask (kept, as DAM)")
            box = None
            if ann.get("bbox") is not None:
                try:
                    box = check_box(xywh_to_xyxy(ann["bbox"]), h, w)
                except (SkipObject, TypeError, ValueError):
                    box = None
            ob = RegionObject(mask=rle, box=box, category=self.class_names[aid])
            ob.extra["ann_id"] = ann["id"]
            ob.extra["qa"] = self.qa.get(aid, [])
            return ob

        objs = image_objects(self.stats, self._where(index), self.coco.anns_by_image[img["id"]], build)
        fname = img["file_name"]
        fname = fname[len("images/"):] if fname.startswith("images/") else fname
        path = os.path.join(self.image_dir, fname)
        return Sample(id=f"dlc_bench_{img['id']}", source=self.name, image=ImageRef(path=path), height=h,
                      width=w, objects=objs, split=self.split, extra={"image_id": img["id"]})
