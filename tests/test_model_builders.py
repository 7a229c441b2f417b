"""`fclm init` from real-format checkpoints (tiny), the original SAM .pth layout, and presets."""
import re

import pytest
import torch

from conftest import TINY_TEXTS


def _hf_to_original_sam_key(key: str) -> str:
    """segment-anything's names for transformers' SamModel keys (written independently of the converter)."""
    k = key
    k = k.replace("vision_encoder.", "image_encoder.")
    k = re.sub(r"image_encoder\.layers\.", "image_encoder.blocks.", k)
    k = k.replace("patch_embed.projection", "patch_embed.proj")
    k = k.replace("neck.conv1", "neck.0").replace("neck.layer_norm1", "neck.1")
    k = k.replace("neck.conv2", "neck.2").replace("neck.layer_norm2", "neck.3")
    k = k.replace("mask_embed.conv1", "mask_downscaling.0").replace("mask_embed.layer_norm1", "mask_downscaling.1")
    k = k.replace("mask_embed.conv2", "mask_downscaling.3").replace("mask_embed.layer_norm2", "mask_downscaling.4")
    k = k.replace("mask_embed.conv3", "mask_downscaling.6")
    k = k.replace("upscale_conv1", "output_upscaling.0").replace("upscale_layer_norm", "output_upscaling.1")
    k = k.replace("upscale_conv2", "output_upscaling.3")
    k = k.replace("point_embed", "point_embeddings")
    k = k.replace("shared_embedding.positional_embedding", "pe_layer.positional_encoding_gaussian_matrix")
    k = re.sub(r"(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.layers\.0", r"\1.layers.1", k)
    k = re.sub(r"(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.proj_in", r"\1.layers.0", k)
    k = re.sub(r"(iou_prediction_head|output_hypernetworks_mlps\.\d+)\.proj_out", r"\1.layers.2", k)
    k = k.replace(".layer_norm", ".norm")
    return k


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    """A tiny Qwen2.5-VL folder (with tokenizer) and a tiny SAM in both layouts."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, SamConfig, SamModel

    from fclm.model.builders import build_tiny_tokenizer, tiny_config

    root = tmp_path_factory.mktemp("parts")
    tok = build_tiny_tokenizer(TINY_TEXTS)
    ref = tiny_config(len(tok))
    qcfg = Qwen2_5_VLConfig(text_config=ref.text_config.to_dict(), vision_config=ref.vision_config.to_dict(),
                            image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), tie_word_embeddings=True)
    torch.manual_seed(0)
    qwen = Qwen2_5_VLForConditionalGeneration(qcfg)
    qwen.save_pretrained(root / "qwen")
    tok.save_pretrained(root / "qwen")
    sam = SamModel(SamConfig(**ref.sam_config.to_dict()))
    sam.save_pretrained(root / "sam")
    original = {_hf_to_original_sam_key(k): v.clone() for k, v in sam.state_dict().items()
                if k != "shared_image_embedding.positional_embedding"}
    original["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    torch.save(original, root / "sam_tiny_original.pth")
    return root, qwen, sam, original


def test_original_sam_layout_keys(tiny_parts):
    _, _, _, original = tiny_parts
    for key in ("image_encoder.blocks.0.norm1.weight", "image_encoder.blocks.0.attn.qkv.weight",
                "image_encoder.neck.0.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "prompt_encoder.mask_downscaling.0.weight", "mask_decoder.output_upscaling.0.weight",
                "mask_decoder.iou_prediction_head.layers.2.weight",
                "mask_decoder.output_hypernetworks_mlps.0.layers.1.weight",
                "mask_decoder.transformer.layers.0.norm1.weight", "mask_decoder.transformer.norm_final_attn.weight"):
        assert key in original, key


def test_original_sam_checkpoint_converts_exactly(tiny_parts):
    from fclm.model.sam_checkpoint import load_original_sam

    root, _, sam, _ = tiny_parts
    loaded = load_original_sam(str(root / "sam_tiny_original.pth"))
    assert loaded.config.vision_config.hidden_size == sam.config.vision_config.hidden_size
    assert loaded.config.vision_config.global_attn_indexes == list(sam.config.vision_config.global_attn_indexes)
    a, b = sam.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_original_sam_rejects_other_files(tmp_path):
    from fclm.model.sam_checkpoint import load_original_sam

    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not an original segment-anything checkpoint"):
        load_original_sam(str(tmp_path / "x.pth"))


@pytest.mark.parametrize("sam_source", ["sam", "sam_tiny_original.pth"])
def test_fclm_init_from_pretrained_parts(tiny_parts, tmp_path, sam_source):
    from fclm.cli import main
    from fclm.model.builders import load_fclm

    root, qwen, sam, _ = tiny_parts
    out = tmp_path / "fclm"
    assert main(["init", "--llm", str(root / "qwen"), "--sam", str(root / sam_source), "--out", str(out),
                 "--dtype", "float32"]) == 0
    model, proc = load_fclm(str(out))
    assert model.config.seg_token_id == proc.tokenizer.convert_tokens_to_ids("[SEG]")
    q = qwen.state_dict()
    m = model.state_dict()
    assert torch.equal(m["model.language_model.layers.0.self_attn.q_proj.weight"], q["model.language_model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(m["model.visual.blocks.0.attn.qkv.weight"], q["model.visual.blocks.0.attn.qkv.weight"])
    assert torch.equal(m["sam.mask_decoder.iou_token.weight"], sam.state_dict()["mask_decoder.iou_token.weight"])
    assert torch.equal(m["sam.vision_encoder.layers.1.attn.qkv.weight"], sam.state_dict()["vision_encoder.layers.1.attn.qkv.weight"])
    # the composed model runs end to end
    from test_model_core import mixed_examples
    out_ = model(**proc(mixed_examples()))
    assert torch.isfinite(out_.loss)


def test_dry_run_counts(capsys):
    from fclm.cli import main

    assert main(["init", "--preset", "fclm-3b", "--random", "--dry-run"]) == 0
    text = capsys.readouterr().out
    qwen = float(re.search(r"Qwen2.5-VL part\s+([\d.]+) B", text).group(1))
    sam = float(re.search(r"SAM part\s+([\d.]+) B", text).group(1))
    assert abs(qwen - 3.75) < 0.02 and abs(sam - 0.64) < 0.01


def test_dry_run_7b():
    from fclm.model.builders import dry_run

    c = dry_run("fclm-7b")
    assert 8.0e9 < c["vision_encoder"] + c["llm"] < 8.4e9  # Qwen2.5-VL-7B: 8.29 B


def test_tiny_corpus_does_not_depend_on_install_path():
    """The tiny tokenizer is trained on the prompt templates, not on module metadata such as
    ``__file__`` (which would make the vocabulary, and so every tiny model, depend on where fclm lives)."""
    from fclm.data import prompts
    from fclm.model.builders import default_tiny_corpus

    corpus = default_tiny_corpus()
    assert prompts.__file__ not in corpus and prompts.__name__ not in corpus
    assert prompts.__doc__ not in corpus
