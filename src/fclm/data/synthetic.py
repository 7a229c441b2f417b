"""A seeded synthetic scene world: simple shapes with exact masks and fully known attributes.

Every scene is a plain, slightly textured background with a few objects. Each object has a *shape*
(the ROC label), a *colour*, a *size* (small / medium / large), a *pattern* (solid / striped /
dotted / checkered) and a *position* (a 3x3 grid word). Look-alike distractors differ from an earlier
object in exactly one attribute, so referring expressions must name the attribute that tells them
apart. Masks are the visible pixels of each object (objects painted later cover earlier ones a
little at most), rasterised exactly with numpy.

Per object the scene emits (SPEC §3 schema, :class:`fclm.data.schema.Sample`):

* ``category`` — the shape name;
* ``expressions`` — short referring expressions, each naming attributes that match exactly one
  object of the scene ("the red circle", "the large blue square", "the star in the top left");
* ``caption`` — a detailed localized caption naming every attribute, the position and a relation to
  the nearest other object ("A large red striped circle in the top left, to the left of the blue
  square."); it identifies exactly one object;
* ``attributes`` — ``shape``, ``colour``, ``size``, ``pattern``, ``position``, ``relation`` and
  ``relation_to`` (DLC-Bench analogue: every attribute of a region is known).

Per scene: ``questions[0]`` an implicit reasoning question with one target (kind ``"reason"``),
``questions[1]`` a multi-target question with >= 2 targets (kind ``"multi"``, ``answer`` holding one
``{seg}`` per target), an image caption with grounded ``phrases``, and a short two-turn region
``dialogue`` (Osprey-style conversation data).

Determinism: scene ``index`` of split ``split`` under ``seed`` is drawn from
``numpy.random.SeedSequence([seed, split_code(split), index])``, so every (split, index) pair has its
own stream and train / validation / test never share a scene. :func:`generate_scenes` is a pure
function of its arguments.
"""
from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator

import numpy as np

from pycocotools import mask as _mask_utils

from .schema import ImageRef, Phrase, Question, RegionObject, Sample, Turn

# ----------------------------------------------------------------------------------------------
# The vocabulary of the world
# ----------------------------------------------------------------------------------------------

#: colour name -> RGB; chosen far apart in RGB space so they survive downscaling
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 190),
    "cyan": (0, 190, 200),
    "orange": (250, 130, 0),
    "black": (25, 25, 25),
}
#: every shape the rasteriser knows; the default scene uses the first five
SHAPES_ALL = ("circle", "square", "triangle", "star", "ring", "diamond", "cross")
#: radius of each size class as a fraction of the image side
SIZE_FRACTION = {"small": 0.065, "medium": 0.1, "large": 0.14}
PATTERNS_ALL = ("solid", "striped", "dotted", "checkered")
#: background name -> base RGB (pale, far from every object colour)
BACKGROUNDS = {"white": (236, 236, 232), "light grey": (200, 200, 200), "beige": (228, 216, 188)}

#: bounding radius of each shape in units of its nominal radius (used for placement)
_SHAPE_EXTENT = {"circle": 1.0, "square": 1.17, "triangle": 1.25, "star": 1.2, "ring": 1.0,
                 "diamond": 1.15, "cross": 1.0}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "ring": "rings", "diamond": "diamonds", "cross": "crosses"}

#: 3x3 position grid words (row-major: top row first)
POSITION_GRID = (("top left", "top", "top right"),
                 ("left", "center", "right"),
                 ("bottom left", "bottom", "bottom right"))
POSITION_PHRASE = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}
RELATIONS = ("to the left of", "to the right of", "above", "below")

#: words that mention each attribute value in free text (used by :func:`parse_attributes`)
PATTERN_WORDS = {"solid": ("solid",), "striped": ("striped", "stripes"), "dotted": ("dotted", "dots"),
                 "checkered": ("checkered", "checked")}

ATTRIBUTE_NAMES = ("shape", "colour", "size", "pattern")

#: implicit-knowledge questions whose answer is the unique object of a shape
_SHAPE_RIDDLES = {
    "circle": ("Which object could roll away like a ball?", "Which object is shaped like a full moon?"),
    "square": ("Which object has four equal sides?", "Which object is shaped like a chessboard tile?"),
    "triangle": ("Which object has exactly three corners?", "Which object is shaped like a slice of pizza?"),
    "star": ("Which object has five points?", "Which object looks like something you see in the night sky?"),
    "ring": ("Which object has a hole in its middle?", "Which object could be worn on a finger?"),
    "diamond": ("Which object looks like a kite?", "Which object is shaped like a playing-card suit with four corners?"),
    "cross": ("Which object looks like a plus sign?", "Which object is shaped like the symbol for addition?"),
}


