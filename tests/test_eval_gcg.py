"""GCG metrics (GLaMM protocol): tag stripping, greedy mIoU / recall, AP50 and captions vs references."""
import contextlib
import io
import json

import numpy as np
import pytest

from fclm.data.masks import encode_mask
from fclm.eval.metrics import gcg
from fclm.eval.metrics.gcg import (GCGImage, GCGPrediction, caption_scores, evaluate_gcg, extract_phrases,
                                   greedy_miou, greedy_text_matches, mask_ap50, strip_tags)


from conftest import TableEncoder  # noqa: E402


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return encode_mask(m)


def test_strip_tags_and_phrases_like_glamm():
    t = "<p> A man </p> [SEG] is riding <p> a horse </p> [SEG].\n"
    assert strip_tags(t) == "A man is riding a horse ."
    assert extract_phrases(t) == ["A man", "a horse"]
    assert strip_tags("'quoted'") == "quoted"


def test_greedy_miou_known_answers():
    assert greedy_miou(np.array([[0.9, 0.8], [0.85, 0.1]])) == pytest.approx(0.5)  # greedy, not Hungarian
    assert greedy_miou(np.array([[0.9], [0.9]])) == pytest.approx(0.9)  # duplicate prediction: one pair
    assert greedy_miou(np.zeros((2, 2))) == 0.0
    assert greedy_miou(np.zeros((0, 3))) == 0.0  # no prediction


def test_greedy_text_matches_known_answers():
    ious = np.array([[0.9, 0.6], [0.7, 0.55]])
    assert greedy_text_matches(ious, np.array([[0.9, 0.1], [0.2, 0.8]])) == [(0, 0), (1, 1)]
    assert greedy_text_matches(ious, np.array([[0.9, 0.1], [0.2, 0.3]])) == [(0, 0)]
    # the reference stops at the first failing pair even if a later one would pass
    assert greedy_text_matches(np.array([[0.9, 0], [0, 0.8]]), np.array([[0.1, 0], [0, 0.9]])) == []
    with pytest.raises(IndexError):  # more predicted masks than phrases
        greedy_text_matches(np.array([[0.2, 0.9]]), np.array([[1.0]]))


def _fixture():
    h, w = 20, 20
    images = [
        GCGImage("img1", ["a man rides a horse"], ["a man", "a horse"],
                 [box(h, w, 0, 10, 0, 10), box(h, w, 10, 20, 10, 20)]),
        GCGImage("img2", ["a red car"], ["a red car"], [box(h, w, 0, 20, 0, 10)]),
        GCGImage("img3", ["the sky"], ["the sky"], [box(h, w, 0, 5, 0, 20)]),
    ]
    preds = {
        # exact man; horse mask IoU 50/100; and a duplicate of the man mask
        "img1": GCGPrediction("img1", "a man rides a horse", ["a man", "a horse", "a man"],
                              [box(h, w, 0, 10, 0, 10), box(h, w, 10, 15, 10, 20), box(h, w, 0, 10, 0, 10)]),
        # right place, wrong phrase
        "img2": GCGPrediction("img2", "a blue boat", ["a boat"], [box(h, w, 0, 20, 0, 10)]),
        # img3: no prediction
    }
    return images, preds


def test_evaluate_gcg_miou_and_recall_known_answer():
    images, preds = _fixture()
    enc = TableEncoder({"a man": [1, 0, 0], "a horse": [0, 1, 0], "a red car": [0, 0, 1],
                        "a boat": [0, 1, 0.1], "the sky": [1, 1, 1]})
    r = evaluate_gcg(images, preds, text_encoder=enc, captions=False)
    m = r["metrics"]
    # mIoU: img1 greedy pairs 1.0 (man) and 0.5 (horse) -> 0.75; img2 1.0; img3 0
    assert m["mIoU"] == pytest.approx(100 * (0.75 + 1.0 + 0.0) / 3)
    # recall: img1 man (IoU 1, sim 1) and horse (IoU 0.5, sim 1); img2 phrase sim ~0.1 -> 0 of 1; img3 0
    assert m["Recall"] == pytest.approx(100 * 2 / 4)
    assert r["counts"]["gt_phrases"] == 4 and r["counts"]["predicted_images"] == 2


