from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.eval.queries import iter_queries
from test_data_util import rect_mask, rle_str, square, write_image, write_json

H, W = 30, 40
ANN = "GranDf/annotations/train/"


def _r(x0, y0, x1, y1):
    return rle_str(rect_mask(H, W, x0, y0, x1, y1))


def test_grandf_groundings(tmp_path):
    cap = '"A man holds a dog near a tree."'  # GLaMM strips the quotes: spans are shifted by 1
    recs = [
        {"file_name": "img1.jpg", "height": H, "width": W, "caption": cap,
         "groundings": {"a dog": {"token_positives": [13, 18], "rle_masks": [_r(0, 0, 5, 5), _r(10, 10, 12, 12)]},
                        "A man": {"token_positives": [1, 6], "rle_masks": [_r(20, 0, 30, 10)]}}},
        {"file_name": "img2.jpg", "height": H, "width": W, "caption": "short",
         "groundings": {"x": {"token_positives": [3, 50], "rle_masks": [_r(0, 0, 5, 5)]}}},
        {"file_name": "img3.jpg", "height": H, "width": W, "caption": "a b c", "groundings": {}},
    ]
    write_json(str(tmp_path / ANN / "GranDf_HA_GCG_train.json"), recs)
    r = load_dataset("grandf", str(tmp_path))
    (s,) = list(r)
    assert s.caption == "A man holds a dog near a tree."
    assert [(p.text, p.span, p.object_ids) for p in s.phrases] == [("A man", (0, 5), [1]), ("a dog", (12, 17), [0])]
    assert rle_area(s.objects[0].mask) == 25 + 4  # union of the phrase's masks
    assert s.image.path.endswith("GranDf/GranDf_HA_images/train/img1.jpg")
    assert r.stats.skipped == {"bad phrase span": 1, "no groundings": 1}
    assert [q.id for q in iter_queries(s, "gcg")] == [s.id]


def test_openpsg_val(tmp_path):
    write_json(str(tmp_path / ANN / "OpenPsgGCG_val.json"), [
        {"file_name": "000000000001.jpg", "height": H, "width": W, "caption": "A cat on grass.",
         "groundings": {"A cat": {"token_positives": [0, 5], "rle_masks": [_r(0, 0, 4, 4)]}}}])
    (s,) = list(load_dataset("openpsg", str(tmp_path), "val"))
    assert s.image.path.endswith("coco/train2017/000000000001.jpg") and s.split == "val"


def test_refcocog_gcg(tmp_path):
    write_image(str(tmp_path / "coco" / "train2014" / "COCO_train2014_1.jpg"), W, H)
    recs = [{"k1": {"img_file_name": "COCO_train2014_1.jpg", "caption": "The Man in red stands by the red car.",
                    "refs": [{"sentence": "the red car", "segmentation": [square(0, 0, 10, 10)]},
                             {"sentence": "man in red", "segmentation": [square(20, 0, 30, 5)]},
                             {"sentence": "a unicorn", "segmentation": [square(0, 0, 2, 2)]}]}},
            {"k2": {"img_file_name": "missing.jpg", "caption": "x", "refs": []}}]
    write_json(str(tmp_path / ANN / "RefCOCOg_GCG_val.json"), recs)
    r = load_dataset("refcocog_gcg", str(tmp_path), "val")
    (s,) = list(r)
    assert (s.height, s.width) == (H, W)
    assert [(p.text, p.object_ids) for p in s.phrases] == [("Man in red", [0]), ("the red car", [1])]
    assert [rle_area(o.mask) for o in s.objects] == [50, 100]
    assert r.stats.skipped_objects == {"phrase not in caption": 1}
    assert r.stats.skipped == {"image not found": 1}


