"""Where a quickstart model's grounding fails, on held-out synthetic scenes (issue 14).

    python benchmarks/grounding_diagnosis.py MODEL_DIR [--res-predictions FILE] [--scenes 30]

Two reports:

* **`<pos>` self-reconstruction**: every object's `<pos>` code (the position branch on its true
  mask) decoded back by the SAM mask decoder, as L_self does in training. Mean IoU with the object,
  and how many decodes cover more than half of two or more objects ("multi": the decoder segmented
  every object of that shape instead of the one the code names). With ``look_prompt`` also without
  the look token (SAM's "not a point" in its place, as in L_self's look dropout).
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


def coverage(pred: np.ndarray, masks: np.ndarray) -> list[float]:
    """Share of each object's pixels inside ``pred``; ``masks`` ``(N, H, W)`` bool."""
    return [float((pred & m).sum()) / max(1, int(m.sum())) for m in masks]


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """The RES metric's per-query IoU (``fclm.eval.metrics.seg``, LISA's rule)."""
    from fclm.eval.metrics.seg import REFERENCE_EPS, intersection_union, iou_from

    return iou_from(*intersection_union(pred, gt), eps=REFERENCE_EPS)


def expression_kind(text: str) -> str:
    """"position" (names a place of the 3×3 grid), "category" (two words: "the star") or "attributes"."""
    from fclm.data.synthetic import POSITION_PHRASE

    if any(p in text for p in POSITION_PHRASE.values()):
        return "position"
    return "category" if len(text.split()) == 2 else "attributes"


def res_by_kind(samples, scene_masks: list[np.ndarray], predictions: dict[str, dict]) -> dict[str, dict]:
    """Per expression kind: n, mean IoU (%), outcome counts and multi-cover count. ``scene_masks``:
    ``object_masks(sample)`` of each sample."""
    from fclm.data.masks import decode_rle
    from fclm.eval.queries import iter_queries

    rows: dict[str, list] = {}
    for s, masks in zip(samples, scene_masks):
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


def self_reconstruction(model, processor, samples, scene_masks: list[np.ndarray], with_look: bool = True) -> dict:
    """Mean IoU (%) of every object's decoded `<pos>` code, and how many decodes cover 2+ objects.
    ``with_look=False`` (``look_prompt``): the look token is dropped."""
    import torch

    from fclm.model.mask_decoding import decode_masks, sam_image_embeddings
    from fclm.model.modeling_fclm import appearance_of
    from fclm.model.processing_fclm import sam_preprocess

    ious, multi = [], 0
    for s, masks in zip(samples, scene_masks):
        pixels, valid = sam_preprocess(s.image.open(), processor.sam_image_size)  # SAM's input only
        with torch.no_grad():
            px = torch.from_numpy(pixels)[None]
            emb = sam_image_embeddings(model.sam, px)
            objects, zeros = list(torch.from_numpy(masks)), torch.zeros(len(masks), dtype=torch.long)
            appearance = appearance_of(model.appearance_source(px, torch.tensor([valid]), zeros[:1]), zeros)
            t_pos, _ = model.region_extractor.encode_position(objects, emb.dtype, appearance=appearance)
            looks = model.region_extractor.encode_look(objects, appearance) if model.config.look_prompt else None
            logits = decode_masks(model.sam, model.seg_projector(t_pos), emb, zeros, torch.tensor([valid]),
                                  torch.tensor([[s.height, s.width]]), looks=looks,
                                  look_dropout=0.0 if with_look else 1.0)
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

    from fclm.data.synthetic import generate_scenes, object_masks
    from fclm.model.builders import load_fclm

    model, processor = load_fclm(args.model)
    model.eval()
    samples = generate_scenes(args.scenes, "test", seed=0)
    scene_masks = [object_masks(s) for s in samples]  # decoded once, read by both reports
    report = {"self_reconstruction": self_reconstruction(model, processor, samples, scene_masks)}
    r = report["self_reconstruction"]
    print(f"<pos> self-reconstruction: {r['n']} objects, IoU {r['IoU']:.1f}, {r['multi']} decodes cover 2+ objects")
    if model.config.look_prompt:
        r = report["self_reconstruction_without_look"] = self_reconstruction(model, processor, samples, scene_masks,
                                                                               with_look=False)
        print(f"  without the look token: IoU {r['IoU']:.1f}, {r['multi']} decodes cover 2+ objects")
    if args.res_predictions:
        with open(args.res_predictions) as f:
            preds = {rec["id"]: rec for rec in map(json.loads, filter(str.strip, f))}
        report["res"] = res_by_kind(samples, scene_masks, preds)
        print("\n| RES expressions | n | gIoU | covers: the target alone / the target and others / only others / "
              "nothing |\n|---|---|---|---|")
        for kind, v in report["res"].items():
            o = v["outcomes"]
            print(f"| {kind} | {v['n']} | {v['IoU']:.1f} | " + " / ".join(
                str(o.get(k, 0)) for k in ("target only", "target and others", "others", "none")) + " |")
    return report


if __name__ == "__main__":
    main()
