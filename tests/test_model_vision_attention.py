"""Vision encoder: all attention windows in one SDPA call gives the per-window loop's outputs (issue 12)."""
import pytest
import torch

from fclm.model.vision_attention import packed_sdpa_attention, packed_vision_attention


@pytest.mark.parametrize("lengths", [[64] * 9, [64, 32, 64, 16, 8, 64, 1]])
def test_packed_attention_equals_per_window_sdpa(lengths):
    g = torch.Generator().manual_seed(0)
    H, D, N = 4, 16, sum(lengths)
    q, k, v = (torch.randn(1, H, N, D, generator=g) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0).int()
    out, _ = packed_sdpa_attention(None, q, k, v, scaling=D ** -0.5, cu_seq_lens_q=cu)
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, scale=D ** -0.5)
                     for qq, kk, vv in zip(*(t.split(lengths, dim=2) for t in (q, k, v)))], 2)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_vision_encoder_outputs_equal_and_one_call_per_block(tiny):
    model, proc, _ = tiny
    from PIL import Image
    import numpy as np

    # 3 images, one with a grid that is not a multiple of the window (unequal windows)
    ims = [Image.fromarray((np.random.default_rng(i).random((h, w, 3)) * 255).astype(np.uint8))
           for i, (h, w) in enumerate([(168, 168), (112, 168), (150, 90)])]
    vis = proc.image_processor(images=ims, return_tensors="pt")
    pv, grid = vis["pixel_values"], vis["image_grid_thw"]
    calls = []
    orig = torch.nn.functional.scaled_dot_product_attention

    def counting(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    model.eval()
    with torch.no_grad():
        ref = model.model.get_image_features(pv, grid).pooler_output  # transformers' per-window loop
        torch.nn.functional.scaled_dot_product_attention = counting
        try:
            with packed_vision_attention(model.model.visual.config):
                got = model.model.get_image_features(pv, grid).pooler_output
        finally:
            torch.nn.functional.scaled_dot_product_attention = orig
    assert model.model.visual.config._attn_implementation == "sdpa"  # restored
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert len(calls) == len(model.model.visual.blocks)  # one SDPA call per block
