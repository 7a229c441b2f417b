"""Shared machinery of the dataset readers: stats, skipping, JSON/pickle reading.

A reader yields :class:`~fclm.data.schema.Sample` records. Bad records never stop a run: a parser
raises :class:`SkipRecord` (or :class:`SkipObject` for one bad object of an otherwise good record),
the reader counts it by reason in :class:`LoaderStats` and logs a line naming file and record.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..schema import FCLMDataError, ImageRef, Sample

log = logging.getLogger("fclm.data")

MAX_LOGGED_PER_REASON = 10  # log lines per (dataset, reason); the count itself is always exact


class SkipRecord(FCLMDataError):
    """A record that cannot be used. ``reason`` is the short key counted in the stats."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipObject(SkipRecord):
    """One object of a record that cannot be used; the rest of the record is kept."""


@dataclass
class LoaderStats:
    """Counts of one pass: records yielded, objects in them, and skips by reason."""

    name: str = ""
    records: int = 0
    objects: int = 0
    skipped: Counter = field(default_factory=Counter)  # bad records by reason
    skipped_objects: Counter = field(default_factory=Counter)  # bad objects (record kept) by reason
    notes: Counter = field(default_factory=Counter)  # kept as the reference keeps them, by remark
    # found once, while the annotation file is read (kept across passes):
    load_skipped: Counter = field(default_factory=Counter)  # records that never became one
    load_skipped_objects: Counter = field(default_factory=Counter)  # e.g. annotations of unknown images
    load_notes: Counter = field(default_factory=Counter)  # e.g. records decoded as cp1252
    _logged: Counter = field(default_factory=Counter, repr=False)

    def reset(self) -> None:
        self.records = self.objects = 0
        self.skipped.clear()
        self.skipped_objects.clear()
        self.notes.clear()
        self._logged.clear()

    def add(self, sample: Sample) -> None:
        self.records += 1
        self.objects += len(sample.objects)

    def _log(self, kind: str, reason: str, where: str, detail: str) -> None:
        key = f"{kind}:{reason}"
        self._logged[key] += 1
        n = self._logged[key]
        if n <= MAX_LOGGED_PER_REASON:
            log.warning("%s: skipped %s at %s: %s%s", self.name, kind, where, reason,
                        f" ({detail})" if detail else "")
        elif n == MAX_LOGGED_PER_REASON + 1:
            log.warning("%s: further '%s' skips are counted but not logged", self.name, reason)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self._log("record", reason, where, detail)

    def skip_object(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped_objects[reason] += 1
        self._log("object", reason, where, detail)

    def note(self, remark: str, n: int = 1) -> None:
        """Count something kept as the reference keeps it (an empty mask it scores, ...)."""
        self.notes[remark] += n

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values()) + sum(self.load_skipped.values())

    def to_dict(self) -> dict:
        return {"records": self.records, "objects": self.objects,
                "skipped": dict(sorted((self.skipped + self.load_skipped).items())),
                "skipped_objects": dict(sorted((self.skipped_objects + self.load_skipped_objects).items())),
                "notes": dict(sorted((self.notes + self.load_notes).items()))}


def classify_error(e: Exception) -> tuple[str, str]:
    """(reason, detail) for an exception raised while parsing one record."""
    if isinstance(e, SkipRecord):
        return e.reason, e.detail
    if isinstance(e, KeyError):
        return "missing field", f"no field {e.args[0]!r}" if e.args else ""
    if isinstance(e, FCLMDataError):
        return "invalid data", str(e)
    return "malformed record", f"{type(e).__name__}: {e}"


class DatasetReader:
    """Iterable over :class:`Sample`; ``stats`` describes the last (or current) pass."""

    name: str = ""

    def __init__(self, name: str, split: str, check_images: bool = False):
        self.name = name
        self.split = split
        self.check_images = check_images
        self.stats = LoaderStats(name)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def _finish(self, sample: Sample) -> Sample:
        """Common checks of a parsed sample (raises SkipRecord)."""
        if self.check_images and sample.image.path is not None and not os.path.exists(sample.image.path):
            raise SkipRecord("image not found", sample.image.path)
        return sample

    def describe(self) -> str:
        return f"{self.name}[{self.split}]"


