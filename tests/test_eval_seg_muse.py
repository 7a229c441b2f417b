"""Known-answer tests for the LISA (cIoU/gIoU) and PixelLM (MUSE) segmentation metrics."""
import itertools

import numpy as np
import pytest

from fclm.eval.metrics.muse import MuseAccumulator, match_question, muse_ciou_giou
from fclm.eval.metrics.seg import SegAccumulator, ciou_giou, intersection_union, iou_from


def row(*bits):
    return np.array([bits], dtype=np.uint8)


def test_intersection_union_basic_and_empty():
    assert intersection_union(row(1, 1, 0, 0), row(0, 1, 1, 0)) == (1, 3)
    assert intersection_union(row(0, 0), row(0, 0)) == (0, 0)
    assert iou_from(0, 0) == 1.0  # empty prediction vs empty GT (LISA "no-object target")
    assert iou_from(0, 5) == 0.0


def test_ignore_label_255_and_ignore_mask():
    # GT label map: the last two pixels are 255 -> removed from prediction and GT
    assert intersection_union(row(1, 1, 1, 1), np.array([[1, 1, 255, 255]], np.uint8)) == (2, 2)
    # the same through an explicit ignore mask (Sample.ignore_mask)
    assert intersection_union(row(1, 1, 1, 1), row(1, 1, 0, 0), ignore=row(0, 0, 1, 1)) == (2, 2)
    # ignored pixels do not count even when only the prediction covers them
    assert intersection_union(row(0, 0, 1, 1), row(0, 0, 0, 0), ignore=row(0, 0, 1, 1)) == (0, 0)


def test_ciou_giou_known_answer():
    r = ciou_giou([
        (row(1, 1, 0, 0), row(0, 1, 1, 0)),                                 # I=1 U=3 IoU 1/3
        (row(0, 0, 0, 0), row(0, 0, 0, 0)),                                 # empty vs empty: 1.0
        (row(1, 1, 1, 1), np.array([[1, 1, 255, 255]], np.uint8)),          # I=2 U=2 after ignore
        (row(0, 0, 0, 0), row(1, 1, 0, 0)),                                 # empty prediction: I=0 U=2
    ])
    # LISA: acc_iou = I / (U + 1e-5), +1 where U == 0; cIoU = ΣI / (ΣU + 1e-10)
    assert r["gIoU"] == pytest.approx(100 * (1 / (3 + 1e-5) + 1 + 2 / (2 + 1e-5) + 0) / 4, rel=1e-12)
    assert r["cIoU"] == pytest.approx(100 * 3 / (7 + 1e-10), rel=1e-12)
    exact = ciou_giou([(row(1, 1, 0, 0), row(0, 1, 1, 0)), (row(0, 0, 0, 0), row(0, 0, 0, 0))], exact=True)
    assert exact == {"gIoU": pytest.approx(100 * (1 / 3 + 1) / 2, rel=1e-12), "cIoU": pytest.approx(100 / 3, rel=1e-12)}


