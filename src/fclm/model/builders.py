"""Build FCLM: tiny random (tests, quickstart), full-size presets (dry runs), real checkpoints.

* :func:`build_tiny` — a seconds-to-build random model and a small BPE tokenizer trained on the fly;
* :func:`preset_config` / :func:`dry_run` — the FCLM-3B / 7B architectures on the meta device;
* :func:`build_from_pretrained` — compose Qwen2.5-VL (hub id or folder) and SAM (hub id, folder,
  or the original ``sam_vit_h_4b8939.pth``) into one FCLM checkpoint.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch

from .configuration_fclm import FCLMConfig, SPECIAL_TOKENS
from .modeling_fclm import FCLMForConditionalGeneration
from .processing_fclm import CHAT_TOKENS, FCLMProcessor


def set_token_ids(config: FCLMConfig, processor: FCLMProcessor) -> None:
    for key, tid in processor.token_ids.items():
        setattr(config, f"{key}_token_id", tid)
    tok = processor.tokenizer
    config.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
    config.vision_start_token_id = tok.convert_tokens_to_ids("<|vision_start|>")
    config.vision_end_token_id = tok.convert_tokens_to_ids("<|vision_end|>")


def set_generation_config(model, processor: FCLMProcessor) -> None:
    """Both of Qwen's end tokens stop ``generate`` (``<|im_end|>`` ends a chat turn, ``<|endoftext|>``
    ends a document), ``<|endoftext|>`` pads; greedy by default. Saved as ``generation_config.json``."""
    gc = model.generation_config
    gc.eos_token_id = [processor.im_end_id, processor.pad_id]
    gc.pad_token_id = processor.pad_id
    gc.bos_token_id = None
    gc.do_sample = False


# ----------------------------------------------------------------------------- tiny
def default_tiny_corpus() -> list[str]:
    """Prompt templates and synthetic-scene texts: what the tiny model will read and write."""
    from ..data import prompts
    from ..data.synthetic import generate_scenes

    texts = []
    for name, value in vars(prompts).items():  # every template string of the prompts module
        if name.startswith("__"):  # module metadata (__file__, __doc__ ...) would tie the vocabulary to the install path
            continue
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, (list, tuple)):
            texts += [v for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            for v in value.values():
                texts += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)] if isinstance(v, (list, tuple)) else []
    for s in generate_scenes(100, "train", seed=12345):
        texts += [s.caption or ""] + [q.text for q in s.questions] + [q.answer or "" for q in s.questions]
        for ob in s.objects:
            texts += list(ob.expressions) + [ob.caption or "", ob.category or ""]
    return texts


def build_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1024):
    """Byte-level BPE trained on ``texts`` with Qwen's chat tokens and FCLM's tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) if texts is not None else default_tiny_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts + ["system\nYou are a helpful assistant.", "user\n", "assistant\n"], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 unk_token=None)
    hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS.values())})
    return hf


TINY_SIZES = dict(image_long_side=168, sam_image_size=256)


def tiny_config(vocab_size: int, sam_image_size: int | None = None, **overrides) -> FCLMConfig:
    """A few-million-parameter FCLM that runs a training step in well under a second on a CPU.
    ``sam_image_size``: SAM's square input (default ``TINY_SIZES``; a multiple of its 16-px patch)."""
    sam_side = sam_image_size or TINY_SIZES["sam_image_size"]
    if sam_side % 16 or sam_side < 64:
        raise ValueError(f"sam_image_size must be a multiple of 16 and at least 64, got {sam_side}")
    text = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=True)
    vision = dict(depth=2, hidden_size=96, intermediate_size=192, num_heads=4, out_hidden_size=128,
                  window_size=112, fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    sam = dict(
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, output_channels=64,
                           image_size=sam_side, patch_size=16, window_size=8,
                           global_attn_indexes=[1], num_pos_feats=32, mlp_dim=128),
        prompt_encoder_config=dict(hidden_size=64, image_size=sam_side, patch_size=16),
        mask_decoder_config=dict(hidden_size=64, mlp_dim=256, num_hidden_layers=2, num_attention_heads=4,
                                 iou_head_hidden_dim=64),
    )
    kw = dict(text_config=text, vision_config=vision, sam_config=sam, region_hidden_size=64,
              deformable_heads=4, tie_word_embeddings=True)
    kw.update(overrides)
    return FCLMConfig(**kw)


def build_tiny(out_dir: str | None = None, seed: int = 0, texts: Iterable[str] | None = None,
               image_long_side: int | None = None, sam_image_size: int | None = None,
               **config_overrides) -> tuple[FCLMForConditionalGeneration, FCLMProcessor]:
    """Tiny random FCLM + processor (saved to ``out_dir`` when given). ``image_long_side`` (the
    vision encoder's input, a multiple of 28) and ``sam_image_size`` default to ``TINY_SIZES``."""
    torch.manual_seed(seed)
    tok = build_tiny_tokenizer(texts)
    long_side = image_long_side or TINY_SIZES["image_long_side"]
    sam_side = sam_image_size or TINY_SIZES["sam_image_size"]
    if long_side % 28:
        raise ValueError(f"image_long_side must be a multiple of 28 (14-px patches merged 2x2), got {long_side}")
    config = tiny_config(len(tok), sam_image_size=sam_side, **config_overrides)
    processor = FCLMProcessor(tok, image_long_side=long_side, sam_image_size=sam_side, max_length=1024)
    set_token_ids(config, processor)
    model = FCLMForConditionalGeneration(config)
    set_generation_config(model, processor)
    processor.configure_for(config)
    if out_dir:
        save_fclm(model, processor, out_dir)
    return model, processor


