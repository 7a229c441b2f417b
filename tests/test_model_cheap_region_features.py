"""Cheaper local aggregation (issue 12), off by default: smaller SAM crops (``region_crop_size``) and
features pooled from the full-image SAM embedding (``region_feature_source="image"``); and the
grid-resolution pooling of the local-aggregation-off path."""
import numpy as np
import pytest
import torch

from conftest import TINY_TEXTS, make_sample
from fclm.data.masks import decode_rle
from fclm.infer.decoding import GenerationOptions, Request, run_batch
from test_model_core import mixed_examples

DLC = "Can you provide me with a detailed description of the region in the picture marked by <region>?"
OPTIONS = {"crop128": dict(region_crop_size=128), "image": dict(region_feature_source="image")}


def _lively(**overrides):
    """Tiny model with the overrides and larger random weights (greedy outputs vary with the input)."""
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, **overrides)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim >= 2 and not n.startswith("sam."):
                p.normal_(0, 0.1, generator=g)
    return model.eval(), proc


@pytest.fixture(scope="module")
def scene():
    s = make_sample()
    return s.image.open(), [decode_rle(o.mask) for o in s.objects]


def _count_sam_calls(model, monkeypatch):
    """Record the input shape of every SAM image-encoder pass (native size or not)."""
    from fclm.model import mask_decoding

    calls = []
    native, other = model.sam.vision_encoder.forward, mask_decoding._encode_other_size

    def counting(px, *a, **k):
        calls.append(tuple(px.shape))
        return native(px, *a, **k)

    def counting_other(enc, px):
        calls.append(tuple(px.shape))
        return other(enc, px)

    monkeypatch.setattr(model.sam.vision_encoder, "forward", counting)
    monkeypatch.setattr(mask_decoding, "_encode_other_size", counting_other)
    return calls


def test_config_defaults_and_validation():
    from fclm.model.builders import tiny_config

    cfg = tiny_config(64)
    assert cfg.region_feature_source == "crop" and cfg.region_crop_size is None
    assert cfg.crop_size == cfg.sam_config.vision_config.image_size == 256 and cfg.uses_region_crops
    assert tiny_config(64, region_crop_size=128).crop_size == 128
    assert not tiny_config(64, region_feature_source="image").uses_region_crops
    with pytest.raises(ValueError, match="region_feature_source"):
        tiny_config(64, region_feature_source="crops")
    for bad in (100, 512, 0):  # not a multiple of the patch (16); above SAM's input (256); empty
        with pytest.raises(ValueError, match="region_crop_size"):
            tiny_config(64, region_crop_size=bad)


def test_sam_encoder_at_other_sizes():
    from fclm.model.builders import build_tiny
    from fclm.model.mask_decoding import _encode_other_size, sam_image_embeddings

    model, _ = build_tiny(texts=TINY_TEXTS)
    enc = model.sam.vision_encoder.eval()
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        # the module-by-module path is the encoder's own forward at its native size
        torch.testing.assert_close(_encode_other_size(enc, x), enc(x)[0], atol=1e-5, rtol=1e-5)
        small = sam_image_embeddings(model.sam, x[:, :, :128, :128])
    assert small.shape == (2, model.config.sam_config.vision_config.output_channels, 8, 8)
    assert torch.isfinite(small).all()
    # the 8×8 grid sees a position embedding resized from the 16×16 one: a constant image gives
    # position-dependent features (an unresized or missing embedding would fail the shape above or this)
    with torch.no_grad():
        flat = sam_image_embeddings(model.sam, torch.zeros(1, 3, 128, 128))
    assert flat.std(dim=(2, 3)).mean() > 1e-3


def test_default_processor_crops_at_sam_size(tiny):
    model, proc, _ = tiny
    assert proc.crop_size == 256 and proc.with_local_crops
    batch = proc(mixed_examples())
    assert batch["region_crop_pixel_values"].shape[-2:] == (256, 256)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_option_trains(name, monkeypatch):
    """A training forward + backward with the option: finite loss, the local projection learns,
    and the SAM passes are the expected ones."""
    model, proc = _lively(**OPTIONS[name])
    model.train()
    batch = proc(mixed_examples())
    calls = _count_sam_calls(model, monkeypatch)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.region_extractor.local_proj[0].weight.grad.abs().sum() > 0
    n_regions, n_images = len(batch["region_masks"]), batch["sam_pixel_values"].shape[0]
    if name == "crop128":
        assert batch["region_crop_pixel_values"].shape == (n_regions, 3, 128, 128)
        assert batch["region_crop_masks"].shape == (n_regions, 128, 128)
        assert calls == [(n_regions, 3, 128, 128), (n_images, 3, 256, 256)]  # crops, then the images for [SEG]
    else:  # no crops at all; one full-image pass shared by the region prompts and [SEG] decoding
        assert "region_crop_pixel_values" not in batch
        assert calls == [(n_images, 3, 256, 256)]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_option_inference_batched_equals_single_and_hf_generate(name, scene):
    model, proc = _lively(**OPTIONS[name])
    img, masks = scene
    opts = GenerationOptions(max_new_tokens=8, ignore_eos=True)
    batched = run_batch(model, proc, [Request(img, DLC, [m], image_key="i") for m in masks], opts)
    single = [run_batch(model, proc, [Request(img, DLC, [m])], opts)[0] for m in masks]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert len({tuple(c.token_ids) for c in batched}) > 1  # the region matters
    for m, c in zip(masks, single):
        inputs = proc(images=img, text=DLC, regions=[m])
        out = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert out[0, inputs["input_ids"].shape[1]:].tolist() == c.token_ids


