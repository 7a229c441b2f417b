"""DLC-Bench (DAM's detailed localized captioning benchmark): ``<root>/dlc_bench/``.

The release's ``annotations/`` folder (``<root>/dlc_bench/`` or ``<root>/dlc_bench/annotations/``):
``annotations.json`` (COCO format: images + one annotation per evaluated region), ``images/``,
``class_names.json`` {ann_id: class name}, ``qa.json`` {ann_id: [{question, choices: [[text,
score], ...], type: positive|negative}]}. One sample per image; each object carries
``extra["ann_id"]`` (the evaluation id), ``category`` (class name) and ``extra["qa"]``.
"""
from __future__ import annotations

import os

from ..schema import ImageRef, Sample
from .base import IndexedReader, SkipObject, read_json
from .coco import CocoFile, ann_to_object, image_objects


class DlcBenchReader(IndexedReader):
    def __init__(self, name: str, root: str, split: str = "test", *, bench_dir: str | None = None,
                 check_images: bool = False):
        super().__init__(name, split, check_images)
        self.dir = bench_dir or os.path.join(root, "dlc_bench")
        if not os.path.exists(os.path.join(self.dir, "annotations.json")) and \
                os.path.isdir(os.path.join(self.dir, "annotations")):
            self.dir = os.path.join(self.dir, "annotations")  # the release's own folder name
        self.source = os.path.join(self.dir, "annotations.json")

    def _load(self) -> list:
        self.coco = CocoFile(self.source)
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
            ob = ann_to_object(ann, h, w, category=self.class_names[aid])
            ob.extra["ann_id"] = ann["id"]
            ob.extra["qa"] = self.qa.get(aid, [])
            return ob

        objs = image_objects(self.stats, self._where(index), self.coco.anns_by_image[img["id"]], build)
        fname = img["file_name"]
        path = os.path.join(self.dir, fname if fname.startswith("images/") else os.path.join("images", fname))
        return Sample(id=f"dlc_bench_{img['id']}", source=self.name, image=ImageRef(path=path), height=h,
                      width=w, objects=objs, split=self.split, extra={"image_id": img["id"]})
