"""``pos_appearance``: T_pos also carries the look of the region (pooled stride-8 cells of SAM's input)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TEXTS, make_sample


@pytest.fixture(scope="module")
def app_model():
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, pos_appearance=True, self_recon_scope="all_objects",
                             latent_scope="all_targets")
    return model, proc


def _t_pos_and_pooled(model, image: np.ndarray, masks: list[np.ndarray]):
    """T_pos of ``masks`` on ``image`` and the vector the appearance MLP was given."""
    from fclm.model.modeling_fclm import appearance_of
    from fclm.model.processing_fclm import sam_preprocess
    from PIL import Image

    pixels, valid = sam_preprocess(Image.fromarray(image), model.config.sam_config.vision_config.image_size)
    px = torch.from_numpy(pixels)[None]
    seen = []
    hook = model.region_extractor.appearance_proj.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            src = model.appearance_source(px, torch.tensor([valid]), torch.zeros(1, dtype=torch.long))
            t_pos, _ = model.region_extractor.encode_position(
                [torch.from_numpy(m) for m in masks], torch.float32,
                appearance=appearance_of(src, torch.zeros(len(masks), dtype=torch.long)))
    finally:
        hook.remove()
    return t_pos, seen[0], px, valid


def test_appearance_is_the_stem_mean_under_the_mask(app_model):
    """Expected value without our pooling code: the mask scaled to SAM's input (an exact 2× here),
    padded to the square, area-averaged to the stride-8 cells, weighting the convolution's cells."""
    model, _ = app_model
    s = make_sample(h=96, w=128, seed=2)  # SAM input 256: the image fills (192, 256), rows below padded
    image = s.image.open()
    arr = np.asarray(image)
    from fclm.data.masks import decode_rle

    masks = [decode_rle(o.mask).astype(bool) for o in s.objects]
    _, pooled, px, valid = _t_pos_and_pooled(model, arr, masks)
    assert tuple(valid) == (192, 256)
    stem = model.region_extractor.appearance_stem
    with torch.no_grad():
        cells = F.conv2d(px, stem.weight, stem.bias, stride=8)[0]  # (r, 32, 32)
    for k, m in enumerate(masks):
        big = np.zeros((256, 256))
        big[:192, :256] = m.repeat(2, 0).repeat(2, 1)
        cover = torch.from_numpy(big.reshape(32, 8, 32, 8).mean((1, 3))).float()
        exp = (cells * cover).sum((1, 2)) / cover.sum()
        assert torch.allclose(pooled[k], exp, atol=1e-5), k


def test_t_pos_follows_the_look_inside_the_mask_only(app_model):
    model, _ = app_model
    img = np.full((128, 128, 3), 40, np.uint8)
    m = np.zeros((128, 128), bool)
    m[16:48, 16:48] = True  # SAM cells 4..11 (2× scale): the cells from 13 on never touch it
    img[m] = (200, 30, 30)
    base, *_ = _t_pos_and_pooled(model, img, [m])
    recoloured = img.copy()
    recoloured[m] = (30, 30, 200)
    far = img.copy()
    far[80:, 80:] = (250, 250, 0)
    t_recoloured, *_ = _t_pos_and_pooled(model, recoloured, [m])
    t_far, *_ = _t_pos_and_pooled(model, far, [m])
    assert (t_recoloured - base).norm() > 1e-3 * base.norm()
    assert torch.allclose(t_far, base, atol=1e-6)


def test_pos_appearance_trains_and_targets_every_mask_route(app_model):
    """The <pos> slots (through the caption's CE) and L_self train the stem; L_latent's pseudo-label
    (detached) is the target's T_pos with its look; a missing image is a clear error."""
    from fclm.data.masks import decode_rle
    from fclm.data.schema import Example

    model, proc = app_model
    s = make_sample(seed=3)
    objects = [decode_rle(o.mask).astype(bool) for o in s.objects]
    dlc = Example("dlc", s, "Describe <region>.", "a box", region_ids=[0])
    res = Example("res", s, "Segment the box.", "Sure, [SEG].", target_ids=[1])
    model.train()
    seen = []
    hook = model.region_extractor.appearance_proj.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        for example, self_w, latent_w, term in ((dlc, 0.0, 0.0, "loss_ce"), (res, 1.0, 0.0, "loss_self"),
                                                (res, 0.0, 1.0, None)):
            model.config.self_recon_weight, model.config.latent_weight = self_w, latent_w
            batch = proc([example])
            batch["object_masks"] = [torch.from_numpy(m) for m in objects]
            batch["object_image_index"] = torch.zeros(len(objects), dtype=torch.long)
            model.zero_grad()
            seen.clear()
            out = model(**batch)
            if term is None:  # L_latent: the pooled look of the target object is among the pseudo-label's inputs
                assert torch.isfinite(out.loss_latent)
                in_forward = list(seen)
                model.eval()
                _, exp, *_ = _t_pos_and_pooled(model, np.asarray(s.image.open()), [objects[1]])
                model.train()
                assert any(v.shape[0] == 1 and torch.allclose(v, exp, atol=1e-5) for v in in_forward)
                continue
            getattr(out, term).backward()
            grad = model.region_extractor.appearance_stem.weight.grad
            assert grad is not None and grad.abs().sum() > 0, term
    finally:
        hook.remove()
        model.config.self_recon_weight, model.config.latent_weight = 1.0, 1.0
    model.eval()
    with pytest.raises(ValueError, match="pos_appearance"):
        model.region_extractor.encode_position([torch.ones(8, 8, dtype=torch.bool)], torch.float32)


def test_batched_decoding_reads_each_regions_own_image(app_model):
    """The inference decoder's and ``generate``'s T_pos equal the training forward's, for regions of
    two images."""
    from fclm.data.masks import decode_rle
    from fclm.data.schema import Example
    from fclm.infer.decoding import GenerationOptions, Request, run_batch

    model, proc = app_model
    model.eval()
    samples = [make_sample(seed=5), make_sample(h=120, w=80, seed=6)]
    got = []
    hook = model.region_extractor.register_forward_hook(lambda m, i, o: got.append(o[1]))
    try:
        with torch.no_grad():
            reqs = [Request(s.image.open(), "Describe <region>.", [decode_rle(s.objects[i].mask).astype(bool)])
                    for s in samples for i in (0, 2)]
            run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=2))
            batched = got[-1]
            single, generated = [], []
            for s in samples:
                for i in (0, 2):
                    model(**proc([Example("dlc", s, "Describe <region>.", "a", region_ids=[i])]))
                    single.append(got[-1][0])
                    inputs = proc(images=s.image.open(), text="Describe <region>.",
                                  regions=[decode_rle(s.objects[i].mask).astype(bool)])
                    model.generate(**inputs, max_new_tokens=1)
                    generated.append(got[-1][0])
    finally:
        hook.remove()
    assert batched.shape[0] == 4
    assert torch.allclose(batched, torch.stack(single), atol=1e-5)
    assert torch.allclose(torch.stack(generated), torch.stack(single), atol=1e-5)
    assert not torch.allclose(batched[0], batched[2], atol=1e-3)  # same object index, other image