def test_image_source_runs_no_per_region_sam_pass(scene, monkeypatch):
    model, proc = _lively(region_feature_source="image")
    img, masks = scene
    calls = _count_sam_calls(model, monkeypatch)
    reqs = [Request(img, DLC, [m], image_key="i") for m in masks]
    reqs.append(Request(img, "What is the red circle in this image? Please output segmentation mask.",
                        answer="Sure, [SEG].", image_key="i"))
    out = run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=4, ignore_eos=True))
    assert len(out[-1].masks) == 1
    assert calls == [(1, 3, 256, 256)]  # one pass for the image: 3 regions and the [SEG] share it
    # the crop path, for contrast, encodes one crop per region besides the image
    model_c, proc_c = _lively()
    calls_c = _count_sam_calls(model_c, monkeypatch)
    run_batch(model_c, proc_c, reqs, GenerationOptions(max_new_tokens=4, ignore_eos=True))
    assert sum(c[0] for c in calls_c if c[-1] == 256) == len(masks) + 1


def test_image_source_pools_the_embedding_cells_under_the_mask():
    """T⁰ = coverage-weighted mean of the projected SAM cells, the coverage read on SAM's padded
    input square (computed here by padding the mask and block-averaging)."""
    from fclm.model.builders import tiny_config
    from fclm.model.region_extractor import HybridRegionExtractor

    torch.manual_seed(0)
    cfg = tiny_config(64, region_feature_source="image", use_pixel_enhancement=False, use_semantic_guidance=False)
    ext = HybridRegionExtractor(cfg).eval()
    H, W = 96, 128  # SAM input 256: the image is resized ×2 to 192×256 and padded to 256×256
    yy, xx = np.ogrid[:H, :W]
    m = torch.from_numpy(((yy - 50) / 30.0) ** 2 + ((xx - 70) / 45.0) ** 2 <= 1)
    C, g = cfg.sam_config.vision_config.output_channels, 16
    emb = torch.randn(1, C, g, g)
    with torch.no_grad():
        t_mask, _ = ext([m], torch.tensor([0]), [torch.zeros(4, 4, 128)], sam_image_features=emb,
                        sam_valid_sizes=torch.tensor([[192, 256]]))
        # independent: on SAM's frame a 16-px cell is 8 mask pixels; pad the mask to the square
        frame = torch.zeros(128, 128)
        frame[:H, :W] = m.float()
        cov = frame.view(g, 8, g, 8).mean((1, 3)).flatten()
        assert 0 < cov.max() and (cov.view(g, g)[12:] == 0).all()  # the padding rows are uncovered
        proj = ext.local_proj(emb.flatten(2).transpose(1, 2))[0]
        ref = ext.mask_norm(ext.mask_out(((cov[:, None] * proj).sum(0) / cov.sum())[None]))
    torch.testing.assert_close(t_mask, ref, atol=1e-5, rtol=1e-4)


def test_local_aggregation_off_pools_at_grid_resolution(monkeypatch):
    """Without local aggregation the coverage of the vision grid is read at ≤ 8×8 samples per cell,
    never by pooling the full-resolution mask, and stays within 1/8 per cell of the exact pool."""
    from fclm.model import region_extractor as rx
    from fclm.model.builders import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(64, use_local_aggregation=False, use_pixel_enhancement=False, use_semantic_guidance=False)
    ext = rx.HybridRegionExtractor(cfg).eval()
    H, W, gh, gw = 3000, 4000, 27, 36
    yy, xx = np.ogrid[:H, :W]
    m = torch.from_numpy(((yy - 1400) / 900.0) ** 2 + ((xx - 2100) / 1300.0) ** 2 <= 1)
    vf = torch.randn(gh, gw, 128)
    pooled_sizes = []
    orig = rx.mask_coverage
    monkeypatch.setattr(rx, "mask_coverage", lambda x, size: pooled_sizes.append(tuple(x.shape[-2:])) or orig(x, size))
    with torch.no_grad():
        t_mask, _ = ext([m], torch.tensor([0]), [vf])
    grid_reads = [s for s in pooled_sizes if s != (8 * cfg.pos_grid_size,) * 2]  # besides the position branch's
    assert grid_reads == [(8 * gh, 8 * gw)]
    exact = orig(m[None], (gh, gw))[0]
    approx = rx.grid_coverage(m, (0, 0, W, H), (gh, gw))
    err = (approx - exact).abs()
    assert err.max() <= 1 / 8 and err[exact > 0].mean() < 1 / 64  # one sample row per edge at most
    with torch.no_grad():
        proj = ext.vision_proj(vf.reshape(1, -1, 128))[0]
        w = approx.flatten()
        ref = ext.mask_norm(ext.mask_out(((w[:, None] * proj).sum(0) / w.sum())[None]))
    torch.testing.assert_close(t_mask, ref, atol=1e-5, rtol=1e-4)
    # a small image is still pooled exactly (no sampling), as before
    small = m[::100, ::100].clone()
    torch.testing.assert_close(rx.grid_coverage(small, (0, 0, 40, 30), (6, 8)), orig(small[None], (6, 8))[0])


def test_saved_folder_keeps_the_option_for_auto_processor(tmp_path):
    import fclm  # noqa: F401  (registers the Auto classes)
    from transformers import AutoProcessor

    from fclm.model.builders import build_tiny

    for name, kw in OPTIONS.items():
        build_tiny(str(tmp_path / name), texts=TINY_TEXTS, **kw)
        proc = AutoProcessor.from_pretrained(str(tmp_path / name))
        assert proc.crop_size == (128 if name == "crop128" else 256)
        assert proc.with_local_crops == (name == "crop128")
