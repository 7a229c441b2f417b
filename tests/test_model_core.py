"""Model core (issue 2): shapes, losses, stages, slots, errors, save/load."""
import numpy as np
import pytest
import torch

from conftest import make_sample
from fclm.data.masks import decode_rle
from fclm.data.schema import Example, FCLMDataError, Turn
from fclm.model.stages import apply_stage


def mixed_examples():
    s1, s2 = make_sample(seed=1), make_sample(h=80, w=80, seed=2)
    return [
        Example("roc", s1, "What is the category of <region>? Using only one word or phrase.", "square", region_ids=[0]),
        Example("res", s2, "What is the red circle in this image? Please output segmentation mask.", "Sure, [SEG].", target_ids=[2]),
        Example("dlc", s1, "Describe <region>, <region> and <region>.", "a square thing", region_ids=[0, 1, 2], pair_key="p"),
        Example("muse", s2, "Segment the square and the box.", "It is [SEG] and [SEG].", target_ids=[0, 1]),
    ]


def test_special_token_ids_are_single_tokens(tiny):
    _, proc, _ = tiny
    tok = proc.tokenizer
    for name in ("[SEG]", "<mask>", "<pos>", "<p>", "</p>"):
        tid = tok.convert_tokens_to_ids(name)
        assert tok(f"a {name} b", add_special_tokens=False)["input_ids"].count(tid) == 1
    assert proc.token_ids["seg"] == tok.convert_tokens_to_ids("[SEG]")


def test_batch_slots_and_labels(tiny):
    model, proc, _ = tiny
    batch = proc(mixed_examples())
    ids = batch["input_ids"]
    assert int((ids == model.config.mask_token_id).sum()) == len(batch["region_masks"]) == 4
    assert int((ids == model.config.pos_token_id).sum()) == 4
    assert int((ids == model.config.seg_token_id).sum()) == len(batch["target_masks"]) == 3
    # labels cover answers only: every labelled token is in the assistant part (after the last <|im_start|>)
    im_start = proc.tokenizer.convert_tokens_to_ids("<|im_start|>")
    for b in range(ids.shape[0]):
        lab = (batch["labels"][b] != -100).nonzero().flatten()
        last_start = (ids[b] == im_start).nonzero().flatten().max()
        assert lab.min() > last_start
        assert proc.decode(ids[b, lab]).startswith(mixed_examples()[b].assistant)
    assert batch["target_masks"][0].shape == (80, 80)


def test_multi_turn_slots_follow_turn_order(tiny):
    """Slots of history turns come first: a region asked about in turn 1 (Osprey conversations) and
    one `[SEG]` per turn (multi-turn RES) map to their masks in turn order; every answer is labelled."""
    model, proc, _ = tiny
    s = make_sample(seed=3)
    hist = [Turn("user", "What is <region>?"), Turn("assistant", "A square."),
            Turn("user", "Segment the red circle."), Turn("assistant", "Sure, [SEG].")]
    ex = Example("conversation", s, "And <region> next to the square?", "It is [SEG].", region_ids=[0, 1],
                 target_ids=[2, 1], history=hist)
    enc = proc.encode_example(ex)
    obj = [decode_rle(o.mask) for o in s.objects]
    assert [(m == obj[i]).all() for m, i in zip(enc.region_masks, [0, 1])] == [True, True]
    assert [(t == obj[i]).all() for t, i in zip(enc.target_masks, [2, 1])] == [True, True]
    ids = torch.tensor(enc.input_ids)
    assert int((ids == model.config.mask_token_id).sum()) == 2 and int((ids == model.config.seg_token_id).sum()) == 2
    labelled = proc.decode([i for i, l in zip(enc.input_ids, enc.labels) if l != -100])
    assert "A square." in labelled and labelled.count("[SEG]") == 2
    out = model(**proc([ex]))
    assert torch.isfinite(out.loss) and out.loss_dice is not None
    with pytest.raises(FCLMDataError, match="3 <region> slots but 2 region masks"):
        proc.encode_example(Example("conversation", s, "And <region> and <region>?", "Yes.", region_ids=[0, 1], target_ids=[2],
                                    history=hist))


def test_forward_all_losses_finite_and_differentiable(tiny):
    model, proc, _ = tiny
    model.train()
    batch = proc(mixed_examples())
    batch["latent_pairs"] = torch.tensor([[0, 2]])
    out = model(**batch)
    for k in ("loss_ce", "loss_dice", "loss_bce", "loss_seg", "loss_self", "loss_latent", "loss"):
        v = getattr(out, k)
        assert v is not None and torch.isfinite(v), k
    assert out.logits is None  # training with labels: the LM head runs at label positions only
    for k in ("loss_ce", "loss_seg", "loss_self", "loss_latent"):
        model.zero_grad()
        getattr(out, k).backward(retain_graph=True)
        g = sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None)
        assert g > 0, k


