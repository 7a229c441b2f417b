"""Score predictions of any model on the seven benchmarks (``fclm score`` and ``fclm eval``).

Entry points:

* :func:`read_predictions` — a prediction file/folder → ``{id: record}``;
* :func:`load_ground_truth` — an official GT (file or dataset root) → Samples, or the DLC-Bench /
  GCG ground truth objects;
* :func:`score_predictions` — ``(task, samples_or_gt, predictions, **opts) -> results dict``.

A prediction *record* is a dict with any of ``masks`` (list of COCO RLE dicts or HxW arrays),
``text`` (the model's raw answer), and for GCG optionally ``caption`` (tags already stripped) and
``phrases``. Ids are those of :mod:`fclm.eval.queries`. File formats are described in
``docs/evaluation.md``:

* JSON lines ``{"id": <query id>, "masks": [RLE…], "text": "…"}`` (every task);
* a JSON object ``{id: text}`` — DLC-Bench's own ``{ann_id: caption}`` (also accepted for ROC);
* a folder of GLaMM ``infer.py`` outputs, ``<image_id>.json`` ``{image_id, caption, phrases,
  pred_masks}`` (GCG).

The results dict: ``{"task", "benchmark", "protocol", "metrics": {name: value×100}, "counts": {…}}``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from ..data.schema import FCLMDataError, Sample
from .queries import TASKS, iter_queries

PROTOCOLS = {
    "res": "LISA cIoU/gIoU",
    "dlres": "LISA cIoU/gIoU",
    "reasonseg": "LISA cIoU/gIoU",
    "muse": "PixelLM Hungarian cIoU/gIoU",
    "roc": "Osprey SS/sIoU",
    "dlc": "DAM DLC-Bench judge",
    "gcg": "GLaMM GCG",
}
# dataset name (fclm.data.formats.registry) used when --dataset is not given
DEFAULT_DATASET = {"reasonseg": "reasonseg", "muse": "muse", "dlc": "dlc_bench", "gcg": "gcg_eval"}
MASK_TASKS = ("res", "dlres", "reasonseg", "muse", "gcg")
# "reference": every rule of the reference script (default); "clean": our documented variant
# (exact division, unmatched/empty masks score 0, union of overlapping polygons). docs/evaluation.md
SCORE_PROTOCOLS = ("reference", "clean")


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------
def _check_rle(m: Any, where: str) -> None:
    if isinstance(m, np.ndarray):
        if m.ndim != 2:
            raise FCLMDataError(f"{where}: a mask array must be 2-D, got shape {m.shape}")
        return
    if not isinstance(m, dict) or "size" not in m or "counts" not in m:
        raise FCLMDataError(f"{where}: each mask must be a COCO RLE object {{\"size\": [h, w], \"counts\": …}}")


def normalise_record(rec: Any, where: str) -> dict:
    """One prediction record → ``{"text", "masks", ["caption"], ["phrases"]}`` (validated)."""
    if isinstance(rec, str):
        return {"text": rec, "masks": []}
    if not isinstance(rec, Mapping):
        raise FCLMDataError(f"{where}: a prediction must be an object or a string, got {type(rec).__name__}")
    out = {"text": rec.get("text"), "masks": rec.get("masks", rec.get("pred_masks", [])) or []}
    if out["text"] is not None and not isinstance(out["text"], str):
        raise FCLMDataError(f"{where}: field 'text' must be a string")
    if not isinstance(out["masks"], (list, tuple)):
        raise FCLMDataError(f"{where}: field 'masks' must be a list of COCO RLE objects")
    for k, m in enumerate(out["masks"]):
        _check_rle(m, f"{where}: masks[{k}]")
    for key in ("caption", "phrases"):
        if key in rec:
            out[key] = rec[key]
    return out


def _add(out: dict, pid: Any, rec: Any, where: str) -> None:
    if pid is None:
        raise FCLMDataError(f"{where}: missing field 'id'")
    pid = str(pid)
    if pid in out:
        raise FCLMDataError(f"{where}: duplicate prediction id {pid!r}")
    out[pid] = normalise_record(rec, where)


def read_predictions(path: str, task: str | None = None) -> dict[str, dict]:
    """Read a prediction file or folder (formats in the module docstring) → ``{id: record}``."""
    if os.path.isdir(path):
        if task not in (None, "gcg"):
            raise FCLMDataError(f"{path} is a directory; only GCG predictions come as a folder (GLaMM format)")
        from .metrics.gcg import load_glamm_prediction_dir

        return {k: {"text": None, "caption": p.caption, "phrases": p.phrases, "masks": p.masks}
                for k, p in load_glamm_prediction_dir(path).items()}
    if not os.path.exists(path):
        raise FileNotFoundError(f"prediction file not found: {path}")
    out: dict[str, dict] = {}
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FCLMDataError(f"{where}: invalid JSON: {e}") from e
                if not isinstance(rec, dict):
                    raise FCLMDataError(f"{where}: expected an object {{\"id\": …, \"masks\": […], \"text\": …}}")
                _add(out, rec.get("id"), rec, where)
        return out
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise FCLMDataError(f"{path}: invalid JSON: {e}") from e
    if isinstance(data, list):
        for k, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise FCLMDataError(f"{path}: item {k}: expected an object with an 'id'")
            _add(out, rec.get("id"), rec, f"{path}: item {k}")
    elif isinstance(data, dict):
        for k, rec in data.items():
            _add(out, k, rec, f"{path}: key {k!r}")
    else:
        raise FCLMDataError(f"{path}: expected a JSON list of records or an object keyed by id")
    return out


def _records(predictions: Mapping[str, Any] | str) -> dict[str, dict]:
    if isinstance(predictions, (str, os.PathLike)):
        return read_predictions(str(predictions))
    return {str(k): normalise_record(v, f"prediction {k!r}") for k, v in predictions.items()}


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
def load_samples(dataset: str, root: str, split: str) -> list[Sample]:
    """Samples of an official benchmark through ``fclm.data.formats.registry.load_dataset``."""
    try:
        from ..data.formats.registry import load_dataset
    except ImportError as e:
        raise FCLMDataError(f"cannot read dataset {dataset!r}: the dataset loaders "
                            f"(fclm.data.formats.registry) are not available: {e}") from e
    try:
        return list(load_dataset(dataset, root, split))
    except ValueError as e:  # unknown dataset / split: the loader's message names it
        if isinstance(e, FCLMDataError):
            raise
        raise FCLMDataError(f"cannot read {dataset!r} ({split}) from {root}: {e}") from e


def load_ground_truth(task: str, data: str, dataset: str | None = None, split: str | None = "val"):
    """The ground truth ``fclm score`` compares against.

    DLC-Bench (a directory with ``qa.json`` + ``class_names.json``) and GLaMM's GCG files are read
    directly, as the reference evaluators read them; everything else (and these two when
    ``dataset`` is named) goes through the dataset loaders, which need ``dataset`` for RES, DL-RES
    and ROC (e.g. ``refcoco``, ``roc_lvis``).
    """
    _check_task(task)
    split = split or "val"
    if dataset is None and task == "dlc":
        from .metrics.dlc import load_dlc_bench

        base = data if os.path.isdir(data) else os.path.dirname(data)
        if os.path.exists(os.path.join(base, "qa.json")) or os.path.exists(os.path.join(base, "annotations", "qa.json")):
            return load_dlc_bench(data)
    if dataset is None and task == "gcg":
        from .metrics.gcg import load_gcg_gt

        base = os.path.basename(data)
        if (os.path.isdir(data) and os.path.exists(os.path.join(data, f"{split}_gcg_coco_caption_gt.json"))) \
                or "caption_gt" in base or "mask_gt" in base:
            return load_gcg_gt(data, split)
    name = dataset or DEFAULT_DATASET.get(task)
    if name is None:
        raise FCLMDataError(f"task {task!r} needs --dataset NAME (e.g. refcoco, refcoco+, refcocog for res; "
                            "roc_lvis or roc_paco for roc) to read {data}")
    if not os.path.exists(data):
        raise FileNotFoundError(f"ground truth not found: {data}")
    return load_samples(name, data, split)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
def _check_task(task: str) -> None:
    if task not in TASKS:
        raise FCLMDataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _decode(m, h: int | None = None, w: int | None = None, where: str = "") -> np.ndarray:
    from ..data.masks import decode_rle

    if isinstance(m, np.ndarray):
        arr = m.astype(bool)
    else:
        try:
            arr = decode_rle(m)
        except FCLMDataError as e:
            raise FCLMDataError(f"{where}: {e}") from e
    if h is not None and arr.shape != (h, w):
        raise FCLMDataError(f"{where}: mask is {arr.shape[0]}x{arr.shape[1]} (HxW) but the image is {h}x{w}; "
                            "masks must be at the original image size")
    return arr


def _gt_mask(sample: Sample, ids: Iterable[int], where: str, protocol: str = "reference") -> np.ndarray:
    """Union of the target objects' masks. ``reference`` drops the pixels that LISA / PixelLM's
    summed polygons cover more than once (``extra["multi_cover"]``, their histc rule)."""
    m = np.zeros((sample.height, sample.width), bool)
    for i in ids:
        ob = sample.objects[i]
        if ob.mask is None:
            raise FCLMDataError(f"{where}: ground-truth object {i} of sample {sample.id} has no mask")
        om = _decode(ob.mask, sample.height, sample.width, f"{where}: ground truth object {i}")
        if protocol == "reference" and ob.extra.get("multi_cover") is not None:
            om = om & ~_decode(ob.extra["multi_cover"], sample.height, sample.width, f"{where}: object {i} multi_cover")
        m |= om
    return m


def _pred_masks(rec: dict | None, sample: Sample, qid: str) -> list[np.ndarray]:
    if rec is None:
        return []
    return [_decode(m, sample.height, sample.width, f"prediction {qid}: masks[{k}]") for k, m in enumerate(rec["masks"])]


class _Bookkeeping:
    """Tracks which ground-truth ids got a prediction."""

    def __init__(self, preds: dict[str, dict], allow_missing: bool):
        self.preds = preds
        self.allow_missing = allow_missing
        self.seen: set[str] = set()
        self.missing: list[str] = []

    def get(self, qid: str) -> dict | None:
        self.seen.add(qid)
        rec = self.preds.get(qid)
        if rec is None:
            self.missing.append(qid)
        return rec

    def finish(self, n_label: str) -> dict:
        if self.missing and not self.allow_missing:
            raise FCLMDataError(
                f"{len(self.missing)} of {len(self.seen)} {n_label} have no prediction (e.g. {self.missing[:5]}); "
                "pass allow_missing / --allow-missing to score them as empty predictions")
        unknown = sorted(set(self.preds) - self.seen)
        counts = {n_label: len(self.seen), "missing_predictions": len(self.missing), "unknown_ids": len(unknown)}
        if unknown:
            counts["unknown_id_examples"] = unknown[:5]
        return counts


def _score_seg(task: str, samples: Iterable[Sample], book: _Bookkeeping, details: bool,
               protocol: str = "reference") -> dict:
    from .metrics.seg import SegAccumulator

    acc = SegAccumulator() if protocol == "reference" else SegAccumulator(0.0, 0.0)
    per = {}
    for s in samples:
        ignore = _decode(s.ignore_mask, s.height, s.width, f"sample {s.id}: ignore_mask") if s.ignore_mask else None
        for q in iter_queries(s, task):
            gt = _gt_mask(s, q.target_ids, f"query {q.id}", protocol)
            pm = _pred_masks(book.get(q.id), s, q.id)
            pred = np.logical_or.reduce(pm) if pm else np.zeros_like(gt)
            iou = acc.add(pred, gt, ignore)
            if details:
                per[q.id] = iou
    out = {"metrics": acc.summary(), "counts": book.finish("queries")}
    if details:
        out["details"] = per
    return out


def _score_muse(samples: Iterable[Sample], book: _Bookkeeping, details: bool, protocol: str = "reference") -> dict:
    from .metrics.muse import MuseAccumulator

    acc = MuseAccumulator(protocol)
    per = {}
    for s in samples:
        questions = []
        for q in iter_queries(s, "muse"):
            gts = [_gt_mask(s, [t], f"query {q.id}", protocol) for t in q.target_ids]
            questions.append((_pred_masks(book.get(q.id), s, q.id), gts))
        if questions:
            g = acc.add_image(questions)
            if details:
                per[s.id] = g
    out = {"metrics": acc.summary(), "counts": {**book.finish("queries"), "images": acc.acc.n}}
    if details:
        out["details"] = per
    return out


def _score_roc(samples: Iterable[Sample], book: _Bookkeeping, opts: dict) -> dict:
    from .metrics.roc import roc_scores
    from .metrics.text_sim import load_text_encoder

    ids, texts, labels = [], [], []
    for s in samples:
        for q in iter_queries(s, "roc"):
            rec = book.get(q.id)
            ids.append(q.id)
            texts.append((rec or {}).get("text") or "")
            labels.append(q.label)
    counts = book.finish("queries")
    enc = opts.get("text_encoder") or load_text_encoder(opts.get("sentence_model"))
    r = roc_scores(texts, labels, encoder=enc)
    out = {"metrics": {"SS": r["SS"], "sIoU": r["sIoU"]}, "counts": counts,
           "text_model": getattr(enc, "name", type(enc).__name__)}
    if opts.get("details"):
        out["details"] = {i: {"pred": t, "gt": g, "ss": a, "siou": b}
                          for i, t, g, (a, b) in zip(ids, texts, labels, r["per_object"])}
    return out


def _dlc_gt_from_samples(samples: Iterable[Sample]):
    from .metrics.dlc import DLCBenchGT

    qa, names = {}, {}
    for s in samples:
        for q in iter_queries(s, "dlc"):
            ob = s.objects[q.region_ids[0]]
            if ob.extra.get("qa") is None or not ob.category:
                raise FCLMDataError(f"DLC-Bench sample {s.id}: object {q.region_ids[0]} lacks extra['qa'] or a "
                                    "category; pass the DLC-Bench directory (qa.json, class_names.json) instead")
            qa[q.id], names[q.id] = ob.extra["qa"], ob.category
    return DLCBenchGT(qa=qa, class_names=names)


def _score_dlc(gt, preds: dict[str, dict], opts: dict) -> dict:
    from .judge import JudgeClient
    from .metrics.dlc import DLCBenchGT, evaluate_dlc

    if not isinstance(gt, DLCBenchGT):
        gt = _dlc_gt_from_samples(gt)
    judge = opts.get("judge")
    if judge is None:
        url, model = opts.get("judge_url"), opts.get("judge_model")
        if not url or not model:
            raise FCLMDataError("DLC-Bench scoring needs a judge LLM: --judge-url URL --judge-model NAME "
                                "(reference: meta-llama/Meta-Llama-3.1-8B-Instruct served by vLLM)")
        kw = {"timeout": float(opts["judge_timeout"])} if opts.get("judge_timeout") is not None else {}
        judge = JudgeClient(url, model, cache_path=opts.get("judge_cache"), workers=opts.get("judge_workers", 8),
                            max_retries=opts.get("judge_retries", 5), **kw)
    default = opts.get("default_prediction")
    if default is None and opts.get("allow_missing"):
        default = ""
    captions = {k: r.get("text") for k, r in preds.items() if r.get("text") is not None}
    out = evaluate_dlc(captions, gt, judge, default_prediction=default, details=bool(opts.get("details")))
    unknown = sorted(set(preds) - set(gt.qa))
    out["counts"]["unknown_ids"] = len(unknown)
    if unknown:
        out["counts"]["unknown_id_examples"] = unknown[:5]
    if hasattr(judge, "model"):
        out["judge"] = {"model": judge.model, "url": getattr(judge, "url", None),
                        "requests_sent": getattr(judge, "requests_sent", None),
                        "cache_hits": getattr(judge, "cache_hits", None)}
    return out


def _gcg_images_from_samples(samples: Iterable[Sample]):
    from pycocotools import mask as mask_utils

    from ..data.masks import _norm_rle
    from .metrics.gcg import GCGImage, strip_tags

    def rle(s, i):
        if s.objects[i].mask is None:
            raise FCLMDataError(f"GCG sample {s.id}: object {i} has no mask")
        return _norm_rle(s.objects[i].mask)

    images = []
    for s in samples:
        for q in iter_queries(s, "gcg"):
            if "labels" in s.extra:  # GLaMM's GT (gcg_eval): every mask, and its caption GT's labels
                masks = [{"size": list(r["size"]), "counts": r["counts"]} for r in (rle(s, i) for i in range(len(s.objects)))]
                images.append(GCGImage(id=q.id, captions=list(s.extra.get("captions") or [s.caption or ""]),
                                       labels=list(s.extra["labels"]), masks=masks, height=s.height, width=s.width,
                                       crowd=[int(o.extra.get("iscrowd", 0)) for o in s.objects]))
                continue
            groups = [p.object_ids for p in s.phrases] if s.phrases else [[i] for i in range(len(s.objects))]
            masks = []
            for ids in groups:
                rles = [rle(s, i) for i in ids]
                r = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
                masks.append({"size": list(r["size"]), "counts": r["counts"]})
            images.append(GCGImage(id=q.id, captions=[strip_tags(s.caption or "")],
                                   labels=[p.text for p in s.phrases], masks=masks, height=s.height, width=s.width))
    return images


def _score_gcg(gt, book: _Bookkeeping, opts: dict) -> dict:
    from ..data.masks import encode_mask
    from .metrics.gcg import GCGImage, GCGPrediction, evaluate_gcg, extract_phrases, strip_tags

    images = gt if gt and isinstance(gt[0], GCGImage) else _gcg_images_from_samples(gt)
    preds = {}
    for im in images:
        rec = book.get(im.id)
        if rec is None:
            continue
        text = rec.get("text") or ""
        caption = rec.get("caption") if rec.get("caption") is not None else strip_tags(text)
        phrases = rec.get("phrases") if rec.get("phrases") is not None else extract_phrases(text)
        masks = [encode_mask(m) if isinstance(m, np.ndarray) else m for m in rec["masks"]]
        preds[im.id] = GCGPrediction(id=im.id, caption=str(caption), phrases=[str(p) for p in phrases], masks=masks)
    counts = book.finish("images")
    r = evaluate_gcg(images, preds, text_encoder=opts.get("text_encoder"), text_model=opts.get("gcg_text_model"),
                     iou_threshold=opts.get("gcg_iou_threshold", 0.5), text_threshold=opts.get("gcg_text_threshold", 0.5),
                     captions=opts.get("captions", True), protocol=opts.get("protocol") or "reference")
    r["counts"] = {**counts, **r["counts"]}
    return r


def score_predictions(task: str, samples_or_gt, predictions, **opts) -> dict:
    """Score ``predictions`` for ``task`` against the ground truth.

    ``samples_or_gt``: an iterable of :class:`~fclm.data.schema.Sample` (what ``fclm eval`` has), a
    :class:`~fclm.eval.metrics.dlc.DLCBenchGT`, a list of :class:`~fclm.eval.metrics.gcg.GCGImage`,
    or a path (read with :func:`load_ground_truth` using ``dataset`` / ``split``).
    ``predictions``: ``{id: record}`` (records as in the module docstring; masks may be arrays), or
    a prediction file path.

    Options: ``protocol`` (``"reference"``, the default: every rule of the reference script;
    ``"clean"``: exact division, empty/unmatched masks score 0, see docs/evaluation.md),
    ``allow_missing`` (score GT ids without prediction as empty instead of failing),
    ``details`` (per-query values), ``benchmark`` (row label), ``dataset``/``split`` (labels, and
    GT loading for paths); ROC ``sentence_model`` (path) or ``text_encoder``; DLC ``judge`` (object
    with ``complete_many``) or ``judge_url`` + ``judge_model`` [+ ``judge_cache``, ``judge_workers``,
    ``judge_retries``, ``judge_timeout`` (seconds per request)],
    ``default_prediction``; GCG ``gcg_text_model`` (spec, see metrics.text_sim) or ``text_encoder``,
    ``gcg_iou_threshold``, ``gcg_text_threshold``, ``captions`` (False skips METEOR/CIDEr).
    """
    _check_task(task)
    protocol = opts.get("protocol") or "reference"
    if protocol not in SCORE_PROTOCOLS:
        raise FCLMDataError(f"unknown protocol {protocol!r}; expected one of {', '.join(SCORE_PROTOCOLS)}")
    if isinstance(samples_or_gt, (str, os.PathLike)):
        samples_or_gt = load_ground_truth(task, str(samples_or_gt), opts.get("dataset"), opts.get("split"))
    elif not isinstance(samples_or_gt, (list, tuple)) and not hasattr(samples_or_gt, "qa"):
        samples_or_gt = list(samples_or_gt)
    preds = _records(predictions)
    book = _Bookkeeping(preds, bool(opts.get("allow_missing")))
    details = bool(opts.get("details"))
    if task in ("res", "dlres", "reasonseg"):
        out = _score_seg(task, samples_or_gt, book, details, protocol)
    elif task == "muse":
        out = _score_muse(samples_or_gt, book, details, protocol)
    elif task == "roc":
        out = _score_roc(samples_or_gt, book, opts)
    elif task == "dlc":
        out = _score_dlc(samples_or_gt, preds, opts)
    else:
        out = _score_gcg(samples_or_gt, book, opts)
    label = opts.get("benchmark") or ("DLC-Bench" if task == "dlc" and not opts.get("dataset") else None) or " ".join(x for x in (opts.get("dataset") or DEFAULT_DATASET.get(task, task),
                                                            opts.get("split")) if x)
    name = PROTOCOLS[task] + (" (clean)" if protocol == "clean" else "")
    return {"task": task, "benchmark": label, "protocol": name, **out}
