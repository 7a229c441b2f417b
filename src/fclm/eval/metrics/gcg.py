"""Grounded conversation generation metrics (GLaMM protocol).

Source: GLaMM (Rasheed et al., CVPR 2024), ``eval/gcg/evaluate.py`` and ``eval/gcg/infer.py`` in
mbzuai-oryx/groundingLMM; ground truth ``{val,test}_gcg_coco_mask_gt.json`` (COCO instances, one
category, id 1) and ``{val,test}_gcg_coco_caption_gt.json`` (COCO captions, each annotation with
``caption`` and the grounded phrase ``labels``).

* Captions: the model's answer with ``<…>`` tags and ``[SEG]`` removed and whitespace collapsed
  (:func:`strip_tags`); phrases are the ``<p>…</p>`` contents (:func:`extract_phrases`).
* **METEOR**, **CIDEr**: pycocoevalcap (PTB tokenizer, then ``Meteor`` and ``Cider``, as
  ``COCOEvalCap``) over the images that have a prediction; needs Java.
* **AP50**: pycocotools ``COCOeval(…, "segm")`` restricted to category 1, every predicted mask
  scored 1.0; ``stats[1]`` (AP at IoU 0.5, all areas, 100 detections).
* **mIoU**: per image, greedy one-to-one matching on the pred×GT IoU matrix (take the largest IoU,
  remove its row and column, repeat while the largest IoU is > 0); the mean of the matched IoUs is the
  image's score (0 with no match); mIoU is the mean over all GT images.
* **Recall**: per image, greedy pairs on the GT×pred IoU matrix in descending IoU, stopping at the
  first pair with IoU < 0.5 *or* phrase similarity < 0.5; recall = Σ pairs / Σ GT phrases. The
  phrase similarity is, as in the reference, the cosine of bert-base-uncased mean-pooled embeddings
  (``REFERENCE_TEXT_MODEL``: from ``$FCLM_GCG_TEXT_MODEL`` or the local Hugging Face cache; no
  download); ``text_model="minilm"`` (all-MiniLM-L6-v2) is an explicit, documented alternative.
  When no text model is named and bert-base-uncased is not available locally, all-MiniLM-L6-v2 is
  used and the results say so (``notes``; ``fclm score`` prints it).
* Two empty masks have IoU NaN (GLaMM's 0/0), with GLaMM's consequences (:func:`iou_matrix`);
  ``protocol="clean"`` makes it 0.

All metrics ×100. Deviations are listed in ``docs/evaluation.md``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from ...data.schema import FCLMDataError

REFERENCE_TEXT_MODEL = "hf-mean:bert-base-uncased"
GCG_TEXT_MODEL_ENV = "FCLM_GCG_TEXT_MODEL"
_TAG = re.compile(r"<.*?>")
_PHRASE = re.compile(r"<p>(.*?)</p>")


def strip_tags(text: str) -> str:
    """GLaMM's caption post-processing: drop newlines, ``<…>`` tags and ``[SEG]``; collapse spaces."""
    t = (text or "").replace("\n", "").replace("  ", " ")
    t = _TAG.sub("", t).replace("[SEG]", "")
    return " ".join(t.split()).strip("'").strip()


def extract_phrases(text: str) -> list[str]:
    """The stripped contents of the ``<p>…</p>`` spans, in order (GLaMM)."""
    t = (text or "").replace("\n", "").replace("  ", " ")
    return [p.strip() for p in _PHRASE.findall(t)]


@dataclass
class GCGImage:
    """Ground truth of one GCG image: reference caption(s), phrase labels, one GT mask per phrase."""

    id: str
    captions: list[str]
    labels: list[str]
    masks: list[dict]  # COCO RLE, aligned with the mask-GT annotations of the image
    height: int | None = None
    width: int | None = None
    crowd: list[int] = field(default_factory=list)  # the mask GT's iscrowd per mask (COCOeval ignores crowd)


@dataclass
class GCGPrediction:
    id: str
    caption: str  # tags already stripped
    phrases: list[str] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)  # COCO RLE


# ---------------------------------------------------------------------------------------------
# ground truth files
# ---------------------------------------------------------------------------------------------
def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as e:
        raise FCLMDataError(f"{path}: invalid JSON: {e}") from e


