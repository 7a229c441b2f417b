"""Images and masks a researcher has: 16-bit files, soft masks; overlays that stay readable."""
import warnings

import numpy as np
import pytest
from PIL import Image

from fclm.data.schema import FCLMDataError
from fclm.infer.inputs import FCLMInputWarning, binarize_mask, load_image, load_region

H, W = 24, 32


def grey16():
    return (np.arange(H * W).reshape(H, W) * 85).astype(np.uint16)  # 0 .. 65195


def test_16bit_png_is_scaled_not_white(tmp_path):
    a = grey16()
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode == "I;16"
    expected = np.floor(a.astype(np.float64) / 257 + 0.5)  # full 16-bit range → 8 bits
    for x in (str(p), p.read_bytes(), Image.open(p), a):
        got = np.asarray(load_image(x))
        assert got.shape == (H, W, 3) and (got[..., 0] == got[..., 2]).all()
        np.testing.assert_array_equal(got[..., 0], expected)
        assert got.min() == 0 and got.max() == 254  # not a white image


@pytest.mark.parametrize("arr, message", [
    (np.full((H, W, 3), -0.5, np.float32), "negative values"),
    (np.full((H, W), 300.0, np.float32), "float values up to 300"),
    (np.full((H, W), 1000, np.int32), "for 16-bit images give a uint16 array"),
    (np.full((H, W), 70000, np.int64), "outside 0-255 / 0-65535"),
])
def test_out_of_range_arrays_are_refused(arr, message):
    with pytest.raises(FCLMDataError, match=message):
        load_image(arr)


def test_float_and_int_arrays_in_range():
    f = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    np.testing.assert_array_equal(np.asarray(load_image(f))[..., 0], np.round(f * 255))
    i = (np.arange(H * W) % 256).reshape(H, W).astype(np.int64)
    np.testing.assert_array_equal(np.asarray(load_image(i))[..., 0], i)


def square():
    m = np.zeros((H, W), bool)
    m[5:15, 8:20] = True
    return m


@pytest.mark.parametrize("kind", ["8bit_noise", "jpeg", "float_prob", "16bit", "labels01", "rgba_soft"])
def test_soft_masks_binarise_to_the_object(tmp_path, kind):
    m = square()
    rng = np.random.default_rng(0)
    if kind == "8bit_noise":  # anti-aliased edge + faint background
        v = np.where(m, 255, rng.integers(1, 20, (H, W))).astype(np.uint8)
        v[4, 8:20] = 90  # a soft edge row just outside the object
        src = tmp_path / "m.png"
        Image.fromarray(v).save(src)
    elif kind == "jpeg":
        src = tmp_path / "m.jpg"
        Image.fromarray(m.astype(np.uint8) * 255).save(src, quality=60)
    elif kind == "float_prob":
        src = np.where(m, 0.9, 0.3).astype(np.float32)
    elif kind == "16bit":
        src = tmp_path / "m16.png"
        Image.fromarray(np.where(m, 65535, 500).astype(np.uint16)).save(src)
    elif kind == "labels01":
        src = tmp_path / "m01.png"
        Image.fromarray(m.astype(np.uint8)).save(src)  # 0/1 label PNG: looks black, still the object
    else:
        rgba = np.zeros((H, W, 4), np.uint8)
        rgba[..., 3] = np.where(m, 255, 40)
        src = tmp_path / "soft.png"
        Image.fromarray(rgba).save(src)
    got = load_region(str(src) if not isinstance(src, np.ndarray) else src, H, W)
    if kind == "jpeg":  # lossy: the object, give or take its border
        assert (got ^ m).sum() <= 2 * (10 + 12) and got[m].mean() > 0.9
    else:
        np.testing.assert_array_equal(got, m)


def test_binarize_rule():
    assert binarize_mask(np.array([[0, 127, 128, 255]], np.uint8)).tolist() == [[False, False, True, True]]
    assert binarize_mask(np.array([[0.0, 0.5, 0.51, 1.0]])).tolist() == [[False, False, True, True]]
    assert binarize_mask(np.array([[0, 32767, 32768, 65535]], np.uint16)).tolist() == [[False, False, True, True]]
    assert binarize_mask(np.array([[0, 1]], np.int64)).tolist() == [[False, True]]
    with pytest.raises(FCLMDataError, match="negative"):
        binarize_mask(np.array([[-1, 1]]))


