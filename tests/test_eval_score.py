"""`fclm score` end to end on fixture files, `score_predictions` in memory, and the paper table."""
import json
import sys
import types

import numpy as np
import pytest

from fclm.cli import main
from fclm.data.masks import encode_mask
from fclm.data.schema import ImageRef, Question, RegionObject, Sample
from fclm.eval.score import read_predictions, score_predictions
from fclm.eval.table import format_table


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def samples():
    h, w = 8, 8
    a = Sample("img1", "fake", ImageRef(path="img1.jpg"), h, w, objects=[
        RegionObject(mask=encode_mask(rect(h, w, 0, 4, 0, 4)), expressions=["Left Box ", "top left"],
                     category="dog", caption="a dog in the top left"),
        RegionObject(mask=encode_mask(rect(h, w, 4, 8, 4, 8)), expressions=["right box"], category="cat:ear"),
    ], questions=[Question("which two?", [0, 1])])
    b = Sample("img2", "fake", ImageRef(path="img2.jpg"), h, w, objects=[
        RegionObject(mask=encode_mask(rect(h, w, 0, 8, 0, 2)), expressions=["stick"]),
    ], questions=[Question("what holds it?", [0])], ignore_mask=encode_mask(rect(h, w, 0, 8, 7, 8)))
    return [a, b]


@pytest.fixture
def fake_registry(monkeypatch):
    calls = []
    mod = types.ModuleType("fclm.data.formats.registry")

    def load_dataset(name, root, split):
        calls.append((name, root, split))
        return iter(samples())

    mod.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "fclm.data.formats.registry", mod)
    return calls


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def test_score_res_end_to_end(tmp_path, fake_registry, capsys):
    h = w = 8
    pred = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "img1#o0e0", "masks": [encode_mask(rect(h, w, 0, 4, 0, 4))]},                 # 16/16
        {"id": "img1#o0e1", "masks": [encode_mask(rect(h, w, 0, 4, 0, 2)),                   # duplicates: union
                                      encode_mask(rect(h, w, 0, 4, 0, 2))]},                 # 8/16
        {"id": "img1#o1e0", "masks": []},                                                    # empty: 0/16
        {"id": "img2#o0e0", "masks": [encode_mask(rect(h, w, 0, 8, 0, 8))]},                 # 16/(64-8 ignored)=16/56
    ])
    out = tmp_path / "r.json"
    assert main(["score", "--task", "res", "--dataset", "refcoco", "--split", "testA", "--data", str(tmp_path),
                 "--pred", pred, "--out", str(out)]) == 0
    assert fake_registry == [("refcoco", str(tmp_path), "testA")]
    r = json.loads(out.read_text())
    assert r["metrics"]["gIoU"] == pytest.approx(100 * (1 + 0.5 + 0 + 16 / 56) / 4)
    assert r["metrics"]["cIoU"] == pytest.approx(100 * (16 + 8 + 0 + 16) / (16 + 16 + 16 + 56))
    assert r["counts"] == {"queries": 4, "missing_predictions": 0, "unknown_ids": 0}
    assert "| refcoco testA |" in capsys.readouterr().out


