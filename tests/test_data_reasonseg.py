
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
    # e has no target pixel: LISA still scores it (empty prediction → IoU 1), so it is kept and noted
    assert len(r) == 5 and sorted(samples) == ["reasonseg_val_a", "reasonseg_val_b", "reasonseg_val_e"]
    assert r.stats.skipped == {"no query text": 1, "annotation not found": 1}
    assert r.stats.to_dict()["notes"] == {"no target pixel (kept, scored as LISA does)": 1}
    assert rle_area(samples["reasonseg_val_e"].objects[0].mask) == 0

    a = samples["reasonseg_val_a"]
    tgt = decode_rle(a.objects[0].mask)
    ign = decode_rle(a.ignore_mask)
    # cv2 outline + fill: integer corners → inclusive pixel ranges
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


def _lisa_reference(shapes, h, w):
    """LISA's get_mask_from_json, written out independently with cv2 (the expected values)."""
    import cv2

    areas, kept = [], []
    for sh in shapes:
        if sh["label"].lower() == "flag":
            continue
        tmp = np.zeros((h, w), np.uint8)
        pts = np.array([sh["points"]], dtype=np.int32)
        cv2.polylines(tmp, pts, True, 1, 1)
        cv2.fillPoly(tmp, pts, 1)
        areas.append(tmp.sum())
        kept.append(sh)
    out = np.zeros((h, w), np.uint8)
    for i in list(np.argsort(areas)[::-1].astype(np.int32)):
        sh = kept[i]
        v = 255 if "ignore" in sh["label"].lower() else 1
        pts = np.array([sh["points"]], dtype=np.int32)
        cv2.polylines(out, pts, True, v, 1)
        cv2.fillPoly(out, pts, v)
    return out


def test_reasonseg_cv2_rasterisation_and_draw_order(tmp_path):
    """Slanted float polygons and equal-area overlapping target/ignore shapes give LISA's exact pixels."""
    from fclm.data.formats.reasonseg import labelme_mask

    rng = np.random.default_rng(0)
    h, w = 57, 63
    tri = {"label": "target", "points": [[3.7, 2.2], [50.9, 11.6], [20.4, 48.8]], "shape_type": "polygon"}
    star = {"label": "ignore", "points": (rng.random((9, 2)) * [w - 1, h - 1]).tolist(), "shape_type": "polygon"}
    sq1 = _shape("target", 10, 10, 20, 20)
    sq2 = _shape("ignore", 15, 15, 25, 25)  # same area as sq1, overlapping it
    line = {"label": "target", "points": [[1.0, 50.0], [40.0, 55.0]], "shape_type": "line"}
    for shapes in ([tri], [tri, star], [sq1, sq2], [sq2, sq1], [sq1, sq2, tri, star], [line, tri]):
        np.testing.assert_array_equal(labelme_mask(shapes, h, w), _lisa_reference(shapes, h, w))
    # PIL's polygon fill differs on slanted edges: the cv2 rule is not a no-op here
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([(int(x), int(y)) for x, y in tri["points"]], fill=1, outline=1)
    assert (np.asarray(im) != _lisa_reference([tri], h, w)).any()

    # through the loader, with a JSON whose imageHeight/imageWidth disagree with the image (LISA
    # draws on the image's own size)
    d = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    write_image(str(d / "t.jpg"), w, h)
    write_json(str(d / "t.json"), {"text": [" a question "], "is_sentence": True, "imageHeight": 10,
                                   "imageWidth": 10, "shapes": [sq1, sq2, tri, star]})
    s = next(iter(load_dataset("reasonseg", str(tmp_path), "val")))
    ref = _lisa_reference([sq1, sq2, tri, star], h, w)
    assert (s.height, s.width) == (h, w) and s.questions[0].text == "a question"
    np.testing.assert_array_equal(decode_rle(s.objects[0].mask), ref == 1)
    np.testing.assert_array_equal(decode_rle(s.ignore_mask), ref == 255)


def test_reasonseg_exif_orientation_as_cv2(tmp_path):
    """cv2.imread (LISA) turns a JPEG by its EXIF orientation and LISA draws the mask on that size;
    the loader's image and mask agree with it."""
    import cv2
    from PIL import Image

    d = tmp_path / "reason_seg" / "ReasonSeg" / "val"
    d.mkdir(parents=True)
    raw = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide x 20 high
    raw[:, :10] = 255  # a white band on the stored left side
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    Image.fromarray(raw).save(d / "r.jpg", exif=exif.tobytes(), quality=100)
    shapes = [_shape("target", 2, 3, 12, 30)]
    write_json(str(d / "r.json"), {"text": ["q"], "is_sentence": False, "shapes": shapes})
    ref = cv2.cvtColor(cv2.imread(str(d / "r.jpg")), cv2.COLOR_BGR2RGB)
    assert ref.shape[:2] == (40, 20)  # cv2 really turned it
    (s,) = list(load_dataset("reasonseg", str(tmp_path), "val"))
    assert (s.height, s.width) == ref.shape[:2]
    img = np.asarray(s.image.open())
    assert img.shape == ref.shape and np.abs(img.astype(int) - ref.astype(int)).max() <= 8  # JPEG decoders differ by a few levels
    np.testing.assert_array_equal(decode_rle(s.objects[0].mask), _lisa_reference(shapes, *ref.shape[:2]) == 1)