@pytest.mark.parametrize("stage,expected", [
    ("stage1", {"llm", "region_extractor", "seg_projector", "mask_decoder"}),
    ("stage2", {"llm"}),
])
def test_gradients_reach_exactly_the_stage_groups(tiny, stage, expected):
    model, proc, _ = tiny
    model.train()
    counts = apply_stage(model, stage)
    assert {g for g, n in counts.items() if n > 0} == expected
    model.zero_grad(set_to_none=True)
    batch = proc(mixed_examples())
    batch["latent_pairs"] = torch.tensor([[0, 2]])
    model(**batch).loss.backward()
    for group, mods in model.module_groups().items():
        grads = [p.grad for m in mods for p in m.parameters()]
        got = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert got == (group in expected), group
    model.requires_grad_(True)


def test_teacher_forced_seg_masks_at_original_size(tiny):
    model, proc, _ = tiny
    model.eval()
    exs = mixed_examples()
    batch = proc([exs[1], exs[3]])
    with torch.no_grad():
        out = model(**batch)
    assert len(out.pred_masks) == 3
    assert [tuple(m.shape) for m in out.pred_masks] == [(80, 80)] * 3
    assert out.seg_queries.shape == (3, model.config.text_config.hidden_size)
    assert out.seg_image_index.tolist() == [0, 1, 1]


def test_sam_embedding_computed_once_per_image(tiny, monkeypatch):
    model, proc, _ = tiny
    model.eval()
    calls = []
    orig = model.sam.vision_encoder.forward

    def counting(px, *a, **k):
        calls.append(px.shape[0])
        return orig(px, *a, **k)

    monkeypatch.setattr(model.sam.vision_encoder, "forward", counting)
    batch = proc([mixed_examples()[3]])  # one image, two [SEG] queries
    with torch.no_grad():
        model(**batch)
    assert calls == [1]


@pytest.mark.parametrize("overrides", [
    dict(use_local_aggregation=False, use_pixel_enhancement=False, use_semantic_guidance=False),
    dict(use_local_aggregation=False),
    dict(use_pixel_enhancement=False),
    dict(visual_prompt="mask"),
    dict(visual_prompt="pos"),
    dict(latent_loss="kl", latent_space="llm"),
    dict(latent_loss="mse"),
    dict(pos_fourier_bands=5),
])
def test_ablation_configs_run(overrides):
    from conftest import TINY_TEXTS
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, **overrides)
    batch = proc(mixed_examples())
    batch["latent_pairs"] = torch.tensor([[0, 2]])
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert ("region_crop_pixel_values" in batch) == model.config.use_local_aggregation


def test_pos_fourier_bands_separate_nearby_boxes():
    """The Fourier encoding feeds sin/cos of the box to the position branch: two masks one pixel
    apart differ in the branch input by the high bands, where raw coordinates differ by 1/W."""
    from conftest import TINY_TEXTS
    from fclm.model.builders import build_tiny
    from fclm.model.configuration_fclm import FCLMConfig

    model, _ = build_tiny(texts=TINY_TEXTS, pos_fourier_bands=6)
    rx = model.region_extractor
    assert rx.pos_branch[0].in_features == model.config.pos_grid_size**2 + 4 + 8 * 6
    a, b = torch.zeros(64, 64, dtype=torch.bool), torch.zeros(64, 64, dtype=torch.bool)
    a[10:20, 10:20], b[10:20, 11:21] = True, True
    seen = []
    rx.pos_branch[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    t_pos, geo = rx.encode_position([a, b], torch.float32)
    assert t_pos.shape == (2, model.config.llm_hidden_size) and torch.isfinite(t_pos).all()
    raw = (seen[0][0, -(4 + 48):-48] - seen[0][1, -(4 + 48):-48]).abs().max()
    fourier = (seen[0][0, -48:] - seen[0][1, -48:]).abs().max()
    assert raw == pytest.approx(2 / 64) and fourier > 10 * raw
    with pytest.raises(ValueError, match="pos_fourier_bands"):
        FCLMConfig(pos_fourier_bands=-1)


def test_save_load_bit_identical(tiny):
    from fclm.model.builders import load_fclm

    model, proc, folder = tiny
    model.eval()
    loaded, proc2 = load_fclm(folder)
    batch = proc(mixed_examples())
    batch2 = proc2(mixed_examples())
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch2)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.pred_masks, b.pred_masks))


