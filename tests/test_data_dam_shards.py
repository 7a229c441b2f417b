import io
import json
import os
import pickle
import tarfile

import pytest

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import decode_rle
from test_data_util import jpeg_bytes, rect_mask, rle_str

H, W = 30, 40


def _add(tf, name, data: bytes):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))


def _region(i, x1, caption="A small red box."):
    return {"mask_rle": rle_str(rect_mask(H, W, 0, 0, x1, 10)), "ann_id": 1000 + i, "img_id": 7, "caption": caption}


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write_shards(d):
    os.makedirs(d, exist_ok=True)
    with tarfile.open(os.path.join(d, "00000000.tar"), "w") as tf:
        _add(tf, "000000.jpg", jpeg_bytes(W, H))
        _add(tf, "000000.pickle", pickle.dumps([_region(0, 10), _region(1, 20, caption="")]))  # 2nd: no caption
        _add(tf, "000001.jpg", jpeg_bytes(W, H))  # image without annotation
        _add(tf, "000002.jpg", jpeg_bytes(W, H))
        _add(tf, "000002.pickle", pickle.dumps([Evil()]))  # code in a pickle: refused
        _add(tf, "000003.jpg", jpeg_bytes(W, H))
        _add(tf, "000003.json", json.dumps([_region(3, 5)]).encode())
    with tarfile.open(os.path.join(d, "00000001.tar"), "w") as tf:
        _add(tf, "000004.pickle", pickle.dumps({"regions": [_region(4, 40), _region(5, 1)]}))  # pickle first
        _add(tf, "000004.jpg", jpeg_bytes(W, H))
        _add(tf, "000005.jpg", jpeg_bytes(W, H))
        _add(tf, "000005.pickle", pickle.dumps([{"mask_rle": rle_str(rect_mask(5, 5, 0, 0, 2, 2)), "caption": "x"},
                                                _region(6, 3)]))  # 1st region: wrong size


def test_dam_stream_and_index(tmp_path):
    _write_shards(str(tmp_path / "describe_anything" / "SAM" / "images"))
    r = load_dataset("dam_sa1b", str(tmp_path))
    assert len(r.shards) == 2
    samples = list(r)
    assert [s.extra["key"] for s in samples] == ["000000", "000003", "000004", "000005"]
    assert r.stats.skipped == {"no annotation member": 1, "bad annotation": 1}
    assert r.stats.skipped_objects == {"no caption": 1, "bad mask": 1}
    assert r.stats.records == 4 and r.stats.objects == 1 + 1 + 2 + 1
    s0 = samples[0]
    assert (s0.height, s0.width) == (H, W)
    assert s0.objects[0].caption == "A small red box." and s0.objects[0].extra["ann_id"] == 1000
    assert int(decode_rle(s0.objects[0].mask).sum()) == 100
    assert s0.image.open().size == (W, H) and s0.image.data[:2] == b"\xff\xd8"
    assert [int(decode_rle(o.mask).sum()) for o in samples[2].objects] == [400, 10]
    assert [o.extra["ann_id"] for o in samples[3].objects] == [1006]

    # map-style access through the lazily built (shard, offset) index gives the same samples
    assert len(r) == 6
    got = [r.try_get(i) for i in range(len(r))]
    ok = [g for g in got if g is not None]
    assert [g.id for g in ok] == [s.id for s in samples]
    assert all(a.image.data == b.image.data and a.objects[0].mask == b.objects[0].mask for a, b in zip(ok, samples))
    assert not any(os.path.exists(tmp_path / n) for n in ("000000.jpg", "000000.pickle"))  # nothing extracted


def test_dam_subset_names(tmp_path):
    _write_shards(str(tmp_path / "describe_anything" / "COCOStuff" / "images"))
    assert len(list(load_dataset("dam_coco_stuff", str(tmp_path)))) == 4
    with pytest.raises(FileNotFoundError):
        load_dataset("dam_mapillary", str(tmp_path))


def test_dam_corrupt_shard_is_counted(tmp_path):
    d = tmp_path / "describe_anything" / "OpenImages" / "images"
    _write_shards(str(d))
    data = (d / "00000001.tar").read_bytes()
    (d / "00000001.tar").write_bytes(data[:700])  # truncated mid-member
    r = load_dataset("dam_openimages", str(tmp_path))
    keys = [s.extra["key"] for s in r]
    assert keys[:2] == ["000000", "000003"] and r.stats.skipped.get("corrupt shard", 0) + \
        r.stats.skipped.get("no image member", 0) >= 1