@dataclass
class SceneConfig:
    """What varies in the synthetic world. An attribute varies iff its tuple has several values."""

    image_size: int = 256
    min_objects: int = 3
    max_objects: int = 5
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    sizes: tuple[str, ...] = ("small", "medium", "large")
    patterns: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
    lookalike_prob: float = 0.4  # chance that a new object copies one earlier object but one attribute
    max_overlap: float = 0.1  # allowed overlap of bounding discs, as a fraction of their radii sum
    min_visible_fraction: float = 0.8  # an object's visible area / full area, at least
    min_area: int = 30  # visible pixels, at least
    size_jitter: float = 0.05  # relative jitter of the radius within a size class
    pattern_period: int | None = None  # pixels; default image_size // 24
    background_noise: int = 4  # +- per-pixel noise amplitude of the background
    background_gradient: int = 12  # +- amplitude of smooth low-frequency waves in the background
    backgrounds: tuple[str, ...] = ("white", "light grey", "beige")
    dialogue: bool = True  # emit a two-turn region dialogue per scene
    extreme_margin: float = 0.04  # fraction of the image side separating "leftmost" from the next

    def __post_init__(self):
        for name, values, known in (("shapes", self.shapes, SHAPES_ALL), ("colours", self.colours, COLOURS),
                                    ("sizes", self.sizes, SIZE_FRACTION), ("patterns", self.patterns, PATTERNS_ALL),
                                    ("backgrounds", self.backgrounds, BACKGROUNDS)):
            values = tuple(values)
            setattr(self, name, values)
            if not values:
                raise ValueError(f"SceneConfig.{name} is empty")
            bad = [v for v in values if v not in known]
            if bad:
                raise ValueError(f"SceneConfig.{name}: unknown {bad}; known: {list(known)}")
            if len(set(values)) != len(values):
                raise ValueError(f"SceneConfig.{name} has duplicates: {values}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        combos = len(self.shapes) * len(self.colours) * len(self.sizes) * len(self.patterns)
        if combos < self.max_objects:
            raise ValueError(f"only {combos} distinct attribute combinations for up to {self.max_objects} objects")
        if self.image_size < 32:
            raise ValueError("image_size must be >= 32")

    @property
    def varying(self) -> tuple[str, ...]:
        return tuple(a for a in ATTRIBUTE_NAMES if len(self._values(a)) > 1)

    def _values(self, attr: str) -> tuple[str, ...]:
        return {"shape": self.shapes, "colour": self.colours, "size": self.sizes, "pattern": self.patterns}[attr]


# ----------------------------------------------------------------------------------------------
# Rasterisation
# ----------------------------------------------------------------------------------------------

def _shape_local(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test in units of the nominal radius (x right, y down)."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "ring":
        d = x * x + y * y
        return (d <= 1.0) & (d >= 0.55 ** 2)
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.83
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.15
    if shape == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= 0.36) & (ay <= 1.0)) | ((ay <= 0.36) & (ax <= 1.0))
    if shape == "triangle":  # equilateral, pointing up, circumradius 1.25
        rho = 1.25 / 2
        s = math.sqrt(3) / 2
        return (y <= rho) & (s * x - 0.5 * y <= rho) & (-s * x - 0.5 * y <= rho)
    if shape == "star":  # five points, outer radius 1.2, inner 0.5, one point up
        outer, inner, alpha = 1.2, 0.5, 2 * math.pi / 5
        phi = np.arctan2(y, x) + math.pi / 2
        t = np.mod(phi, alpha)
        u = np.minimum(t, alpha - t)
        nx, ny = inner * math.sin(alpha / 2), outer - inner * math.cos(alpha / 2)
        c = nx * outer
        rho_b = c / (nx * np.cos(u) + ny * np.sin(u))
        return x * x + y * y <= rho_b * rho_b
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_local(pattern: str, px: np.ndarray, py: np.ndarray, period: int) -> np.ndarray:
    """True where the secondary (dark) colour goes; px, py integer offsets from the object centre."""
    half = max(2, period // 2)
    if pattern == "solid":
        return np.zeros(np.broadcast(px, py).shape, dtype=bool)
    if pattern == "striped":
        return ((px + py) // half) % 2 == 1
    if pattern == "checkered":
        return ((px // half) + (py // half)) % 2 == 1
    if pattern == "dotted":
        qx = np.mod(px, period) - period / 2 + 0.5
        qy = np.mod(py, period) - period / 2 + 0.5
        return qx * qx + qy * qy <= (period * 0.27) ** 2
    raise ValueError(f"unknown pattern {pattern!r}")


def _pack(rgb) -> np.uint32:
    return np.frombuffer(bytes([int(rgb[0]), int(rgb[1]), int(rgb[2]), 255]), dtype=np.uint32)[0]


def _dark(rgb) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) * 0.45).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Text helpers
# ----------------------------------------------------------------------------------------------

def describe(attrs: dict, names=("size", "colour", "pattern"), position: bool = False, article: str = "the") -> str:
    """Noun phrase naming ``names`` of ``attrs`` plus the shape noun: ``the large red circle``."""
    words = [attrs[a] for a in ("size", "colour", "pattern") if a in names]
    words.append(attrs["shape"])
    s = f"{article} " + " ".join(words)
    if position:
        s += " " + POSITION_PHRASE[attrs["position"]]
    return s


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_POS_RE = re.compile(r"\b(?:in|on|at) the (top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")
_REL_RE = re.compile(r",? *(?:it is |which is )?\b(?:to the left of|to the right of|above|below)\b")


def parse_attributes(text: str, subject_only: bool = True) -> dict[str, str]:
    """Attribute values that ``text`` names (first mention of each attribute).

    With ``subject_only`` the text is cut at the first relation phrase ("to the left of", "above",
    ...) so a caption's reference object does not count. Used by the tests (an expression must match
    exactly one object) and by the DLC-Bench analogue (attribute recall / hallucination).
    """
    t = text.lower()
    if subject_only:
        m = _REL_RE.search(t)
        if m:
            t = t[: m.start()]
    out: dict[str, str] = {}
    m = _POS_RE.search(t)
    if m:
        out["position"] = m.group(1)
        t = t[: m.start()] + " " + t[m.end():]
    vocab: dict[str, tuple[str, str]] = {}
    for shape in SHAPES_ALL:
        vocab[shape] = vocab[PLURALS[shape]] = ("shape", shape)
    for colour in COLOURS:
        vocab[colour] = ("colour", colour)
    for size in SIZE_FRACTION:
        vocab[size] = ("size", size)
    for pat, pws in PATTERN_WORDS.items():
        for w in pws:
            vocab[w] = ("pattern", pat)
    for w in re.findall(r"[a-z]+", t):  # first mention of each attribute wins
        if w in vocab:
            attr, value = vocab[w]
            out.setdefault(attr, value)
    return out


def matching_objects(named: dict[str, str], objects: list[RegionObject]) -> list[int]:
    """Indices of ``objects`` whose attributes agree with every attribute in ``named``."""
    return [i for i, ob in enumerate(objects) if all(ob.attributes.get(k) == v for k, v in named.items())]


# ----------------------------------------------------------------------------------------------
# Scene generation
# ----------------------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "validation": 1, "val": 1, "test": 2}


def split_code(split: str) -> int:
    """Integer mixed into the seed of every scene of ``split`` (distinct per split name)."""
    if split in _SPLIT_CODES:
        return _SPLIT_CODES[split]
    return 1000 + zlib.crc32(split.encode("utf-8"))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), split_code(split), int(index)]))


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _draw_attributes(rng, cfg: SceneConfig, n: int) -> list[dict]:
    out: list[dict] = []
    keys: set[tuple] = set()
    varying = cfg.varying
    for j in range(n):
        for _ in range(200):
            if j > 0 and varying and rng.random() < cfg.lookalike_prob:
                base_i = int(rng.integers(j))
                base = out[base_i]
                attr = _choice(rng, varying)
                vals = [v for v in cfg._values(attr) if v != base[attr]]
                a = {k: base[k] for k in ATTRIBUTE_NAMES}
                a[attr] = _choice(rng, vals)
                a["_lookalike_of"] = (base_i, attr)
            else:
                a = {k: _choice(rng, cfg._values(k)) for k in ATTRIBUTE_NAMES}
            key = tuple(a[k] for k in ATTRIBUTE_NAMES)
            if key not in keys:
                keys.add(key)
                out.append(a)
                break
        else:  # pragma: no cover - guarded by SceneConfig's combination check
            raise RuntimeError("could not draw distinct attributes")
    return out


