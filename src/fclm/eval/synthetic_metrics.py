"""Metrics for the synthetic scene world (the quickstart), where every attribute of a region is known.

* ROC: label accuracy (exact match after the Osprey clean-up) besides the Osprey SS/sIoU;
* DLC (a DLC-Bench analogue): **attribute recall** — of the region's shape, colour, size, pattern
  and position, the fraction the caption states correctly — and **hallucination rate** — of the
  attributes the caption states, the fraction that are wrong (only the subject of the caption is
  read: text after a relation such as "to the left of" describes another object);
* trivial baselines that a trained model must beat: a whole-image mask for every grounding query,
  the most frequent training label for ROC, and one constant caption (the most frequent value of
  every attribute) for DLC.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..data.synthetic import parse_attributes
from .metrics.roc import clean_prediction, clean_reference
from .queries import iter_queries

DLC_ATTRIBUTES = ("shape", "colour", "size", "pattern", "position")


def roc_accuracy(samples, preds: dict) -> float:
    """Percentage of ROC queries whose cleaned prediction equals the cleaned label."""
    hits = [clean_prediction(preds.get(q.id, {}).get("text", "")) == clean_reference(q.label)
            for s in samples for q in iter_queries(s, "roc")]
    return 100.0 * float(np.mean(hits)) if hits else 0.0


def dlc_attribute_scores(samples, preds: dict) -> dict:
    """Attribute recall and hallucination rate (percent) of DLC captions; see the module docstring."""
    stated = correct = total = 0
    for s in samples:
        for q in iter_queries(s, "dlc"):
            truth = s.objects[q.region_ids[0]].attributes
            said = parse_attributes(preds.get(q.id, {}).get("text", ""), subject_only=True)
            for a in DLC_ATTRIBUTES:
                if a not in truth:
                    continue
                total += 1
                if a in said:
                    stated += 1
                    correct += said[a] == truth[a]
    return {"attribute_recall": 100.0 * correct / max(total, 1),
            "hallucination_rate": 100.0 * (stated - correct) / max(stated, 1)}


def whole_image_predictions(samples, task: str) -> dict:
    """The whole-image-mask baseline: one full mask per grounding query."""
    out = {}
    for s in samples:
        full = np.ones((s.height, s.width), dtype=bool)
        for q in iter_queries(s, task):
            out[q.id] = {"masks": [full] * max(1, len(q.target_ids)), "text": ""}
    return out


def majority_label_predictions(train_samples, samples) -> tuple[dict, str]:
    labels = Counter(ob.category for s in train_samples for ob in s.objects if ob.category)
    top = labels.most_common(1)[0][0]
    return {q.id: {"text": top} for s in samples for q in iter_queries(s, "roc")}, top


def constant_caption_predictions(train_samples, samples) -> tuple[dict, str]:
    counts = {a: Counter() for a in ("size", "colour", "pattern", "shape", "position")}
    for s in train_samples:
        for ob in s.objects:
            for a in counts:
                if a in ob.attributes:
                    counts[a][ob.attributes[a]] += 1
    top = {a: c.most_common(1)[0][0] for a, c in counts.items() if c}
    caption = f"A {top['size']} {top['colour']} {top['pattern']} {top['shape']} in the {top['position']}."
    return {q.id: {"text": caption} for s in samples for q in iter_queries(s, "dlc")}, caption
