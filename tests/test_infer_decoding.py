"""Batched decoding: exactness vs per-row decoding, encoders once, stopping, [SEG] capture."""
import copy

import numpy as np
import pytest
import torch

from conftest import make_sample
from fclm.data.masks import decode_rle
from fclm.infer.decoding import GenerationOptions, Request, run_batch

ROC = "What is the category of <region>? Using only one word or phrase."


@pytest.fixture(scope="module")
def lively(tiny):
    """A copy of the tiny model with larger random weights: its greedy outputs vary with the input."""
    model, proc, _ = tiny
    m = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim >= 2 and not n.startswith("sam."):
                p.normal_(0, 0.1, generator=g)
    return m, proc


@pytest.fixture(scope="module")
def scene():
    s = make_sample()
    img = s.image.open()
    masks = [decode_rle(o.mask) for o in s.objects]
    extra = np.zeros_like(masks[0])
    extra[60:95, 5:40] = True
    return img, masks + [extra]


def test_batched_regions_equal_single_greedy(lively, scene):
    model, proc = lively
    img, masks = scene
    opts = GenerationOptions(max_new_tokens=10)
    batched = run_batch(model, proc, [Request(img, ROC, [m]) for m in masks], opts)
    single = [run_batch(model, proc, [Request(img, ROC, [m])], opts)[0] for m in masks]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert [c.text for c in batched] == [c.text for c in single]
    assert len({tuple(c.token_ids) for c in batched}) > 1, "outputs should differ between regions"
    plain = run_batch(model, proc, [Request(img, ROC, [m]) for m in masks],
                      GenerationOptions(max_new_tokens=10, share_prefix=False))
    assert [c.token_ids for c in plain] == [c.token_ids for c in batched]


def test_several_images_and_prompts_batched_with_padding(lively, scene):
    model, proc = lively
    img, masks = scene
    s2 = make_sample(h=120, w=80, seed=3)
    img2 = s2.image.open()
    m2 = decode_rle(s2.objects[0].mask) if s2.objects[0].mask["size"] == [120, 80] else None
    m2 = np.zeros((120, 80), bool)
    m2[10:50, 10:60] = True
    reqs = [Request(img, ROC, [masks[0]]),
            Request(img2, "Can you provide me with a detailed description of the region in the picture marked by <region>?", [m2]),
            Request(img, "What is the red circle in this image? Please output segmentation mask."),
            Request(img2, ROC, [m2])]
    opts = GenerationOptions(max_new_tokens=8)
    batched = run_batch(model, proc, reqs, opts)
    single = [run_batch(model, proc, [r], opts)[0] for r in reqs]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]


def _count_calls(module):
    calls = []
    h = module.register_forward_hook(lambda *a: calls.append(1))
    return calls, h


def test_encoders_run_once_per_image(tiny, scene):
    from fclm.infer import FCLMPipeline

    model, proc, _ = tiny
    img, masks = scene
    pipe = FCLMPipeline(model, proc)
    vis, h1 = _count_calls(model.model.visual)
    sam, h2 = _count_calls(model.sam.vision_encoder)
    try:
        out = pipe.describe(img, masks, max_new_tokens=4)
        assert len(out) == 4 and len(vis) == 1 and len(sam) == 1  # SAM: one call for the 4 region crops
        vis.clear(), sam.clear()
        res = pipe.run_grounding([(img, "What is the red circle in this image? Please output segmentation mask.", "Sure, [SEG]."),
                                  (img, "What is the blue square in this image? Please output segmentation mask.", "Sure, [SEG]."),
                                  (img, "What is it? Please output segmentation mask.", "It is [SEG] and [SEG].")])
        assert [len(r.masks) for r in res] == [1, 1, 2]
        assert len(vis) == 1 and len(sam) == 1  # one vision pass and one SAM image embedding for the image
    finally:
        h1.remove(), h2.remove()


def test_max_new_tokens_min_new_tokens_and_ignore_eos(lively, scene):
    model, proc = lively
    img, masks = scene
    reqs = [Request(img, ROC, [m]) for m in masks]
    out = run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=3))
    for c in out:
        assert len(c.token_ids) <= 3
        assert c.finish_reason in ("eos", "length")
        if c.finish_reason == "length":
            assert len(c.token_ids) == 3
    fixed = run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=10, ignore_eos=True))
    assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in fixed)
    stop_ids = {proc.im_end_id, proc.pad_id}
    mn = run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=10, min_new_tokens=8))
    assert all(len(c.token_ids) >= 8 for c in mn)
    assert all(not (set(c.token_ids) & stop_ids) for c in mn)


