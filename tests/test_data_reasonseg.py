
import numpy as np

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import decode_rle, rle_area
from fclm.eval.queries import iter_queries
from test_data_util import write_image, write_json


def _shape(label, x0, y0, x1, y1):
    return {"label": label, "points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "shape_type": "polygon"}


def test_reasonseg_masks_ignore_flag_and_encodings(tmp_path):
    d = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    # a: big ignore region with a small target inside (drawn later because smaller), a flag dropped
    write_image(str(d / "a.jpg"), 60, 40)
    write_json(str(d / "a.json"), {"text": ["What holds the food?", "second"], "is_sentence": True,
                                   "imageHeight": 40, "imageWidth": 60,
                                   "shapes": [_shape("ignore", 0, 0, 30, 30), _shape("target", 5, 5, 14, 14),
                                              _shape("flag", 40, 0, 59, 39)]})
    # b: cp1252-encoded file (é is 0xE9, invalid UTF-8), no image size in the JSON
    write_image(str(d / "b.jpg"), 20, 10)
    write_json(str(d / "b.json"), {"text": ["the café sign"], "is_sentence": False,
                                   "shapes": [_shape("target", 0, 0, 9, 9)]}, encoding="cp1252")
    # c: no query text; d: no JSON at all; e: only a flag (empty target)
    write_image(str(d / "c.jpg"))
    write_json(str(d / "c.json"), {"text": [], "shapes": [_shape("target", 0, 0, 5, 5)]})
    write_image(str(d / "d.jpg"))
    write_image(str(d / "e.jpg"))
    write_json(str(d / "e.json"), {"text": ["x"], "shapes": [_shape("flag", 0, 0, 5, 5)]})

    r = load_dataset("reasonseg", str(tmp_path), "val")
    samples = {s.id: s for s in r}
    assert len(r) == 5 and sorted(samples) == ["reasonseg_val_a", "reasonseg_val_b"]
    assert r.stats.skipped == {"no query text": 1, "annotation not found": 1, "empty mask": 1}

    a = samples["reasonseg_val_a"]
    tgt = decode_rle(a.objects[0].mask)
    ign = decode_rle(a.ignore_mask)
    # PIL fills polygon interior + outline: integer corners → inclusive pixel ranges
    assert tgt.sum() == 10 * 10 and tgt[5:15, 5:15].all()
    assert ign.sum() == 31 * 31 - 10 * 10 and not (tgt & ign).any()
    assert not tgt[:, 40:].any() and not ign[:, 40:].any()  # flag dropped
    assert [q.text for q in a.questions] == ["What holds the food?", "second"]
    assert a.questions[0].kind == "sentence" and a.questions[0].target_ids == [0]
    q = list(iter_queries(a, "reasonseg"))
    assert len(q) == 1 and q[0].text == "What holds the food?"

    b = samples["reasonseg_val_b"]
    assert b.questions[0].text == "the café sign" and b.questions[0].kind == "short"
    assert (b.height, b.width) == (10, 20) and rle_area(b.objects[0].mask) == 100 and b.ignore_mask is None


def test_reasonseg_largest_first(tmp_path):
    """A small ignore shape inside a large target stays ignored (drawn after the larger one)."""
    from fclm.data.formats.reasonseg import labelme_mask

    m = labelme_mask([_shape("ignore", 2, 2, 4, 4), _shape("target", 0, 0, 9, 9)], 12, 12)
    assert (m == 255).sum() == 9 and (m == 1).sum() == 100 - 9 and np.unique(m).tolist() == [0, 1, 255]
