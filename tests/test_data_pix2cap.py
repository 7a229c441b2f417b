import numpy as np
from PIL import Image

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import decode_rle
from test_data_util import write_json


def _png(path, ids):
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def test_pix2cap(tmp_path):
    ids = np.zeros((20, 30), dtype=np.int64)
    ids[0:10, 0:10] = 300  # > 255: needs the G channel
    ids[10:20, 5:30] = 70000  # needs the B channel
    ids[0:2, 20:30] = 7
    _png(tmp_path / "coco" / "panoptic_val2017" / "000000000001.png", ids)
    write_json(str(tmp_path / "pix2cap" / "pix2cap_coco_val.json"), {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 20, "width": 30},
                   {"id": 2, "file_name": "000000000002.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 2, "name": "grass-merged", "isthing": 0}],
        "annotations": [
            {"image_id": 1, "file_name": "000000000001.png", "segments_info": [
                {"id": 300, "category_id": 1, "bbox": [0, 0, 10, 10], "description": "a man in a red coat"},
                {"id": 70000, "category_id": 2, "bbox": [5, 10, 25, 10], "description": "green grass"},
                {"id": 7, "category_id": 2, "bbox": [20, 0, 10, 2], "description": ""},  # no description
                {"id": 8, "category_id": 2, "bbox": [0, 0, 1, 1], "description": "absent"}]},  # not in PNG
            {"image_id": 2, "file_name": "000000000002.png", "segments_info": []},  # PNG missing
        ]})
    r = load_dataset("pix2cap", str(tmp_path), "val")
    (s,) = list(r)
    assert [o.caption for o in s.objects] == ["a man in a red coat", "green grass"]
    assert [o.category for o in s.objects] == ["person", "grass-merged"]
    assert [int(decode_rle(o.mask).sum()) for o in s.objects] == [100, 250]
    assert r.stats.skipped_objects == {"no description": 1, "empty mask": 1}
    assert r.stats.skipped == {"panoptic PNG not found": 1}
    assert s.image.path.endswith("coco/val2017/000000000001.jpg")


def test_pix2cap_train_rules_as_pix2cap(tmp_path):
    """Pix2Cap's own tree (coco/annotations/), crowd segments skipped, train images with a
    description shorter than 3 characters dropped whole; a 'caption' key is not read."""
    ids = np.zeros((10, 10), dtype=np.int64)
    ids[0:5] = 1
    ids[5:10] = 2
    for k in (1, 2, 3):
        _png(tmp_path / "coco" / "panoptic_train2017" / f"{k:012d}.png", ids)
    seg = lambda i, d, crowd=0: {"id": i, "category_id": 1, "iscrowd": crowd, "bbox": [0, 0, 10, 5], "description": d}  # noqa: E731
    write_json(str(tmp_path / "coco" / "annotations" / "pix2cap_coco_train.json"), {
        "images": [{"id": k, "file_name": f"{k:012d}.jpg", "height": 10, "width": 10} for k in (1, 2, 3)],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [
            {"image_id": 1, "file_name": "000000000001.png", "segments_info": [seg(1, "a person"), seg(2, "a crowd", 1)]},
            {"image_id": 2, "file_name": "000000000002.png", "segments_info": [seg(1, "a person"), seg(2, "ab")]},
            {"image_id": 3, "file_name": "000000000003.png", "segments_info": [
                {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 10, 5], "caption": "old key"}]}]})
    r = load_dataset("pix2cap", str(tmp_path), "train")
    (s,) = list(r)
    assert [o.caption for o in s.objects] == ["a person"]
    assert r.stats.skipped_objects == {"crowd segment (skipped, as Pix2Cap)": 1}
    assert r.stats.skipped == {"description shorter than 3 characters (Pix2Cap drops the image)": 2}
    assert s.image.path.endswith("coco/train2017/000000000001.jpg")
