import pytest
from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.eval.queries import iter_queries
from test_data_util import square, write_json


def test_muse(tmp_path):
    a1 = {"id": 1, "category_id": 3, "category_name": "cup", "rephrased_name": "the mug",
          "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10, 10)]}
    a2 = {"id": 2, "category_id": 4, "category_name": "dining_table", "bbox": [10, 10, 20, 10],
          "segmentation": [square(10, 10, 30, 20)]}
    recs = [
        {"file_name": "000000000001.jpg", "height": 30, "width": 40, "ann_list": [a1, a2],
         "questions": ["Where can I put my drink?", "What holds hot coffee?"],
         "answers": [[a1, a2], [0]],
         "text_answers": ["The {seg} on the {seg}.", "The {seg}."]},
        {"coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg", "height": 30, "width": 40,
         "ann_list": [a1], "questions": ["q"], "answers": [[a1]], "text_answers": ["no placeholder"]},
        {"file_name": "x.jpg", "height": 30, "width": 40, "ann_list": [a1], "questions": ["q1", "q2"],
         "answers": [[a1]]},
        {"file_name": "y.jpg", "height": 0, "width": 40, "ann_list": [a1], "questions": ["q"], "answers": [[0]]},
    ]
    write_json(str(tmp_path / "muse" / "muse_val.json"), recs)
    r = load_dataset("muse", str(tmp_path), "val")
    samples = list(r)
    assert len(samples) == 2  # a text answer without placeholders only loses its text (PixelLM scores it)
    assert r.stats.skipped == {"answers/questions mismatch": 1, "invalid image size": 1}
    assert r.stats.notes == {"text answer placeholder mismatch (text answer dropped)": 1}
    assert samples[1].questions[0].answer is None
    s = samples[0]
    assert s.image.path.endswith("coco/train2014/000000000001.jpg")  # PixelLM: file_name → train2014
    assert [o.category for o in s.objects] == ["cup", "dining table"]
    assert s.objects[0].expressions == ["the mug"]
    assert [rle_area(o.mask) for o in s.objects] == [100, 200]
    assert [q.target_ids for q in s.questions] == [[0, 1], [0]]
    assert s.questions[0].answer == "The {seg} on the {seg}." and s.questions[0].kind == "multi"
    assert [q.id for q in iter_queries(s, "muse")] == [f"{s.id}#q0", f"{s.id}#q1"]


def test_muse_coco_url_path(tmp_path):
    a1 = {"category_name": "cup", "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10, 10)]}
    write_json(str(tmp_path / "muse" / "muse_test_many.json"), [
        {"coco_url": "http://images.cocodataset.org/val2017/000000000002.jpg", "height": 30, "width": 40,
         "ann_list": [a1], "questions": ["q"], "answers": [[a1]]}])
    (s,) = list(load_dataset("muse", str(tmp_path), "test_many"))
    assert s.image.path.endswith("coco/val2017/000000000002.jpg") and s.questions[0].answer is None


def test_muse_gt_follows_pixellm_sum_and_empty_masks(tmp_path):
    """PixelLM's val loader: each answer's own segmentation, polygons summed (value-2 pixels are not
    target for LISA's IoU), an empty mask kept and scored (an empty prediction matched to it: 1.0)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from fclm.data.masks import encode_mask
    from fclm.eval.score import score_predictions

    h, w = 20, 24
    over = {"id": 1, "category_name": "cup", "bbox": [0, 0, 12, 12],
            "segmentation": [square(0, 0, 12, 12), square(6, 6, 18, 16)]}
    empty = {"id": 2, "category_name": "ghost", "bbox": [0, 0, 1, 1], "segmentation": [[30.0, 30.0, 31.0, 30.0, 31.0, 31.0]]}
    write_json(str(tmp_path / "muse" / "muse_val.json"), [
        {"file_name": "a.jpg", "height": h, "width": w, "ann_list": [over, empty],
         "questions": ["q0"], "answers": [[over, empty]]}])
    r = load_dataset("muse", str(tmp_path), "val")
    (s,) = list(r)
    assert len(s.objects) == 2 and rle_area(s.objects[1].mask) == 0  # kept, not dropped
    # PixelLM's GT, written out: frPyObjects + decode + sum(axis=2) as uint8
    gts = [mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w)).sum(axis=2).astype(np.uint8)
           for a in (over, empty)]
    pred0 = np.zeros((h, w), np.uint8)
    pred0[0:16, 0:16] = 1
    pred1 = np.zeros((h, w), np.uint8)
    # matched pairs: (pred0, gt0) and (pred1 empty, gt1 empty); histc counts only value-1 GT pixels
    i0 = int(((pred0 == 1) & (gts[0] == 1)).sum())
    u0 = int((pred0 == 1).sum() + (gts[0] == 1).sum()) - i0
    acc = i0 / (u0 + 1e-5) + 1.0  # the empty/empty pair: U == 0 → 1.0
    preds = {f"{s.id}#q0": {"masks": [encode_mask(pred0), encode_mask(pred1)]}}
    got = score_predictions("muse", [s], preds)["metrics"]
    assert got["gIoU"] == pytest.approx(100 * acc / 2, rel=1e-9)
    assert got["cIoU"] == pytest.approx(100 * i0 / (u0 + 1e-10), rel=1e-9)
