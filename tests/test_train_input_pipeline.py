"""Issue 10's input pipeline: one encoder pass per distinct image, SAM only for the rows that need
it, uint8 images normalised on the device, length-grouped batching, the frozen projector as a
module call. Each path is compared with the plain one it replaces."""
import numpy as np
import pytest
import torch

from conftest import TINY_TEXTS, make_sample, write_tiny_train_config
from fclm.data.schema import Example
from fclm.data.tasks import pair_stage2


@pytest.fixture(scope="module")
def model_proc():
    from fclm.model.builders import build_tiny

    # latent pairs and L_self on: every loss term that reads image encodings is exercised
    model, proc = build_tiny(seed=0, texts=TINY_TEXTS, latent_weight=1.0, latent_scope="pairs",
                             self_recon_weight=1.0)
    return model, proc


def _loss_and_grads(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same(a, b, rtol=1e-4, atol=1e-6):
    (out_a, g_a), (out_b, g_b) = a, b
    for k in ("loss", "loss_ce", "loss_seg", "loss_self", "loss_latent"):
        va, vb = getattr(out_a, k), getattr(out_b, k)
        assert (va is None) == (vb is None), k
        if va is not None:
            assert float(va.detach()) == pytest.approx(float(vb.detach()), rel=rtol, abs=atol), k
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=rtol, atol=atol * 10, msg=n)


def _pair_batch_examples(seed=3):
    """A stage-2 pair (DLC + DL-RES of one region of one image) and a RES row of another image."""
    import random

    s, other = make_sample(seed=seed), make_sample(h=80, w=112, seed=seed + 1)
    pair = pair_stage2(s, random.Random(0), max_regions=1)
    res = Example("res", other, "What is the red circle in this image? Please output segmentation mask.",
                  "Sure, [SEG].", target_ids=[2])
    return pair + [res]


class _Counter:
    """Records the batch size of every call of a module's forward."""

    def __init__(self, module, monkeypatch, size=lambda x: x.shape[0]):
        self.calls, orig = [], module.forward

        def counting(x, *a, **k):
            self.calls.append(size(x))
            return orig(x, *a, **k)

        monkeypatch.setattr(module, "forward", counting)


def test_pair_rows_share_their_image_encodings(model_proc, monkeypatch):
    model, proc = model_proc
    exs = _pair_batch_examples()
    cache = {}
    enc = [proc.encode_example(exs[0], image_cache=cache), proc.encode_example(exs[1], image_cache=cache),
           proc.encode_example(exs[2])]
    plain = proc.collate(enc)
    shared = proc.collate(enc, share_images=True)
    assert shared["image_index"].tolist() == [0, 0, 1]
    assert shared["sam_pixel_values"].shape[0] == 2 and plain["sam_pixel_values"].shape[0] == 3
    assert "latent_pairs" in shared and torch.equal(shared["latent_pairs"], plain["latent_pairs"])
    # the pair shares one image tensor (built once); the rows' image tokens are the same count
    assert enc[0].pixel_values is enc[1].pixel_values
    assert shared["pixel_values"].shape[0] == plain["pixel_values"].shape[0] - enc[1].pixel_values.shape[0]

    vis = _Counter(model.model.visual, monkeypatch, size=lambda px: px.shape[0])
    sam = _Counter(model.sam.vision_encoder, monkeypatch)
    want = _loss_and_grads(model, plain)
    assert vis.calls == [plain["pixel_values"].shape[0]] and sam.calls[-1] == 3
    vis.calls.clear(), sam.calls.clear()
    got = _loss_and_grads(model, shared)
    assert vis.calls == [shared["pixel_values"].shape[0]]  # each distinct image's patches once
    assert sam.calls == [1, 2]  # the DLC region's crop (local aggregation), then the 2 distinct images
    assert got[0].loss_latent is not None and got[0].loss_seg is not None and got[0].loss_self is not None
    _assert_same(got, want)
    # rows of different images with the same key are not merged
    enc[2].image_key = enc[0].image_key
    assert proc.collate(enc, share_images=True)["image_index"].tolist() == [0, 0, 1]