def gcg_gt_paths(data: str, split: str = "val") -> tuple[str, str]:
    """(mask GT, caption GT) paths from a directory holding GLaMM's files or from either file."""
    if os.path.isdir(data):
        mask = os.path.join(data, f"{split}_gcg_coco_mask_gt.json")
        cap = os.path.join(data, f"{split}_gcg_coco_caption_gt.json")
    elif "caption_gt" in os.path.basename(data):
        cap, mask = data, os.path.join(os.path.dirname(data), os.path.basename(data).replace("caption_gt", "mask_gt"))
    elif "mask_gt" in os.path.basename(data):
        mask, cap = data, os.path.join(os.path.dirname(data), os.path.basename(data).replace("mask_gt", "caption_gt"))
    else:
        raise FCLMDataError(f"{data}: expected a directory with {split}_gcg_coco_mask_gt.json and "
                            f"{split}_gcg_coco_caption_gt.json, or one of those files")
    for p in (mask, cap):
        if not os.path.exists(p):
            raise FileNotFoundError(f"GCG ground-truth file not found: {p}")
    return mask, cap


def load_gcg_gt(data: str, split: str = "val") -> list[GCGImage]:
    """GLaMM's GCG evaluation ground truth as :class:`GCGImage` records (caption-GT image order)."""
    mask_path, cap_path = gcg_gt_paths(data, split)
    cap, msk = _read_json(cap_path), _read_json(mask_path)
    for path, d in ((cap_path, cap), (mask_path, msk)):
        if not isinstance(d, dict) or "images" not in d or "annotations" not in d:
            raise FCLMDataError(f"{path}: expected a COCO-format object with 'images' and 'annotations'")
    caps: dict = {}
    for i, a in enumerate(cap["annotations"]):
        if "image_id" not in a or "caption" not in a:
            raise FCLMDataError(f"{cap_path}: annotation {i} lacks image_id or caption")
        caps.setdefault(a["image_id"], []).append(a)
    masks: dict = {}
    crowd: dict = {}
    sizes = {im["id"]: (im.get("height"), im.get("width")) for im in msk.get("images", [])}
    for i, a in enumerate(msk["annotations"]):
        if "segmentation" not in a:
            continue  # GLaMM skips annotations without a segmentation
        seg = a["segmentation"]
        if isinstance(seg, list):
            h, w = sizes.get(a["image_id"], (None, None))
            if h is None:
                raise FCLMDataError(f"{mask_path}: annotation {i} has a polygon but image {a['image_id']} has no size")
            from ...data.masks import segmentation_to_rle

            seg = segmentation_to_rle(seg, h, w)
        masks.setdefault(a["image_id"], []).append(seg)
        crowd.setdefault(a["image_id"], []).append(int(a.get("iscrowd", 0) or 0))
    out = []
    for im in cap["images"]:
        iid = im["id"]
        anns = caps.get(iid, [])
        h, w = sizes.get(iid, (im.get("height"), im.get("width")))
        out.append(GCGImage(id=str(iid), captions=[a["caption"] for a in anns],
                            labels=list(anns[0].get("labels", [])) if anns else [],
                            masks=masks.get(iid, []), height=h, width=w, crowd=crowd.get(iid, [])))
    return out


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------
def prediction_from_glamm(record: dict, where: str) -> GCGPrediction:
    """A GLaMM ``infer.py`` output record ``{image_id, caption, phrases, pred_masks}``; like GLaMM's
    evaluator, also accept the record wrapped in a one-key object."""
    rec = record
    if isinstance(rec, dict) and "caption" not in rec and len(rec) == 1:
        inner = next(iter(rec.values()))
        if isinstance(inner, dict):
            rec = inner
    if not isinstance(rec, dict) or "caption" not in rec:
        raise FCLMDataError(f"{where}: expected {{image_id, caption, phrases, pred_masks}}")
    iid = rec.get("image_id")
    if iid is None:
        iid = os.path.splitext(os.path.basename(where))[0]
    masks = rec.get("pred_masks", [])
    if not isinstance(masks, list) or any(not isinstance(m, dict) or "counts" not in m for m in masks):
        raise FCLMDataError(f"{where}: 'pred_masks' must be a list of COCO RLE objects {{size, counts}}")
    return GCGPrediction(id=str(iid), caption=str(rec["caption"]), phrases=[str(p) for p in rec.get("phrases", [])],
                         masks=masks)


def load_glamm_prediction_dir(path: str) -> dict[str, GCGPrediction]:
    """GLaMM's GCG prediction folder: one ``<image_id>.json`` per image."""
    out: dict[str, GCGPrediction] = {}
    for name in sorted(os.listdir(path)):
        if not name.endswith(".json"):
            continue
        p = os.path.join(path, name)
        pred = prediction_from_glamm(_read_json(p), p)
        out[pred.id] = pred
    return out


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def _rle(m: dict) -> dict:
    from ...data.masks import _norm_rle

    return _norm_rle(m)


