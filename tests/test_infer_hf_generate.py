"""Hugging Face-native use (issue 12): Auto classes, processor(images=, text=, regions=), generate."""
import json
import os

import pytest
import torch

from conftest import make_sample
from fclm.data.masks import decode_rle
from fclm.infer.decoding import GenerationOptions, Request, run_batch
from test_infer_decoding import _ForceSeg  # lm_head wrapper forcing [SEG] at one step

ROC = "What is the category of <region>? Using only one word or phrase."
DLC = "Can you provide me with a detailed description of the region in the picture marked by <region>?"
RES = "What is the red circle in this image? Please output segmentation mask."


@pytest.fixture(scope="module")
def hf(tiny):
    """Processor and model loaded through transformers' Auto classes, weights made lively."""
    import fclm  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, _, folder = tiny
    proc = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger random weights: greedy outputs vary with the input
        for n, p in model.named_parameters():
            if p.ndim >= 2 and not n.startswith("sam."):
                p.normal_(0, 0.1, generator=g)
    return model, proc, folder


@pytest.fixture(scope="module")
def scene():
    s = make_sample()
    return s.image.open(), [decode_rle(o.mask) for o in s.objects]


def test_auto_classes_and_saved_end_tokens(hf):
    from fclm.model import FCLMForConditionalGeneration, FCLMProcessor

    model, proc, folder = hf
    assert isinstance(proc, FCLMProcessor) and isinstance(model, FCLMForConditionalGeneration)
    gc = json.load(open(os.path.join(folder, "generation_config.json")))
    tok = proc.tokenizer
    assert sorted(gc["eos_token_id"]) == sorted([tok.convert_tokens_to_ids("<|im_end|>"),
                                                tok.convert_tokens_to_ids("<|endoftext|>")])
    assert gc["pad_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")


def _new_tokens(out, inputs, stops):
    rows = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        k = next((i for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:k])
    return rows


def test_generate_equals_pipeline_greedy_with_and_without_regions_padded(hf, scene):
    model, proc, _ = hf
    img, masks = scene
    texts = [ROC, DLC, RES, ROC]  # different lengths: left padding
    regions = [[masks[0]], [masks[1]], [], [masks[2]]]
    inputs = proc(images=img, text=texts, regions=regions)
    assert (inputs["attention_mask"] == 0).any()  # padded
    out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    stops = {proc.im_end_id, proc.pad_id}
    got = _new_tokens(out, inputs, stops)
    ref = run_batch(model, proc, [Request(img, t, r) for t, r in zip(texts, regions)],
                    GenerationOptions(max_new_tokens=10))
    assert got == [c.token_ids for c in ref]
    assert len({tuple(g) for g in got}) > 1
    assert proc.batch_decode(out, inputs["input_ids"].shape[1]) == [c.text for c in ref]
    # one row alone (no padding) gives the same tokens as in the batch
    one = proc(images=img, text=texts[1], regions=regions[1])
    assert _new_tokens(model.generate(**one, max_new_tokens=10), one, stops) == [got[1]]


def test_seg_masks_reachable_from_generate_output(hf, scene):
    model, proc, _ = hf
    img, _ = scene
    seg = model.config.seg_token_id
    head = model.lm_head
    model._modules["lm_head"] = _ForceSeg(head, seg, 1)
    try:
        inputs = proc(images=img, text=RES)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        model._modules["lm_head"] = _ForceSeg(head, seg, 1)
        [c] = run_batch(model, proc, [Request(img, RES)], GenerationOptions(max_new_tokens=4), keep_logits=True)
    finally:
        model._modules["lm_head"] = head
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert new[1] == seg and c.token_ids[:2] == new[:2]
    masks = model.seg_masks_from_generation(out, inputs)
    logits = model.seg_masks_from_generation(out, inputs, return_logits=True)
    assert len(masks) == 1 and len(masks[0]) == new.count(seg) == len(c.masks)
    assert masks[0][0].dtype == torch.bool and masks[0][0].shape == (96, 128)
    torch.testing.assert_close(logits[0][0], c.mask_logits[0], atol=1e-3, rtol=1e-3)


def test_processor_generation_inputs_errors(hf, scene):
    from fclm.data.schema import FCLMDataError

    _, proc, _ = hf
    img, masks = scene
    with pytest.raises(FCLMDataError, match="1 <region> slots but 0 region masks"):
        proc(images=img, text=ROC)
    with pytest.raises(ValueError, match="2 images for 3 texts"):
        proc(images=[img, img], text=[ROC, ROC, ROC], regions=[[masks[0]]] * 3)
    with pytest.raises(TypeError, match="images= and text="):
        proc(text=ROC)