def test_sam_runs_only_for_rows_that_need_it(model_proc, monkeypatch):
    """Against the old path, emulated independently: SAM encodes every image of the batch and each
    call gets the rows it asked for."""
    import fclm.model.modeling_fclm as mf

    model, proc = model_proc
    s1, s2, s3 = make_sample(seed=11), make_sample(h=80, w=112, seed=12), make_sample(h=64, w=96, seed=13)
    exs = [Example("roc", s1, "What is the category of <region>? Using only one word or phrase.", "square",
                   region_ids=[0]),
           Example("res", s2, "What is the red circle in this image? Please output segmentation mask.",
                   "Sure, [SEG].", target_ids=[2]),
           Example("gcg", s3, "Describe the image briefly.", "a square thing and a box thing")]
    batch = proc(exs)
    full_px = batch["sam_pixel_values"]
    real = mf.sam_image_embeddings

    def whole_batch(sam, px):
        rows = [next((j for j in range(len(full_px)) if torch.equal(full_px[j], p)), None) for p in px]
        if None in rows:  # region crops (local aggregation): not batch images
            return real(sam, px)
        return real(sam, full_px)[rows]

    sam = _Counter(model.sam.vision_encoder, monkeypatch)
    for self_recon, needed in ((0.0, 1), (1.0, 2)):  # L_self adds the ROC row (its region)
        model.config.self_recon_weight = self_recon
        sam.calls.clear()
        got = _loss_and_grads(model, batch)
        # crops for local aggregation are one call of the region count (1); the images' call is last
        assert sam.calls[-1] == needed
        monkeypatch.setattr(mf, "sam_image_embeddings", whole_batch)
        sam.calls.clear()
        want = _loss_and_grads(model, batch)
        assert sam.calls[-1] == 3
        monkeypatch.setattr(mf, "sam_image_embeddings", real)
        assert (got[0].loss_self is None) == (self_recon == 0)
        _assert_same(got, want)
    model.config.self_recon_weight = 1.0


def test_uint8_images_normalised_on_device_equal_the_processor_path(model_proc):
    model, proc = model_proc
    exs = _pair_batch_examples()
    floats = proc.collate([proc.encode_example(e) for e in exs])
    raw = proc.collate([proc.encode_example(e, uint8_images=True) for e in exs])
    assert raw["pixel_values"].dtype == torch.uint8 and raw["sam_pixel_values"].dtype == torch.uint8
    assert raw["pixel_values"].numel() == floats["pixel_values"].numel()
    with pytest.raises(ValueError, match="normalize_images"):
        model(**raw)
    done = proc.normalize_images(dict(raw))
    for k in ("pixel_values", "sam_pixel_values"):
        assert done[k].dtype == torch.float32
        torch.testing.assert_close(done[k], floats[k], rtol=0, atol=2e-6, msg=k)
    # the padding (images are not square) is exactly 0, as sam_preprocess pads
    h, w = (int(v) for v in raw["sam_valid_sizes"][0])
    assert h < done["sam_pixel_values"].shape[-2] and done["sam_pixel_values"][0, :, h:].abs().max() == 0
    # float inputs pass through untouched
    again = proc.normalize_images(dict(floats))
    assert again["pixel_values"] is floats["pixel_values"]
    _assert_same(_loss_and_grads(model, done), _loss_and_grads(model, floats))


# ---------------------------------------------------------------------------- length grouping
@pytest.fixture(scope="module")
def grouped_cfgs(tmp_path_factory):
    from fclm.train.config import load_train_config

    tmp = tmp_path_factory.mktemp("group")
    tasks = (("res", "dlres"), ("roc", "dlc"), ("gcg",))  # answers of very different lengths
    path = write_tiny_train_config(tmp / "c.yaml", tmp / "out", tasks=tasks, steps=4, per_device_batch=3,
                                   grad_accum=2)
    plain = load_train_config(path)
    grouped = load_train_config(path, ["data.group_by_length=true", "data.length_group_steps=2"])
    return plain, grouped


def _stream(cfg, proc, world=1):
    from fclm.train.data import TrainingStream

    return TrainingStream(cfg, proc, cfg.steps * cfg.global_batch_per_process * world)


