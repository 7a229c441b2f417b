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
