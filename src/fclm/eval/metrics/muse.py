"""Multi-target reasoning segmentation metrics (MUSE, PixelLM protocol).

Source: PixelLM (Ren et al., CVPR 2024), ``train_ds.py::ar_validate`` and ``utils/matcher.py``.

For each question the predicted masks are matched one-to-one to the ground-truth masks with the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment``). Every unmatched ground truth is
paired with an empty prediction and every unmatched prediction with an empty ground truth. Every
pair, matched or not, goes through LISA's IoU (``intersectionAndUnionGPU``): ``I / (U + 1e-5)``,
and 1.0 when ``U == 0`` — so an unmatched *empty* prediction, or an unmatched *empty* ground truth,
scores 1.0 (PixelLM's behaviour, the default). All pairs add their I and U to cIoU
(``ΣI / (ΣU + 1e-10)``). For gIoU the summed pair IoUs of an *image* (all its questions) are
divided by ``max(#pred, #GT)`` of that image, and gIoU is ``Σ_images ΣIoU / Σ_images max(#pred,
#GT)`` (PixelLM's ``AverageMeter`` with ``n=max_num``).

Options and the one unavoidable difference (``docs/evaluation.md``):

* ``protocol="clean"``: every unmatched mask counts IoU 0 and no epsilon is added.
* PixelLM's matching cost is sigmoid-BCE + Dice on 12,544 *random* points of the mask logits
  (non-deterministic), and it scores unmatched predictions from their raw logits. A prediction file
  holds binary masks only, so we match on the exact binary-mask IoU (cost ``-IoU``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from .seg import REFERENCE_EPS, SegAccumulator, intersection_union, iou_from


def pair_iu_matrix(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union matrices, shape ``(len(preds), len(gts))``."""
    inter = np.zeros((len(preds), len(gts)), dtype=np.int64)
    union = np.zeros_like(inter)
    for i, p in enumerate(preds):
        for j, g in enumerate(gts):
            inter[i, j], union[i, j] = intersection_union(p, g)
    return inter, union


PROTOCOLS = ("reference", "clean")


def match_question(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                   protocol: str = "reference") -> list[tuple[int, int, float]]:
    """Hungarian-match one question's predicted masks to its ground-truth masks.

    Returns one ``(I, U, IoU)`` per pair: ``max(#pred, #GT)`` pairs, matched ones first; unmatched
    masks on either side are paired with an empty mask (their area still enters U). ``reference``
    (PixelLM): every pair scores ``I / (U + 1e-5)``, 1.0 when ``U == 0``; ``clean``: exact
    division, unmatched pairs always 0.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown MUSE protocol {protocol!r}; expected one of {PROTOCOLS}")
    ref = protocol == "reference"
    eps = REFERENCE_EPS if ref else 0.0
    inter, union = pair_iu_matrix(preds, gts)
    pairs: list[tuple[int, int, float]] = []
    rows: np.ndarray = np.zeros(0, int)
    cols: np.ndarray = np.zeros(0, int)
    if len(preds) and len(gts):
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        rows, cols = linear_sum_assignment(-iou)
        for r, c in zip(rows, cols):
            pairs.append((int(inter[r, c]), int(union[r, c]), iou_from(int(inter[r, c]), int(union[r, c]), eps)))
    for j in sorted(set(range(len(gts))) - set(cols.tolist())):
        u = int(np.count_nonzero(gts[j]))
        pairs.append((0, u, 1.0 if ref and u == 0 else 0.0))
    for i in sorted(set(range(len(preds))) - set(rows.tolist())):
        u = int(np.count_nonzero(preds[i]))
        pairs.append((0, u, 1.0 if ref and u == 0 else 0.0))
    return pairs


class MuseAccumulator:
    """Accumulates MUSE images: ``add_image([(preds_q, gts_q) for each question])``."""

    def __init__(self, protocol: str = "reference") -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown MUSE protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.protocol = protocol
        self.acc = SegAccumulator() if protocol == "reference" else SegAccumulator(0.0, 0.0)
        self.n_questions = 0

    def add_image(self, questions: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]]) -> float:
        """Add one image's questions; return the image's gIoU (ΣIoU / max(#pred, #GT))."""
        pairs: list[tuple[int, int, float]] = []
        n_pred = n_gt = 0
        for preds, gts in questions:
            pairs += match_question(preds, gts, self.protocol)
            n_pred += len(preds)
            n_gt += len(gts)
            self.n_questions += 1
        return self.acc.add_group(pairs, max(n_pred, n_gt))

    def summary(self, scale: float = 100.0) -> dict:
        return self.acc.summary(scale)


def muse_ciou_giou(images, scale: float = 100.0, protocol: str = "reference") -> dict:
    """cIoU and gIoU (PixelLM) of ``images``: each a list of ``(pred_masks, gt_masks)`` per question."""
    acc = MuseAccumulator(protocol)
    for questions in images:
        acc.add_image(questions)
    return acc.summary(scale)