def test_stop_strings(lively, scene):
    model, proc = lively
    img, masks = scene
    reqs = [Request(img, ROC, [m]) for m in masks]
    full = run_batch(model, proc, reqs, GenerationOptions(max_new_tokens=16, ignore_eos=True))
    c = max(full, key=lambda c: len(c.text))
    text = c.text
    stop = next(text[i: i + 2] for i in range(3, len(text) - 1) if text[i: i + 2].strip() == text[i: i + 2])
    cut = run_batch(model, proc, [reqs[full.index(c)]],
                    GenerationOptions(max_new_tokens=16, ignore_eos=True, stop_strings=[stop]))[0]
    assert cut.finish_reason == "stop_string"
    assert cut.text == text[: text.find(stop)].rstrip()
    assert stop not in cut.text and len(cut.token_ids) < len(c.token_ids)


def test_sampling_seeded(lively, scene):
    model, proc = lively
    img, masks = scene
    reqs = [Request(img, ROC, [m]) for m in masks[:2]]
    o = GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, top_k=50, seed=7)
    a = run_batch(model, proc, reqs, o)
    b = run_batch(model, proc, reqs, o)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]


def test_teacher_forced_seg_matches_model_forward(tiny, scene):
    """[SEG] states and masks equal FCLMForConditionalGeneration.forward on the same conversation."""
    model, proc, _ = tiny
    img, masks = scene
    user, answer = "What is <region> in this image? Please output segmentation mask.", "Sure, [SEG]. It is [SEG]."
    [c] = run_batch(model, proc, [Request(img, user, [masks[2]], answer=answer)], keep_logits=True)
    enc = proc.encode(img, user, answer, region_masks=[masks[2]], target_masks=None)
    batch = proc.collate([enc])
    batch.pop("target_masks")
    batch.pop("labels")
    with torch.no_grad():
        ref = model(**batch, decode_seg=True)
    assert c.seg_states.shape == ref.seg_queries.shape == (2, model.config.llm_hidden_size)
    torch.testing.assert_close(c.seg_states, ref.seg_queries, atol=1e-4, rtol=1e-4)
    assert [m.shape for m in c.masks] == [(96, 128)] * 2 and c.masks[0].dtype == bool
    for a, b in zip(c.mask_logits, ref.pred_masks):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


class _ForceSeg(torch.nn.Module):
    """lm_head wrapper that makes the n-th generated token [SEG]."""

    def __init__(self, head, seg_id, at):
        super().__init__()
        self.head, self.seg_id, self.at, self.calls = head, seg_id, at, 0

    def forward(self, x):
        out = self.head(x)
        if self.calls == self.at:
            out = out.clone()
            out[..., self.seg_id] = 1e4
        self.calls += 1
        return out


def test_generated_seg_state_is_captured(lively, scene):
    model, proc = lively
    img, masks = scene
    seg = model.config.seg_token_id
    user = "What is the red circle in this image? Please output segmentation mask."
    # [SEG] as the 2nd token, generation stops right after it (max_new_tokens=2): one extra step feeds it
    head = model.lm_head
    model._modules["lm_head"] = _ForceSeg(head, seg, 1)
    try:
        [c] = run_batch(model, proc, [Request(img, user)], GenerationOptions(max_new_tokens=2, ignore_eos=True))
    finally:
        model._modules["lm_head"] = head
    assert c.token_ids[1] == seg and c.seg_states.shape[0] == 1 and len(c.masks) == 1
    assert c.masks[0].shape == (96, 128)
    # the captured state equals the model's forward over prompt + generated tokens
    enc = proc.encode(img, user)
    enc.input_ids = enc.input_ids + c.token_ids
    enc.labels = enc.labels + [-100] * len(c.token_ids)
    batch = proc.collate([enc])
    batch.pop("target_masks"), batch.pop("labels")
    with torch.no_grad():
        ref = model(**batch, decode_seg=False)
    torch.testing.assert_close(c.seg_states, ref.seg_queries, atol=1e-4, rtol=1e-4)


def _mixed_requests(scene):
    img, masks = scene
    s2 = make_sample(h=120, w=80, seed=3)
    img2 = s2.image.open()
    m2 = np.zeros((120, 80), bool)
    m2[10:50, 10:60] = True
    dlc = "Can you provide me with a detailed description of the region in the picture marked by <region>?"
    return [Request(img, ROC, [masks[0]]), Request(img2, dlc, [m2]),
            Request(img, "What is the red circle in this image? Please output segmentation mask."),
            Request(img2, ROC, [m2]),
            Request(img, "What is <region> in this image? Please output segmentation mask.", [masks[2]],
                    answer="Sure, [SEG]. It is [SEG]."),
            Request(img, ROC, [masks[1]])]


@pytest.mark.parametrize("kw", [dict(max_new_tokens=10), dict(max_new_tokens=10, ignore_eos=True),
                                dict(max_new_tokens=10, min_new_tokens=7), dict(max_new_tokens=10, share_prefix=False),
                                dict(max_new_tokens=0)])
