"""Read the original segment-anything checkpoint (``sam_vit_h_4b8939.pth``) into transformers' SAM layout.

LISA/GLaMM users already have this file. It is read with ``torch.load(weights_only=True)`` (no
arbitrary unpickling) and its keys are renamed to ``SamModel``'s.
"""
from __future__ import annotations

import re

import torch

# original substring → transformers substring, applied in order
_RENAMES = [
    ("iou_prediction_head.layers.0", "iou_prediction_head.proj_in"),
    ("iou_prediction_head.layers.1", "iou_prediction_head.layers.0"),
    ("iou_prediction_head.layers.2", "iou_prediction_head.proj_out"),
    ("mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1"),
    ("mask_decoder.output_upscaling.1", "mask_decoder.upscale_layer_norm"),
    ("mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2"),
    ("mask_downscaling.0", "mask_embed.conv1"),
    ("mask_downscaling.1", "mask_embed.layer_norm1"),
    ("mask_downscaling.3", "mask_embed.conv2"),
    ("mask_downscaling.4", "mask_embed.layer_norm2"),
    ("mask_downscaling.6", "mask_embed.conv3"),
    ("point_embeddings", "point_embed"),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("image_encoder", "vision_encoder"),
    ("neck.0", "neck.conv1"),
    ("neck.1", "neck.layer_norm1"),
    ("neck.2", "neck.conv2"),
    ("neck.3", "neck.layer_norm2"),
    ("patch_embed.proj", "patch_embed.projection"),
    (".norm", ".layer_norm"),
    ("blocks", "layers"),
]
_HYPER = re.compile(r".*output_hypernetworks_mlps\.(\d+)\.layers\.(\d+).*")
_HYPER_LAYERS = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}


def convert_original_sam_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segment-anything key names → ``transformers.SamModel`` key names."""
    out = {}
    for key, value in state_dict.items():
        if key in ("pixel_mean", "pixel_std"):
            continue
        for old, new in _RENAMES:
            if old in key:
                key = key.replace(old, new)
        m = _HYPER.match(key)
        if m:
            key = key.replace(f"layers.{m.group(2)}", _HYPER_LAYERS[m.group(2)])
        out[key] = value
    pe = "prompt_encoder.shared_embedding.positional_embedding"
    if pe in out:
        out["shared_image_embedding.positional_embedding"] = out[pe]
    return out


def sam_config_for_original(state_dict: dict[str, torch.Tensor]):
    """Infer the ``SamConfig`` of an original checkpoint (ViT-B/L/H or smaller) from tensor shapes.

    Mask-decoder attention heads cannot be read from shapes; SAM's 8 is assumed.
    """
    from transformers import SamConfig

    sd = state_dict
    hidden, _, patch, _ = sd["image_encoder.patch_embed.proj.weight"].shape
    grid = sd["image_encoder.pos_embed"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks."))
    head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_idx = [i for i in range(layers) if sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1]
    window = (sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[0] + 1) // 2 if 0 not in global_idx else 14
    prompt = sd["prompt_encoder.no_mask_embed.weight"].shape[1]
    dec_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("mask_decoder.transformer.layers."))
    return SamConfig(
        vision_config=dict(hidden_size=int(hidden), num_hidden_layers=layers, num_attention_heads=int(hidden // head_dim),
                           patch_size=int(patch), image_size=int(grid * patch), global_attn_indexes=global_idx,
                           window_size=int(window), output_channels=int(sd["image_encoder.neck.0.weight"].shape[0]),
                           mlp_dim=int(sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]),
                           num_pos_feats=int(sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].shape[1])),
        prompt_encoder_config=dict(hidden_size=int(prompt), image_size=int(grid * patch), patch_size=int(patch)),
        mask_decoder_config=dict(hidden_size=int(prompt), num_hidden_layers=dec_layers,
                                 mlp_dim=int(sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
                                 iou_head_hidden_dim=int(sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])),
    )


def load_original_sam(path: str, config=None):
    """Build a ``SamModel`` from an original ``.pth`` checkpoint (strict: every key must match)."""
    from transformers import SamModel

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "image_encoder.patch_embed.proj.weight" not in sd:
        raise ValueError(f"{path} is not an original segment-anything checkpoint (no image_encoder.patch_embed.proj.weight)")
    config = config or sam_config_for_original(sd)
    model = SamModel(config)
    missing, unexpected = model.load_state_dict(convert_original_sam_state_dict(sd), strict=False)
    missing = [k for k in missing if "positional_embedding" not in k]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match SAM: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
