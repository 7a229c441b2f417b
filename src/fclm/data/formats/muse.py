"""MUSE (PixelLM's multi-target reasoning segmentation): ``<root>/muse/muse_{split}.json``.

Read as PixelLM's ``multi_reason_seg_val_dataset.py`` does: images with ``file_name`` are COCO
*train2014* (``<root>/refer_seg/images/mscoco/images/train2014``, else ``<root>/coco/train2014``),
others come from ``coco_url`` (train2017 / val2017); each answer's ground truth is its own
``segmentation``, polygons *summed* (pixels covered twice are not target for the metric); empty
masks are kept (PixelLM scores them).

Splits: train, val, test_less, test_many. Record: ``file_name`` or ``coco_url``, height, width,
``ann_list`` [{category_id, category_name, rephrased_name?, bbox, segmentation}], ``questions`` [str],
``answers`` [[ann | index, ...] per question], optional ``text_answers`` [str with one ``{seg}`` per
answer object]. Answer entries are matched to ``ann_list`` by ``id``, by equality, or by index.
"""
from __future__ import annotations

import os

from ..schema import ImageRef, Question, Sample
from .base import JsonListReader, SkipObject, as_int, require
from .coco import check_box, clean_category, summed_object, xywh_to_xyxy

SPLITS = ("train", "val", "test_less", "test_many")


class MuseReader(JsonListReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 coco_root: str | None = None, image_subdir: str = "train2014", check_images: bool = False):
        super().__init__(name, split, check_images)
        if ann_file is None and split not in SPLITS:
            raise ValueError(f"muse splits are {SPLITS}, not {split!r}")
        self.source = ann_file or os.path.join(root, "muse", f"muse_{split}.json")
        lisa = os.path.join(root, "refer_seg", "images", "mscoco", "images")  # PixelLM's own tree
        self.coco_root = coco_root or (lisa if os.path.isdir(lisa) else os.path.join(root, "coco"))
        self.image_subdir = image_subdir

    def _image_path(self, rec: dict) -> str:
        """PixelLM: ``file_name`` → COCO train2014; else ``coco_url`` → train2017 if the URL says so,
        otherwise val2017 (the URL's last component is the file name)."""
        if rec.get("file_name"):
            return os.path.join(self.coco_root, self.image_subdir, rec["file_name"])
        url = rec.get("coco_url")
        require(bool(url), "missing field", "no file_name / coco_url")
        sub = "train2017" if "train2017" in url else "val2017"
        return os.path.join(self.coco_root, sub, url.rstrip("/").split("/")[-1])

    def _object(self, ann: dict, h: int, w: int):
        name = ann.get("category_name")
        ob = summed_object(ann, h, w, category=clean_category(name) if name else None, stats=self.stats)
        if ann.get("bbox") is not None:
            try:
                ob.box = check_box(xywh_to_xyxy(ann["bbox"]), h, w)
            except (SkipObject, TypeError, ValueError):
                pass  # PixelLM never uses the box for scoring; the mask decides
        if ann.get("rephrased_name"):
            ob.expressions = [ann["rephrased_name"]]
        return ob

    def _parse(self, index: int, rec: dict) -> Sample:
        h, w = as_int(rec.get("height"), "height"), as_int(rec.get("width"), "width")
        path = self._image_path(rec)
        anns = rec.get("ann_list") or []
        require(bool(anns), "no objects", "empty ann_list (PixelLM's val loader substitutes record 0)")
        objs = [self._object(ann, h, w) for ann in anns]  # a bad mask invalidates the record
        questions = rec.get("questions") or []
        answers = rec.get("answers") or []
        texts = rec.get("text_answers")
        require(bool(questions), "no questions")
        require(len(answers) == len(questions), "answers/questions mismatch",
                f"{len(questions)} questions, {len(answers)} answer lists")
        qs = []
        for k, (q, ans) in enumerate(zip(questions, answers)):
            targets = []
            for a in ans:
                j = self._ann_index(anns, a)
                if isinstance(a, dict) and "segmentation" in a and (j is None or anns[j].get("segmentation") != a["segmentation"]):
                    # PixelLM builds the GT from the answer's own segmentation
                    objs.append(self._object(a, h, w))
                    j_obj = len(objs) - 1
                else:
                    require(j is not None, "unusable answer object", f"question {k}")
                    j_obj = j
                targets.append(j_obj)
            text = texts[k] if texts and k < len(texts) else None
            if text is not None and text.count("{seg}") != len(targets):
                self.stats.note("text answer placeholder mismatch (text answer dropped)")
                text = None
            qs.append(Question(text=q, target_ids=targets, answer=text, kind="multi"))
        return Sample(id=f"muse_{self.split}_{index}", source=self.name, image=ImageRef(path=path),
                      height=h, width=w, objects=objs, split=self.split, questions=qs,
                      extra={k: rec[k] for k in ("image_id", "id") if k in rec})

    @staticmethod
    def _ann_index(anns: list[dict], a) -> int | None:
        if isinstance(a, int):
            return a if 0 <= a < len(anns) else None
        if isinstance(a, dict):
            if "id" in a:
                for j, b in enumerate(anns):
                    if b.get("id") == a["id"]:
                        return j
            for j, b in enumerate(anns):
                if b == a:
                    return j
        return None
