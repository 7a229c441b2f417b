"""Where a quickstart model's grounding fails, on held-out synthetic scenes (issue 14).

    python benchmarks/grounding_diagnosis.py MODEL_DIR [--res-predictions FILE] [--scenes 30]

Two reports:

* **`<pos>` self-reconstruction**: every object's `<pos>` code (the position branch on its true
  mask) decoded back by the SAM mask decoder, as L_self does in training. Mean IoU with the object,
  and how many decodes cover more than half of two or more objects ("multi": the decoder segmented
  every object of that shape instead of the one the code names).
* **RES by expression kind** (with ``--res-predictions``, the ``predictions.jsonl`` that ``fclm eval``
  or the quickstart writes under ``eval/res``): position phrases ("the star in the top left"),
  category-only expressions ("the star") and attribute expressions (the rest). Per kind: mean IoU,
  and how many predictions cover the target alone, the target and other objects, only other
  objects, or nothing (a mask covers an object when it holds more than half of its pixels).

The scenes are ``generate_scenes(N, "test", seed=0)``, the quickstart's held-out scenes.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

COVER = 0.5  # a mask "covers" an object when it holds more than half of the object's pixels


def coverage(pred: np.ndarray, masks: list[np.ndarray]) -> list[float]:
    """Share of each object's pixels inside ``pred``."""
    return [float((pred & m).sum()) / max(1, int(m.sum())) for m in masks]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def expression_kind(text: str) -> str:
    """"position" (names a place of the 3×3 grid), "category" (two words: "the star") or "attributes"."""
    from fclm.data.synthetic import POSITION_PHRASE

    if any(p in text for p in POSITION_PHRASE.values()):
        return "position"
    return "category" if len(text.split()) == 2 else "attributes"


def res_by_kind(samples, predictions: dict[str, dict]) -> dict[str, dict]:
    """Per expression kind: n, mean IoU (%), outcome counts and multi-cover count."""
    from fclm.data.masks import decode_rle
    from fclm.eval.queries import iter_queries

    rows: dict[str, list] = {}
    for s in samples:
        masks = [decode_rle(o.mask).astype(bool) for o in s.objects]
        for q in iter_queries(s, "res"):
            target = q.target_ids[0]
            pred = np.zeros_like(masks[target])
            for m in predictions.get(q.id, {}).get("masks") or []:
                pred |= decode_rle(m).astype(bool)
            covered = [i for i, c in enumerate(coverage(pred, masks)) if c > COVER]
            if target in covered:
                outcome = "target only" if len(covered) == 1 else "target and others"
            else:
                outcome = "others" if covered else "none"
            rows.setdefault(expression_kind(q.text), []).append((iou(pred, masks[target]), outcome, len(covered)))
    return {k: {"n": len(v), "IoU": 100 * float(np.mean([r[0] for r in v])),
                "outcomes": dict(Counter(r[1] for r in v)), "multi": sum(r[2] > 1 for r in v)}
            for k, v in sorted(rows.items())}


def self_reconstruction(model, processor, samples) -> dict:
    """Mean IoU (%) of every object's decoded `<pos>` code, and single / multi-cover counts."""
    import torch

    from fclm.data.masks import decode_rle
    from fclm.data.schema import Example
    from fclm.model.mask_decoding import decode_masks, sam_image_embeddings

    ious, multi = [], 0
    for s in samples:
        masks = [decode_rle(o.mask).astype(bool) for o in s.objects]
        batch = processor.normalize_images(processor([Example("roc", s, "<region>", "x", region_ids=[0])]))
        with torch.no_grad():
            emb = sam_image_embeddings(model.sam, batch["sam_pixel_values"])
            t_pos, _ = model.region_extractor.encode_position([torch.from_numpy(m) for m in masks], emb.dtype)
            logits = decode_masks(model.sam, model.seg_projector(t_pos), emb, torch.zeros(len(masks), dtype=torch.long),
                                  batch["sam_valid_sizes"], batch["original_sizes"])
        for i, lg in enumerate(logits):
            pred = (lg > 0).numpy()
            ious.append(iou(pred, masks[i]))
            multi += sum(c > COVER for c in coverage(pred, masks)) > 1
    return {"n": len(ious), "IoU": 100 * float(np.mean(ious)), "multi": multi}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--res-predictions", help="eval/res/predictions.jsonl of the same model")
    ap.add_argument("--scenes", type=int, default=30)
    args = ap.parse_args(argv)

    from fclm.data.synthetic import generate_scenes
    from fclm.model.builders import load_fclm

    model, processor = load_fclm(args.model)
    model.eval()
    samples = generate_scenes(args.scenes, "test", seed=0)
    report = {"self_reconstruction": self_reconstruction(model, processor, samples)}
    r = report["self_reconstruction"]
    print(f"<pos> self-reconstruction: {r['n']} objects, IoU {r['IoU']:.1f}, {r['multi']} decodes cover 2+ objects")
    if args.res_predictions:
        with open(args.res_predictions) as f:
            preds = {rec["id"]: rec for rec in map(json.loads, filter(str.strip, f))}
        report["res"] = res_by_kind(samples, preds)
        print("\n| RES expressions | n | gIoU | covers: the target alone / the target and others / only others / "
              "nothing |\n|---|---|---|---|")
        for kind, v in report["res"].items():
            o = v["outcomes"]
            print(f"| {kind} | {v['n']} | {v['IoU']:.1f} | " + " / ".join(
                str(o.get(k, 0)) for k in ("target only", "target and others", "others", "none")) + " |")
    return report


if __name__ == "__main__":
    main()