# ----------------------------------------------------------------------------- full size
PRESETS = {
    "fclm-3b": dict(
        text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                  num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        tie=True),
    "fclm-7b": dict(
        text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=128000,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
        tie=False),
}
SAM_VIT_H = dict(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                                    global_attn_indexes=[7, 15, 23, 31], output_channels=256, image_size=1024,
                                    patch_size=16, window_size=14))
QWEN_IMAGE_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                         vision_end_token_id=151653)


def preset_config(name: str) -> FCLMConfig:
    """FCLM-3B / FCLM-7B architecture (SPEC §7); special-token ids left for the processor to set."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    p = PRESETS[name]
    d = p["text"]["hidden_size"]
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=d)
    return FCLMConfig(text_config=p["text"], vision_config=vision, sam_config=SAM_VIT_H,
                      tie_word_embeddings=p["tie"], **QWEN_IMAGE_TOKENS)


def dry_run(name: str) -> dict[str, int]:
    """Build a preset on the meta device (no memory, no download) and count parameters per group."""
    from .stages import count_parameters

    config = preset_config(name)
    with torch.device("meta"):
        model = FCLMForConditionalGeneration(config)
    return count_parameters(model)


# ----------------------------------------------------------------------------- real checkpoints
def load_sam(sam: str, dtype=None):
    """A ``SamModel`` from a hub id / folder, or from the original segment-anything ``.pth``."""
    from transformers import SamModel

    from .sam_checkpoint import load_original_sam

    if sam.endswith((".pth", ".pt")):
        if not os.path.exists(sam):
            raise FileNotFoundError(f"SAM checkpoint not found: {sam}")
        model = load_original_sam(sam)
        return model.to(dtype) if dtype is not None else model
    return SamModel.from_pretrained(sam, dtype=dtype)


def build_from_pretrained(llm: str, sam: str, dtype=torch.bfloat16, **config_overrides):
    """Compose FCLM from a pretrained Qwen2.5-VL and SAM. New modules are randomly initialised."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    qwen = Qwen2_5_VLForConditionalGeneration.from_pretrained(llm, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(llm)
    sam_model = load_sam(sam, dtype)
    processor = FCLMProcessor(tok, sam_image_size=sam_model.config.vision_config.image_size)
    qc = qwen.config
    config = FCLMConfig(text_config=qc.text_config.to_dict(), vision_config=qc.vision_config.to_dict(),
                        sam_config=sam_model.config.to_dict(), tie_word_embeddings=qc.tie_word_embeddings,
                        **config_overrides)
    set_token_ids(config, processor)
    with torch.device("meta"):
        model = FCLMForConditionalGeneration(config)
    state = dict(qwen.state_dict())
    state.update({f"sam.{k}": v for k, v in sam_model.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    fresh = ("region_extractor.", "seg_projector.")
    bad = [k for k in missing if not k.startswith(fresh) and "positional_embedding" not in k and k != "lm_head.weight"]
    if bad or unexpected:
        raise ValueError(f"pretrained weights do not fit FCLM: missing {bad[:5]}, unexpected {unexpected[:5]}")
    # the new modules were built on the meta device: materialise them with their initialisation
    from .mask_decoding import SegProjector
    from .region_extractor import HybridRegionExtractor

    model.region_extractor = HybridRegionExtractor(config).to(dtype)
    model.seg_projector = SegProjector(config.llm_hidden_size, config.sam_prompt_size).to(dtype)
    # non-persistent buffers (rotary inv_freq, ...) are not in state dicts: take them from the parts
    sources = dict(qwen.named_buffers())
    sources.update({f"sam.{k}": v for k, v in sam_model.named_buffers()})
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if name not in sources:
                raise ValueError(f"buffer {name} was not loaded")
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = sources[name]
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    set_generation_config(model, processor)
    processor.configure_for(config)
    return model, processor


def save_fclm(model, processor: FCLMProcessor, out_dir: str, state_dict: dict | None = None) -> None:
    """Save model (safetensors) and processor to one folder, atomically (temp folder + rename);
    ``state_dict``: the weights to write instead of the model's own (e.g. gathered from shards)."""
    import shutil
    import tempfile

    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".fclm-save-", dir=parent)
    set_generation_config(model, processor)
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(tmp)
        if os.path.exists(out_dir):
            old = out_dir.rstrip("/") + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_fclm(path: str, device: str | torch.device | None = None, dtype=None):
    """Load a saved FCLM folder → (model, processor)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no FCLM model folder at {path}")
    model = FCLMForConditionalGeneration.from_pretrained(path, dtype=dtype)
    with torch.no_grad():  # safetensors hands out unaligned views of the mapped file; CPU kernels
        for p in model.parameters():  # then round differently from a freshly built model
            if p.device.type == "cpu" and p.data_ptr() % 64:
                p.data = p.data.clone()
    processor = FCLMProcessor.from_pretrained(path)
    set_generation_config(model, processor)  # folders saved before both end tokens were written
    processor.configure_for(model.config)
    if device is not None:
        model.to(device)
    return model.eval(), processor


def random_preset(name: str, dtype=torch.bfloat16, device: str | torch.device = "cpu"):
    """Full-size random FCLM (benchmarks without downloads) with a small on-the-fly tokenizer."""
    processor = FCLMProcessor(build_tiny_tokenizer(), max_length=8192)
    config = preset_config(name)
    set_token_ids(config, processor)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = FCLMForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    set_generation_config(model, processor)
    processor.configure_for(config)
    return model, processor
