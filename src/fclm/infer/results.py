"""Result dataclasses of :class:`fclm.infer.FCLMPipeline`: text, boolean masks, RLE/JSON on request."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RegionText", "SegmentationResult", "GroundedPhrase", "GroundingResult", "parse_grounded_caption",
           "clean_answer"]

_SEG = "[SEG]"


def _rle(mask: np.ndarray) -> dict:
    from ..data.masks import encode_mask

    return encode_mask(np.asarray(mask, dtype=bool))


def clean_answer(raw: str) -> str:
    """Answer text without ``[SEG]`` / ``<p>`` / ``</p>`` tags, whitespace collapsed."""
    return parse_grounded_caption(raw)[0]


@dataclass
class RegionText:
    """One region's description (``describe``) or label (``classify``)."""

    region: int  # index of the region in the call
    text: str  # the answer, stripped
    raw: str  # the decoded answer as generated
    finish_reason: str = ""  # "eos" | "length" | "stop_string"

    def to_dict(self) -> dict:
        return {"region": self.region, "text": self.text, "raw": self.raw, "finish_reason": self.finish_reason}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass
class SegmentationResult:
    """``segment`` / ``run_grounding`` output: one mask per ``[SEG]`` in the answer."""

    text: str  # the answer, stripped ([SEG] kept: the masks are in its order)
    raw: str  # decoded answer as generated
    masks: list[np.ndarray] = field(default_factory=list)  # HxW bool at the original image size
    image_size: tuple[int, int] = (0, 0)  # (H, W)
    finish_reason: str = ""
    mask_logits: list | None = None  # per mask (H, W) float tensor (logit > 0 = mask), kept on request

    @property
    def mask(self) -> np.ndarray | None:
        """The first mask (RES: the answer's only ``[SEG]``), or None when none was emitted."""
        return self.masks[0] if self.masks else None

    def to_rle(self) -> list[dict]:
        return [_rle(m) for m in self.masks]

    def to_dict(self) -> dict:
        return {"text": self.text, "raw": self.raw, "image_size": list(self.image_size),
                "finish_reason": self.finish_reason, "masks": self.to_rle()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass
class GroundedPhrase:
    text: str
    span: tuple[int, int]  # character span in GroundingResult.caption
    mask: np.ndarray | None  # None when the phrase has no [SEG] after it


@dataclass
class GroundingResult:
    """``ground`` output (GCG): caption, its grounded phrases and one mask per phrase."""

    caption: str  # tags removed
    raw: str
    phrases: list[GroundedPhrase] = field(default_factory=list)
    unmatched_masks: list[np.ndarray] = field(default_factory=list)  # [SEG]s with no <p>…</p> before them
    image_size: tuple[int, int] = (0, 0)
    finish_reason: str = ""

    @property
    def masks(self) -> list[np.ndarray]:
        """Masks of the phrases that have one, in caption order."""
        return [p.mask for p in self.phrases if p.mask is not None]

    def to_rle(self) -> list[dict]:
        return [_rle(m) for m in self.masks]

    def to_dict(self) -> dict:
        return {"caption": self.caption, "raw": self.raw, "image_size": list(self.image_size),
                "finish_reason": self.finish_reason,
                "phrases": [{"text": p.text, "span": list(p.span), "mask": _rle(p.mask) if p.mask is not None else None}
                            for p in self.phrases],
                "unmatched_masks": [_rle(m) for m in self.unmatched_masks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def parse_grounded_caption(raw: str) -> tuple[str, list[tuple[str, tuple[int, int], int | None]]]:
    """Parse a GCG answer ``... <p> phrase </p> [SEG] ...``.

    Returns the clean caption (tags removed, whitespace collapsed, no space before punctuation) and
    per phrase ``(text, (start, end) in the caption, index of its [SEG] or None)``. A ``[SEG]`` counts
    for the phrase closed just before it (only whitespace between); ``[SEG]`` indices run over all
    ``[SEG]`` tokens of the answer in order.
    """
    parts = re.split(r"(<p>|</p>|\[SEG\])", raw)
    cap = ""
    phrases: list[list] = []
    mark = None
    pending = None  # index in phrases of a phrase just closed, waiting for its [SEG]
    seg_k = 0

    def add(piece: str) -> None:
        nonlocal cap
        piece = re.sub(r"\s+", " ", piece)
        if not cap:
            piece = piece.lstrip()
        elif cap.endswith(" ") and piece.startswith(" "):
            piece = piece.lstrip()
        if piece and piece[0] in ".,;:!?" and cap.endswith(" "):
            cap = cap[:-1]
        cap += piece

    for part in parts:
        if part == "<p>":
            mark = len(cap)
            pending = None
        elif part == "</p>":
            if mark is None:
                continue
            start = mark
            while start < len(cap) and cap[start] == " ":
                start += 1
            end = max(start, len(cap.rstrip()))
            phrases.append([cap[start:end], (start, end), None])
            pending = len(phrases) - 1
            mark = None
        elif part == _SEG:
            if pending is not None and phrases[pending][2] is None:
                phrases[pending][2] = seg_k
            pending = None
            seg_k += 1
        elif part:
            if part.strip():
                pending = None if mark is None else pending
            add(part)
    return cap.strip(), [tuple(p) for p in phrases]