def test_faint_only_mask_is_refused_as_empty(tmp_path):
    p = tmp_path / "faint.png"
    Image.fromarray(np.full((H, W), 12, np.uint8)).save(p)  # was a whole-image region before
    with pytest.raises(FCLMDataError, match="mask is empty"):
        load_region(str(p), H, W)


def test_near_full_masks_warn(tmp_path):
    inverted = np.ones((H, W), bool)
    inverted[5:10, 8:14] = False  # a small object saved inverted: 96.1 % of the image
    p = tmp_path / "inv.png"
    Image.fromarray(inverted.astype(np.uint8) * 255).save(p)
    with pytest.warns(FCLMInputWarning, match=r"covers 9\d\.\d % of the image.*invert the mask"):
        load_region(str(p), H, W)
    with pytest.warns(FCLMInputWarning):
        load_region(inverted.astype(np.uint8), H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_region(square().astype(np.uint8) * 255, H, W)  # an ordinary mask: no warning
        load_region(inverted, H, W)  # bool arrays say exactly what they mean
        load_region([0, 0, W, H], H, W)  # a whole-image box is explicit


# ------------------------------------------------------------------ overlays
def _image_part(out, img):
    x0 = (out.size[0] - img.size[0]) // 2
    return np.asarray(out)[: img.size[1], x0: x0 + img.size[0]]


@pytest.mark.parametrize("size", [(40, 30), (1600, 1200)])
def test_legend_is_below_the_image(size):
    from fclm.data.overlay import tint
    from fclm.infer.visualize import render_overlay

    w, h = size
    img = Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))
    m = np.zeros((h, w), bool)
    m[: h // 3, : w // 3] = True  # the top-left corner, where the legend used to be drawn
    out = render_overlay(img, [m], ["a long label " * 6], title="an answer that is also rather long " * 3)
    assert out.size[0] == max(w, 360) and out.size[1] > h
    np.testing.assert_array_equal(_image_part(out, img), np.asarray(tint(img, [m], thickness=max(1, round(min(w, h) / 200)))))
    legend = np.asarray(out)[h:]
    assert (legend.min(-1) < 80).any()  # dark text in the strip


def _text_height(out, h):
    """Height in px of the first text row of the legend strip (dark pixels)."""
    strip = np.asarray(out.convert("L"))[h:]
    rows = np.where((strip < 100).any(1))[0]
    first = rows[0]
    end = first
    while end + 1 < len(strip) and (strip[end + 1] < 100).any():
        end += 1
    return end - first + 1


def test_legend_font_scales_with_the_image():
    from fclm.infer.visualize import render_overlay

    heights = {}
    for w in (400, 2400):
        h = w * 3 // 4
        img = Image.new("RGB", (w, h), (120, 120, 120))
        m = np.zeros((h, w), bool)
        m[10:50, 10:50] = True
        heights[w] = _text_height(render_overlay(img, [m], ["Label"], title="Title"), h)
    assert heights[2400] >= 4 * heights[400] >= 4 * 8


def test_outline_visible_on_a_same_coloured_object():
    from fclm.data.overlay import color
    from fclm.infer.visualize import render_overlay

    w = h = 200
    c = color(0)
    img = Image.new("RGB", (w, h), c)  # the object and the background have mask 0's colour
    m = np.zeros((h, w), bool)
    m[50:150, 50:150] = True
    out = np.asarray(render_overlay(img, outlines=[m], outline_labels=["x"]))[:h, 80:280]
    ring = np.zeros((h, w), bool)
    ring[49, 50:150] = ring[150, 50:150] = True  # just outside the mask's top and bottom rows
    dist = np.abs(out[ring].astype(int) - np.array(c)).sum(-1)
    assert (dist > 200).all()  # a contrasting ring around the outline
    assert tuple(out[50, 100]) == c  # the coloured outline itself
