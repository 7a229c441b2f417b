"""Grounded conversation generation sets from GLaMM's GranD-f release (``<root>/GranDf/``).

* ``grandf`` / ``openpsg``: ``GranDf_HA_GCG_train.json``, ``OpenPsgGCG_{train,val}.json``:
  [{file_name, height, width, caption, groundings: {phrase: {token_positives: [s, e],
  rle_masks: [RLE, ...]}}}]; one object per phrase (union of its masks).
* ``refcocog_gcg``: ``RefCOCOg_GCG_{train,val}.json``: [{key: {img_file_name, caption, refs:
  [{sentence, segmentation}]}}]; phrases are found in the caption (case-insensitive), overlapping
  spans trimmed to the next phrase's start, as GLaMM does. Image size is read from the image header.
* ``flickr_gcg``: ``flickr_mergedGT_GCG_{train,val}.json``: COCO format, image ``caption``,
  annotation ``tokens_positive`` + ``sam_mask`` (RLE); GLaMM's filters (captions < 3 words, images
  < 32 px, degenerate boxes) apply. Annotations with the same span share one phrase.
* ``gcg_eval``: ``{val,test}_gcg_coco_mask_gt.json`` + ``{val,test}_gcg_coco_caption_gt.json``.

Every sample carries ``caption`` and ``phrases`` (character spans into ``caption``, end exclusive,
pointing at object indices), ordered by start.
"""
from __future__ import annotations

import os

from ..schema import ImageRef, Phrase, RegionObject, Sample
from .base import IndexedReader, JsonListReader, SkipObject, SkipRecord, as_int, image_size_from_file, require
from ..masks import rle_area, segmentation_to_rle
from .coco import CocoFile, ann_to_object, merge_rles, seg_to_rle

GCG_FILES = {
    "grandf": ("GranDf_HA_GCG_{split}.json", "GranDf/GranDf_HA_images/{split}"),
    "openpsg": ("OpenPsgGCG_{split}.json", "coco/train2017"),
    "refcocog_gcg": ("RefCOCOg_GCG_{split}.json", "coco/train2014"),
    "flickr_gcg": ("flickr_mergedGT_GCG_{split}.json", "flickr30k/images"),
}


def clean_caption(caption: str) -> tuple[str, int]:
    """GLaMM's ``caption.strip('"').strip()`` plus the offset its spans must shift by."""
    stripped = caption.strip('"').strip()
    return stripped, (caption.find(stripped) if stripped else 0)


def check_span(caption: str, span, where: str) -> tuple[int, int]:
    try:
        s, e = int(span[0]), int(span[1])
    except (TypeError, ValueError, IndexError):
        raise SkipRecord("bad phrase span", f"{where}: {span!r}") from None
    if not (0 <= s < e <= len(caption)):
        raise SkipRecord("bad phrase span", f"{where}: span {[s, e]} outside a {len(caption)}-char caption")
    return s, e


def sorted_sample(sample: Sample) -> Sample:
    """Order phrases by start (objects keep their indices)."""
    sample.phrases.sort(key=lambda p: p.span)
    return sample