def _place(rng, cfg: SceneConfig, attrs: list[dict]):
    """Centres and radii with limited overlap; None if placement failed."""
    S = cfg.image_size
    placed: list[tuple[float, float, float, float]] = []  # cx, cy, r, bounding radius
    for a in attrs:
        r = SIZE_FRACTION[a["size"]] * S * (1 + rng.uniform(-cfg.size_jitter, cfg.size_jitter))
        b = r * _SHAPE_EXTENT[a["shape"]]
        lo, hi = b + 1, S - b - 1
        for _ in range(60):
            cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            ok = True
            for (qx, qy, _, qb) in placed:
                if math.hypot(cx - qx, cy - qy) < (b + qb) * (1 - cfg.max_overlap) + 1:
                    ok = False
                    break
            if ok:
                placed.append((cx, cy, r, b))
                break
        else:
            return None
    return placed


_BG_CACHE: dict[tuple, np.ndarray] = {}


def _background_tile(name: str, size: int, noise: int, waves: int) -> np.ndarray:
    """A fixed (2*size, 2*size, 3) uint8 texture: base colour + smooth waves + pixel noise.

    Scenes take seeded random crops of it, which is far cheaper than drawing fresh noise.
    """
    key = (name, size, noise, waves)
    if key not in _BG_CACHE:
        g = np.random.default_rng(zlib.crc32(name.encode()) + size)
        n = 2 * size
        t = np.linspace(0, 2 * math.pi, n, dtype=np.float32)
        f = np.zeros((n, n), dtype=np.float32)
        if waves:
            for _ in range(3):
                kx, ky = g.integers(1, 4, 2)
                ph = g.uniform(0, 2 * math.pi, 2)
                f += (waves / 3) * np.sin(kx * t + ph[0])[None, :] * np.cos(ky * t + ph[1])[:, None]
        if noise:
            f += g.integers(-noise, noise + 1, (n, n)).astype(np.float32)
        rgb = np.clip(f[:, :, None] + np.asarray(BACKGROUNDS[name], np.float32), 0, 255).astype(np.uint8)
        rgba = np.concatenate([rgb, np.full((n, n, 1), 255, np.uint8)], axis=2)
        _BG_CACHE[key] = np.ascontiguousarray(rgba).view(np.uint32)[:, :, 0]  # packed RGBA
    return _BG_CACHE[key]


