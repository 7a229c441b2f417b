"""``box_prompt``: a predicted box joins the mask prompt as SAM's two box-corner tokens."""
import numpy as np
import torch

from conftest import TINY_TEXTS, make_sample


def test_box_targets_are_centre_and_size_fractions():
    from fclm.model.mask_decoding import box_targets

    m = torch.zeros(40, 80, dtype=torch.uint8)
    m[10:30, 20:60] = 1  # rows 10..29, cols 20..59
    m[0:5, 0:80] = 255  # ignore pixels are not the object
    b = box_targets([m, m.bool() & (m == 1)])
    exp = torch.tensor([(20 + 60) / 2 / 80, (10 + 30) / 2 / 40, 40 / 80, 20 / 40])
    assert torch.allclose(b, torch.stack([exp, exp]))


def test_corner_tokens_are_sams_box_encoding_of_the_corners():
    """Expected tokens from SAM's definition (random Fourier features of the corner, normalised by
    the input size, plus the learned corner embeddings), computed here without our function."""
    from fclm.model.builders import build_tiny
    from fclm.model.mask_decoding import box_corner_tokens

    model, _ = build_tiny(texts=TINY_TEXTS, box_prompt=True)
    sam = model.sam
    S = sam.config.prompt_encoder_config.image_size
    boxes = torch.tensor([[0.5, 0.25, 0.5, 0.3], [0.9, 0.9, 0.4, 0.4]])
    valid = torch.tensor([[192, 256], [256, 128]])  # (h, w) inside the S×S input
    got = box_corner_tokens(sam, boxes, valid)
    gauss = sam.prompt_encoder.shared_embedding.positional_embedding.detach().double()
    pe = sam.prompt_encoder.point_embed
    for i, ((cx, cy, w, h), (vh, vw)) in enumerate(zip(boxes.tolist(), valid.tolist())):
        corners = [(max(cx - w / 2, 0) * vw, max(cy - h / 2, 0) * vh), (min(cx + w / 2, 1) * vw, min(cy + h / 2, 1) * vh)]
        for k, (x, y) in enumerate(corners):
            xy = torch.tensor([(x + 0.5) / S, (y + 0.5) / S], dtype=torch.float64) * 2 - 1
            proj = 2 * np.pi * (xy @ gauss)
            exp = torch.cat([proj.sin(), proj.cos()]) + pe[2 + k].weight[0].detach().double()
            assert torch.allclose(got[i, k].double(), exp, atol=1e-4), (i, k)


def test_box_prompt_trains_and_round_trips(tmp_path):
    from fclm.data.schema import Example
    from fclm.model.builders import build_tiny
    from fclm.model.modeling_fclm import FCLMForConditionalGeneration

    model, proc = build_tiny(str(tmp_path / "m"), texts=TINY_TEXTS, box_prompt=True, box_loss_weight=3.0)
    assert any(m is model.box_head for m in model.module_groups()["seg_projector"])
    s = make_sample(seed=3)
    batch = proc([Example("res", s, "Segment the box.", "Sure, [SEG].", target_ids=[1]),
                  Example("dlc", s, "Describe <region>.", "a box", region_ids=[0])])
    model.train()
    out = model(**batch)
    # the loss term is 3 × DETR's L1 between the predicted boxes and the true ones, recomputed here
    from fclm.data.masks import decode_rle
    true = []
    for m in (decode_rle(s.objects[1].mask), decode_rle(s.objects[0].mask)):  # [SEG] target, then <pos> region
        ys, xs = np.nonzero(m)
        H, W = m.shape
        true.append([(xs.min() + xs.max() + 1) / 2 / W, (ys.min() + ys.max() + 1) / 2 / H,
                     (xs.max() + 1 - xs.min()) / W, (ys.max() + 1 - ys.min()) / H])
    with torch.no_grad():
        pred = torch.cat([model.box_head(out.seg_queries), model.box_head(model.region_extractor.encode_position(
            [torch.from_numpy(decode_rle(s.objects[0].mask))], torch.float32)[0])])
    exp = (pred - torch.tensor(true, dtype=torch.float32)).abs().sum(-1).mean()
    assert torch.allclose(out.loss_box, exp, atol=1e-5)
    out.loss.backward()
    assert model.box_head[0].weight.grad.abs().sum() > 0
    assert model.sam.prompt_encoder.point_embed[2].weight.grad.abs().sum() > 0  # the corner tokens reach the decoder
    # a saved box-prompt model decodes the same masks after loading
    model.eval()
    with torch.no_grad():
        before = model(**batch).pred_masks
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    again = FCLMForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    assert again.config.box_prompt and again.box_head is not None
    with torch.no_grad():
        after = again(**batch).pred_masks
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, after))


def test_pipeline_decodes_with_the_predicted_box(tmp_path, monkeypatch):
    from fclm.infer import decoding
    from fclm.infer.pipeline import FCLMPipeline
    from fclm.model.builders import build_tiny

    build_tiny(str(tmp_path / "m"), texts=TINY_TEXTS, box_prompt=True)
    pipe = FCLMPipeline.from_pretrained(str(tmp_path / "m"), device="cpu")
    seen = []
    real = decoding.decode_masks
    monkeypatch.setattr(decoding, "decode_masks", lambda *a, **k: seen.append(k.get("boxes")) or real(*a, **k))
    s = make_sample(seed=4)
    res = pipe.segment(s.image.open(), "the red circle", teacher_forced=True)
    assert len(res.masks) == 1 and res.masks[0].shape == (s.height, s.width)
    assert seen and seen[0] is not None and seen[0].shape == (1, 4)
