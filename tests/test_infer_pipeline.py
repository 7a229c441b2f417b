"""FCLMPipeline, results, overlays and the inference CLI on the tiny model."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_sample
from fclm.data.masks import decode_rle
from fclm.data.schema import FCLMDataError
from fclm.infer import FCLMPipeline
from fclm.infer.results import parse_grounded_caption


@pytest.fixture(scope="module")
def pipe(tiny):
    model, proc, _ = tiny
    return FCLMPipeline(model, proc)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = make_sample()
    img = s.image.open()
    masks = [decode_rle(o.mask) for o in s.objects]
    d = tmp_path_factory.mktemp("scene")
    img.save(d / "img.png")
    Image.fromarray(masks[0].astype(np.uint8) * 255).save(d / "m0.png")
    return img, masks, d


def test_describe_classify(pipe, scene):
    img, masks, d = scene
    out = pipe.describe(img, [masks[0], str(d / "m0.png"), [10, 10, 50, 40]], max_new_tokens=4)
    assert [r.region for r in out] == [0, 1, 2] and all(isinstance(r.text, str) for r in out)
    assert out[0].text == out[1].text  # the same mask given as an array and as a PNG
    assert out[0].finish_reason in ("eos", "length")
    labels = pipe.classify(str(d / "img.png"), masks)
    assert len(labels) == 3 and all(isinstance(x, str) for x in labels)
    brief = pipe.describe(img, masks[:1], detailed=False, max_new_tokens=3)
    assert len(brief) == 1


def test_segment_teacher_forced_and_region_in(pipe, scene):
    img, masks, _ = scene
    r = pipe.segment(img, "the red circle", teacher_forced=True)
    assert r.raw == "Sure, [SEG]." and len(r.masks) == 1
    assert r.masks[0].shape == (96, 128) and r.masks[0].dtype == bool and r.image_size == (96, 128)
    rle = r.to_rle()[0]
    assert decode_rle(rle).shape == (96, 128)
    assert json.loads(r.to_json())["masks"][0]["size"] == [96, 128]
    r2 = pipe.segment(img, "Please segment the object that has the same colour as <region>.", regions=[masks[1]],
                      teacher_forced=True, answer="Sure, [SEG] and [SEG].")
    assert len(r2.masks) == 2
    free = pipe.segment(img, "the red circle", max_new_tokens=3)
    assert len(free.masks) == free.raw.count("[SEG]")


def test_prompt_styles(pipe):
    assert pipe.build_segment_prompt("the red circle") == "What is the red circle in this image? Please output segmentation mask."
    assert pipe.build_segment_prompt("Where can I sit?") == "Where can I sit? Please output segmentation mask."
    assert pipe.build_segment_prompt("Please segment the dog.") == "Please segment the dog."
    long = "A large red striped circle in the upper left part of the image, to the left of a blue square."
    assert pipe.build_segment_prompt(long).endswith("blue square. Please output segmentation mask.")


def test_run_grounding_order_and_mixed(pipe, scene):
    img, masks, d = scene
    q = "What is the red circle in this image? Please output segmentation mask."
    res = pipe.run_grounding([(str(d / "img.png"), q, "Sure, [SEG]."), (img, q, None),
                              {"image": img, "prompt": "Please segment <region>.", "answer": "[SEG].", "regions": [masks[2]]}],
                             max_new_tokens=2)
    assert len(res[0].masks) == 1 and len(res[2].masks) == 1
    assert res[1].finish_reason in ("eos", "length")


def test_ground_and_parse(pipe, scene):
    img, *_ = scene
    g = pipe.ground(img, max_new_tokens=4)
    assert isinstance(g.caption, str) and len(g.masks) <= 4
    cap, phrases = parse_grounded_caption("<p> A red circle </p> [SEG] is left of <p>a blue square</p>[SEG]. <p>sky</p> is blue")
    assert cap == "A red circle is left of a blue square. sky is blue"
    assert phrases == [("A red circle", (0, 12), 0), ("a blue square", (24, 37), 1), ("sky", (39, 42), None)]
    for text, (s, e), _ in phrases:
        assert cap[s:e] == text


def test_bad_pipeline_inputs(pipe, scene):
    img, masks, d = scene
    with pytest.raises(FCLMDataError, match=r"region 0: mask is 10x10 \(WxH\) but the image is 128x96"):
        pipe.describe(img, [np.ones((10, 10), bool)])
    with pytest.raises(FCLMDataError, match="region 1: mask is empty"):
        pipe.classify(img, [masks[0], np.zeros((96, 128), bool)])
    with pytest.raises(FCLMDataError, match="no region given"):
        pipe.describe(img, [])
    with pytest.raises(FileNotFoundError, match="image not found"):
        pipe.describe(str(d / "nope.jpg"), [masks[0]])
    with pytest.raises(FCLMDataError, match=r"prompt is too long: \d+ tokens with the image, above the model's max_length=1024"):
        pipe.segment(img, "red circle " * 700)
    with pytest.raises(FCLMDataError, match="text has 0 <region> slots but 1 region masks were given"):
        pipe.segment(img, "the red circle", regions=[masks[0]])
    with pytest.raises(FCLMDataError, match="the text is empty"):
        pipe.segment(img, "  ")
    small = FCLMPipeline(pipe.model, pipe.processor, max_pixels=1000)
    with pytest.raises(FCLMDataError, match="above the limit of 1000"):
        small.segment(str(d / "img.png"), "the circle")
    with pytest.raises(TypeError, match="unknown generation option"):
        pipe.classify(img, [masks[0]], max_tokens=3)


def test_overlays(pipe, scene, tmp_path):
    from fclm.infer.visualize import save_overlay

    img, masks, _ = scene
    r = pipe.segment(img, "the red circle", teacher_forced=True)
    d = pipe.describe(img, masks, max_new_tokens=2)
    for name, res, regions in (("seg.png", r, ()), ("desc.png", d, masks)):
        p = save_overlay(str(tmp_path / name), img, res, regions)
        w, h = Image.open(p).size  # the image, centred over a legend strip at least 360 px wide
        assert w == max(img.size[0], 360) and h > img.size[1] and Image.open(p).format == "PNG"
    # outlines drawn in region colours: some pixels of the image part changed
    x0 = (max(img.size[0], 360) - img.size[0]) // 2
    shown = Image.open(tmp_path / "desc.png").crop((x0, 0, x0 + img.size[0], img.size[1]))
    assert (np.asarray(shown) != np.asarray(img)).any()


# ------------------------------------------------------------------ CLI
def _cli(argv):
    """The root CLI: 0, or its one error line on stderr (exit status 2)."""
    import contextlib
    import io

    from fclm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    if rc == 0:
        return 0
    assert rc == 2 and "Traceback" not in err.getvalue(), err.getvalue()
    return err.getvalue()


def test_cli_json_and_overlay(tiny, scene, capsys, tmp_path):
    _, _, folder = tiny
    _, masks, d = scene
    img = str(d / "img.png")
    assert _cli(["describe", img, "--mask", str(d / "m0.png"), "--box", "10", "10", "50", "40",
                 "--model", folder, "--max-new-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["region"] for r in out["regions"]] == [0, 1]
    ov = tmp_path / "seg.png"
    assert _cli(["segment", img, "the red circle", "--teacher-forced", "--model", folder, "--json",
                 "--out", str(ov)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["masks"]) == 1 and decode_rle(out["masks"][0]).shape == (96, 128)
    assert Image.open(ov).size[0] == 360 and Image.open(ov).size[1] > 96  # image over its legend
    assert _cli(["ground", img, "--model", folder, "--max-new-tokens", "3", "--json", "--out", str(tmp_path / "g.png")]) == 0
    assert "caption" in json.loads(capsys.readouterr().out) and Image.open(tmp_path / "g.png").size[1] >= 96


def test_cli_errors(tiny, scene, tmp_path, monkeypatch):
    _, _, folder = tiny
    _, _, d = scene
    img = str(d / "img.png")
    assert "give at least one region with --mask" in _cli(["describe", img, "--model", folder])
    assert "mask file not found" in _cli(["describe", img, "--mask", str(d / "zz.png"), "--model", folder])
    assert "image not found" in _cli(["segment", str(d / "zz.png"), "x", "--model", folder])
    assert "none: no such folder" in _cli(["ground", img, "--model", str(tmp_path / "none")])
    monkeypatch.chdir(tmp_path)
    msg = _cli(["ground", img])
    assert "fclm quickstart" in msg and "fclm init" in msg