def iou_matrix(a: Sequence[dict], b: Sequence[dict], empty_iou: float = float("nan")) -> np.ndarray:
    """IoU of every RLE in ``a`` with every RLE in ``b``, shape (len a, len b).

    Two empty masks give ``empty_iou``: NaN by default, as GLaMM's ``compute_iou`` (0 / 0). A NaN
    then stops GLaMM's greedy mIoU loop (``np.max`` is NaN, not > 0) and is taken first by its
    recall loop (``np.argmax`` returns the first NaN, which passes the ``<`` threshold test); the
    ``clean`` protocol passes 0.
    """
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ra, rb = [_rle(m) for m in a], [_rle(m) for m in b]
    sizes = {tuple(r["size"]) for r in ra + rb}
    if len(sizes) > 1:
        raise FCLMDataError(f"masks of different sizes compared: {sorted(sizes)}")
    m = np.asarray(mask_utils.iou(ra, rb, [0] * len(rb)), dtype=np.float64).reshape(len(a), len(b))
    ea = np.asarray(mask_utils.area(ra)) == 0
    eb = np.asarray(mask_utils.area(rb)) == 0
    m[np.outer(ea, eb)] = empty_iou
    return m


def greedy_miou(ious: np.ndarray) -> float:
    """GLaMM's ``compute_miou`` on a pred×GT IoU matrix: greedy one-to-one pairs while the largest
    remaining IoU is > 0; mean of the paired IoUs, 0.0 when there is none."""
    m = np.array(ious, dtype=np.float64)
    paired = []
    while m.size > 0 and np.max(m) > 0:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        paired.append(m[r, c])
        m = np.delete(np.delete(m, r, axis=0), c, axis=1)
    return float(np.mean(paired)) if paired else 0.0


def greedy_text_matches(ious: np.ndarray, text_sims: np.ndarray, iou_threshold: float = 0.5,
                        text_threshold: float = 0.5) -> list[tuple[int, int]]:
    """GLaMM's ``find_best_matches``: on the GT×pred IoU matrix, repeatedly take the largest IoU; stop
    at the first pair below ``iou_threshold`` or whose phrase similarity is below ``text_threshold``;
    otherwise keep it and zero its row and column. Raises IndexError when a chosen pair has no phrase
    (more masks than phrases), as the reference does."""
    ious = np.array(ious, dtype=np.float64)
    sims = np.array(text_sims, dtype=np.float64)
    matches = []
    while ious.size > 0:
        i, j = np.unravel_index(np.argmax(ious), ious.shape)
        if ious[i, j] < iou_threshold or sims[i, j] < text_threshold:
            break
        matches.append((int(i), int(j)))
        ious[i, :] = 0
        ious[:, j] = 0
        sims[i, :] = 0
        sims[:, j] = 0
    return matches


_METEOR = None


def shared_meteor():
    """One pycocoevalcap ``Meteor`` (a Java process, slow to start) reused for the whole process."""
    global _METEOR
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return _METEOR


def caption_scores(references: dict[str, list[str]], candidates: dict[str, str], scale: float = 100.0) -> dict:
    """METEOR and CIDEr exactly as ``COCOEvalCap`` computes them (PTB tokenizer, Meteor(), Cider()).

    ``references`` maps an id to its reference captions, ``candidates`` an id to one caption; only
    ids present in ``candidates`` are scored. Needs Java on PATH.
    """
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ids = [i for i in candidates if i in references]
    if not ids:
        return {"METEOR": 0.0, "CIDEr": 0.0}
    missing = [i for i in ids if not references[i]]
    if missing:
        raise FCLMDataError(f"GCG: no reference caption for image(s) {missing[:5]}")
    gts = {k: [{"caption": c} for c in references[k]] for k in ids}
    res = {k: [{"caption": candidates[k]}] for k in ids}
    with contextlib.redirect_stdout(io.StringIO()):
        tok = PTBTokenizer()
        gts_t, res_t = tok.tokenize(gts), tok.tokenize(res)
        m, _ = shared_meteor().compute_score(gts_t, res_t)
        c, _ = Cider().compute_score(gts_t, res_t)
    return {"METEOR": float(m) * scale, "CIDEr": float(c) * scale}