def test_lisa_histc_rule_written_out():
    """Our I/U equal LISA's intersectionAndUnionGPU (torch.histc, bins=2) on random 0/1/255 maps."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for _ in range(20):
        pred = (rng.random((9, 11)) > 0.5).astype(np.uint8)
        gt = rng.choice([0, 1, 255], size=(9, 11), p=[0.4, 0.4, 0.2]).astype(np.uint8)
        out, tgt = torch.from_numpy(pred).int().view(-1).clone(), torch.from_numpy(gt).int().view(-1)
        out[tgt == 255] = 255
        inter = out[out == tgt]
        ai = torch.histc(inter.float(), bins=2, min=0, max=1)
        au = torch.histc(out.float(), bins=2, min=0, max=1) + torch.histc(tgt.float(), bins=2, min=0, max=1) - ai
        assert intersection_union(pred, gt) == (int(ai[1]), int(au[1]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="original image size"):
        SegAccumulator().add(np.zeros((2, 3)), np.zeros((3, 2)))


def test_muse_unmatched_and_duplicate_predictions():
    g0, g1 = row(1, 1, 0, 0, 0, 0), row(0, 0, 0, 0, 1, 1)
    p0, dup, p2 = row(1, 1, 0, 0, 0, 0), row(1, 1, 0, 0, 0, 0), row(0, 0, 0, 0, 1, 0)
    pairs = match_question([p0, dup, p2], [g0, g1], "clean")
    # one of the duplicates matches g0 (IoU 1), p2 matches g1 (1/2), the other duplicate is unmatched
    assert sorted(p[2] for p in pairs) == [0.0, 0.5, 1.0]
    assert sum(p[0] for p in pairs) == 3 and sum(p[1] for p in pairs) == 6
    ref = match_question([p0, dup, p2], [g0, g1])  # PixelLM: I / (U + 1e-5)
    assert sorted(p[2] for p in ref) == [0.0, 1 / (2 + 1e-5), 2 / (2 + 1e-5)]
    # image 2: no prediction, one GT of 3 pixels -> IoU 0, normalised by max(0, 1) = 1
    images = [[([p0, dup, p2], [g0, g1])], [([], [row(1, 1, 1, 0, 0, 0)])]]
    r = muse_ciou_giou(images, protocol="clean")
    assert r["gIoU"] == pytest.approx(100 * (1.5 + 0) / (3 + 1))
    assert r["cIoU"] == pytest.approx(100 * 3 / (6 + 3))
    r = muse_ciou_giou(images)
    assert r["gIoU"] == pytest.approx(100 * (2 / (2 + 1e-5) + 1 / (2 + 1e-5)) / 4, rel=1e-12)
    assert r["cIoU"] == pytest.approx(100 * 3 / (9 + 1e-10), rel=1e-12)


def test_muse_empty_masks_follow_pixellm():
    """PixelLM pads unmatched masks with empty ones and scores every pair with LISA's rule, so an
    unmatched empty prediction or an unmatched empty ground truth scores 1.0 (clean: 0)."""
    g, empty = row(1, 1, 0, 0), row(0, 0, 0, 0)
    # 2 predictions (one empty, unmatched), 1 GT: (2/(2+1e-5) + 1) / max(2, 1)
    assert MuseAccumulator().add_image([([g, empty], [g])]) == pytest.approx((2 / (2 + 1e-5) + 1) / 2, rel=1e-12)
    assert MuseAccumulator("clean").add_image([([g, empty], [g])]) == pytest.approx(1 / 2)
    # an empty GT mask (no pixel) left unmatched: 1.0 (reference) / 0.0 (clean)
    assert MuseAccumulator().add_image([([], [empty])]) == 1.0
    assert MuseAccumulator("clean").add_image([([], [empty])]) == 0.0
    with pytest.raises(ValueError, match="protocol"):
        MuseAccumulator("other")


def test_muse_normalises_per_image_by_max_pred_gt():
    g, p = row(1, 1, 0, 0), row(1, 1, 0, 0)
    extra = row(0, 0, 1, 1)
    acc = MuseAccumulator("clean")
    # q1: perfect; q2: perfect + one extra prediction. Image: 3 preds, 2 GT -> (1 + 1 + 0) / 3
    assert acc.add_image([([p], [g]), ([p, extra], [g])]) == pytest.approx(2 / 3)
    assert acc.summary()["gIoU"] == pytest.approx(100 * 2 / 3)
    assert acc.summary()["cIoU"] == pytest.approx(100 * 4 / 6)


def test_muse_hungarian_is_optimal_not_greedy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        preds = [rng.random((6, 6)) > 0.5 for _ in range(3)]
        gts = [rng.random((6, 6)) > 0.5 for _ in range(3)]
        got = sum(p[2] for p in match_question(preds, gts, "clean"))
        best = max(sum(iou_from(*intersection_union(preds[i], gts[j])) for i, j in zip(perm, range(3)))
                   for perm in itertools.permutations(range(3)))
        assert got == pytest.approx(best)


def test_muse_empty_question_has_no_weight():
    acc = MuseAccumulator()
    assert acc.add_image([([], [])]) == 0.0
    assert acc.summary() == {"gIoU": 0.0, "cIoU": 0.0}