class _GcgBase(JsonListReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 image_dir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        fname, idir = GCG_FILES[name]
        self.source = ann_file or os.path.join(root, "GranDf", "annotations", "train", fname.format(split=split))
        self.image_dir = image_dir or os.path.join(root, *idir.format(split=split).split("/"))


class GroundingsReader(_GcgBase):
    """GranD-f human-annotated and OpenPSG GCG files (``groundings`` dict per record)."""

    def _parse(self, index: int, rec: dict) -> Sample:
        path = os.path.join(self.image_dir, rec["file_name"])
        if rec.get("height") and rec.get("width"):
            h, w = as_int(rec["height"], "height"), as_int(rec["width"], "width")
        else:
            h, w = image_size_from_file(path)
        caption, off = clean_caption(str(rec.get("caption") or ""))
        require(bool(caption), "no caption")
        groundings = rec.get("groundings") or {}
        require(isinstance(groundings, dict) and bool(groundings), "no groundings")
        objs, phrases = [], []
        for phrase, g in groundings.items():
            s, e = check_span(caption, [int(v) - off for v in g["token_positives"]], f"phrase {phrase!r}")
            rles = g.get("rle_masks") or []
            require(bool(rles), "empty mask", f"phrase {phrase!r} has no mask")
            try:
                rle = merge_rles([seg_to_rle(r, h, w) for r in rles])
            except SkipObject as ex:  # a phrase without its mask breaks the caption's grounding
                raise SkipRecord(ex.reason, f"phrase {phrase!r}: {ex.detail}") from None
            phrases.append(Phrase(text=caption[s:e], span=(s, e), object_ids=[len(objs)]))
            objs.append(RegionObject(mask=rle, expressions=[phrase]))
        stem = os.path.splitext(rec["file_name"])[0]
        return sorted_sample(Sample(id=f"{self.name}_{stem}", source=self.name, image=ImageRef(path=path),
                                    height=h, width=w, objects=objs, split=self.split, caption=caption,
                                    phrases=phrases, extra={"file_name": rec["file_name"]}))


class RefCocogGcgReader(_GcgBase):
    def _parse(self, index: int, rec: dict) -> Sample:
        require(isinstance(rec, dict) and len(rec) == 1, "malformed record", "expected {key: {...}}")
        key, info = next(iter(rec.items()))
        path = os.path.join(self.image_dir, info["img_file_name"])
        h, w = image_size_from_file(path)
        caption, _ = clean_caption(str(info.get("caption") or ""))
        require(bool(caption), "no caption")
        low = caption.lower()
        found = []
        for j, ref in enumerate(info.get("refs") or []):
            sent = str(ref.get("sentence") or "").strip()
            s = low.find(sent.lower()) if sent else -1
            if s < 0:
                self.stats.skip_object("phrase not in caption", f"{self._where(index)} ref {j}", sent)
                continue
            try:
                rle = seg_to_rle(ref.get("segmentation"), h, w)
            except SkipObject as e:
                self.stats.skip_object(e.reason, f"{self._where(index)} ref {j}", e.detail)
                continue
            found.append((s, s + len(sent), sent, rle))
        require(bool(found), "no valid objects", "no ref sentence found in the caption")
        found.sort(key=lambda f: f[0])
        objs, phrases = [], []
        for k, (s, e, sent, rle) in enumerate(found):
            if k + 1 < len(found) and e > found[k + 1][0]:  # overlap: trim to the next phrase
                e = s + len(caption[s:found[k + 1][0]].rstrip())
            if e <= s:
                self.stats.skip_object("overlapping phrase", f"{self._where(index)}", sent)
                continue
            phrases.append(Phrase(text=caption[s:e], span=(s, e), object_ids=[len(objs)]))
            objs.append(RegionObject(mask=rle, expressions=[sent]))
        require(bool(objs), "no valid objects")
        return Sample(id=f"{self.name}_{key}", source=self.name, image=ImageRef(path=path), height=h,
                      width=w, objects=objs, split=self.split, caption=caption, phrases=phrases,
                      extra={"key": key, "file_name": info["img_file_name"]})


class FlickrGcgReader(_GcgBase):
    def _load(self) -> list:
        self.coco = CocoFile(self.source)
        return self.coco.images

    def _parse(self, index: int, img: dict) -> Sample:
        h, w = self.coco.image_size(img)
        require(min(h, w) >= 32, "image too small", f"{w}x{h}")
        caption = str(img.get("caption") or "")
        require(len(caption.split(" ")) >= 3, "short caption", repr(caption))
        objs, by_span = [], {}
        for j, ann in enumerate(self.coco.anns_by_image.get(img["id"], [])):
            where = f"{self._where(index)} annotation {ann.get('id', j)}"
            try:
                if ann.get("ignore", False):
                    raise SkipObject("ignored annotation")
                if float(ann.get("area", 1)) <= 0:
                    raise SkipObject("degenerate box", f"area {ann.get('area')}")
                tp = ann.get("tokens_positive") or []
                if not tp:
                    raise SkipObject("no phrase span")
                span = check_span(caption, tp[0], where)
                ob = ann_to_object(ann, h, w, mask_key="sam_mask")
            except SkipRecord as e:  # SkipObject or a bad span: drop this annotation only
                self.stats.skip_object(e.reason, where, e.detail)
                continue
            ob.expressions = [caption[span[0]:span[1]]]
            by_span.setdefault(span, []).append(len(objs))
            objs.append(ob)
        require(bool(objs), "no valid objects")
        phrases = [Phrase(text=caption[s:e], span=(s, e), object_ids=ids) for (s, e), ids in by_span.items()]
        return sorted_sample(Sample(id=f"{self.name}_{img['id']}", source=self.name,
                                    image=ImageRef(path=os.path.join(self.image_dir, img["file_name"])),
                                    height=h, width=w, objects=objs, split=self.split, caption=caption,
                                    phrases=phrases, extra={"image_id": img["id"]}))


class GcgEvalReader(IndexedReader):
    """GLaMM's GCG val/test ground truth: COCO mask GT + COCO caption GT, one sample per image.

    Phrases are filled when the caption GT lists ``labels`` (one per mask, in order) or the mask GT
    annotations carry ``tokens_positive``; otherwise only caption + masks are known.
    """

    def __init__(self, name: str, root: str, split: str = "val", *, ann_dir: str | None = None,
                 image_dir: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        if split not in ("val", "test"):
            raise ValueError(f"gcg_eval splits are ('val', 'test'), not {split!r}")
        d = ann_dir or os.path.join(root, "GranDf", "annotations", "val_test")
        self.mask_file = os.path.join(d, f"{split}_gcg_coco_mask_gt.json")
        self.caption_file = os.path.join(d, f"{split}_gcg_coco_caption_gt.json")
        self.image_dir = image_dir or os.path.join(root, "GranDf", "GranDf_HA_images", "val_test")
        self.source = self.mask_file

    def _load(self) -> list:
        self.masks = CocoFile(self.mask_file)
        self.masks.count_into(self.stats)
        caps = CocoFile(self.caption_file)
        self.captions = {}
        for img_id, anns in caps.anns_by_image.items():
            self.captions[img_id] = anns[0]
        self.all_captions = {img_id: [a.get("caption") for a in anns] for img_id, anns in caps.anns_by_image.items()}
        return self.masks.images

    def _parse(self, index: int, img: dict) -> Sample:
        h, w = self.masks.image_size(img)
        cap_ann = self.captions.get(img["id"])
        require(cap_ann is not None and bool(cap_ann.get("caption")), "no caption", f"image {img['id']}")
        caption = str(cap_ann["caption"])
        anns = self.masks.anns_by_image.get(img["id"], [])
        objs = []
        for j, ann in enumerate(anns):
            if "segmentation" not in ann:
                continue  # GLaMM's evaluator skips these too
            try:  # metrics compare against every GT mask: a bad one invalidates the image
                rle = segmentation_to_rle(ann["segmentation"], h, w)
            except Exception as e:  # noqa: BLE001 - pycocotools raises bare Exceptions
                raise SkipRecord("bad mask", f"mask annotation {j}: {e}") from None
            if rle_area(rle) == 0:  # GLaMM scores an empty GT mask too
                self.stats.note("empty mask (kept, scored as GLaMM)")
            extra = {"ann_id": ann["id"]} if "id" in ann else {}
            extra["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
            objs.append(RegionObject(mask=rle, extra=extra))
        phrases = []
        labels = cap_ann.get("labels")
        if labels and len(labels) == len(objs):
            low, start = caption.lower(), 0
            for i, lab in enumerate(labels):
                s = low.find(str(lab).lower(), start)
                if s >= 0:
                    phrases.append(Phrase(text=caption[s:s + len(lab)], span=(s, s + len(lab)), object_ids=[i]))
                    start = s + len(lab)
        else:
            for i, ann in enumerate(anns):
                if ann.get("tokens_positive"):
                    s, e = check_span(caption, ann["tokens_positive"][0], f"annotation {i}")
                    phrases.append(Phrase(text=caption[s:e], span=(s, e), object_ids=[i]))
        return sorted_sample(Sample(id=str(img["id"]), source=self.name,
                                    image=ImageRef(path=os.path.join(self.image_dir, img["file_name"])),
                                    height=h, width=w, objects=objs, split=self.split, caption=caption,
                                    phrases=phrases,
                                    # GLaMM's own GT lists: its recall uses these labels, its mIoU/AP every mask
                                    extra={"file_name": img["file_name"], "labels": list(labels or []),
                                           "captions": [c for c in self.all_captions.get(img["id"], []) if c]}))