def _render(rng, cfg: SceneConfig, attrs, placed):
    """Image and each object's full (unoccluded) mask as a window ``(y0, x0, local_bool)``."""
    S = cfg.image_size
    period = cfg.pattern_period or max(4, S // 24)
    bg_name = _choice(rng, cfg.backgrounds)
    tile = _background_tile(bg_name, S, cfg.background_noise, cfg.background_gradient)
    ox, oy = (int(v) for v in rng.integers(0, S, 2))
    img32 = tile[oy:oy + S, ox:ox + S].copy()  # (S, S) packed RGBA, painted 32 bits at a time
    full = []
    for a, (cx, cy, r, b) in zip(attrs, placed):
        x0, x1 = max(0, int(math.floor(cx - b)) - 1), min(S, int(math.ceil(cx + b)) + 2)
        y0, y1 = max(0, int(math.floor(cy - b)) - 1), min(S, int(math.ceil(cy + b)) + 2)
        xs = np.arange(x0, x1, dtype=np.float32)
        ys = np.arange(y0, y1, dtype=np.float32)
        local = _shape_local(a["shape"], ((xs + 0.5 - cx) / r)[None, :], ((ys + 0.5 - cy) / r)[:, None])
        px = (np.arange(x0, x1) - int(round(cx)))[None, :]
        py = (np.arange(y0, y1) - int(round(cy)))[:, None]
        sec = _pattern_local(a["pattern"], px, py, period)
        col = np.asarray(COLOURS[a["colour"]], dtype=np.uint8)
        win = img32[y0:y1, x0:x1]
        win[local] = _pack(col)
        win[local & sec] = _pack(_dark(col))
        full.append((y0, x0, local))
    img = img32[:, :, None].view(np.uint8)[:, :, :3].copy()
    return img, full, bg_name


def _encode_window(S: int, y0: int, x0: int, local: np.ndarray) -> dict:
    m = np.zeros((S, S), dtype=np.uint8, order="F")
    m[y0:y0 + local.shape[0], x0:x0 + local.shape[1]] = local
    rle = _mask_utils.encode(m)
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _position_word(cx: float, cy: float, S: int) -> str:
    col = min(2, int(cx * 3 / S))
    row = min(2, int(cy * 3 / S))
    return POSITION_GRID[row][col]


def _unique_expressions(i: int, objs_attrs: list[dict], rng, varying) -> tuple[str, list[str], list[str]]:
    """(minimal expression, its attribute names, all expressions) for object i."""
    me = objs_attrs[i]

    def unique(names):
        return [j for j, o in enumerate(objs_attrs) if all(o[k] == me[k] for k in names)] == [i]

    adjs = [a for a in ("colour", "size", "pattern") if a in varying]
    minimal = None
    for k in range(0, len(adjs) + 1):
        cands = [c for c in combinations(adjs, k) if unique(("shape",) + c)]
        if cands:
            minimal = list(cands[int(rng.integers(len(cands)))])
            break
    if minimal is None:  # cannot happen: attribute tuples are distinct
        minimal = ["size", "colour", "pattern"]
    exprs = [describe(me, minimal)]
    full = describe(me, ("size", "colour", "pattern"))
    if full not in exprs:
        exprs.append(full)
    # a position-qualified expression when shape + position is unique
    if unique(("shape", "position")):
        e = describe(me, (), position=True)
        if e not in exprs:
            exprs.append(e)
    elif unique(("shape", "colour", "position")):
        e = describe(me, ("colour",), position=True)
        if e not in exprs:
            exprs.append(e)
    return exprs[0], minimal, exprs


def _relation(me: dict, other: dict) -> str:
    dx, dy = other["_cx"] - me["_cx"], other["_cy"] - me["_cy"]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


_CAPTION_TEMPLATES = (
    "{A} {size} {colour} {pattern} {shape} {pos}, {rel} {ref}.",
    "{A} {pattern} {colour} {shape} of {size} size {pos}, {rel} {ref}.",
)


def _reason_question(rng, attrs, exprs, cfg) -> Question:
    """One implicit question with exactly one target."""
    n = len(attrs)
    S = cfg.image_size
    kinds: dict[str, list[tuple[str, int]]] = {"same": [], "extreme": [], "riddle": []}
    for r in range(n):
        for attr in cfg.varying:
            others = [j for j in range(n) if j != r and attrs[j][attr] == attrs[r][attr]]
            if len(others) == 1:
                kinds["same"].append((f"Which object has the same {attr} as {exprs[r]}?", others[0]))
    margin = cfg.extreme_margin * S
    for side, key, sign in (("left", "_cx", 1), ("right", "_cx", -1), ("top", "_cy", 1), ("bottom", "_cy", -1)):
        order = sorted(range(n), key=lambda j: sign * attrs[j][key])
        if n == 1 or abs(attrs[order[0]][key] - attrs[order[1]][key]) >= margin:
            kinds["extreme"].append((f"Which object is closest to the {side} edge of the image?", order[0]))
    for j in range(n):
        if sum(a["shape"] == attrs[j]["shape"] for a in attrs) == 1:
            kinds["riddle"].append((_choice(rng, _SHAPE_RIDDLES[attrs[j]["shape"]]), j))
    avail = [k for k in ("same", "extreme", "riddle") if kinds[k]]
    if not avail:  # fall back to an extreme without margin
        j = min(range(n), key=lambda j: attrs[j]["_cx"])
        return Question("Which object is closest to the left edge of the image?", [j], None, "reason")
    text, t = _choice(rng, kinds[_choice(rng, avail)])
    return Question(text, [t], None, "reason")


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _multi_question(rng, attrs, exprs, cfg) -> Question | None:
    """One question with >= 2 targets (ordered left to right); None for 1-object scenes."""
    n = len(attrs)
    if n < 2:
        return None
    lr = sorted(range(n), key=lambda j: attrs[j]["_cx"])
    cands: list[tuple[str, list[int], str]] = []
    for attr in cfg.varying:
        for v in cfg._values(attr):
            ts = [j for j in lr if attrs[j][attr] == v]
            if len(ts) >= 2:
                if attr == "shape":
                    q = f"Which objects are {PLURALS[v]}?"
                elif attr == "size":
                    q = f"Which objects are {v}?"
                elif attr == "colour":
                    q = _choice(rng, (f"Which objects are {v}?", f"Find all the {v} objects."))
                else:
                    q = f"Which objects are {v}?"
                cands.append((q, ts, "attr"))
    S = cfg.image_size
    margin = cfg.extreme_margin * S
    for half, key, left in (("left", "_cx", True), ("right", "_cx", False), ("top", "_cy", True), ("bottom", "_cy", False)):
        inside = [j for j in lr if (attrs[j][key] < S / 2) == left]
        if len(inside) >= 2 and all(abs(a[key] - S / 2) >= margin for a in attrs):
            cands.append((f"Which objects are in the {half} half of the image?", inside, "half"))
    i, j = sorted(rng.choice(n, 2, replace=False).tolist(), key=lambda k: attrs[k]["_cx"])
    pair = (f"Can you find {exprs[i]} and {exprs[j]}?", [i, j], "pair")
    groups = {}
    for c in cands:
        groups.setdefault(c[2], []).append(c)
    groups["pair"] = [pair]
    kind = _choice(rng, sorted(groups))
    text, ts, _ = _choice(rng, groups[kind])
    answer = "They are " + _join([f"{exprs[t]} {{seg}}" for t in ts]) + "."
    return Question(text, list(ts), answer, "multi")


def generate_scene(index: int, split: str = "train", seed: int = 0, config: SceneConfig | None = None) -> Sample:
    """Scene ``index`` of ``split`` under ``seed`` (a pure function of its arguments)."""
    cfg = config or SceneConfig()
    rng = scene_rng(seed, split, index)
    S = cfg.image_size
    for _attempt in range(100):
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        attrs = _draw_attributes(rng, cfg, n)
        placed = _place(rng, cfg, attrs)
        if placed is None:
            continue
        img, full, bg_name = _render(rng, cfg, attrs, placed)
        visible = []
        cover = np.zeros((S, S), dtype=bool)
        for (y0, x0, local) in reversed(full):
            h, w = local.shape
            visible.append((y0, x0, local & ~cover[y0:y0 + h, x0:x0 + w]))
            cover[y0:y0 + h, x0:x0 + w] |= local
        visible.reverse()
        areas = [int(v[2].sum()) for v in visible]
        ok = all(va >= max(cfg.min_area, cfg.min_visible_fraction * f[2].sum()) for va, f in zip(areas, full))
        if ok:
            break
    else:  # pragma: no cover
        raise RuntimeError(f"could not place objects for scene {split}/{index}; relax SceneConfig")

    boxes = []
    for a, (y0, x0, v) in zip(attrs, visible):
        rows, cols = np.any(v, axis=1), np.any(v, axis=0)
        ry, rx = np.nonzero(rows)[0], np.nonzero(cols)[0]
        boxes.append([float(x0 + rx[0]), float(y0 + ry[0]), float(x0 + rx[-1] + 1), float(y0 + ry[-1] + 1)])
        tot = v.sum()
        a["_cx"] = float(x0 + (v.sum(axis=0) * np.arange(v.shape[1])).sum() / tot + 0.5)
        a["_cy"] = float(y0 + (v.sum(axis=1) * np.arange(v.shape[0])).sum() / tot + 0.5)
        a["position"] = _position_word(a["_cx"], a["_cy"], S)

    minimal_names, exprs_all, short = [], [], []
    for i in range(n):
        e0, names, exprs = _unique_expressions(i, attrs, rng, cfg.varying)
        short.append(e0)
        minimal_names.append(names)
        exprs_all.append(exprs)

    objects: list[RegionObject] = []
    for i, a in enumerate(attrs):
        # relation to the nearest other object
        if n > 1:
            j = min((k for k in range(n) if k != i),
                    key=lambda k: (attrs[k]["_cx"] - a["_cx"]) ** 2 + (attrs[k]["_cy"] - a["_cy"]) ** 2)
            rel = _relation(a, attrs[j])
            tmpl = _choice(rng, _CAPTION_TEMPLATES)
            caption = tmpl.format(A=_a(a["size"] if tmpl.startswith("{A} {size}") else a["pattern"]).capitalize(),
                                  size=a["size"], colour=a["colour"], pattern=a["pattern"], shape=a["shape"],
                                  pos=POSITION_PHRASE[a["position"]], rel=rel, ref=short[j])
        else:
            j, rel = None, None
            caption = f"{_a(a['size']).capitalize()} {a['size']} {a['colour']} {a['pattern']} {a['shape']} " \
                      f"{POSITION_PHRASE[a['position']]}."
        attributes = {"shape": a["shape"], "colour": a["colour"], "size": a["size"], "pattern": a["pattern"],
                      "position": a["position"], "relation": rel, "relation_to": j}
        extra = {"center": (a["_cx"], a["_cy"]), "radius": float(placed[i][2]),
                 "expression_attributes": ["shape"] + minimal_names[i]}
        if "_lookalike_of" in a:
            extra["lookalike_of"], extra["lookalike_attribute"] = a["_lookalike_of"]
        objects.append(RegionObject(mask=_encode_window(S, *visible[i]), box=boxes[i], category=a["shape"],
                                    expressions=exprs_all[i], caption=caption, attributes=attributes, extra=extra))

    questions = [_reason_question(rng, attrs, short, cfg)]
    mq = _multi_question(rng, attrs, short, cfg)
    if mq is not None:
        questions.append(mq)

    # image caption with grounded phrases, objects left to right
    order = sorted(range(n), key=lambda k: attrs[k]["_cx"])
    caption = "The image shows "
    phrases: list[Phrase] = []
    for pos_i, k in enumerate(order):
        if pos_i > 0:
            caption += " and " if pos_i == n - 1 else ", "
        a = attrs[k]
        ptxt = f"{_a(a['size'])} {a['size']} {a['colour']} {a['pattern']} {a['shape']}"
        start = len(caption)
        caption += ptxt
        phrases.append(Phrase(ptxt, (start, start + len(ptxt)), [k]))
        caption += " " + POSITION_PHRASE[a["position"]]
    caption += f" on {_a(bg_name)} {bg_name} background."

    dialogue, dialogue_regions = [], []
    if cfg.dialogue:
        k = int(rng.integers(n))
        a = attrs[k]
        where = f"It is {POSITION_PHRASE[a['position']]} of the image"
        where += f", {objects[k].attributes['relation']} {short[objects[k].attributes['relation_to']]}." if n > 1 else "."
        dialogue = [Turn("user", "What is <region>?"),
                    Turn("assistant", f"It is {_a(a['size'])} {a['size']} {a['colour']} {a['pattern']} {a['shape']}."),
                    Turn("user", "Where is it?"),
                    Turn("assistant", where)]
        dialogue_regions = [k]

    return Sample(
        id=f"synthetic-{split}-{seed}-{index:06d}", source="synthetic", image=ImageRef(array=img, name=f"synthetic:{split}/{seed}/{index}"),
        height=S, width=S, objects=objects, split=split, caption=caption, phrases=phrases, questions=questions,
        dialogue=dialogue, dialogue_region_ids=dialogue_regions,
        extra={"background": bg_name, "seed": int(seed), "index": int(index)},
    )


def iter_scenes(n: int, split: str = "train", seed: int = 0, config: SceneConfig | None = None,
                start: int = 0) -> Iterator[Sample]:
    """Lazily yield scenes ``start .. start + n - 1`` of ``split``."""
    cfg = config or SceneConfig()
    for i in range(start, start + n):
        yield generate_scene(i, split, seed, cfg)


def generate_scenes(n: int, split: str = "train", seed: int = 0, image_size: int | None = None,
                    config: SceneConfig | None = None, start: int = 0, **overrides) -> list[Sample]:
    """``n`` deterministic scenes of ``split``; ``image_size`` and keyword ``overrides`` patch ``config``.

    >>> scenes = generate_scenes(4, "test", seed=0, image_size=128, max_objects=4)
    """
    from dataclasses import replace

    cfg = config or SceneConfig()
    if image_size is not None:
        overrides["image_size"] = image_size
    if overrides:
        cfg = replace(cfg, **overrides)
    return list(iter_scenes(n, split, seed, cfg, start))


def object_masks(sample: Sample) -> np.ndarray:
    """(N, H, W) bool array of the visible masks of ``sample``'s objects."""
    from .masks import decode_rle

    if not sample.objects:
        return np.zeros((0, sample.height, sample.width), dtype=bool)
    return np.stack([decode_rle(ob.mask) for ob in sample.objects])
