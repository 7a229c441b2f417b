"""Published sizes of the official releases, for ``fclm data check`` (and docs/data.md).

``records`` counts what the loader yields per record (an image for RefCOCO, ReasonSeg, ROC, ...),
``objects`` its objects (refs for RefCOCO, regions for ROC / DLC-Bench), ``expressions`` the
referring sentences (RefCOCO, one query each). Sources: the refer toolkit's split statistics
(Yu et al. 2016 / Mao et al. 2016, as used by LISA), LISA's ReasonSeg paper (239 / 200 / 779
images), Osprey's eval README (1k images, 4,004 LVIS / 4,263 PACO objects), DAM's DLC-Bench (100
regions), FCLM Table 7 (Pix2Cap train 18,212 images). Only numbers we could source are listed.
"""
from __future__ import annotations

EXPECTED: dict[tuple[str, str], dict[str, int]] = {
    ("refcoco", "val"): {"records": 1500, "objects": 3811, "expressions": 10834},
    ("refcoco", "testA"): {"records": 750, "objects": 1975, "expressions": 5657},
    ("refcoco", "testB"): {"records": 750, "objects": 1810, "expressions": 5095},
    ("refcoco", "train"): {"objects": 42404, "expressions": 120624},
    ("refcoco+", "val"): {"records": 1500, "objects": 3805, "expressions": 10758},
    ("refcoco+", "testA"): {"records": 750, "objects": 1975, "expressions": 5726},
    ("refcoco+", "testB"): {"records": 750, "objects": 1798, "expressions": 4889},
    ("refcoco+", "train"): {"objects": 42278, "expressions": 120191},
    ("refcocog", "val"): {"records": 1300, "objects": 2573, "expressions": 4896},
    ("refcocog", "test"): {"records": 2600, "objects": 5023, "expressions": 9602},
    ("refcocog", "train"): {"records": 21899, "objects": 42226, "expressions": 80512},
    ("reasonseg", "train"): {"records": 239},
    ("reasonseg", "val"): {"records": 200},
    ("reasonseg", "test"): {"records": 779},
    ("roc_lvis", "val"): {"records": 1000, "objects": 4004},
    ("roc_paco", "val"): {"records": 1000, "objects": 4263},
    ("dlc_bench", "test"): {"objects": 100},
    ("pix2cap", "train"): {"records": 18212},
}


def expected_counts(name: str, split: str | None) -> dict[str, int]:
    return dict(EXPECTED.get((name, split or ""), {}))
