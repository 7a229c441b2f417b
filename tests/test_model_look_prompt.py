"""``look_prompt``: the mask decoder gets the region's look as a second sparse prompt token."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TEXTS, make_sample
from fclm.data.masks import decode_rle


@pytest.fixture(scope="module")
def look_model(tmp_path_factory):
    from fclm.model.builders import build_tiny

    path = tmp_path_factory.mktemp("look") / "m"
    model, proc = build_tiny(str(path), texts=TINY_TEXTS, look_prompt=True, look_latent_weight=1.0,
                             self_recon_scope="all_objects", latent_scope="all_targets")
    return model, proc, path


def _pooled_look(model, image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """The look token of ``mask``, computed without the extractor's pooling code: SAM's input (an
    exact 2× of the 96×128 image, padded below to 256²), the stem's stride-8 cells averaged with each
    cell's share of the mask scaled 2×, then ``look_proj``."""
    from fclm.model.processing_fclm import sam_preprocess
    from PIL import Image

    pixels, valid = sam_preprocess(Image.fromarray(image), model.config.sam_config.vision_config.image_size)
    assert tuple(valid) == (192, 256)
    stem = model.region_extractor.appearance_stem
    with torch.no_grad():
        cells = F.conv2d(torch.from_numpy(pixels)[None], stem.weight, stem.bias, stride=8)[0]  # (r, 32, 32)
    big = np.zeros((256, 256))
    big[:192, :256] = mask.repeat(2, 0).repeat(2, 1)
    cover = torch.from_numpy(big.reshape(32, 8, 32, 8).mean((1, 3))).float()
    pooled = (cells * cover).sum((1, 2)) / cover.sum()
    return model.region_extractor.look_proj(pooled)


def test_look_token_joins_the_prompt_and_dropout_replaces_it(look_model):
    """A different look gives a different mask; ``look_dropout=1`` decodes exactly as SAM's "not a
    point" token in the look's place; T_pos does not depend on the look."""
    from fclm.model.mask_decoding import decode_masks, sam_image_embeddings
    from fclm.model.processing_fclm import sam_preprocess

    model, _, _ = look_model
    model.eval()
    s = make_sample(seed=4)
    pixels, valid = sam_preprocess(s.image.open(), model.config.sam_config.vision_config.image_size)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randn(2, model.config.sam_prompt_size, generator=g)
    looks = torch.randn(2, model.config.sam_prompt_size, generator=g) * 3
    none = model.sam.prompt_encoder.not_a_point_embed.weight[0].expand(2, -1)
    args = dict(image_index=torch.zeros(2, dtype=torch.long), valid_sizes=torch.tensor([valid]),
                original_sizes=torch.tensor([[s.height, s.width]]))
    with torch.no_grad():
        emb = sam_image_embeddings(model.sam, torch.from_numpy(pixels)[None])
        with_look = decode_masks(model.sam, prompts, emb, looks=looks, **args)
        dropped = decode_masks(model.sam, prompts, emb, looks=looks, look_dropout=1.0, **args)
        explicit = decode_masks(model.sam, prompts, emb, looks=none, **args)
    for a, b, c in zip(with_look, dropped, explicit):
        torch.testing.assert_close(b, c)
        assert (a - b).abs().max() > 1e-3
    assert not hasattr(model.region_extractor, "appearance_proj")  # T_pos stays geometry only


def test_look_prompt_trains_and_round_trips(look_model):
    """L_seg trains the [SEG] look head; L_self trains the <pos> look (stem and look_proj); the look
    pull's target is the target mask's look token; the switch survives save/load."""
    from fclm.data.schema import Example
    from fclm.model.builders import load_fclm

    model, proc, path = look_model
    s = make_sample(seed=3)
    objects = [decode_rle(o.mask).astype(bool) for o in s.objects]
    res = Example("res", s, "Segment the box.", "Sure, [SEG].", target_ids=[1])
    batch = proc([res])
    batch["object_masks"] = [torch.from_numpy(m) for m in objects]
    batch["object_image_index"] = torch.zeros(len(objects), dtype=torch.long)
    assert any(m is model.look_head for m in model.module_groups()["seg_projector"])
    model.train()
    try:
        model.config.look_prompt_dropout = 0.0
        for term, weights in (("loss_seg", model.look_head[0].weight),
                              ("loss_self", model.region_extractor.look_proj[0].weight),
                              ("loss_self", model.region_extractor.appearance_stem.weight)):
            model.zero_grad()
            getattr(model(**batch), term).backward()
            assert weights.grad is not None and weights.grad.abs().sum() > 0, term
        model.zero_grad()
        out = model(**batch)
        with torch.no_grad():
            target = _pooled_look(model, np.asarray(s.image.open()), objects[1])
            cos = F.cosine_similarity(model.look_head(out.seg_queries), target[None])
        torch.testing.assert_close(out.loss_look, (1 - cos).mean(), atol=1e-5, rtol=1e-5)
        out.loss_look.backward()
        assert model.region_extractor.look_proj[0].weight.grad is None  # a pseudo-label: detached
    finally:
        model.config.look_prompt_dropout = 0.5
    model.eval()
    model.save_pretrained(path)
    again, _ = load_fclm(str(path))
    assert again.config.look_prompt and again.look_head is not None
    torch.testing.assert_close(again.look_head[0].weight, model.look_head[0].weight)
    with pytest.raises(ValueError, match="look_prompt needs"):
        model.region_extractor.encode_look([torch.ones(8, 8, dtype=torch.bool)], None)


def test_batched_decoding_uses_the_look_head(look_model):
    """The inference decoder's [SEG] masks equal the model forward's (both read the look head)."""
    from fclm.infer.decoding import Request, run_batch

    model, proc, _ = look_model
    model.eval()
    s = make_sample(seed=5)
    img = s.image.open()
    user, answer = "What is the red circle in this image? Please output segmentation mask.", "Sure, [SEG]."
    [c] = run_batch(model, proc, [Request(img, user, [], answer=answer)], keep_logits=True)
    batch = proc.collate([proc.encode(img, user, answer, region_masks=[], target_masks=None)])
    batch.pop("target_masks")
    batch.pop("labels")
    with torch.no_grad():
        ref = model(**batch, decode_seg=True)
        model.look_head[2].bias.add_(5.0)  # another look, another mask: the look head is read
        try:
            [moved] = run_batch(model, proc, [Request(img, user, [], answer=answer)], keep_logits=True)
        finally:
            model.look_head[2].bias.sub_(5.0)
    torch.testing.assert_close(c.mask_logits[0], ref.pred_masks[0], atol=1e-3, rtol=1e-3)
    assert (moved.mask_logits[0] - c.mask_logits[0]).abs().max() > 1e-3
