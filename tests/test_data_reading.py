"""Reading annotation files: per-record decoding of stray non-UTF-8 bytes."""
import json

from fclm.data.formats.base import read_json
from fclm.data.formats.registry import load_dataset
from test_data_util import square


def test_one_stray_byte_does_not_turn_the_file_into_mojibake(tmp_path):
    good = {"file_name": "a.jpg", "height": 20, "width": 20, "questions": ["Où est le café ☕?"],
            "ann_list": [{"category_name": "cup", "segmentation": [square(0, 0, 5, 5)]}], "answers": [[0]]}
    bad = dict(good, questions=["the café sign"])
    text = json.dumps([good, bad], ensure_ascii=False)
    raw = text.encode("utf-8").replace("the café".encode("utf-8"), b"the caf\xe9")  # one cp1252 byte
    p = tmp_path / "muse" / "muse_val.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(raw)
    with open(p, "rb") as f:
        assert b"\xe9" in f.read()  # the fixture really is not UTF-8
    found = []
    data = read_json(str(p), found)
    assert data[0]["questions"] == ["Où est le café ☕?"]  # untouched
    assert data[1]["questions"] == ["the café sign"]  # this string alone decoded as cp1252
    assert found == [(1, "questions", 0)]
    r = load_dataset("muse", str(tmp_path), "val")
    samples = list(r)
    assert [s.questions[0].text for s in samples] == ["Où est le café ☕?", "the café sign"]
    assert r.stats.to_dict()["notes"]["non-UTF-8 text decoded as cp1252"] == 1
