"""Describe-Anything (DAM) training data: WebDataset tar shards, read as a stream, never untarred.

Tree: ``<root>/describe_anything/<Subset>/images/*.tar`` with subsets ``COCOStuff``,
``Mapillary``, ``OpenImages``, ``SAM``. Inside a shard, members that share a key (the name up to
its first dot, WebDataset's rule) form one sample: an image (``NNN.jpg``/``.png``) and an
annotation (``NNN.pickle``/``.pkl`` or ``NNN.json``) holding a list of region dicts with a COCO RLE
mask (``mask_rle``; also ``segmentation``/``rle``), ``ann_id``, ``img_id`` and a caption (key
``caption`` by default; the release does not document it, so ``caption_key`` is configurable and
common alternatives are tried). The pickle is user-named data (inside the shards the user points
at) and is unpickled by :func:`~.base.load_data_pickle`, which only rebuilds plain data.

Iteration streams each shard in order. Map-style access (``len``, ``reader[i]``, used by the
mixture sampler) builds an in-memory index of (shard, member offsets) on first use by reading only
tar headers, then seeks straight to a sample's members.
"""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from typing import Iterator

from ..schema import FCLMDataError, ImageRef, RegionObject, Sample
from .base import DatasetReader, SkipObject, SkipRecord, classify_error, load_data_pickle, require
from .coco import seg_to_rle

