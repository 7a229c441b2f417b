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
    assert len(samples) == 1
    assert r.stats.skipped == {"text answer placeholder mismatch": 1, "answers/questions mismatch": 1,
                               "invalid image size": 1}
    s = samples[0]
    assert s.image.path.endswith("coco/train2017/000000000001.jpg")
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