def test_auto_model_loads(tiny):
    import transformers

    import fclm  # noqa: F401  (registers the Auto classes)

    _, _, folder = tiny
    m = transformers.AutoModel.from_pretrained(folder)
    assert type(m).__name__ == "FCLMForConditionalGeneration"
    assert transformers.AutoConfig.from_pretrained(folder).model_type == "fclm"


def test_clear_errors(tiny):
    _, proc, _ = tiny
    s = make_sample(seed=3)
    with pytest.raises(FCLMDataError, match="2 <region> slots but 1 region masks"):
        proc([Example("dlc", s, "Compare <region> and <region>.", "x", region_ids=[0])])
    from fclm.data.masks import encode_mask
    s.objects[1].mask = encode_mask(np.zeros((s.height, s.width), bool))
    with pytest.raises(FCLMDataError, match="region mask 0 is empty"):
        proc([Example("roc", s, "What is <region>?", "box", region_ids=[1])])
    s.objects[1].mask = encode_mask(np.ones((10, 10), bool))
    with pytest.raises(FCLMDataError, match="region mask 0 has size 10x10 but the image is 128x96"):
        proc([Example("roc", s, "What is <region>?", "box", region_ids=[1])])
    with pytest.raises(FCLMDataError, match="answers have 0 \\[SEG\\] tokens but 1 target masks"):
        proc([Example("res", s, "Segment the square.", "Sure, it is the square.", target_ids=[0])])
    with pytest.raises(FCLMDataError, match="test:s3"):
        proc([Example("res", s, "Segment the square.", "Sure.", target_ids=[0])])


def test_model_rejects_mismatched_slots(tiny):
    model, proc, _ = tiny
    batch = proc([mixed_examples()[0]])
    batch["region_masks"] = []
    with pytest.raises(ValueError, match="1 <mask> and 1 <pos> slots but 0 region masks"):
        model(**batch)


def test_more_than_five_targets_subsampled(tiny):
    model, proc, _ = tiny
    model.train()
    s = make_sample(seed=4)
    ex = Example("muse", s, "Segment everything.", " ".join(["[SEG]"] * 7), target_ids=[0, 1, 2, 0, 1, 2, 0])
    batch = proc([ex])
    torch.manual_seed(0)
    keep = model._subsample_targets(torch.zeros(7, dtype=torch.long))
    assert len(keep) == 5 and len(set(keep.tolist())) == 5
    assert torch.isfinite(model(**batch).loss_seg)


def test_self_recon_all_objects_scope():
    """L_self over every annotated object: more masks, same LLM pass; position branch only."""
    from conftest import TINY_TEXTS
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, self_recon_scope="all_objects")
    proc.with_object_masks = True
    exs = mixed_examples()
    batch = proc(exs)
    assert len(batch["object_masks"]) == sum(len(e.sample.objects) for e in exs) == 12
    assert batch["object_image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    out = model(**batch)
    assert torch.isfinite(out.loss_self)
    model.config.self_recon_scope = "regions"
    regions_only = model(**{k: v for k, v in batch.items() if not k.startswith("object_")})
    assert not torch.isclose(out.loss_self, regions_only.loss_self)
    with pytest.raises(ValueError, match="self_recon_scope"):
        build_tiny(texts=TINY_TEXTS, self_recon_scope="everything")


def test_latent_all_targets_scope_matches_explicit_pairs():
    """T_pos depends on the mask alone, so pulling each [SEG] to its target's T_pos equals pairing it
    with a DLC example of the same region."""
    from conftest import TINY_TEXTS
    from fclm.model.builders import build_tiny

    model, proc = build_tiny(texts=TINY_TEXTS, latent_scope="all_targets", use_local_aggregation=False)
    model.eval()
    s = make_sample(seed=5)
    res = Example("res", s, "Segment the box.", "Sure, [SEG].", target_ids=[1])
    dlc = Example("dlc", s, "Describe <region>.", "a box thing", region_ids=[1])
    with torch.no_grad():
        dense = model(**proc([res]))
        model.config.latent_scope = "pairs"
        batch = proc([res, dlc])
        batch["latent_pairs"] = torch.tensor([[0, 0]])
        paired = model(**batch)
    assert dense.loss_latent is not None
    assert torch.allclose(dense.loss_latent, paired.loss_latent, atol=1e-5)
