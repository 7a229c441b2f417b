import argparse
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from fclm.data import cli_data
from fclm.data.formats.registry import LOADERS, available_datasets, load_dataset
from fclm.data.overlay import draw_overlay
from test_data_util import square, write_image, write_json

NAMES = ["refcoco", "refcoco+", "refcocog", "reasonseg", "muse", "osprey_short_form", "osprey_lvis_posneg",
         "osprey_conversation", "osprey_detail_description", "osprey_part_level", "paco_lvis", "roc_lvis",
         "roc_paco", "vg", "grandf", "openpsg", "refcocog_gcg", "flickr_gcg", "gcg_eval", "dam_coco_stuff",
         "dam_mapillary", "dam_openimages", "dam_sa1b", "dlc_bench", "pix2cap"]


def _parser():
    p = argparse.ArgumentParser(prog="fclm")
    sub = p.add_subparsers(dest="command", required=True)
    cli_data.register(sub)
    return p


def _run(argv):
    args = _parser().parse_args(argv)
    assert args.command == "data" and args.data_command == "check"
    return args.func(args)


def test_registry_names(tmp_path):
    assert sorted(NAMES) == available_datasets()
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("refclef", str(tmp_path))
    with pytest.raises(ValueError, match="splits"):
        load_dataset("muse", str(tmp_path), "testB")
    assert all(spec.default_split in spec.splits for spec in LOADERS.values())


def _paco(root):
    write_image(str(root / "coco" / "train2017" / "000000000009.jpg"), 40, 30)
    write_json(str(root / "paco" / "paco_lvis_v1_train.json"), {
        "images": [{"id": 9, "file_name": "000000000009.jpg", "height": 30, "width": 40},
                   {"id": 10, "file_name": "000000000010.jpg", "height": 30, "width": 40}],  # image missing
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 10, 10], "segmentation": [square(0, 0, 10, 10)]},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0, 0, 0, 10], "segmentation": [square(0, 0, 1, 10)]},
            {"id": 3, "image_id": 10, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": [square(0, 0, 5, 5)]}],
        "categories": [{"id": 1, "name": "cup_(vessel)"}]})


def test_data_check_dataset_json_and_show(tmp_path, capsys):
    _paco(tmp_path)
    out, js = tmp_path / "show", tmp_path / "report.json"
    rc = _run(["data", "check", "--dataset", "paco_lvis", "--root", str(tmp_path), "--json", str(js),
               "--show", "2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "paco_lvis [train]: 1 records, 2 objects, 1 skipped records" in text
    assert "image not found" in text and "degenerate box (mask kept, box dropped)" in text
    rep = json.loads(js.read_text())
    (e,) = rep["datasets"]
    assert e["records"] == 1 and e["skipped"] == {"image not found": 1}
    assert e["skipped_objects"] == {} and e["notes"] == {"degenerate box (mask kept, box dropped)": 1}
    (png,) = e["overlays"]
    im = Image.open(png)
    assert im.size[0] == 360 and im.size[1] > 30  # image centred over a legend strip >= 360 px wide


def test_data_check_config(tmp_path, capsys):
    _paco(tmp_path)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"data_root": str(tmp_path), "datasets": [
        {"name": "paco_lvis", "split": "train", "weight": 113212},
        {"name": "vg", "weight": 77000, "options": {"image_dir": str(tmp_path)}}]}}))
    js = tmp_path / "r.json"
    rc = _run(["data", "check", "--config", str(cfg), "--json", str(js), "--no-check-images"])
    assert rc == 1  # vg files are absent: reported as an error, the run goes on
    rep = json.loads(js.read_text())
    assert [d["name"] for d in rep["datasets"]] == ["paco_lvis", "vg"]
    assert rep["datasets"][0]["records"] == 2 and "not found" in rep["datasets"][1]["error"]
    # a trainer config's `sources:` list (with loader `options`) is read when `datasets:` is absent
    cfg.write_text(yaml.safe_dump({"data": {"data_root": str(tmp_path), "sources": [
        {"name": "synthetic", "tasks": ["res"]},
        {"name": "paco_lvis", "tasks": ["roc"], "options": {"image_subdir": "nowhere"}}]}}))
    assert _run(["data", "check", "--config", str(cfg), "--json", str(js)]) == 0
    (e,) = json.loads(js.read_text())["datasets"]
    assert e["skipped"] == {"image not found": 2}


def test_shipped_configs_name_real_loaders():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "configs" / "train"
    for stage, total in (("stage1", 688390), ("stage2", 703823)):
        data = yaml.safe_load((root / f"fclm-3b-{stage}.yaml").read_text())["data"]
        assert all(d["name"] in LOADERS for d in data["sources"])
        assert sum(d["weight"] for d in data["sources"]) == total
    # and they are valid training configs whose tasks exist
    from fclm.data.tasks import BUILDERS
    from fclm.train.config import load_train_config

    for stage in ("stage1", "stage2"):
        cfg = load_train_config(str(root / f"fclm-3b-{stage}.yaml"))
        assert all(t in BUILDERS or t == "pair_stage2" for s in cfg.data.sources for t in s.tasks)


def test_draw_overlay():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    m = np.zeros((10, 20), bool)
    m[2:8, 2:8] = True
    out = draw_overlay(img, [m], ["a cup"], title="t")
    arr = np.asarray(out)[:10, 170:190]  # the image, centred over a legend strip 360 px wide
    assert out.size[0] == 360 and out.size[1] > 10
    assert arr[5, 5].any() and not arr[0, 15].any()  # tinted inside, untouched outside
    with pytest.raises(ValueError):
        draw_overlay(img, [np.zeros((3, 3), bool)], ["x"])


def test_data_check_opens_every_image_and_prints_official_counts(tmp_path, capsys):
    """ROC LVIS fixture: counts printed beside the official 1,000 / 4,004; a truncated JPEG and a
    wrong-size image are reported; --no-images skips the image pass."""
    import io

    recs = [{"file_name": f"{k:012d}.jpg", "height": 30, "width": 40, "categories": ["cup"],
             "annotations": [{"segmentation": [square(0, 0, 5, 5)]}]} for k in (1, 2, 3)]
    write_json(str(tmp_path / "paco" / "lvis_val_1k_category.json"), recs)
    d = tmp_path / "coco" / "train2017"
    write_image(str(d / "000000000001.jpg"), 40, 30)
    write_image(str(d / "000000000002.jpg"), 20, 30)  # wrong size
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (d / "000000000003.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated
    js = tmp_path / "r.json"
    assert _run(["data", "check", "--dataset", "roc_lvis", "--root", str(tmp_path), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "3 records (official 1,000 DIFFERENT), 3 objects (official 4,004 DIFFERENT)" in text
    (e,) = json.loads(js.read_text())["datasets"]
    assert e["expected"] == {"records": 1000, "objects": 4004}
    assert e["images"]["opened"] == 2
    assert e["images"]["problems"]["truncated"]["count"] == 1
    assert e["images"]["problems"]["size differs from the record"]["count"] == 1
    assert "image truncated  1" in text
    assert _run(["data", "check", "--dataset", "roc_lvis", "--root", str(tmp_path), "--json", str(js), "--no-images"]) == 0
    assert "images" not in json.loads(js.read_text())["datasets"][0]
