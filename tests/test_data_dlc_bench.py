from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.eval.queries import iter_queries
from test_data_util import rect_mask, rle_str, write_json


def test_dlc_bench(tmp_path):
    d = tmp_path / "dlc_bench"
    write_json(str(d / "annotations.json"), {
        "images": [{"id": 1, "file_name": "sa_1.jpg", "height": 30, "width": 40}],
        "annotations": [
            {"id": 501, "image_id": 1, "bbox": [0, 0, 10, 10], "segmentation": rle_str(rect_mask(30, 40, 0, 0, 10, 10))},
            {"id": 502, "image_id": 1, "bbox": [10, 10, 5, 5], "segmentation": rle_str(rect_mask(30, 40, 10, 10, 15, 15))},
            {"id": 503, "image_id": 1, "bbox": [10, 10, 5, 5], "segmentation": rle_str(rect_mask(30, 40, 10, 10, 15, 15))},
        ]})
    write_json(str(d / "class_names.json"), {"501": "mug", "502": "spoon"})  # 503 has no class
    qa = [{"question": "What colour?", "choices": [["red", 1], ["blue", -1]], "type": "positive"}]
    write_json(str(d / "qa.json"), {"501": qa})
    r = load_dataset("dlc_bench", str(tmp_path))
    (s,) = list(r)
    assert [o.extra["ann_id"] for o in s.objects] == [501, 502]
    assert [o.category for o in s.objects] == ["mug", "spoon"]
    assert s.objects[0].extra["qa"] == qa and s.objects[1].extra["qa"] == []
    assert [rle_area(o.mask) for o in s.objects] == [100, 25]
    assert [q.id for q in iter_queries(s, "dlc")] == ["501", "502"]
    assert r.stats.skipped_objects == {"no class name": 1}
    assert s.image.path.endswith("dlc_bench/images/sa_1.jpg")


def test_dlc_bench_release_folder(tmp_path):
    """The release (git clone of nvidia/DLC-Bench, folder DLC-bench): annotations/ and images/ side by side."""
    from test_data_util import write_image

    rel = tmp_path / "DLC-bench"
    d = rel / "annotations"
    write_json(str(d / "annotations.json"), {
        "images": [{"id": 1, "file_name": "objects365_v2_1.jpg", "height": 30, "width": 40}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [0, 0, 4, 4], "segmentation": rle_str(rect_mask(30, 40, 0, 0, 4, 4))},
                        {"id": 8, "image_id": 99, "bbox": [0, 0, 4, 4], "segmentation": rle_str(rect_mask(30, 40, 0, 0, 4, 4))}]})
    write_json(str(d / "class_names.json"), {"7": "lamp"})
    write_image(str(rel / "images" / "objects365_v2_1.jpg"), 40, 30)
    for where in (rel, d):  # the release folder or its annotations/ folder
        r = load_dataset("dlc_bench", str(tmp_path), bench_dir=str(where), check_images=True)
        (s,) = list(r)
        assert s.image.path == str(rel / "images" / "objects365_v2_1.jpg") and s.objects[0].extra["qa"] == []
        assert r.stats.to_dict()["skipped_objects"] == {"annotation of an image not in the file": 1}


def test_dlc_bench_masks_as_dam_anntomask(tmp_path):
    """DAM reads each region with pycocotools' COCO.annToMask: polygons merged as given, a degenerate
    box plays no part, an empty mask is still a region."""
    import numpy as np
    from pycocotools.coco import COCO

    from fclm.data.masks import decode_rle

    d = tmp_path / "dlc_bench"
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 30, "width": 40}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 0], "area": 1, "iscrowd": 0,
                 "segmentation": [[1.5, 1.0, 20.7, 3.2, 9.9, 18.4], [25.0, 5.0, 35.0, 5.0, 30.0, 15.0]]},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 0, "iscrowd": 0,
                 "segmentation": [[50.0, 50.0, 51.0, 50.0, 51.0, 51.0]]}]}
    write_json(str(d / "annotations.json"), coco)
    write_json(str(d / "class_names.json"), {"1": "kite", "2": "ghost"})
    r = load_dataset("dlc_bench", str(tmp_path))
    (s,) = list(r)
    ref = COCO(str(d / "annotations.json"))
    for ob in s.objects:
        np.testing.assert_array_equal(decode_rle(ob.mask), ref.annToMask(ref.anns[ob.extra["ann_id"]]).astype(bool))
    assert r.stats.notes == {"empty mask (kept, as DAM)": 1} and s.objects[0].box is None
