"""RefCOCO / RefCOCO+ / RefCOCOg (refer pickles + COCO ``instances.json``).

Tree (LISA's): ``<root>/refer_seg/<dataset>/{instances.json, refs(<splitBy>).p}``, images
``<root>/refer_seg/images/mscoco/images/train2014/COCO_train2014_*.jpg`` (else
``<root>/coco/train2014``). One :class:`Sample` per (image, split): each object is one ref with all
the ref's sentences as ``expressions`` (kept as published, even empty ones); evaluation iterates
every sentence of every ref. Masks follow LISA (:func:`~fclm.data.formats.coco.summed_object`): the
polygons are summed, so pixels covered twice are not target for the metric, and a ref whose
annotation has no segmentation is scored against an all-zero mask.
"""
from __future__ import annotations

import os
from collections import OrderedDict

from ..schema import Sample
from .base import IndexedReader, SkipObject, image_ref, load_data_pickle, require
from .coco import CocoFile, image_objects, summed_object

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"),
          "google": ("train", "val")}


def split_matches(ref_split: str, split: str) -> bool:
    """The refer toolkit's ``getRefIds(split=...)`` rule (LISA uses it): ``testA``/``testB``/``testC``
    take every ref whose split contains that letter (``testAB`` too), ``test`` every split containing
    "test", other splits must be equal."""
    if split in ("testA", "testB", "testC"):
        return split[-1] in ref_split
    if split == "test":
        return "test" in ref_split
    return ref_split == split


class RefCocoReader(IndexedReader):
    def __init__(self, name: str, root: str, split: str = "train", *, split_by: str | None = None,
                 ann_dir: str | None = None, image_dir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        self.split_by = split_by or SPLIT_BY[name]
        if split not in SPLITS.get(self.split_by, (split,)):
            raise ValueError(f"{name} ({self.split_by}) has splits {SPLITS[self.split_by]}, not {split!r}")
        self.ann_dir = ann_dir or os.path.join(root, "refer_seg", name)
        lisa = os.path.join(root, "refer_seg", "images", "mscoco", "images", "train2014")
        self.image_dir = image_dir or (lisa if os.path.isdir(lisa) else os.path.join(root, "coco", "train2014"))
        self.refs_path = os.path.join(self.ann_dir, f"refs({self.split_by}).p")
        self.source = self.refs_path

    def _load(self) -> list:
        # The refer pickle is user-named data (the dataset the user asked for); it is unpickled
        # with a restricted unpickler that only rebuilds plain containers/strings/numbers.
        refs = load_data_pickle(self.refs_path, f"refer file {self.refs_path}")
        self.coco = CocoFile(os.path.join(self.ann_dir, "instances.json"))
        self.coco.count_into(self.stats)
        groups: OrderedDict = OrderedDict()  # image_id → refs of this split, in file order
        for ref in refs:
            if split_matches(str(ref.get("split")), self.split):
                groups.setdefault(ref.get("image_id"), []).append(ref)
        return list(groups.items())

    def _where(self, index: int) -> str:
        return f"{self.refs_path} image group {index}"

    def _parse(self, index: int, raw) -> Sample:
        image_id, refs = raw
        img = self.coco.img_by_id.get(image_id)
        require(img is not None, "image not in instances.json", f"image_id {image_id}")
        h, w = self.coco.image_size(img)

        def build(ref):
            sents = [str(s["sent"]) for s in ref.get("sentences", [])]  # LISA reads "sent"
            if not sents:
                raise SkipObject("no sentences", f"ref {ref.get('ref_id')}")
            if not all(s.strip() for s in sents):
                self.stats.note("empty sentence (kept, as LISA)")
            ann = self.coco.ann_by_id.get(ref.get("ann_id"))
            if ann is None:
                raise SkipObject("annotation not found", f"ref {ref.get('ref_id')} ann {ref.get('ann_id')}")
            ob = summed_object(ann, h, w, category=self.coco.category_name(ann), stats=self.stats)
            ob.expressions = sents
            ob.extra.update(ref_id=ref.get("ref_id"), sent_ids=[s.get("sent_id") for s in ref["sentences"]])
            return ob

        objs = image_objects(self.stats, self._where(index), refs, build)
        return Sample(id=f"{self.name}_{self.split_by}_{self.split}_{image_id}", source=self.name,
                      image=image_ref(self.image_dir, img["file_name"]), height=h, width=w, objects=objs, split=self.split,
                      extra={"image_id": image_id})
