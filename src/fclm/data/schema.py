"""The one internal sample schema (SPEC §3).

Every loader, real or synthetic, yields :class:`Sample` records. Task builders turn a record into
:class:`Example` conversations; the processor turns examples into tensors. Nothing downstream cares
where a record came from.

Conventions
-----------
* Masks are COCO RLE dicts ``{"size": [h, w], "counts": bytes | str}`` kept compressed until a batch
  needs them (:func:`fclm.data.masks.decode_rle`).
* Boxes are ``[x0, y0, x1, y1]`` in absolute pixels of the original image.
* Images are :class:`ImageRef`: a path, raw bytes or an in-memory array, opened lazily.
* Text spans are ``(start, end)`` character offsets, end exclusive.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# decompression-bomb guard, overridable per call: PIL's own hard limit (2 x PIL.Image.MAX_IMAGE_PIXELS,
# about 13377 x 13377), which it enforces on every file it opens, so files and arrays share one limit
MAX_IMAGE_PIXELS = 178_956_970


class FCLMDataError(ValueError):
    """Bad input: the message names the file, record or field at fault."""


@dataclass
class ImageRef:
    """A lazily-opened image: exactly one of ``path``, ``data`` (encoded bytes) or ``array``."""

    path: str | None = None
    data: bytes | None = None
    array: np.ndarray | None = None  # HxWx3 uint8
    name: str | None = None  # what error messages call it (shard member, URL, ...)
    # turn the pixels as the file's EXIF orientation says (cv2.imread does; LabelMe annotates so)
    exif_transpose: bool = False

    def describe(self) -> str:
        return self.name or self.path or ("<bytes>" if self.data is not None else "<array>")

    def open(self, max_pixels: int = MAX_IMAGE_PIXELS):
        """Return an RGB ``PIL.Image``; raise :class:`FCLMDataError` naming the image if unreadable."""
        from PIL import Image

        if self.array is not None:
            arr = np.asarray(self.array)
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, -1)
            return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
        src = self.path if self.path is not None else io.BytesIO(self.data or b"")
        if self.path is not None and not os.path.exists(self.path):
            raise FCLMDataError(f"image not found: {self.path}")
        try:
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise FCLMDataError(
                        f"image {self.describe()} has {w}x{h} = {w * h} pixels, above the limit of {max_pixels}"
                    )
                if self.exif_transpose:
                    from PIL import ImageOps

                    im = ImageOps.exif_transpose(im)
                return im.convert("RGB")
        except FCLMDataError:
            raise
        except Exception as e:  # PIL raises many types for corrupt files
            raise FCLMDataError(f"cannot read image {self.describe()}: {e}") from e


@dataclass
class RegionObject:
    """One object/region of an image."""

    mask: dict | None = None  # COCO RLE; None when only a box is known
    box: list[float] | None = None  # [x0, y0, x1, y1]
    category: str | None = None  # short label ("dog", "dog:head")
    expressions: list[str] = field(default_factory=list)  # short referring expressions
    caption: str | None = None  # detailed localized caption
    attributes: dict[str, Any] = field(default_factory=dict)  # known attributes (synthetic data)
    extra: dict[str, Any] = field(default_factory=dict)  # source ids (ann_id, ref_id, ...)


@dataclass
class Phrase:
    """A grounded phrase of an image-level caption (GCG) pointing at objects."""

    text: str
    span: tuple[int, int]  # character span in Sample.caption
    object_ids: list[int]  # indices into Sample.objects


@dataclass
class Question:
    """A grounding question (ReasonSeg, MUSE, synthetic) and its target objects.

    ``answer`` holds the text answer with one ``{seg}`` placeholder per target when the source has
    one (MUSE ``text_answers``), else None (task builders then use a template answer).
    """

    text: str
    target_ids: list[int]
    answer: str | None = None
    kind: str = "reason"  # "reason" | "multi" | "sentence" | "short"


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str  # may contain "<region>" slots (user) and "[SEG]" (assistant)


@dataclass
class Sample:
    """One image and everything known about it."""

    id: str
    source: str  # dataset name, e.g. "refcoco", "osprey_short_form", "synthetic"
    image: ImageRef
    height: int
    width: int
    objects: list[RegionObject] = field(default_factory=list)
    split: str = "train"
    caption: str | None = None  # image-level caption (GCG)
    phrases: list[Phrase] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    dialogue: list[Turn] = field(default_factory=list)  # free-form region conversation (Osprey)
    dialogue_region_ids: list[int] = field(default_factory=list)  # object index per <region> slot
    ignore_mask: dict | None = None  # RLE of pixels ignored in metrics (ReasonSeg "ignore" → 255)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Example:
    """One training/eval conversation built from a Sample by a task builder.

    ``region_ids`` gives the object whose mask fills each ``<region>`` slot of the user text, in
    order; ``target_ids`` the object each ``[SEG]`` of the assistant text must segment, in order.
    ``pair_key`` links a DLC example and a DL-RES example built from the same region (stage 2).
    """

    task: str
    sample: Sample
    user: str
    assistant: str
    region_ids: list[int] = field(default_factory=list)
    target_ids: list[int] = field(default_factory=list)
    pair_key: str | None = None
    history: list[Turn] = field(default_factory=list)  # earlier turns (multi-turn conversations)
