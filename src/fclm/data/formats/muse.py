"""MUSE (PixelLM's multi-target reasoning segmentation): ``<root>/muse/muse_{split}.json``.

Splits: train, val, test_less, test_many. Record: ``file_name`` or ``coco_url``, height, width,
``ann_list`` [{category_id, category_name, rephrased_name?, bbox, segmentation}], ``questions`` [str],
``answers`` [[ann | index, ...] per question], optional ``text_answers`` [str with one ``{seg}`` per
answer object]. Answer entries are matched to ``ann_list`` by ``id``, by equality, or by index.
"""
from __future__ import annotations

import os

from ..schema import ImageRef, Question, Sample
from .base import JsonListReader, SkipObject, as_int, require
from .coco import ann_to_object, clean_category, coco_image_path

SPLITS = ("train", "val", "test_less", "test_many")


class MuseReader(JsonListReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 coco_root: str | None = None, image_subdir: str = "train2017", check_images: bool = False):
        super().__init__(name, split, check_images)
        if ann_file is None and split not in SPLITS:
            raise ValueError(f"muse splits are {SPLITS}, not {split!r}")
        self.source = ann_file or os.path.join(root, "muse", f"muse_{split}.json")
        self.coco_root = coco_root or os.path.join(root, "coco")
        self.image_subdir = image_subdir

    def _parse(self, index: int, rec: dict) -> Sample:
        h, w = as_int(rec.get("height"), "height"), as_int(rec.get("width"), "width")
        path = coco_image_path(self.coco_root, rec.get("file_name"), self.image_subdir, rec.get("coco_url"))
        anns = rec.get("ann_list") or []
        require(bool(anns), "no objects")
        objs, obj_of_ann = [], {}
        for j, ann in enumerate(anns):
            try:
                name = ann.get("category_name")
                ob = ann_to_object(ann, h, w, category=clean_category(name) if name else None)
            except SkipObject as e:
                self.stats.skip_object(e.reason, f"{self._where(index)} ann_list[{j}]", e.detail)
                continue
            if ann.get("rephrased_name"):
                ob.expressions = [ann["rephrased_name"]]
            obj_of_ann[j] = len(objs)
            objs.append(ob)
        questions = rec.get("questions") or []
        answers = rec.get("answers") or []
        texts = rec.get("text_answers")
        require(bool(questions), "no questions")
        require(len(answers) == len(questions), "answers/questions mismatch",
                f"{len(questions)} questions, {len(answers)} answer lists")
        qs = []
        for k, (q, ans) in enumerate(zip(questions, answers)):
            targets = [obj_of_ann.get(self._ann_index(anns, a)) for a in ans]
            require(bool(targets) and None not in targets, "unusable answer object", f"question {k}")
            text = texts[k] if texts and k < len(texts) else None
            if text is not None:
                require(text.count("{seg}") == len(targets), "text answer placeholder mismatch",
                        f"question {k}: {text.count('{seg}')} {{seg}} for {len(targets)} objects")
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