SUBSETS = {
    "dam_coco_stuff": ("COCOStuff", "COCO-Stuff", "coco_stuff"),
    "dam_mapillary": ("Mapillary", "mapillary"),
    "dam_openimages": ("OpenImages", "openimages"),
    "dam_sa1b": ("SAM", "SA-1B", "SA1B", "sa1b"),
}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
ANN_EXTS = ("pickle", "pkl", "json")
CAPTION_KEYS = ("caption", "cap", "description", "detailed_caption", "dense_caption", "text")
MASK_KEYS = ("mask_rle", "segmentation", "rle", "mask")
REGION_LIST_KEYS = ("regions", "annotations", "anns", "objects")


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset key/extension: ``a/b/000123.seg.pickle`` → (``a/b/000123``, ``seg.pickle``)."""
    d, base = os.path.split(member_name)
    if "." not in base:
        return member_name, ""
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext.lower()


class DamShardReader(DatasetReader):
    def __init__(self, name: str, root: str, split: str = "train", *, shards: list[str] | str | None = None,
                 subset_dir: str | None = None, caption_key: str | None = None, check_images: bool = False):
        super().__init__(name, split, check_images)
        if shards is None:
            base = os.path.join(root, "describe_anything")
            cands = [subset_dir] if subset_dir else [os.path.join(base, s) for s in SUBSETS.get(name, ())]
            found = [c for c in cands if c and os.path.isdir(c)]
            d = found[0] if found else (cands[0] if cands else base)
            shards = os.path.join(d, "images", "*.tar") if os.path.isdir(os.path.join(d, "images")) \
                else os.path.join(d, "*.tar")
        self.shards = sorted(glob.glob(shards)) if isinstance(shards, str) else list(shards)
        if not self.shards:
            raise FileNotFoundError(f"{name}: no tar shards found at {shards}")
        self.caption_key = caption_key
        self._index: list[tuple[int, str, dict]] | None = None

    # -- parsing --------------------------------------------------------------------------------
    def _regions(self, ext: str, data: bytes, where: str):
        if ext == "json":
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SkipRecord("bad annotation", f"{where}: {e}") from None
        else:
            try:
                obj = load_data_pickle(data, where)
            except FCLMDataError as e:
                raise SkipRecord("bad annotation", str(e)) from None
        if isinstance(obj, dict):
            for k in REGION_LIST_KEYS:
                if isinstance(obj.get(k), list):
                    return obj[k], obj
            return [obj], obj
        require(isinstance(obj, list), "bad annotation", f"{where}: {type(obj).__name__}, not a region list")
        return obj, {}

    @staticmethod
    def _image_size(data: bytes, where: str) -> tuple[int, int]:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
        except OSError as e:
            raise SkipRecord("unreadable image", f"{where}: {e}") from None
        return h, w

    def _caption(self, region: dict):
        keys = (self.caption_key,) if self.caption_key else CAPTION_KEYS
        for k in keys:
            v = region.get(k)
            if isinstance(v, (list, tuple)) and v:
                return str(v[0]), [str(x) for x in v]
            if isinstance(v, str) and v.strip():
                return v.strip(), None
        raise SkipObject("no caption", f"none of the keys {list(keys)}")

    def _sample(self, shard: str, key: str, members: dict[str, bytes]) -> Sample:
        where = f"{shard}:{key}"
        img_ext = next((e for e in IMAGE_EXTS if e in members), None)
        require(img_ext is not None, "no image member", f"{where} has {sorted(members)}")
        ann_ext = next((e for e in ANN_EXTS if e in members), None)
        require(ann_ext is not None, "no annotation member", f"{where} has {sorted(members)}")
        regions, _ = self._regions(ann_ext, members[ann_ext], f"{where}.{ann_ext}")
        h, w = self._image_size(members[img_ext], f"{where}.{img_ext}")  # header only, no decode
        objs = []
        for j, reg in enumerate(regions):
            try:
                if not isinstance(reg, dict):
                    raise SkipObject("bad region", f"{type(reg).__name__}")
                seg = next((reg[k] for k in MASK_KEYS if reg.get(k) is not None), None)
                if seg is None:
                    raise SkipObject("empty mask", "no RLE mask")
                if hasattr(seg, "shape"):  # a numpy mask array
                    from ..masks import encode_mask

                    seg = encode_mask(seg)
                rle = seg_to_rle(seg, h, w)  # checks the mask size against the image's
                cap, caps = self._caption(reg)
            except SkipObject as e:
                self.stats.skip_object(e.reason, f"{where} region {j}", e.detail)
                continue
            extra = {k: reg[k] for k in ("ann_id", "img_id", "image_id", "category", "id") if k in reg}
            if caps:
                extra["captions"] = caps
            objs.append(RegionObject(mask=rle, caption=cap, extra=extra))
        require(bool(objs), "no valid objects", f"{len(regions)} region(s)")
        image = ImageRef(data=members[img_ext], name=f"{where}.{img_ext}")
        stem = os.path.splitext(os.path.basename(shard))[0]
        return Sample(id=f"{self.name}_{stem}_{key}", source=self.name, image=image, height=h, width=w,
                      objects=objs, split=self.split, extra={"shard": shard, "key": key})

    def _try(self, shard: str, key: str, members: dict) -> Sample | None:
        try:
            s = self._sample(shard, key, members)
        except (SkipRecord, KeyError, TypeError, ValueError) as e:
            reason, detail = classify_error(e)
            self.stats.skip(reason, f"{shard}:{key}", detail)
            return None
        self.stats.add(s)
        return s

    # -- streaming ------------------------------------------------------------------------------
    def _stream_groups(self, shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
        key, members = None, {}
        try:
            with tarfile.open(shard, mode="r|*") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    k, ext = split_key(m.name)
                    if k != key and key is not None:
                        yield key, members
                        members = {}
                    key = k
                    f = tf.extractfile(m)
                    members[ext] = f.read() if f is not None else b""
        except (tarfile.TarError, OSError, EOFError) as e:
            self.stats.skip("corrupt shard", shard, str(e))
        if key is not None and members:
            yield key, members

    def __iter__(self) -> Iterator[Sample]:
        self.stats.reset()
        for shard in self.shards:
            for key, members in self._stream_groups(shard):
                s = self._try(shard, key, members)
                if s is not None:
                    yield s

    # -- map-style access -----------------------------------------------------------------------
    def _build_index(self) -> list[tuple[int, str, dict]]:
        index: list[tuple[int, str, dict]] = []
        for si, shard in enumerate(self.shards):
            try:
                with tarfile.open(shard, mode="r:") as tf:  # headers only; data blocks are skipped
                    for m in tf:
                        if not m.isfile():
                            continue
                        k, ext = split_key(m.name)
                        if not index or index[-1][0] != si or index[-1][1] != k:
                            index.append((si, k, {}))
                        index[-1][2][ext] = (m.offset_data, m.size)
            except (tarfile.TarError, OSError) as e:
                self.stats.skip("corrupt shard", shard, str(e))
        return index

    @property
    def index(self) -> list[tuple[int, str, dict]]:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def _read(self, i: int) -> tuple[str, str, dict[str, bytes]]:
        si, key, offs = self.index[i]
        shard = self.shards[si]
        with open(shard, "rb") as f:
            members = {}
            for ext, (off, size) in offs.items():
                f.seek(off)
                members[ext] = f.read(size)
        return shard, key, members

    def get(self, i: int) -> Sample:
        """Sample ``i`` of the index; raises :class:`SkipRecord` if it is bad."""
        return self._sample(*self._read(i))

    __getitem__ = get

    def try_get(self, i: int) -> Sample | None:
        """Sample ``i``, or None (counted in ``stats`` and logged) if it is bad."""
        return self._try(*self._read(i))
