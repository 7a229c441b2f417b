"""Referring / reasoning segmentation metrics: cIoU and gIoU (LISA protocol).

Source: LISA (Lai et al., CVPR 2024), ``utils/utils.py::intersectionAndUnionGPU`` and
``train_ds.py::validate``; used unchanged by PixelLM, GLaMM and most later work for RefCOCO/+/g,
ReasonSeg and (in the FCLM paper) DL-RES.

Per query (one referring expression / question): the prediction is binarised (logits > 0, at the
original image size), pixels whose ground truth is the ignore label 255 are removed from both
prediction and ground truth, and the foreground intersection ``I`` and union ``U`` are counted.

* ``IoU_i = I / (U + 1e-5)``, and ``1.0`` when ``U == 0`` (both empty: LISA's "no-object target"
  rule).
* **cIoU** = ``sum(I) / (sum(U) + 1e-10)`` over the split (cumulative IoU).
* **gIoU** = mean of ``IoU_i`` over the queries.

The epsilons are LISA's (``REFERENCE_EPS``); ``SegAccumulator(eps=0, ciou_eps=0)`` divides exactly
(the ``clean`` protocol of ``fclm score``). Ground truth built by summing polygons (RES, MUSE) drops
the pixels covered twice before it gets here (LISA's ``histc`` only counts value 1).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

IGNORE_LABEL = 255
REFERENCE_EPS = 1e-5  # LISA / PixelLM: acc_iou = I / (U + 1e-5)
REFERENCE_CIOU_EPS = 1e-10  # LISA / PixelLM: cIoU = ΣI / (ΣU + 1e-10)


def _as_bool(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D HxW mask, got shape {arr.shape}")
    return arr.astype(bool) if arr.dtype != bool else arr


def intersection_union(pred, gt, ignore=None) -> tuple[int, int]:
    """Foreground intersection and union of two HxW masks, ignored pixels removed (LISA).

    ``gt`` may be a label map using 255 as the ignore label (LISA's convention) or a binary mask;
    ``ignore`` is an optional extra HxW boolean mask of ignored pixels (``Sample.ignore_mask``).
    """
    gt_arr = np.asarray(gt)
    if gt_arr.ndim != 2:
        raise ValueError(f"ground-truth mask must be 2-D, got shape {gt_arr.shape}")
    p = _as_bool(pred, "prediction")
    if p.shape != gt_arr.shape:
        raise ValueError(f"prediction has shape {p.shape} but the ground truth has {gt_arr.shape}; "
                         "predictions must be at the original image size")
    ign = gt_arr == IGNORE_LABEL if gt_arr.dtype != bool else np.zeros(gt_arr.shape, bool)
    if ignore is not None:
        ig = _as_bool(ignore, "ignore mask")
        if ig.shape != gt_arr.shape:
            raise ValueError(f"ignore mask has shape {ig.shape} but the ground truth has {gt_arr.shape}")
        ign = ign | ig
    g = (gt_arr != 0) & ~ign
    p = p & ~ign
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def iou_from(inter: int, union: int, eps: float = 0.0) -> float:
    """``I / (U + eps)``, or 1.0 when ``U == 0`` (empty prediction and empty ground truth, LISA)."""
    return 1.0 if union == 0 else inter / (union + eps)


class SegAccumulator:
    """Accumulates per-query ``(I, U, IoU)`` into cIoU = ΣI/ΣU and gIoU = ΣIoU / Σweight.

    :meth:`add` / :meth:`add_iu` add one query of weight 1 (LISA). :meth:`add_group` adds several
    (I, U, IoU) pairs normalised together by an explicit weight (PixelLM's MUSE protocol divides the
    summed IoUs of an image by ``max(#pred, #GT)``).
    """

    def __init__(self, eps: float = REFERENCE_EPS, ciou_eps: float = REFERENCE_CIOU_EPS) -> None:
        self.eps, self.ciou_eps = eps, ciou_eps
        self.inter = 0
        self.union = 0
        self.iou_sum = 0.0
        self.weight = 0.0
        self.n = 0  # queries (or groups) added

    def add(self, pred, gt, ignore=None) -> float:
        """Add one query from masks; return its IoU."""
        return self.add_iu(*intersection_union(pred, gt, ignore))

    def add_iu(self, inter: int, union: int) -> float:
        iou = iou_from(inter, union, self.eps)
        self.inter += int(inter)
        self.union += int(union)
        self.iou_sum += iou
        self.weight += 1
        self.n += 1
        return iou

    def add_group(self, pairs: Iterable[tuple[int, int, float]], weight: float) -> float:
        """Add ``(I, U, IoU)`` pairs whose IoUs are normalised together by ``weight``; return
        the group's score ``ΣIoU / weight`` (0.0 for weight 0)."""
        pairs = list(pairs)
        s = 0.0
        for inter, union, iou in pairs:
            self.inter += int(inter)
            self.union += int(union)
            s += float(iou)
        self.iou_sum += s
        self.weight += weight
        self.n += 1
        return s / weight if weight else 0.0

    @property
    def ciou(self) -> float:
        return self.inter / (self.union + self.ciou_eps) if self.union else 0.0

    @property
    def giou(self) -> float:
        return self.iou_sum / self.weight if self.weight else 0.0

    def summary(self, scale: float = 100.0) -> dict:
        """``{"gIoU", "cIoU"}`` scaled (percent by default)."""
        return {"gIoU": self.giou * scale, "cIoU": self.ciou * scale}


def ciou_giou(pairs: Iterable[tuple], scale: float = 100.0, exact: bool = False) -> dict:
    """cIoU and gIoU of ``(pred, gt)`` or ``(pred, gt, ignore)`` mask tuples (LISA protocol;
    ``exact`` drops LISA's epsilons)."""
    acc = SegAccumulator(0.0, 0.0) if exact else SegAccumulator()
    for item in pairs:
        acc.add(*item)
    return acc.summary(scale)