def mask_ap50(images: Sequence[GCGImage], preds: dict[str, GCGPrediction], scale: float = 100.0) -> float:
    """AP at IoU 0.5 (pycocotools ``segm``, category 1, every prediction scored 1.0)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    num = {im.id: k + 1 for k, im in enumerate(images)}
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for im in images:
        size = None
        for m in im.masks:
            size = size or m["size"]
        h, w = (size or [im.height or 1, im.width or 1])
        gt["images"].append({"id": num[im.id], "height": int(h), "width": int(w)})
        for k, m in enumerate(im.masks):
            r = _rle(m)
            crowd = im.crowd[k] if k < len(im.crowd) else 0
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": num[im.id], "category_id": 1, "iscrowd": crowd,
                "segmentation": {"size": list(r["size"]), "counts": r["counts"].decode("ascii")},
                "area": float(mask_utils.area(r)), "bbox": [float(x) for x in mask_utils.toBbox(r)]})
    dets = []
    for iid, p in preds.items():
        if iid not in num:
            continue
        for m in p.masks:
            r = _rle(m)
            dets.append({"image_id": num[iid], "category_id": 1, "score": 1.0,
                         "segmentation": {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}})
    if not dets or not gt["annotations"]:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[1]), 0.0) * scale


def evaluate_gcg(images: Sequence[GCGImage], preds: dict[str, GCGPrediction], *, text_encoder=None,
                 text_model: str | None = None, iou_threshold: float = 0.5, text_threshold: float = 0.5,
                 captions: bool = True, scale: float = 100.0, protocol: str = "reference") -> dict:
    """All GCG metrics of ``preds`` (by image id) against ``images``.

    ``protocol="clean"`` scores two empty masks as IoU 0 instead of GLaMM's NaN (see
    :func:`iou_matrix`).

    ``text_encoder`` (or the spec ``text_model``, see :mod:`~fclm.eval.metrics.text_sim`) embeds
    phrases for recall. ``captions=False`` skips METEOR/CIDEr (no Java needed).
    """
    from .text_sim import load_text_encoder, similarity_matrix

    if protocol not in ("reference", "clean"):
        raise ValueError(f"unknown GCG protocol {protocol!r}; expected reference or clean")
    empty = float("nan") if protocol == "reference" else 0.0
    by_id = {im.id: im for im in images}
    for iid, p in preds.items():
        im = by_id.get(iid)
        if im is None or not p.masks or not im.masks:
            continue
        if any(list(m["size"]) != list(im.masks[0]["size"]) for m in p.masks):
            raise FCLMDataError(f"GCG prediction {iid}: mask size {p.masks[0]['size']} differs from the "
                                f"ground truth's {im.masks[0]['size']}")
    metrics: dict[str, float] = {}
    if captions:
        metrics.update(caption_scores({im.id: im.captions for im in images},
                                      {k: p.caption for k, p in preds.items() if k in by_id}, scale))
    metrics["AP50"] = mask_ap50(images, preds, scale)
    mious = []
    for im in images:
        p = preds.get(im.id)
        mious.append(greedy_miou(iou_matrix(p.masks, im.masks, empty)) if p else 0.0)
    metrics["mIoU"] = float(np.mean(mious)) * scale if mious else 0.0
    notes = []
    if text_encoder is None:
        spec = text_model or os.environ.get(GCG_TEXT_MODEL_ENV)
        if spec:
            text_encoder = load_text_encoder(spec)
        else:
            from .text_sim import SentenceModelError

            try:
                text_encoder = load_text_encoder(REFERENCE_TEXT_MODEL)
            except SentenceModelError as e:
                text_encoder = load_text_encoder("minilm")
                notes.append(f"GCG recall used all-MiniLM-L6-v2, not GLaMM's bert-base-uncased ({e}); "
                             f"set ${GCG_TEXT_MODEL_ENV} or --gcg-text-model hf-mean:/path/to/bert-base-uncased")
    tp = positives = mismatched = 0
    for im in images:
        positives += len(im.labels)
        p = preds.get(im.id)
        if p is None:
            continue
        ious = iou_matrix(im.masks, p.masks, empty)
        sims = similarity_matrix(text_encoder, im.labels, p.phrases)
        try:
            tp += len(greedy_text_matches(ious, sims, iou_threshold, text_threshold))
        except IndexError:
            mismatched += 1  # the reference's try/except: the image contributes no true positive
    metrics["Recall"] = tp / positives * scale if positives else 0.0
    return {"metrics": metrics,
            "counts": {"images": len(images), "predicted_images": sum(1 for i in by_id if i in preds),
                       "gt_phrases": positives, "matched_phrases": tp, "phrase_mask_count_mismatch": mismatched},
            "text_model": getattr(text_encoder, "name", type(text_encoder).__name__),
            **({"notes": notes} if notes else {})}
