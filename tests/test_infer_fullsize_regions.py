"""Full-size region inputs (issue 12): boxes from projections, pyramid crops, bounded coverage, bool masks."""
import numpy as np
import pytest
import torch
from PIL import Image

from fclm.model.processing_fclm import SAM_MEAN, SAM_STD, region_crop
from fclm.model.region_extractor import box_coverage, mask_box, mask_coverage


def _ellipse(h, w, cx, cy, rx, ry):
    yy, xx = np.ogrid[:h, :w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def test_mask_box_from_projections_equals_nonzero_extent():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(5, 300, 2)
        m = rng.random((h, w)) < rng.uniform(0.001, 0.05)
        m[rng.integers(h), rng.integers(w)] = True
        ys, xs = np.nonzero(m)
        expect = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert mask_box(torch.from_numpy(m)) == expect
        assert mask_box(torch.from_numpy(m.astype(np.uint8))) == expect
        big = torch.from_numpy(np.pad(m, 3))[3:-3, 3:-3]  # a non-contiguous view
        assert mask_box(big) == expect
    with pytest.raises(ValueError, match="empty"):
        mask_box(torch.zeros(4, 4, dtype=torch.bool))


def _pil_crop(image, mask, size, margin):
    """The PIL reference: crop the box (+margin) at full resolution, resize (antialiased bilinear)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    H, W = mask.shape
    box = (max(0, x0 - mx), max(0, y0 - my), min(W, x1 + mx), min(H, y1 + my))
    crop = image.crop(box).resize((size, size), Image.BILINEAR)
    cm = Image.fromarray(mask[box[1]: box[3], box[0]: box[2]].astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return ((np.asarray(crop, dtype=np.float32) - SAM_MEAN) / SAM_STD).transpose(2, 0, 1), np.asarray(cm) > 127


@pytest.mark.parametrize("box", [(300, 200, 2300, 1700), (1000, 900, 1150, 1000), (0, 0, 2500, 1800)])
def test_pyramid_crop_matches_full_resolution_resize(box):
    H, W = 1800, 2500
    yy, xx = np.mgrid[:H, :W]
    img = Image.fromarray(np.stack([(np.sin(xx / 40) + 1) * 120, (np.cos(yy / 55) + 1) * 120,
                                    (xx // 7 + yy // 5) % 256], -1).astype(np.uint8))
    x0, y0, x1, y1 = box
    m = _ellipse(H, W, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2)
    ref, ref_m = _pil_crop(img, m, 256, 0.1)
    got, got_m = region_crop(img, m, 256, 0.1)
    assert got.shape == (3, 256, 256) and got_m.shape == (256, 256) and got_m.dtype == bool
    assert np.abs(got - ref).mean() < 0.03  # normalised units (≈ 1.5 grey levels)
    assert (got_m == ref_m).mean() > 0.999


def test_box_coverage_exact_for_small_boxes_and_close_for_large():
    m = torch.from_numpy(_ellipse(3000, 4000, 2000, 1500, 1500, 1000))
    box = mask_box(m)
    x0, y0, x1, y1 = box
    exact = mask_coverage(m[None, y0:y1, x0:x1], (16, 16))[0]
    approx = box_coverage(m, box, 16)
    assert (approx - exact).abs().max() < 0.1 and (approx - exact).abs().mean() < 0.02
    small = torch.from_numpy(_ellipse(300, 400, 200, 150, 50, 40))
    b = mask_box(small)
    torch.testing.assert_close(box_coverage(small, b, 16), mask_coverage(small[None, b[1]:b[3], b[0]:b[2]], (16, 16))[0])


def test_segment_masks_are_bool_and_logits_only_on_request(tiny):
    from fclm.infer import FCLMPipeline

    model, proc, _ = tiny
    pipe = FCLMPipeline(model, proc)
    img = Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8))
    r = pipe.segment(img, "the red circle", teacher_forced=True)
    assert len(r.masks) == 1 and r.masks[0].dtype == bool and r.masks[0].shape == (90, 120)
    assert r.mask_logits is None
    k = pipe.segment(img, "the red circle", teacher_forced=True, keep_logits=True)
    assert k.mask_logits[0].shape == (90, 120) and k.mask_logits[0].dtype == torch.float32
    assert np.array_equal(k.mask_logits[0].numpy() > 0, r.masks[0])
