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


def test_roc_images_masks_and_counts_as_osprey(tmp_path):
    """Osprey joins file_name to one folder of all COCO-2017 images; without --image-dir we find
    train2017 images too. Masks equal Osprey's annToMask (frPyObjects + merge); empty ones are kept."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from fclm.data.masks import decode_rle
    from test_data_util import write_image

    tri = [[1.5, 1.0, 20.7, 3.2, 9.9, 18.4], [15.0, 15.0, 25.0, 15.0, 25.0, 25.0, 15.0, 25.0]]
    recs = [{"file_name": "000000000001.jpg", "height": 30, "width": 40, "categories": ["bow_(weapon)", "dog:head"],
             "annotations": [{"segmentation": tri}, {"segmentation": [[50.0, 50.0, 51.0, 50.0, 51.0, 51.0]]}]},
            {"file_name": "000000000002.jpg", "height": 30, "width": 40, "categories": ["cat"],
             "annotations": [{"segmentation": [square(0, 0, 4, 4)]}]}]
    write_json(str(tmp_path / "paco" / "lvis_val_1k_category.json"), recs)
    write_image(str(tmp_path / "coco" / "train2017" / "000000000001.jpg"), 40, 30)
    write_image(str(tmp_path / "coco" / "val2017" / "000000000002.jpg"), 40, 30)
    r = load_dataset("roc_lvis", str(tmp_path), check_images=True)
    a, b = list(r)
    assert a.image.path == str(tmp_path / "coco" / "train2017" / "000000000001.jpg")
    assert b.image.path == str(tmp_path / "coco" / "val2017" / "000000000002.jpg")
    assert r.stats.objects == 3 and r.stats.notes == {"empty mask (kept, scored as Osprey)": 1}
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(tri, 30, 40)))
    np.testing.assert_array_equal(decode_rle(a.objects[0].mask), want.astype(bool))
    assert [q.label for q in iter_queries(a, "roc")] == ["bow_(weapon)", "dog:head"]  # raw: the metric cleans
    flat = tmp_path / "all_coco"
    (s, _) = list(load_dataset("roc_lvis", str(tmp_path), image_dir=str(flat)))
    assert s.image.path == str(flat / "000000000001.jpg")