def test_length_grouping_regroups_the_same_draws(grouped_cfgs, model_proc):
    from fclm.train.data import estimated_tokens
    from fclm.train.dataset import micro_batch_loader

    _, proc = model_proc
    plain_cfg, cfg = grouped_cfgs
    plain, grouped = _stream(plain_cfg, proc), _stream(cfg, proc)
    A, W = cfg.grad_accum, cfg.data.length_group_steps
    for window in range(cfg.steps // W):
        steps = range(window * W, (window + 1) * W)
        p = [plain.micro_draws(s, m, 0, 1) for s in steps for m in range(A)]
        g = [grouped.micro_draws(s, m, 0, 1) for s in steps for m in range(A)]
        assert sorted(d.position for b in p for d in b) == sorted(d.position for b in g for d in b)
        assert all(len(b) == cfg.per_device_batch for b in g)
        # groups are runs of the length order: no two groups' length ranges interleave
        lengths = []
        for b in g:
            ls = []
            for d in b:
                exs = grouped._task_examples(d, grouped._rng(d), d.index)
                ls.append(max(estimated_tokens(proc, e) for e in exs))  # recomputed here, not read back
            lengths.append((min(ls), max(ls)))
        lengths.sort()
        assert all(hi <= nxt_lo for (_, hi), (nxt_lo, _) in zip(lengths, lengths[1:])), lengths
        assert g != p
    # less padding than the plain order on the real encoded batches
    def padding(stream):
        pads = [stream.micro_batch(s, m, 0, 1)["attention_mask"] for s in range(cfg.steps) for m in range(A)]
        return sum(int((1 - a).sum()) for a in pads)

    assert padding(grouped) < padding(plain)
    # deterministic for a seed, resumable: a fresh stream (and the DataLoader from step 3) gives the
    # same micro-batches without having grouped the earlier windows
    fresh = _stream(cfg, proc)
    assert [d.position for d in fresh.micro_draws(3, 1, 0, 1)] == [d.position for d in grouped.micro_draws(3, 1, 0, 1)]
    resumed = list(micro_batch_loader(_stream(cfg, proc), cfg.steps, A, 0, 1, start_step=3))
    want = [grouped.micro_batch(3, m, 0, 1) for m in range(A)]
    for r, w in zip(resumed, want):
        r.pop("_skipped_records")
        assert r.keys() == w.keys()
        assert all(torch.equal(r[k], w[k]) for k in r if isinstance(r[k], torch.Tensor))


def test_length_group_steps_must_be_positive(tmp_path):
    from fclm.train.config import load_train_config

    path = write_tiny_train_config(tmp_path / "c.yaml", tmp_path / "out")
    with pytest.raises(ValueError, match="length_group_steps"):
        load_train_config(path, ["data.length_group_steps=0"])


# ---------------------------------------------------------------------------- ZeRO-3 hazard
def _zero3_like(module):
    """Emulate ZeRO-3 partitioning on ``module``'s own weights: empty outside its forward, whole
    inside (pre/post forward hooks, as DeepSpeed gathers and releases them)."""
    # the hooks act on the registered Parameter objects themselves (DeepSpeed's partitioned
    # parameters): a detached copy taken outside the forward stays empty, as under ZeRO-3
    params = list(module.parameters(recurse=False))
    saved = [p.data for p in params]

    def gather(mod, args, kwargs=None):
        for p, d in zip(params, saved):
            p.data = d

    def release(mod, args, out):
        for p in params:
            p.data = torch.empty(0, dtype=p.dtype)

    release(module, None, None)
    return [module.register_forward_pre_hook(gather), module.register_forward_hook(release)], \
        lambda: gather(module, None)


def test_frozen_projector_is_a_module_call_with_the_same_values(model_proc):
    from fclm.model.mask_decoding import FreezableLinear

    model, proc = model_proc
    proj = model.seg_projector
    assert [type(m) for m in proj] == [FreezableLinear, torch.nn.ReLU, FreezableLinear]
    assert sorted(k for k, _ in proj.state_dict().items()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    x = torch.randn(5, model.config.llm_hidden_size, requires_grad=True)
    # the previous formulation: functional_call with detached parameters
    detached = {k: v.detach() for k, v in proj.named_parameters()}
    x_ref = x.detach().clone().requires_grad_()
    want = torch.func.functional_call(proj, detached, (x_ref,))
    proj.zero_grad(set_to_none=True)
    got = proj(x, frozen=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    (got ** 2).sum().backward()
    (want ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert all(p.grad is None for p in proj.parameters())  # a fixed map: the weights get nothing
    torch.testing.assert_close(proj(x), want)  # unfrozen: the same values

    # the whole stage-2 forward (L_latent in prompt space) under emulated ZeRO-3 partitioning of the
    # projector's layers: the same loss
    exs = _pair_batch_examples()
    batch = proc(exs)
    assert model.config.latent_space == "prompt" and "latent_pairs" in batch
    model.eval()
    with torch.no_grad():
        plain = model(**batch)
        handles, restore = [], []
        for layer in (proj[0], proj[2]):
            h, r = _zero3_like(layer)
            handles += h
            restore.append(r)
        try:
            partitioned = model(**batch)
        finally:
            for h in handles:
                h.remove()
            for r in restore:
                r()
    assert plain.loss_latent is not None
    torch.testing.assert_close(partitioned.loss_latent, plain.loss_latent)
    torch.testing.assert_close(partitioned.loss, plain.loss)


def test_stage2_stream_carries_each_pair_image_once_as_uint8(tmp_path, model_proc):
    from fclm.train.config import load_train_config

    _, proc = model_proc
    path = write_tiny_train_config(tmp_path / "c.yaml", tmp_path / "out", tasks=(("pair_stage2",),), steps=2,
                                   per_device_batch=3, data={"synthetic": {"num_scenes": 50, "seed": 0,
                                                                           "image_size": 128},
                                                             "pair_stage2": True,
                                                             "sources": [{"name": "synthetic",
                                                                          "tasks": ["pair_stage2"]}]})
    cfg = load_train_config(path)
    b = _stream(cfg, proc).micro_batch(1, 0, 0, 1)
    assert b["input_ids"].shape[0] == 6 and b["image_index"].tolist() == [0, 0, 1, 1, 2, 2]
    assert b["pixel_values"].dtype == b["sam_pixel_values"].dtype == torch.uint8
    assert b["sam_pixel_values"].shape[0] == 3 and len(b["latent_pairs"]) == 3


def test_shared_images_with_full_image_region_features(monkeypatch):
    """Issues 10 + 12 together: with region_feature_source="image" the full-image SAM embeddings of
    the distinct images serve both the region prompts (per row) and the mask decoding — one SAM pass
    of the 2 distinct images, and the same loss and gradients as one image per row."""
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(seed=0, texts=TINY_TEXTS, latent_weight=1.0, latent_scope="pairs",
                             self_recon_weight=1.0, region_feature_source="image")
    proc.configure_for(model.config)
    exs = _pair_batch_examples()
    cache = {}
    enc = [proc.encode_example(exs[0], image_cache=cache), proc.encode_example(exs[1], image_cache=cache),
           proc.encode_example(exs[2])]
    plain, shared = proc.collate(enc), proc.collate(enc, share_images=True)
    assert "region_crop_pixel_values" not in shared or shared["region_crop_pixel_values"] is None
    sam = _Counter(model.sam.vision_encoder, monkeypatch)
    want = _loss_and_grads(model, plain)
    assert sam.calls == [3]
    sam.calls.clear()
    got = _loss_and_grads(model, shared)
    assert sam.calls == [2]
    assert got[0].loss_latent is not None and got[0].loss_seg is not None and got[0].loss_self is not None
    _assert_same(got, want)


def test_synthetic_scenes_are_generated_once_and_shared(monkeypatch):
    """Readers of one process share the scenes they generate (bounded, least recently used out),
    and a cached scene is the scene the generator makes."""
    from fclm.data import synthetic
    from fclm.data.masks import decode_rle
    from fclm.train.data import SyntheticReader

    monkeypatch.setattr(SyntheticReader, "_cache", type(SyntheticReader._cache)())
    monkeypatch.setattr(SyntheticReader, "SCENE_CACHE_SIZE", 3)
    calls = []
    real = synthetic.generate_scene
    monkeypatch.setattr(synthetic, "generate_scene", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    a, b = SyntheticReader(10, seed=5), SyntheticReader(10, seed=5)
    other = SyntheticReader(10, seed=6)
    first = a[2]
    assert b[2] is first and calls == [2]  # the second reader reads the first one's scene
    fresh = real(2, "train", 5)
    assert np.array_equal(np.asarray(first.image.array), np.asarray(fresh.image.array))
    assert [np.array_equal(decode_rle(o.mask), decode_rle(p.mask)) for o, p in zip(first.objects, fresh.objects)] \
        == [True] * len(fresh.objects)
    assert other[2] is not first and calls == [2, 2]  # another seed is another scene
    a[3], a[4]  # 4 scenes were read, the cache holds 3: scene 2 of seed 5 (least recently used) is out
    assert len(SyntheticReader._cache) == 3
    a[2]
    assert calls == [2, 2, 3, 4, 2]


def test_batches_from_cached_scenes_equal_uncached(tmp_path, monkeypatch):
    from fclm.train.config import load_train_config
    from fclm.train.data import SyntheticReader
    from fclm.train.quickstart import packaged_config
    from fclm.train.trainer import Trainer

    monkeypatch.setattr(SyntheticReader, "_cache", type(SyntheticReader._cache)())
    cfg = load_train_config(packaged_config("quickstart-stage1.yaml"),
                            [f"output_dir={tmp_path}/o", "steps=6", "data.synthetic.num_scenes=12"])
    stream = Trainer(cfg, progress=False).stream

    def batches():
        return [stream.micro_batch(s, 0, 0, 1) for s in range(6)]

    monkeypatch.setattr(SyntheticReader, "SCENE_CACHE_SIZE", 0)
    plain = batches()
    assert len(SyntheticReader._cache) == 0
    monkeypatch.setattr(SyntheticReader, "SCENE_CACHE_SIZE", 4096)
    batches()  # fills the cache
    cached = batches()
    assert 0 < len(SyntheticReader._cache) <= 12

    def same(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        if isinstance(x, np.ndarray):
            return np.array_equal(x, y)
        return x == y

    assert len(plain) == len(cached) == 6 and all(same(p, q) for p, q in zip(plain, cached))