def test_ap50_matches_pycocotools_glamm_pipeline(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, preds = _fixture()
    got = mask_ap50(images, preds)
    # the reference: GT json on disk, predictions via loadRes, every score 1.0, catIds [1], stats[1]
    from pycocotools import mask as mu
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for k, im in enumerate(images, 1):
        gt["images"].append({"id": k, "height": 20, "width": 20})
        for m in im.masks:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": k, "category_id": 1,
                                      "segmentation": m, "area": float(mu.area(
                                          {"size": m["size"], "counts": m["counts"].encode()})),
                                      "bbox": [0, 0, 1, 1], "iscrowd": 0})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [{"image_id": k, "category_id": 1, "segmentation": m, "score": 1.0}
            for k, im in enumerate(images, 1) if im.id in preds for m in preds[im.id].masks]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(dets), "segm")
        ev.params.catIds = [1]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert got == pytest.approx(100 * ev.stats[1])
    assert 0 < got < 100
    perfect = {im.id: GCGPrediction(im.id, "", [], list(im.masks)) for im in images}
    assert mask_ap50(images, perfect) == pytest.approx(100.0)
    assert mask_ap50(images, {}) == 0.0


def test_caption_scores_match_pycocoevalcap():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs = {"a": ["A man is riding a brown horse on the beach."], "b": ["A red car parked on a street."],
            "c": ["Two dogs play in the snow."]}
    cands = {"a": "A man rides a horse on a beach.", "b": "A blue boat on the water.", "c": "Two dogs play in the snow."}
    got = caption_scores(refs, cands)
    with contextlib.redirect_stdout(io.StringIO()):
        tok = PTBTokenizer()
        g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
        r = tok.tokenize({k: [{"caption": v}] for k, v in cands.items()})
        meteor = gcg.shared_meteor()  # the same pycocoevalcap Meteor class, one Java start for the test
        assert isinstance(meteor, Meteor)
        met, _ = meteor.compute_score(g, r)
        cid, _ = Cider().compute_score(g, r)
    assert got["METEOR"] == pytest.approx(100 * met)
    assert got["CIDEr"] == pytest.approx(100 * cid)
    assert got["METEOR"] > 0 and got["CIDEr"] > 0


