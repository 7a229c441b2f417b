"""Inference inputs: every image / region form, and every bad input's error message."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fclm.data.masks import encode_mask
from fclm.data.schema import FCLMDataError
from fclm.infer.inputs import check_text_length, load_image, load_region, load_regions

H, W = 48, 64


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    p = tmp_path / "img.png"
    Image.fromarray(img).save(p)
    m = np.zeros((H, W), bool)
    m[5:20, 10:30] = True
    mp = tmp_path / "mask.png"
    Image.fromarray(m.astype(np.uint8) * 255).save(mp)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = m * 255
    mp2 = tmp_path / "mask_rgba.png"
    Image.fromarray(rgba).save(mp2)
    jp = tmp_path / "mask.json"
    jp.write_text(json.dumps(encode_mask(m)))
    return img, p, m, mp, mp2, jp, tmp_path


def test_image_forms(files):
    img, p, *_ = files
    for x in (str(p), p, Image.fromarray(img), img, img.astype(np.float32) / 255, img[..., 0], p.read_bytes(),
              torch.from_numpy(img)):
        im = load_image(x)
        assert im.size == (W, H) and im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(load_image(str(p))), img)


def test_region_forms(files):
    img, p, m, mp, mp2, jp, _ = files
    rle = encode_mask(m)
    rle_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    poly = [10, 5, 30, 5, 30, 20, 10, 20]
    for r in (str(mp), mp2, jp, m, m.astype(np.uint8), torch.from_numpy(m), rle, rle_bytes):
        np.testing.assert_array_equal(load_region(r, H, W), m)
    box = load_region([10, 5, 30, 20], H, W)  # a box becomes the rectangle mask, x1/y1 exclusive
    np.testing.assert_array_equal(box, m)
    np.testing.assert_array_equal(load_region({"bbox": [10, 5, 20, 15]}, H, W), m)
    assert load_region(poly, H, W).sum() > 0 and load_region([poly, [40, 30, 50, 30, 45, 40]], H, W).sum() > 0
    assert len(load_regions([m, [10, 5, 30, 20], rle], H, W)) == 3
    assert len(load_regions(m, H, W)) == 1 and len(load_regions([10, 5, 30, 20], H, W)) == 1
    assert len(load_regions(np.stack([m, m]), H, W)) == 2


@pytest.mark.parametrize("bad, exc, message", [
    ("nope.png", FileNotFoundError, "image not found: nope.png"),
    (b"not an image", FCLMDataError, "cannot read image"),
    (np.zeros((5, 6, 7), np.uint8), FCLMDataError, "expected an HxW, HxWx3 or HxWx4 array"),
    (3.5, FCLMDataError, "unsupported image input"),
])
def test_bad_images(bad, exc, message):
    with pytest.raises(exc, match=message):
        load_image(bad)


def test_corrupt_file_and_bomb(files):
    img, p, *_, tmp = files
    bad = tmp / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(FCLMDataError, match=r"cannot read image .*corrupt\.jpg"):
        load_image(str(bad))
    with pytest.raises(FCLMDataError, match=r"img\.png has 64x48 = 3072 pixels, above the limit of 1000"):
        load_image(str(p), max_pixels=1000)
    with pytest.raises(FCLMDataError, match="above the limit of 1000"):
        load_image(img, max_pixels=1000)


def test_bad_regions(files):
    *_, tmp = files
    empty = np.zeros((H, W), bool)
    cases = [
        (np.ones((10, 12), bool), r"region 0: mask is 12x10 \(WxH\) but the image is 64x48"),
        (empty, r"region 0: mask is empty"),
        ({"size": [10, 10], "counts": "abc"}, r"RLE mask has size 10x10 \(WxH\) but the image is 64x48"),
        ([5, 5, 5, 9], r"box \[5, 5, 5, 9\] must be \[x0, y0, x1, y1\] with x1 > x0"),
        ([100, 100, 120, 130], r"lies outside the 64x48 image"),
        ([1, 2, 3, 4, 5], r"a polygon needs an even number"),
        (["a", "b"], r"a list region must be a box"),
        ({"foo": 1}, r"a region dict needs"),
        (np.ones((2, H, W), bool)[None], r"must be 2-D"),
    ]
    for region, msg in cases:
        with pytest.raises(FCLMDataError, match=msg):
            load_regions([region], H, W)
    with pytest.raises(FileNotFoundError, match="mask file not found"):
        load_regions([str(tmp / "missing.png")], H, W)
    (tmp / "bad.json").write_text("{not json")
    with pytest.raises(FCLMDataError, match="cannot read JSON region"):
        load_regions([str(tmp / "bad.json")], H, W)


def test_text_length_message():
    with pytest.raises(FCLMDataError, match=r"prompt is too long: 5000 tokens with the image, above the model's max_length=4096"):
        check_text_length(5000, 4096, "x" * 500)
