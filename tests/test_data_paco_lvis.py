from fclm.data.formats.coco import clean_category
from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.eval.queries import iter_queries
from test_data_util import rect_mask, rle_str, square, write_json


def test_clean_category():
    assert clean_category("bow_(weapon)") == "bow"
    assert clean_category("trash_can:lid") == "trash can:lid"
    assert clean_category("bottle_(container):cap_(bottle)") == "bottle:cap"


def test_paco_lvis_train(tmp_path):
    write_json(str(tmp_path / "paco" / "paco_lvis_v1_train.json"), {
        "images": [{"id": 9, "file_name": "train2017/000000000009.jpg", "height": 30, "width": 40},
                   {"id": 10, "file_name": "000000000010.jpg", "height": 30, "width": 40},
                   {"id": 11, "file_name": "000000000011.jpg", "height": 30, "width": 40}],  # no anns: not listed
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10, 10)]},
            {"id": 2, "image_id": 9, "category_id": 2, "bbox": [0, 0, 5, 4], "segmentation": [square(0, 0, 5, 4)]},
            {"id": 3, "image_id": 9, "category_id": 77, "bbox": [0, 0, 5, 4], "segmentation": [square(0, 0, 5, 4)]},
            {"id": 4, "image_id": 10, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "mug_(drinking_vessel)"}, {"id": 2, "name": "mug_(drinking_vessel):handle"}],
    })
    r = load_dataset("paco_lvis", str(tmp_path))
    assert len(r) == 2
    (s,) = list(r)
    assert s.image.path.endswith("coco/train2017/000000000009.jpg")
    assert [o.category for o in s.objects] == ["mug", "mug:handle"]
    assert [rle_area(o.mask) for o in s.objects] == [100, 20]
    assert s.objects[1].box == [0.0, 0.0, 5.0, 4.0]
    assert r.stats.skipped == {"no valid objects": 1}
    assert r.stats.skipped_objects == {"unknown category": 1, "empty mask": 1}


def test_roc_eval_files(tmp_path):
    recs = [
        {"file_name": "000000000001.jpg", "height": 30, "width": 40, "categories": ["dog", "frisbee"],
         "annotations": [{"segmentation": [square(0, 0, 10, 10)]},
                         {"segmentation": rle_str(rect_mask(30, 40, 20, 20, 25, 30))}]},
        {"file_name": "000000000002.jpg", "height": 30, "width": 40, "categories": ["cat"],
         "annotations": [{"segmentation": [square(0, 0, 2, 2)]}, {"segmentation": [square(0, 0, 3, 3)]}]},
    ]
    write_json(str(tmp_path / "paco" / "lvis_val_1k_category.json"), recs)
    r = load_dataset("roc_lvis", str(tmp_path))
    (s,) = list(r)
    assert s.image.path.endswith("coco/val2017/000000000001.jpg")
    qs = list(iter_queries(s, "roc"))
    assert [(q.label, q.region_ids) for q in qs] == [("dog", [0]), ("frisbee", [1])]
    assert rle_area(s.objects[1].mask) == 50
    assert r.stats.skipped == {"categories/annotations mismatch": 1}
    write_json(str(tmp_path / "paco" / "paco_val_1k_category.json"), recs[:1])
    assert load_dataset("roc_paco", str(tmp_path)).records[0]["categories"] == ["dog", "frisbee"]
