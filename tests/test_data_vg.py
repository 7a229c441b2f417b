import pytest

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from test_data_util import square, write_json


def _vg(tmp_path, with_mask):
    anns = [
        {"id": 1, "image_id": 5, "bbox": [0, 0, 10, 10], "caption": "a red ball"},
        {"id": 2, "image_id": 5, "bbox": [5, 5, 0, 10], "caption": "zero width"},  # degenerate
        {"id": 3, "image_id": 5, "bbox": [100, 100, 10, 10], "caption": "outside"},  # degenerate after clip
        {"id": 4, "image_id": 5, "bbox": [2, 2, 4, 4], "caption": "  "},  # no caption
        {"id": 5, "image_id": 6, "bbox": [0, 0, 0.5, 3], "caption": "thin"},  # only object: degenerate
    ]
    if with_mask:
        anns[0]["segmentation"] = [square(0, 0, 10, 10)]
    write_json(str(tmp_path / "vg" / "vg_train_with_mask.json"), {
        "images": [{"id": 5, "file_name": "VG_100K/5.jpg", "height": 30, "width": 40},
                   {"id": 6, "file_name": "6.jpg", "height": 30, "width": 40}],
        "annotations": anns})


@pytest.mark.parametrize("with_mask", [True, False])
def test_vg(tmp_path, with_mask):
    _vg(tmp_path, with_mask)
    r = load_dataset("vg", str(tmp_path))
    (s,) = list(r)
    assert s.image.path.endswith("vg/images/VG_100K/5.jpg")
    assert len(s.objects) == 1 and s.objects[0].expressions == ["a red ball"]
    assert s.objects[0].box == [0.0, 0.0, 10.0, 10.0]
    assert (rle_area(s.objects[0].mask) == 100) if with_mask else s.objects[0].mask is None
    assert r.stats.skipped_objects == {"degenerate box": 3, "no caption": 1}
    assert r.stats.skipped == {"no valid objects": 1}


def test_vg_osprey_rules_ignore_flag_and_mask_over_box(tmp_path):
    write_json(str(tmp_path / "vg" / "vg_train_with_mask.json"), {
        "images": [{"id": 5, "file_name": "5.jpg", "height": 30, "width": 40}],
        "annotations": [
            {"id": 1, "image_id": 5, "bbox": [0, 0, 10, 10], "caption": "kept", "segmentation": [square(0, 0, 10, 10)]},
            {"id": 2, "image_id": 5, "bbox": [0, 0, 10, 10], "caption": "flagged", "ignore": True,
             "segmentation": [square(0, 0, 10, 10)]},
            {"id": 3, "image_id": 5, "bbox": [5, 5, 0, 0], "caption": "bad box, good mask",
             "segmentation": [square(20, 20, 25, 25)]}]})
    r = load_dataset("vg", str(tmp_path))
    (s,) = list(r)
    assert [o.expressions[0] for o in s.objects] == ["kept", "bad box, good mask"]
    assert rle_area(s.objects[1].mask) == 25 and s.objects[1].box is None
    assert r.stats.skipped_objects == {"ignore flag (skipped, as Osprey)": 1}