class IndexedReader(DatasetReader):
    """A reader over a list of raw records (loaded lazily, once): map-style and iterable.

    Subclasses implement :meth:`_load` (→ list of raw records) and :meth:`_parse`
    (raw record → Sample, raising :class:`SkipRecord`); :meth:`_where` names a record in messages.
    """

    source: str = ""  # the annotation file, for messages

    def __init__(self, name: str, split: str, check_images: bool = False):
        super().__init__(name, split, check_images)
        self._records: list | None = None

    # -- subclass API -------------------------------------------------------------------------
    def _load(self) -> list:
        raise NotImplementedError

    def _parse(self, index: int, raw: Any) -> Sample:
        raise NotImplementedError

    def _where(self, index: int) -> str:
        return f"{self.source} record {index}"

    # -- public API ---------------------------------------------------------------------------
    @property
    def records(self) -> list:
        if self._records is None:
            self._records = self._load()
        return self._records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, index: int) -> Sample:
        """Parse record ``index``; raises :class:`SkipRecord` (reason + detail) if it is bad."""
        try:
            return self._finish(self._parse(index, self.records[index]))
        except SkipRecord:
            raise
        except (FCLMDataError, KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            reason, detail = classify_error(e)
            raise SkipRecord(reason, detail) from e

    __getitem__ = get

    def try_get(self, index: int) -> Sample | None:
        """Parse record ``index``, counting it in ``stats``; None (counted, logged) if bad."""
        try:
            sample = self.get(index)
        except SkipRecord as e:
            self.stats.skip(e.reason, self._where(index), e.detail)
            return None
        self.stats.add(sample)
        return sample

    def __iter__(self) -> Iterator[Sample]:
        self.stats.reset()
        for i in range(len(self.records)):
            s = self.try_get(i)
            if s is not None:
                yield s


class JsonListReader(IndexedReader):
    """Records are the items of one JSON list file, ``self.source``."""

    def _load(self) -> list:
        repaired: list = []
        data = read_json(self.source, repaired)
        if not isinstance(data, list):
            raise SkipRecord("malformed file", f"{self.source}: expected a list of records")
        n = len(repaired_records(repaired))
        if n:
            self.stats.load_notes["non-UTF-8 text decoded as cp1252"] += n
            log.warning("%s: %d record(s) hold bytes that are not UTF-8; their strings were decoded as cp1252",
                        self.source, n)
        return data


class CocoImagesReader(IndexedReader):
    """Records are the images of a COCO-format file (``self.source``) that have annotations."""

    def _load(self) -> list:
        from .coco import CocoFile

        self.coco = CocoFile(self.source)
        self.coco.count_into(self.stats)
        keep = [im for im in self.coco.images if self.coco.anns_by_image.get(im.get("id"))]
        if len(keep) < len(self.coco.images):
            self.stats.load_skipped["image without annotations"] += len(self.coco.images) - len(keep)
        return keep


# ---------------------------------------------------------------------------------------------
# file reading


def read_text(path: str, encodings: tuple[str, ...] = ("utf-8-sig", "cp1252")) -> str:
    """Read a text file trying ``encodings`` in order (ReasonSeg ships some cp1252 files)."""
    with open(path, "rb") as f:
        data = f.read()
    err: Exception | None = None
    for enc in encodings:
        try:
            return data.decode(enc)
        except UnicodeDecodeError as e:
            err = e
    raise FCLMDataError(f"{path}: not decodable as any of {encodings}: {err}")


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _repair(obj: Any, where: tuple, found: list) -> Any:
    """Re-decode, as cp1252, every string holding undecodable bytes (kept by surrogateescape)."""
    if isinstance(obj, str):
        if _BAD_BYTE.search(obj):
            found.append(where)
            return obj.encode("utf-8", "surrogateescape").decode("cp1252", "replace")
        return obj
    if isinstance(obj, list):
        return [_repair(v, where + (i,), found) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {_repair(k, where, found): _repair(v, where + (k,), found) for k, v in obj.items()}
    return obj


def read_json(path: str, repaired: list | None = None) -> Any:
    """Parse a JSON file (UTF-8, BOM allowed); errors name the file (and line/column).

    Bytes that are not UTF-8 do not change how the rest of the file is read: only the strings that
    hold them are decoded as cp1252, and their JSON paths (tuples of keys/indices) are appended to
    ``repaired`` so the caller can count the records concerned. (A whole-file cp1252 fallback
    would turn every other non-ASCII string of a large file into mojibake.)
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8-sig", "surrogateescape")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FCLMDataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if _BAD_BYTE.search(text):
        found: list = []
        data = _repair(data, (), found)
        if repaired is not None:
            repaired.extend(found)
    return data


def repaired_records(repaired: list, depth: int = 1) -> set:
    """The record keys (first ``depth`` path elements) that :func:`read_json` repaired."""
    return {w[:depth] for w in repaired if len(w) >= depth}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain data: containers, numbers, strings, numpy arrays.

    Refer pickles and the DAM shard pickles only hold such data; any other global (a class or a
    function, i.e. code) is refused, so a tampered file cannot run code on load.
    """

    ALLOWED = {
        ("collections", "OrderedDict"), ("collections", "defaultdict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
        ("builtins", "bytearray"), ("builtins", "slice"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")
        return super().find_class(module, name)


def load_data_pickle(source: str | bytes, what: str) -> Any:
    """Unpickle *user-named* data (a refer ``refs(*).p`` file, a DAM shard member).

    Only ever called on a path/member the user pointed the loader at, never on anything found
    implicitly; restricted to plain data (see :class:`_RestrictedUnpickler`). Python-2 pickles
    (the refer files) decode their byte strings as UTF-8.
    """
    try:
        if isinstance(source, (bytes, bytearray)):
            f = io.BytesIO(source)
            return _RestrictedUnpickler(f, encoding="utf-8", errors="replace").load()
        if not os.path.exists(source):
            raise FileNotFoundError(f"pickle not found: {source}")
        with open(source, "rb") as f:
            return _RestrictedUnpickler(f, encoding="utf-8", errors="replace").load()
    except FileNotFoundError:
        raise
    except Exception as e:
        raise FCLMDataError(f"cannot unpickle {what}: {e}") from e


def image_ref(image_dir: str, file_name: str) -> ImageRef:
    return ImageRef(path=os.path.join(image_dir, file_name))


def require(cond: bool, reason: str, detail: str = "") -> None:
    if not cond:
        raise SkipRecord(reason, detail)


def as_int(value: Any, field_name: str) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise SkipRecord("invalid image size", f"{field_name}={value!r}") from None
    if v <= 0:
        raise SkipRecord("invalid image size", f"{field_name}={value!r}")
    return v





def image_size_from_file(path: str) -> tuple[int, int]:
    """(height, width) read from the image header only; SkipRecord if missing/unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise SkipRecord("image not found", path) from None
    except OSError as e:
        raise SkipRecord("unreadable image", f"{path}: {e}") from None
    return h, w
