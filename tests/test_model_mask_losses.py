"""Training-time mask-loss levers: low-resolution losses and a cap on L_self's extra objects."""
import numpy as np
import pytest
import torch

from conftest import TINY_TEXTS
from fclm.model.losses import IGNORE, bce_loss, dice_loss, mask_losses


def _np_dice_bce(logit: np.ndarray, t: np.ndarray, w: np.ndarray, eps=1.0):
    p = 1 / (1 + np.exp(-logit)) * w
    t = t * w
    dice = 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    bce = (np.maximum(logit, 0) - logit * t + np.log1p(np.exp(-np.abs(logit)))) * w
    return dice, bce.sum() / max(w.sum(), 1.0)


def test_equal_sizes_match_per_mask_losses():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(12, 16, generator=g), torch.randn(7, 9, generator=g), torch.randn(12, 16, generator=g)]
    targets = [(torch.rand(l.shape, generator=g) > 0.5).to(torch.uint8) for l in logits]
    targets[2][:3] = IGNORE
    d, b = mask_losses(logits, targets)
    exp_d = torch.stack([dice_loss(l, t) for l, t in zip(logits, targets)]).mean()
    exp_b = torch.stack([bce_loss(l, t) for l, t in zip(logits, targets)]).mean()
    assert torch.allclose(d, exp_d, atol=1e-6) and torch.allclose(b, exp_b, atol=1e-6)


def test_larger_target_is_area_pooled():
    """A 16×16 target against 4×4 logits: each logit cell sees the mean of its 4×4 block."""
    rng = np.random.default_rng(1)
    target = (rng.random((16, 16)) > 0.6).astype(np.uint8)
    target[:4, :8] = IGNORE  # two whole cells ignored, and partly-ignored cells below
    target[4, :4] = IGNORE
    logit = rng.normal(size=(4, 4)).astype(np.float32)
    blocks = target.reshape(4, 4, 4, 4).transpose(0, 2, 1, 3).reshape(4, 4, 16)
    valid = (blocks != IGNORE).mean(-1)
    fg = (blocks == 1).sum(-1) / np.maximum((blocks != IGNORE).sum(-1), 1)
    exp_d, exp_b = _np_dice_bce(logit.astype(np.float64), fg, valid)
    d, b = mask_losses([torch.from_numpy(logit)], [torch.from_numpy(target)])
    assert abs(float(d) - exp_d) < 1e-5 and abs(float(b) - exp_b) < 1e-5


def test_low_res_decode_shapes_and_training_losses():
    from conftest import make_sample
    from fclm.data.schema import Example
    from fclm.model.builders import build_tiny
    from fclm.model.mask_decoding import decode_masks

    model, proc = build_tiny(texts=TINY_TEXTS)
    s = make_sample(h=96, w=128, seed=2)
    batch = proc([Example("res", s, "Segment the box.", "Sure, [SEG].", target_ids=[1]),
                  Example("dlc", s, "Describe <region>.", "a box", region_ids=[0])])
    sam = model.sam
    emb = sam.get_image_embeddings(batch["sam_pixel_values"][:1])
    prompts = torch.randn(2, model.config.sam_prompt_size)
    idx = torch.zeros(2, dtype=torch.long)
    full = decode_masks(sam, prompts, emb, idx, batch["sam_valid_sizes"], batch["original_sizes"])
    low = decode_masks(sam, prompts, emb, idx, batch["sam_valid_sizes"], batch["original_sizes"], at_low_res=True)
    S = sam.config.vision_config.image_size
    h, w = (int(v) for v in batch["sam_valid_sizes"][0])
    r = 4 * sam.config.prompt_encoder_config.image_size // 16 / S  # 4g / S
    assert [tuple(m.shape) for m in full] == [(96, 128)] * 2
    assert [tuple(m.shape) for m in low] == [(round(h * r), round(w * r))] * 2
    model.train()
    model.config.mask_loss_at_low_res = True
    out = model(**batch)
    assert torch.isfinite(out.loss_seg) and torch.isfinite(out.loss_self)
    out.loss.backward()
    assert model.seg_projector[0].weight.grad.abs().sum() > 0


def test_self_recon_max_masks_caps_extra_objects(monkeypatch):
    from conftest import make_sample
    from fclm.data.schema import Example
    from fclm.model import modeling_fclm
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, self_recon_scope="all_objects", self_recon_max_masks=4)
    proc.with_object_masks = True
    exs = [Example("dlc", make_sample(seed=i), "Describe <region>.", "a box", region_ids=[0]) for i in range(4)]
    batch = proc(exs)
    assert len(batch["object_masks"]) == 12
    counts = []
    real = modeling_fclm.decode_masks
    monkeypatch.setattr(modeling_fclm, "decode_masks",
                        lambda sam, p, *a, **k: counts.append(len(p)) or real(sam, p, *a, **k))
    model.train()
    model(**batch)
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert counts == [4 + 4, 4 + 12]  # 4 prompt regions always, then 4 of the 12 objects (training only)
    with pytest.raises(ValueError, match="self_recon_max_masks"):
        build_tiny(texts=TINY_TEXTS, self_recon_max_masks=-1)
