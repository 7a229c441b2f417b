import pytest

from fclm.data.formats.osprey import convert_region_tags
from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.data.formats.base import SkipRecord
from test_data_util import rect_mask, rle_str, rle_uncompressed, square, write_json

H, W = 30, 40


def _anns():
    """Three masks in the three published encodings: polygon, uncompressed RLE, compressed RLE."""
    return [{"segmentation": [square(0, 0, 10, 10)]},
            {"segmentation": rle_uncompressed(rect_mask(H, W, 10, 10, 30, 20))},
            {"segmentation": rle_str(rect_mask(H, W, 0, 20, 5, 30))}]


def _rec(i, convs, anns=None, **kw):
    return {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": H, "width": W,
            "annotation": anns if anns is not None else _anns(), "conversations": convs, **kw}


def _conv(*texts):
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": t} for k, t in enumerate(texts)]


def test_osprey_conversation_tags_and_masks(tmp_path):
    recs = [
        _rec(1, _conv("<image>\nWhat is <region1> doing next to <region3>?", "It <region1> sits.",
                      "And <region2>?", "A table.")),
        _rec(2, _conv("What is <regin2>?", "x")),  # typo'd tag
        _rec(3, _conv("What is <Region1>?", "x")),  # re-cased tag
        _rec(4, _conv("What is <region4>?", "x")),  # out of range (3 regions)
        _rec(5, []),  # no conversation
        _rec(6, _conv("What is <region1>?", "x"), anns=[{"segmentation": []}]),  # empty mask
        _rec(7, _conv("Is <region1> <b>bold</b>?", "yes")),  # other markup kept
    ]
    write_json(str(tmp_path / "osprey" / "osprey_conversation.json"), recs)
    r = load_dataset("osprey_conversation", str(tmp_path))
    samples = list(r)
    assert [s.id for s in samples] == ["osprey_conversation_1", "osprey_conversation_7"]
    assert r.stats.skipped == {"malformed region tag": 2, "region index out of range": 1,
                               "no conversation": 1, "empty mask": 1}
    s = samples[0]
    assert s.image.path.endswith("coco/train2017/000000000001.jpg")
    assert [rle_area(o.mask) for o in s.objects] == [100, 200, 50]
    assert [(t.role, t.text) for t in s.dialogue] == [
        ("user", "What is <region> doing next to <region>?"), ("assistant", "It <region> sits."),
        ("user", "And <region>?"), ("assistant", "A table.")]
    assert s.dialogue_region_ids == [0, 2, 0, 1]
    assert samples[1].dialogue[0].text == "Is <region> <b>bold</b>?"


def test_osprey_mask_pos_placeholders():
    ids: list[int] = []
    state: dict = {}
    out = convert_region_tags("A <mask><pos> and <mask> <pos>.", 2, ids, state)
    assert out == "A <region> and <region>." and ids == [0, 1]
    with pytest.raises(SkipRecord, match="out of range"):
        convert_region_tags("<mask><pos>", 2, ids, state)


@pytest.mark.parametrize("name,fname", [("osprey_short_form", "osprey_short_form.json"),
                                        ("osprey_lvis_posneg", "osprey_lvis_positive_negative.json"),
                                        ("osprey_part_level", "osprey_part_level.json")])
def test_osprey_other_dialogue_files(tmp_path, name, fname):
    recs = [_rec(1, _conv("<region2>: category?", "table", "<region1>?", "cup")),
            _rec(2, _conv("<region9>?", "x")),
            {**_rec(3, _conv("q", "a")), "height": None}]
    write_json(str(tmp_path / "osprey" / fname), recs)
    r = load_dataset(name, str(tmp_path))
    (s,) = list(r)
    assert s.dialogue_region_ids == [1, 0] and s.dialogue[1].text == "table"
    assert r.stats.skipped == {"region index out of range": 1, "invalid image size": 1}
    assert r.stats.objects == 3


def test_osprey_detail_description(tmp_path):
    recs = [
        {**_rec(1, None), "description": ["<region1>: A red cup.", "<region2>: A table.", "<region3>: Rim."]},
        {**_rec(2, None), "description": ["<region1>: a", "<regin2>: b", "<region3>: c"]},
        {**_rec(3, None), "description": ["<region1>: a", "<region2>: b"]},  # 3 regions, 2 captions
        {**_rec(4, None), "description": ["<region1>: a", "<region2>: b", "<region7>: c"]},
    ]
    write_json(str(tmp_path / "osprey" / "osprey_detail_description.json"), recs)
    r = load_dataset("osprey_detail_description", str(tmp_path))
    (s,) = list(r)
    assert [o.caption for o in s.objects] == ["A red cup.", "A table.", "Rim."]
    assert r.stats.skipped == {"malformed region tag": 1, "descriptions/regions mismatch": 1,
                               "region index out of range": 1}
