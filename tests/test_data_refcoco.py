import os
import pickle

import pytest

from fclm.data.formats.registry import load_dataset
from fclm.data.masks import rle_area
from fclm.data.schema import FCLMDataError
from fclm.eval.queries import iter_queries
from test_data_util import square, write_json


def _write(root, name="refcoco", split_by="unc"):
    d = os.path.join(root, "refer_seg", name)
    write_json(os.path.join(d, "instances.json"), {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 50},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 40, "width": 50}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
             "segmentation": [square(0, 0, 10, 10), square(20, 20, 25, 30)]},  # two polygons, unioned
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [30, 0, 10, 20], "segmentation": [square(30, 0, 40, 20)]},
            {"id": 21, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": [square(0, 0, 5, 5)]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "hot_dog_(food)"}],
    })
    sent = lambda s, i: {"sent": s, "raw": s.upper(), "tokens": s.split(), "sent_id": i}  # noqa: E731
    refs = [
        {"ref_id": 100, "ann_id": 11, "image_id": 1, "category_id": 1, "split": "train",
         "file_name": "COCO_train2014_000000000001_11.jpg", "sentences": [sent("man left", 1), sent("Guy ", 2)]},
        {"ref_id": 101, "ann_id": 12, "image_id": 1, "category_id": 2, "split": "train",
         "file_name": "x", "sentences": [sent("hot dog", 3)]},
        {"ref_id": 102, "ann_id": 12, "image_id": 1, "category_id": 2, "split": "train",
         "file_name": "x", "sentences": []},  # no sentence: object skipped
        {"ref_id": 103, "ann_id": 999, "image_id": 2, "category_id": 1, "split": "train",
         "file_name": "x", "sentences": [sent("ghost", 4)]},  # missing annotation → image 2 has no object
        {"ref_id": 104, "ann_id": 21, "image_id": 2, "category_id": 1, "split": "testA",
         "file_name": "x", "sentences": [sent("small thing", 5)]},
    ]
    with open(os.path.join(d, f"refs({split_by}).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return d


def test_refcoco_train_split(tmp_path):
    _write(tmp_path)
    r = load_dataset("refcoco", str(tmp_path), "train")
    samples = list(r)
    assert len(r) == 2 and len(samples) == 1  # image 2's only train ref is broken
    s = samples[0]
    assert (s.height, s.width) == (40, 50)
    assert s.image.path.endswith(os.path.join("coco", "train2014", "COCO_train2014_000000000001.jpg"))
    assert [o.expressions for o in s.objects] == [["man left", "Guy "], ["hot dog"]]
    assert rle_area(s.objects[0].mask) == 10 * 10 + 5 * 10  # union of both polygons
    assert rle_area(s.objects[1].mask) == 10 * 20
    assert s.objects[1].category == "hot dog"
    assert s.objects[0].extra["ref_id"] == 100
    assert r.stats.records == 1 and r.stats.objects == 2
    assert r.stats.skipped == {"no valid objects": 1}
    assert r.stats.skipped_objects == {"no sentences": 1, "annotation not found": 1}
    ids = [q.id for q in iter_queries(s, "res")]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [q.text for q in iter_queries(s, "res")][1] == "guy"


def test_refcoco_testA_and_bad_split(tmp_path):
    _write(tmp_path)
    s = list(load_dataset("refcoco", str(tmp_path), "testA"))
    assert len(s) == 1 and s[0].objects[0].expressions == ["small thing"] and s[0].split == "testA"
    with pytest.raises(ValueError):
        load_dataset("refcoco", str(tmp_path), "test")  # refcoco (unc) has no 'test'


def test_refcocog_umd(tmp_path):
    _write(tmp_path, "refcocog", "umd")
    r = load_dataset("refcocog", str(tmp_path))
    assert r.refs_path.endswith("refs(umd).p") and len(list(r)) == 1


def test_refer_pickle_with_code_is_refused(tmp_path):
    d = _write(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(os.path.join(d, "refs(unc).p"), "wb") as f:
        pickle.dump([Evil()], f)
    with pytest.raises(FCLMDataError, match="not allowed"):
        list(load_dataset("refcoco", str(tmp_path)))


def test_python2_refer_pickle_strings_decode_as_text(tmp_path):
    from fclm.data.formats.base import load_data_pickle

    # [{'sent': 'café'}] as Python 2 writes it (protocol 2, 8-bit SHORT_BINSTRINGs, UTF-8 bytes)
    py2 = b"\x80\x02]q\x00}q\x01U\x04sentq\x02U\x05caf\xc3\xa9q\x03sa."
    p = tmp_path / "refs(unc).p"
    p.write_bytes(py2)
    assert load_data_pickle(str(p), "test") == [{"sent": "café"}]


def _lisa_val_masks(inst, ref_ann_ids, h, w):
    """LISA's ValDataset ground truth, written out: pycocotools decode of all polygons, summed."""
    from pycocotools import mask as mask_utils
    import numpy as np

    out = []
    for aid in ref_ann_ids:
        ann = next(a for a in inst["annotations"] if a["id"] == aid)
        if len(ann["segmentation"]) == 0:
            m = np.zeros((h, w, 1))
        else:
            m = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w))
        out.append(np.sum(m, axis=2).astype(np.uint8))
    return out


def test_refcoco_eval_follows_lisa_sum_and_histc(tmp_path):
    """Overlapping polygons of one annotation are summed (value-2 pixels are not target for LISA's
    histc IoU) and an annotation without segmentation is scored against an all-zero mask."""
    import numpy as np
    import torch

    from fclm.data.masks import encode_mask
    from fclm.eval.score import score_predictions

    h, w = 30, 40
    d = os.path.join(tmp_path, "refer_seg", "refcoco")
    inst = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": h, "width": w}],
            "annotations": [
                {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                 "segmentation": [square(0, 0, 15, 15), [5.5, 5.0, 22.0, 6.0, 12.0, 20.5]]},  # overlapping
                {"id": 12, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": []},
                {"id": 13, "image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": []}],  # orphan
            "categories": [{"id": 1, "name": "thing"}]}
    write_json(os.path.join(d, "instances.json"), inst)
    refs = [{"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "sentences": [{"sent": " Left Thing ", "sent_id": 1}]},
            {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "val", "sentences": [{"sent": "nothing", "sent_id": 2},
                                                                                    {"sent": "", "sent_id": 3}]}]
    with open(os.path.join(d, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    r = load_dataset("refcoco", str(tmp_path), "val")
    (s,) = list(r)
    st = r.stats.to_dict()
    assert st["objects"] == 2 and st["skipped_objects"] == {"annotation of an image not in the file": 1}
    assert "no segmentation (kept as an all-zero mask, as the reference)" in st["notes"]
    queries = list(iter_queries(s, "res"))
    assert [q.text for q in queries] == ["left thing", "nothing", ""]  # LISA: every sentence, strip().lower()

    gts = _lisa_val_masks(inst, [11, 12, 12], h, w)
    assert gts[0].max() == 2  # the fixture does exercise the overlap
    rng = np.random.default_rng(0)
    preds = [(rng.random((h, w)) > 0.5).astype(np.uint8), np.zeros((h, w), np.uint8),
             (rng.random((h, w)) > 0.9).astype(np.uint8)]
    # LISA's validate(): intersectionAndUnionGPU(K=2) + acc_iou rule, written out with torch.histc
    inter_sum = union_sum = 0.0
    acc = []
    for p, g in zip(preds, gts):
        out, tgt = torch.from_numpy(p).int().view(-1).clone(), torch.from_numpy(np.ascontiguousarray(g)).int().reshape(-1)
        out[tgt == 255] = 255
        ai = torch.histc(out[out == tgt].float(), bins=2, min=0, max=1)
        au = torch.histc(out.float(), bins=2, min=0, max=1) + torch.histc(tgt.float(), bins=2, min=0, max=1) - ai
        inter_sum += float(ai[1])
        union_sum += float(au[1])
        acc.append(float(ai[1] / (au[1] + 1e-5)) + (1.0 if au[1] == 0 else 0.0))
    want_giou, want_ciou = 100 * np.mean(acc), 100 * inter_sum / (union_sum + 1e-10)
    got = score_predictions("res", [s], {q.id: {"masks": [encode_mask(p)]} for q, p in zip(queries, preds)})
    assert got["metrics"]["gIoU"] == pytest.approx(want_giou, rel=1e-6)
    assert got["metrics"]["cIoU"] == pytest.approx(want_ciou, rel=1e-6)
    clean = score_predictions("res", [s], {q.id: {"masks": [encode_mask(p)]} for q, p in zip(queries, preds)},
                              protocol="clean")
    assert clean["metrics"]["cIoU"] != pytest.approx(want_ciou, rel=1e-6)  # union of polygons differs


def test_refcoco_lisa_image_layout(tmp_path):
    _write(tmp_path)
    lisa = tmp_path / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    lisa.mkdir(parents=True)
    s = next(iter(load_dataset("refcoco", str(tmp_path), "train")))
    assert s.image.path == str(lisa / "COCO_train2014_000000000001.jpg")


def test_refer_toolkit_split_rule():
    from fclm.data.formats.refcoco import split_matches

    assert split_matches("testA", "testA") and split_matches("testAB", "testA") and split_matches("testAB", "testB")
    assert not split_matches("testB", "testA") and not split_matches("train", "testA")
    assert split_matches("test", "test") and split_matches("testA", "test") and not split_matches("val", "test")
    assert split_matches("val", "val") and not split_matches("valA", "val")
