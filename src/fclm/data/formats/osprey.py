"""Osprey-724K: ``<root>/osprey/osprey_{short_form,lvis_positive_negative,conversation,
detail_description,part_level}.json``; images are COCO (``<root>/coco/train2017``; a
``COCO_train2014_`` prefix is dropped as Osprey does).

Record: {id, file_name, height, width, annotation: [{segmentation, ...}], conversations: [{from,
value}]} — or, for detail-description, ``description: ["<regionK>: text", ...]``. Masks may be
polygons, uncompressed or compressed RLE. In turn texts, every ``<regionK>`` (1-based) and every
``<mask><pos>`` pair (the next region in order) becomes a ``<region>`` slot, recorded in
``Sample.dialogue_region_ids``; ``<image>`` is removed. Malformed region tags (``<regin2>``,
``<Region1>``) or out-of-range indices skip the record.
"""
from __future__ import annotations

import os
import re

from ..schema import ImageRef, RegionObject, Sample, Turn
from .base import JsonListReader, SkipObject, SkipRecord, as_int, require
from .coco import coco_image_path, seg_to_rle

FILES = {
    "osprey_short_form": "osprey_short_form.json",
    "osprey_lvis_posneg": "osprey_lvis_positive_negative.json",
    "osprey_conversation": "osprey_conversation.json",
    "osprey_detail_description": "osprey_detail_description.json",
    "osprey_part_level": "osprey_part_level.json",
}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

_TAG = re.compile(r"<mask>\s*<pos>|<([^<>\n]{1,40})>")
_REGION = re.compile(r"region(\d+)")
_WORD_NUM = re.compile(r"\s*([a-z]+)\s*(\d*)\s*", re.I)
_DESC = re.compile(r"^\s*<([^<>]*)>\s*:\s*(.*)$", re.S)


def _looks_like_region_tag(inner: str) -> bool:
    """A typo'd / re-cased region tag (``regin2``, ``Region1``, ``region``) but not other markup."""
    import difflib

    m = _WORD_NUM.fullmatch(inner)
    if m is None:
        return False
    word = m.group(1).lower()
    if word.startswith("region"):
        return True
    return bool(m.group(2)) and difflib.SequenceMatcher(None, word, "region").ratio() >= 0.6


def convert_region_tags(text: str, n_regions: int, ids: list[int], state: dict) -> str:
    """Rewrite Osprey tags in ``text`` to ``<region>`` slots, appending object indices to ``ids``.

    ``state["next"]`` tracks the region a bare ``<mask><pos>`` stands for. Raises
    :class:`SkipRecord` for a malformed tag or an index out of range.
    """
    out, pos = [], 0
    for m in _TAG.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        inner = m.group(1)
        if inner is None:  # <mask><pos>
            k = state.get("next", 0)
            require(k < n_regions, "region index out of range", f"<mask><pos> #{k + 1} of {n_regions} regions")
            state["next"] = k + 1
            ids.append(k)
            out.append("<region>")
        elif inner == "image":
            pass
        elif (rm := _REGION.fullmatch(inner)) is not None:
            k = int(rm.group(1))
            require(1 <= k <= n_regions, "region index out of range", f"<{inner}> with {n_regions} regions")
            ids.append(k - 1)
            out.append("<region>")
        elif _looks_like_region_tag(inner):
            raise SkipRecord("malformed region tag", f"<{inner}>")
        else:
            out.append(m.group(0))  # some other markup: kept verbatim
    out.append(text[pos:])
    return "".join(out).strip()


class OspreyReader(JsonListReader):
    def __init__(self, name: str, root: str, split: str = "train", *, ann_file: str | None = None,
                 coco_root: str | None = None, image_subdir: str = "train2017", check_images: bool = False):
        super().__init__(name, split, check_images)
        self.source = ann_file or os.path.join(root, "osprey", FILES[name])
        self.coco_root = coco_root or os.path.join(root, "coco")
        self.image_subdir = image_subdir

    def _parse(self, index: int, rec: dict) -> Sample:
        h, w = as_int(rec.get("height"), "height"), as_int(rec.get("width"), "width")
        fname = rec["file_name"]
        if "/" not in fname:
            fname = fname.split("_")[-1]  # COCO_train2014_000000xxxx.jpg → 000000xxxx.jpg
        image = ImageRef(path=coco_image_path(self.coco_root, fname, self.image_subdir))
        anns = rec.get("annotation") or []
        require(bool(anns), "no objects")
        objs = []
        for j, ann in enumerate(anns):
            try:
                objs.append(RegionObject(mask=seg_to_rle(ann.get("segmentation"), h, w),
                                         extra={k: ann[k] for k in ("id", "category_id") if k in ann}))
            except SkipObject as e:  # region numbering depends on every mask: skip the record
                raise SkipRecord(e.reason, f"annotation {j}: {e.detail}") from None
        sample = Sample(id=f"{self.name}_{rec.get('id', index)}", source=self.name, image=image,
                        height=h, width=w, objects=objs, split=self.split,
                        extra={"record_id": rec.get("id")})
        if self.name == "osprey_detail_description":
            self._parse_descriptions(rec, sample)
        else:
            self._parse_dialogue(rec, sample)
        return sample

    def _parse_dialogue(self, rec: dict, sample: Sample) -> None:
        conv = rec.get("conversations") or []
        require(len(conv) >= 2, "no conversation")
        n = len(sample.objects)
        state: dict = {}
        for t, turn in enumerate(conv[: len(conv) // 2 * 2]):
            role = ROLES.get(str(turn.get("from", "")).lower())
            require(role == ("user" if t % 2 == 0 else "assistant"), "bad conversation roles",
                    f"turn {t} from {turn.get('from')!r}")
            text = convert_region_tags(str(turn.get("value", "")), n, sample.dialogue_region_ids, state)
            require(role == "assistant" or bool(text), "empty turn", f"turn {t}")
            sample.dialogue.append(Turn(role=role, text=text))

    def _parse_descriptions(self, rec: dict, sample: Sample) -> None:
        desc = rec.get("description") or []
        n = len(sample.objects)
        require(len(desc) == n, "descriptions/regions mismatch", f"{len(desc)} descriptions, {n} regions")
        for i, d in enumerate(desc):
            m = _DESC.match(str(d))
            require(m is not None, "malformed region tag", f"description {i} has no '<regionK>:' prefix")
            rm = _REGION.fullmatch(m.group(1))
            require(rm is not None, "malformed region tag", f"<{m.group(1)}>")
            k = int(rm.group(1))
            require(1 <= k <= n, "region index out of range", f"<{m.group(1)}> with {n} regions")
            require(bool(m.group(2).strip()), "empty caption", f"description {i}")
            sample.objects[k - 1].caption = m.group(2).strip()