def test_flickr_gcg(tmp_path):
    h, w = 40, 50

    def _r(x0, y0, x1, y1):
        return rle_str(rect_mask(h, w, x0, y0, x1, y1))

    cap = "Two dogs chase a ball on the beach."
    anns = [
        {"id": 1, "image_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "tokens_positive": [[0, 8]], "sam_mask": _r(0, 0, 10, 10)},
        {"id": 2, "image_id": 7, "bbox": [10, 0, 10, 10], "area": 100, "tokens_positive": [[0, 8]], "sam_mask": _r(10, 0, 20, 10)},
        {"id": 3, "image_id": 7, "bbox": [0, 20, 6, 5], "area": 30, "tokens_positive": [[15, 21]], "sam_mask": _r(0, 20, 6, 25)},
        {"id": 4, "image_id": 7, "bbox": [0, 0, 0, 5], "area": 0, "tokens_positive": [[29, 34]], "sam_mask": _r(0, 0, 1, 5)},
    ]
    write_json(str(tmp_path / ANN / "flickr_mergedGT_GCG_train.json"), {
        "images": [{"id": 7, "file_name": "100.jpg", "height": h, "width": w, "caption": cap},
                   {"id": 8, "file_name": "101.jpg", "height": h, "width": w, "caption": "a dog"},
                   {"id": 9, "file_name": "102.jpg", "height": 20, "width": w, "caption": "a b c d"}],
        "annotations": anns})
    r = load_dataset("flickr_gcg", str(tmp_path))
    (s,) = list(r)
    assert [(p.text, p.object_ids) for p in s.phrases] == [("Two dogs", [0, 1]), ("a ball", [2])]
    assert r.stats.skipped_objects == {"degenerate box": 1}
    assert r.stats.skipped == {"short caption": 1, "image too small": 1}
    assert s.image.path.endswith("flickr30k/images/100.jpg")


def test_gcg_eval(tmp_path):
    d = tmp_path / "GranDf" / "annotations" / "val_test"
    imgs = [{"id": "img_a", "file_name": "img_a.jpg", "height": H, "width": W}]
    write_json(str(d / "val_gcg_coco_mask_gt.json"), {"images": imgs, "annotations": [
        {"id": 1, "image_id": "img_a", "segmentation": _r(0, 0, 5, 5)},
        {"id": 2, "image_id": "img_a", "segmentation": _r(5, 5, 10, 10)}]})
    write_json(str(d / "val_gcg_coco_caption_gt.json"), {"images": imgs, "annotations": [
        {"id": 1, "image_id": "img_a", "caption": "A boy with a kite.", "labels": ["A boy", "a kite"]}]})
    (s,) = list(load_dataset("gcg_eval", str(tmp_path), "val"))
    assert s.id == "img_a" and s.caption == "A boy with a kite."
    assert [(p.text, p.span) for p in s.phrases] == [("A boy", (0, 5)), ("a kite", (11, 17))]
    assert [rle_area(o.mask) for o in s.objects] == [25, 25]


def test_gcg_eval_loader_scores_like_glamms_files(tmp_path):
    """Through the loader (fclm eval) the GCG ground truth is GLaMM's: every mask (an empty one too)
    and the caption GT's labels, even one not found in the caption; same numbers as reading the files."""
    import numpy as np

    from conftest import TableEncoder
    from fclm.data.masks import encode_mask
    from fclm.eval.score import score_predictions

    d = tmp_path / "GranDf" / "annotations" / "val_test"
    imgs = [{"id": "img_a", "file_name": "img_a.jpg", "height": H, "width": W}]
    empty = encode_mask(np.zeros((H, W), np.uint8))
    write_json(str(d / "val_gcg_coco_mask_gt.json"), {"images": imgs, "annotations": [
        {"id": 1, "image_id": "img_a", "segmentation": _r(0, 0, 5, 5)},
        {"id": 2, "image_id": "img_a", "segmentation": _r(5, 5, 10, 10)},
        {"id": 3, "image_id": "img_a", "segmentation": empty}]})
    write_json(str(d / "val_gcg_coco_caption_gt.json"), {"images": imgs, "annotations": [
        {"id": 1, "image_id": "img_a", "caption": "A boy with a kite.", "labels": ["A boy", "a kite", "sky blue"]}]})
    r = load_dataset("gcg_eval", str(tmp_path), "val")
    (s,) = list(r)
    assert len(s.objects) == 3 and r.stats.notes == {"empty mask (kept, scored as GLaMM)": 1}
    enc = TableEncoder({"A boy": [1, 0, 0], "a kite": [0, 1, 0], "sky blue": [0, 0, 1], "boy": [1, 0.1, 0]})
    pred = {"img_a": {"caption": "A boy", "phrases": ["boy", "a kite"], "masks": [_r(0, 0, 5, 5), _r(5, 5, 10, 9)]}}
    via_loader = score_predictions("gcg", [s], pred, text_encoder=enc, captions=False)
    via_files = score_predictions("gcg", str(d), pred, text_encoder=enc, captions=False, split="val")
    assert via_loader["metrics"] == via_files["metrics"]
    assert via_loader["counts"]["gt_phrases"] == 3