def test_static_cache_equals_default_path(lively, scene, kw, monkeypatch):
    """Static KV cache with the image prefix kept once: same tokens, finish reasons and [SEG] states."""
    from fclm.infer import static_decode

    model, proc = lively
    reqs = _mixed_requests(scene)
    made = []
    init = static_decode.SharedPrefixCache.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(static_decode.SharedPrefixCache, "__init__", spy)
    ref = run_batch(model, proc, reqs, GenerationOptions(**kw))
    got = run_batch(model, proc, reqs, GenerationOptions(static_cache=True, stop_check_every=3, **kw))
    assert [c.token_ids for c in got] == [c.token_ids for c in ref]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in ref]
    for a, b in zip(got, ref):
        assert (a.seg_states is None) == (b.seg_states is None)
        if a.seg_states is not None:
            torch.testing.assert_close(a.seg_states, b.seg_states, atol=1e-4, rtol=1e-4)
    # the shared prefix is stored once per image (2 images), not once per row (6 rows)
    assert len(made) == 1 and made[0].prefix_k[0].shape[0] == 2 and made[0].k[0].shape[0] == len(reqs)
    if kw.get("share_prefix", True):
        assert bool(made[0].prefix_valid.any())


def test_static_cache_generated_seg_and_sampling(lively, scene):
    model, proc = lively
    img, masks = scene
    seg = model.config.seg_token_id
    user = "What is the red circle in this image? Please output segmentation mask."
    head = model.lm_head
    outs = []
    for static in (False, True):
        model._modules["lm_head"] = _ForceSeg(head, seg, 1)
        try:
            outs.append(run_batch(model, proc, [Request(img, user), Request(img, ROC, [masks[0]])],
                                  GenerationOptions(max_new_tokens=2, ignore_eos=True, static_cache=static)))
        finally:
            model._modules["lm_head"] = head
    a, b = outs
    assert b[0].token_ids[1] == seg and [c.token_ids for c in a] == [c.token_ids for c in b]
    torch.testing.assert_close(b[0].seg_states, a[0].seg_states, atol=1e-4, rtol=1e-4)
    assert len(b[0].masks) == 1
    reqs = [Request(img, ROC, [m]) for m in masks[:2]]
    o = GenerationOptions(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, top_k=50, seed=7,
                          static_cache=True)
    assert [c.token_ids for c in run_batch(model, proc, reqs, o)] == [c.token_ids for c in run_batch(model, proc, reqs, o)]


def test_static_decode_step_is_one_graph(tiny):
    """The static-cache step traces as one graph with no breaks (capturable by torch.compile)."""
    import torch._dynamo as dynamo

    from fclm.infer import static_decode as sd

    model, _, _ = tiny
    cfg = model.config.text_config
    B, S, T, P = 3, 4, 9, 5
    hk, D = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    L = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(0)
    pk = [torch.randn(2, hk, P, D, generator=g) for _ in range(L)]
    cache = sd.SharedPrefixCache(pk, pk, torch.ones(2, P, dtype=torch.bool), torch.tensor([0, 1, 0]), B, T)
    valid = torch.zeros(B, T, dtype=torch.bool)
    valid[:, : S + 1] = True
    step = sd.make_step(model.model.language_model, cache, valid)
    emb = torch.randn(B, 1, cfg.hidden_size, generator=g)
    pos = torch.full((3, B, 1), 11)
    with torch.inference_mode(), sd.use_shared_prefix_attention(model.config):
        eager = step(emb, pos, torch.tensor([S]))
        explained = dynamo.explain(step)(emb, pos, torch.tensor([S]))
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    assert torch.isfinite(eager).all() and eager.shape == (B, 1, cfg.hidden_size)


def test_buffered_kv_layers_equal_dynamic_cache(tiny):
    """Decode steps writing K/V in place (room reserved once) give bit-identical states to
    transformers' DynamicCache, which concatenates at every step; dropping rows keeps them equal."""
    from transformers import DynamicCache

    from fclm.infer.decoding import _prune, _with_room

    model, _, _ = tiny
    model = model.eval()
    g = torch.Generator().manual_seed(0)
    B, L, d = 3, 9, model.config.text_config.hidden_size
    emb = torch.randn(B, L, d, generator=g)
    steps = torch.randn(5, B, 1, d, generator=g)
    pos = torch.arange(L).view(1, 1, L).expand(3, B, L)
    out = {}
    with torch.inference_mode():
        for buffered in (False, True):
            cache = DynamicCache(config=model.config)
            model.run_language_model(emb, None, pos, cache=cache, use_cache=True)
            if buffered:
                _with_room(cache, 2)  # less room than steps: the layer grows when full
                assert type(cache.layers[0]).__name__ == "BufferedLayer"
            hs, rows = [], torch.arange(B)
            for t in range(5):
                if t == 3:  # the middle row finished: prune it
                    rows = torch.tensor([0, 2])
                    _prune(cache, torch.tensor([0, 2]))
                p = torch.full((3, len(rows), 1), L + t)
                hs.append(model.run_language_model(steps[t][rows], None, p, cache=cache,
                                                   use_cache=True).last_hidden_state)
            out[buffered] = hs
            assert cache.get_seq_length() == L + 5
    assert all(torch.equal(a, b) for a, b in zip(out[False], out[True]))