def test_score_missing_and_unknown_ids(tmp_path, fake_registry, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", [{"id": "img1#q0", "masks": []}, {"id": "nope", "masks": []}])
    argv = ["score", "--task", "reasonseg", "--data", str(tmp_path), "--pred", pred, "--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert "1 of 2 queries have no prediction" in capsys.readouterr().err
    assert main(argv + ["--allow-missing"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["counts"]["missing_predictions"] == 1 and r["counts"]["unknown_id_examples"] == ["nope"]
    assert r["metrics"]["gIoU"] == 0.0


def test_score_muse_and_bad_records(tmp_path, fake_registry, capsys):
    h = w = 8
    pred = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "img1#q0", "masks": [encode_mask(rect(h, w, 4, 8, 4, 8)), encode_mask(rect(h, w, 0, 4, 0, 4)),
                                    encode_mask(rect(h, w, 0, 1, 0, 1))]},  # 2 exact + 1 extra
        {"id": "img2#q0", "masks": [encode_mask(rect(h, w, 0, 8, 0, 1))]},  # 8/16
    ])
    out = tmp_path / "r.json"
    assert main(["score", "--task", "muse", "--data", str(tmp_path), "--pred", pred, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["gIoU"] == pytest.approx(100 * (2 + 0.5) / (3 + 1))
    assert r["metrics"]["cIoU"] == pytest.approx(100 * (32 + 8) / (32 + 1 + 16))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "img1#q0", "masks": [{"counts": "x"}]}\n')
    assert main(["score", "--task", "muse", "--data", str(tmp_path), "--pred", str(bad)]) == 2
    assert "bad.jsonl:1: masks[0]" in capsys.readouterr().err
    wrong = write_jsonl(tmp_path / "w.jsonl", [{"id": "img1#q0", "masks": [encode_mask(np.ones((4, 4)))]},
                                               {"id": "img2#q0", "masks": []}])
    assert main(["score", "--task", "muse", "--data", str(tmp_path), "--pred", wrong]) == 2
    assert "prediction img1#q0: masks[0]" in capsys.readouterr().err


def test_score_roc_with_dict_predictions(tmp_path, fake_registry):
    pred = tmp_path / "roc.json"
    pred.write_text(json.dumps({"img1#o0": "Dog.", "img1#o1": "cat ear"}))
    out = tmp_path / "r.json"
    assert main(["score", "--task", "roc", "--dataset", "roc_lvis", "--data", str(tmp_path), "--pred", str(pred),
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["sIoU"] == pytest.approx(100.0)  # "dog"=={"dog"}, {"cat","ear"}=={"cat","ear"}
    assert r["metrics"]["SS"] == pytest.approx(100.0, abs=1e-3)


def test_score_predictions_in_memory_arrays():
    h = w = 8
    preds = {"img1#o0c": {"masks": [rect(h, w, 0, 4, 0, 4).astype(bool)]}}
    r = score_predictions("dlres", samples(), preds, dataset="dlres_bench", split="val")
    assert r["metrics"] == {"gIoU": pytest.approx(100 * 16 / (16 + 1e-5), rel=1e-12),
                            "cIoU": pytest.approx(100 * 16 / (16 + 1e-10), rel=1e-12)}  # LISA's epsilons
    assert r["benchmark"] == "dlres_bench val" and r["protocol"].startswith("LISA")
    r = score_predictions("dlres", samples(), preds, dataset="dlres_bench", split="val", protocol="clean")
    assert r["metrics"] == {"gIoU": 100.0, "cIoU": 100.0} and r["protocol"].endswith("(clean)")


def _glamm_gcg(tmp_path):
    h = w = 10
    m1, m2 = encode_mask(rect(h, w, 0, 5, 0, 5)), encode_mask(rect(h, w, 5, 10, 5, 10))
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "val_gcg_coco_caption_gt.json").write_text(json.dumps({
        "images": [{"id": "im_a", "height": h, "width": w}, {"id": "im_b", "height": h, "width": w}],
        "annotations": [{"id": 1, "image_id": "im_a", "caption": "a dog and a cat", "labels": ["a dog", "a cat"]},
                        {"id": 2, "image_id": "im_b", "caption": "a dog", "labels": ["a dog"]}]}))
    (gt_dir / "val_gcg_coco_mask_gt.json").write_text(json.dumps({
        "images": [{"id": "im_a", "height": h, "width": w}, {"id": "im_b", "height": h, "width": w}],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [{"id": 1, "image_id": "im_a", "category_id": 1, "segmentation": m1, "iscrowd": 0},
                        {"id": 2, "image_id": "im_a", "category_id": 1, "segmentation": m2, "iscrowd": 0},
                        {"id": 3, "image_id": "im_b", "category_id": 1, "segmentation": m1, "iscrowd": 0}]}))
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    # GLaMM infer.py output: im_a perfect; im_b wrapped in a one-key object (accepted by GLaMM), half mask
    (pred_dir / "im_a.json").write_text(json.dumps(
        {"image_id": "im_a", "caption": "a dog and a cat", "phrases": ["a dog", "a cat"], "pred_masks": [m1, m2]}))
    (pred_dir / "im_b.json").write_text(json.dumps({"im_b": {
        "image_id": "im_b", "caption": "a dog", "phrases": ["a dog"],
        "pred_masks": [encode_mask(rect(h, w, 0, 5, 0, 2))]}}))  # IoU 10/25
    return gt_dir, pred_dir


def test_score_gcg_glamm_files_end_to_end(tmp_path):
    gt_dir, pred_dir = _glamm_gcg(tmp_path)
    assert set(read_predictions(str(pred_dir), "gcg")) == {"im_a", "im_b"}
    out = tmp_path / "gcg.json"
    assert main(["score", "--task", "gcg", "--data", str(gt_dir), "--pred", str(pred_dir), "--out", str(out),
                 "--no-captions", "--gcg-text-model", "minilm"]) == 0
    r = json.loads(out.read_text())
    m = r["metrics"]
    assert m["mIoU"] == pytest.approx(100 * (1.0 + 0.4) / 2)
    assert m["Recall"] == pytest.approx(100 * 2 / 3)  # im_b's only pair has IoU 0.4 < 0.5
    assert 0 < m["AP50"] < 100
    assert "METEOR" not in m and "all-MiniLM" in r["text_model"]


def test_score_gcg_default_text_model_is_glamms_bert(tmp_path, capsys, monkeypatch):
    """Without --gcg-text-model, recall uses GLaMM's bert-base-uncased; when it is not available
    locally the run says loudly that all-MiniLM was used instead; a named model that is absent is
    an error."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("FCLM_GCG_TEXT_MODEL", raising=False)
    gt_dir, pred_dir = _glamm_gcg(tmp_path)
    out = tmp_path / "g.json"
    assert main(["score", "--task", "gcg", "--data", str(gt_dir), "--pred", str(pred_dir), "--no-captions",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "note: GCG recall used all-MiniLM-L6-v2, not GLaMM's bert-base-uncased" in err
    assert "bert-base-uncased" in json.loads(out.read_text())["notes"][0]
    assert main(["score", "--task", "gcg", "--data", str(gt_dir), "--pred", str(pred_dir), "--no-captions",
                 "--gcg-text-model", "hf-mean:bert-base-uncased"]) == 2
    assert capsys.readouterr().err.startswith("fclm score: error:")