def _glamm_reference(gt_masks, pred_masks, gt_labels, dt_labels, table):
    """GLaMM's compute_iou / compute_miou / find_best_matches written out on dense masks."""
    import warnings

    def iou(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.sum(np.logical_and(a, b)) / np.sum(np.logical_or(a, b))  # 0/0 -> nan

    m = np.array([[iou(p, g) for g in gt_masks] for p in pred_masks]).reshape(len(pred_masks), len(gt_masks))
    paired = []
    while m.size > 0 and np.max(m) > 0:
        i = np.unravel_index(np.argmax(m, axis=None), m.shape)
        paired.append(m[i])
        m = np.delete(np.delete(m, i[0], axis=0), i[1], axis=1)
    miou = np.mean(paired) if paired else 0.0
    ious = np.array([[iou(g, p) for p in pred_masks] for g in gt_masks])
    emb = lambda t: np.array(table[t], float) / np.linalg.norm(table[t])  # noqa: E731
    sims = np.array([[emb(a) @ emb(b) for b in dt_labels] for a in gt_labels])
    tp = 0
    while ious.size > 0:
        i = np.unravel_index(np.argmax(ious), ious.shape)
        if ious[i] < 0.5 or sims[i] < 0.5:
            break
        tp += 1
        ious[i[0], :] = 0
        ious[:, i[1]] = 0
        sims[i[0], :] = 0
        sims[:, i[1]] = 0
    return miou, tp


def test_gcg_empty_masks_follow_glamm_nan_rule():
    """Two empty masks have IoU 0/0 = NaN in GLaMM: it stops the mIoU loop (image scores 0) and is
    taken first as a recall match; the clean protocol scores them 0."""
    from pycocotools import mask as mask_utils

    h = w = 12
    dense = lambda r: mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()})  # noqa: E731
    empty = encode_mask(np.zeros((h, w), np.uint8))
    g1, p1 = box(h, w, 0, 6, 0, 6), box(h, w, 0, 6, 0, 4)
    table = {"a dog": [1, 0], "a cat": [0.9, 0.1], "nothing": [0.8, 0.3]}
    images = [GCGImage("x", ["a dog"], ["a dog", "nothing"], [g1, empty], h, w)]
    preds = {"x": GCGPrediction("x", "a dog", ["a cat", "nothing"], [p1, empty])}
    miou, tp = _glamm_reference([dense(g1), dense(empty)], [dense(p1), dense(empty)],
                                ["a dog", "nothing"], ["a cat", "nothing"], table)
    r = evaluate_gcg(images, preds, text_encoder=TableEncoder(table), captions=False)
    assert r["metrics"]["mIoU"] == pytest.approx(100 * miou) and miou == 0.0
    assert r["metrics"]["Recall"] == pytest.approx(100 * tp / 2) and tp == 2  # NaN pair + real pair
    c = evaluate_gcg(images, preds, text_encoder=TableEncoder(table), captions=False, protocol="clean")
    assert c["metrics"]["mIoU"] == pytest.approx(100 * (24 / 36))  # only the real pair
    assert c["metrics"]["Recall"] == pytest.approx(100 * 1 / 2)  # the 24/36 pair: IoU >= 0.5, sim 0.99


def test_ap50_keeps_the_mask_gt_iscrowd_flag(tmp_path):
    """A crowd GT annotation is ignored by COCOeval: read from GLaMM's mask-GT file it stays crowd."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from fclm.eval.metrics.gcg import load_gcg_gt

    h = w = 20
    m1, m2 = box(h, w, 0, 10, 0, 10), box(h, w, 10, 20, 10, 20)
    mask_gt = {"images": [{"id": "a", "height": h, "width": w}], "categories": [{"id": 1, "name": "object"}],
               "annotations": [{"id": 1, "image_id": "a", "category_id": 1, "segmentation": m1, "iscrowd": 0,
                                "area": 100.0, "bbox": [0, 0, 10, 10]},
                               {"id": 2, "image_id": "a", "category_id": 1, "segmentation": m2, "iscrowd": 1,
                                "area": 100.0, "bbox": [10, 10, 10, 10]}]}
    cap_gt = {"images": [{"id": "a"}], "annotations": [{"id": 1, "image_id": "a", "caption": "x", "labels": ["x", "y"]}]}
    (tmp_path / "val_gcg_coco_mask_gt.json").write_text(json.dumps(mask_gt))
    (tmp_path / "val_gcg_coco_caption_gt.json").write_text(json.dumps(cap_gt))
    images = load_gcg_gt(str(tmp_path), "val")
    assert images[0].crowd == [0, 1]
    preds = {"a": GCGPrediction("a", "x", ["x"], [m1, box(h, w, 0, 5, 15, 20)])}
    dets = [{"image_id": "a", "category_id": 1, "segmentation": m, "score": 1.0} for m in preds["a"].masks]
    with contextlib.redirect_stdout(io.StringIO()):  # GLaMM's evaluate.py steps on the file itself
        coco = COCO(str(tmp_path / "val_gcg_coco_mask_gt.json"))
        ev = COCOeval(coco, coco.loadRes(dets), "segm")
        ev.params.catIds = [1]
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert mask_ap50(images, preds) == pytest.approx(100 * ev.stats[1])
