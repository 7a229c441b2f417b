"""One mask-decoding path for `[SEG]` states and `<pos>` embeddings (SPEC §1.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / rms(x)`` over the last dimension, no parameters (computed in float32)."""
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


class SegProjector(nn.Sequential):
    """LLM-width vector → one SAM sparse prompt token: Linear(d, d) → ReLU → Linear(d, 256).

    The input is RMS-normalised first (no parameters): `[SEG]` states leave the LLM's final norm at
    one scale and `<pos>` embeddings live at the token-embedding scale, and the same projector
    decodes both (L_self) and compares both (L_latent in prompt space).
    """

    def __init__(self, llm_hidden_size: int, prompt_size: int):
        super().__init__(FreezableLinear(llm_hidden_size, llm_hidden_size), nn.ReLU(),
                         FreezableLinear(llm_hidden_size, prompt_size))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``(..., d)`` → ``(..., P)``. ``frozen``: a fixed map (no gradient reaches the weights, the
        input still gets one), each layer still called as a module so that sharded weights (ZeRO-3)
        are gathered as in any forward."""
        x = rms_normalise(x)
        for layer in self:
            x = layer(x, frozen) if isinstance(layer, FreezableLinear) else layer(x)
        return x


class BoxHead(nn.Sequential):
    """LLM-width vector → the region's box ``(cx, cy, w, h)`` as fractions of its image:
    RMS-norm (as :class:`SegProjector`) → Linear(d, d) → ReLU → Linear(d, 4) → sigmoid."""

    def __init__(self, llm_hidden_size: int):
        super().__init__(nn.Linear(llm_hidden_size, llm_hidden_size), nn.ReLU(), nn.Linear(llm_hidden_size, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` → ``(N, 4)``."""
        return super().forward(rms_normalise(x)).float().sigmoid()


def box_targets(masks: list[torch.Tensor]) -> torch.Tensor:
    """``(N, 4)`` ``(cx, cy, w, h)`` of each non-empty ``(H, W)`` mask, as fractions of its size (the
    geometry the position branch reads); a mask may be ``{0, 1, 255}``, only 1 counts."""
    from .region_extractor import centre_size, mask_box

    rows = [centre_size(mask_box(m if m.dtype == torch.bool else m == 1), m.shape) for m in masks]
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def box_corner_tokens(sam, boxes: torch.Tensor, valid_sizes: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
    """SAM's box prompt tokens ``(N, 2, P)`` for ``(N, 4)`` ``(cx, cy, w, h)`` image fractions, each
    image resized to ``valid_sizes`` ``(N, 2)`` (h, w) inside SAM's padded square input. Rows where
    ``drop`` ``(N,)`` is True get SAM's "not a point" token twice instead (no box)."""
    cx, cy, w, h = boxes.unbind(-1)
    vh, vw = (v.to(boxes) for v in valid_sizes.unbind(-1))
    corners = torch.stack([((cx - w / 2).clamp(0, 1)) * vw, ((cy - h / 2).clamp(0, 1)) * vh,
                           ((cx + w / 2).clamp(0, 1)) * vw, ((cy + h / 2).clamp(0, 1)) * vh], -1)
    sparse, _ = sam.prompt_encoder(input_points=None, input_labels=None, input_boxes=corners[:, None], input_masks=None)
    return not_a_point_where(sam, sparse[:, 0], drop)


def not_a_point_where(sam, tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """``tokens`` ``(N, ..., P)`` with the rows where ``drop`` ``(N,)`` is True replaced by SAM's
    "not a point" token (a prompt token that says nothing)."""
    if drop is None or not bool(drop.any()):
        return tokens
    none = sam.prompt_encoder.not_a_point_embed(torch.zeros(1, dtype=torch.long, device=tokens.device))
    where = drop.to(tokens.device).view(-1, *([1] * (tokens.dim() - 1)))
    return torch.where(where, none.to(tokens.dtype).expand_as(tokens), tokens)


class FreezableLinear(nn.Linear):
    """``nn.Linear`` whose forward can use its weights as constants (``frozen=True``)."""

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        if not frozen:
            return super().forward(x)
        return F.linear(x, self.weight.detach(), None if self.bias is None else self.bias.detach())


def _encode_other_size(enc, pixel_values: torch.Tensor) -> torch.Tensor:
    """SAM's image encoder on an input of another size than its own (e.g. 512² crops for a 1024²
    ViT-H): transformers' patch-embedding module refuses other sizes, so its convolution, blocks and
    neck are called here in its own order, with the absolute position embedding resized bicubically
    to the new grid (as ViTDet does for other resolutions). The global-attention blocks resize their
    relative-position tables themselves (``SamVisionAttention.get_rel_pos``); windowed blocks pad.
    ``pos_embed`` is read outside the encoder's own forward, so under ZeRO-3 parameter sharding this
    path would see an empty shard (untested; the default crop size never takes it)."""
    x = enc.patch_embed.projection(pixel_values).permute(0, 2, 3, 1)  # (B, g, g, D)
    if enc.pos_embed is not None:
        pos = enc.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=x.shape[1:3], mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1).to(x.dtype)
        x = x + pos
    for layer in enc.layers:
        x = layer(x)
    return enc.neck(x)


def sam_image_embeddings(sam, pixel_values: torch.Tensor) -> torch.Tensor:
    """SAM image encoder, ``(B, 3, S, S)`` → ``(B, C, g, g)`` (``g = S / patch``).

    Calls ``vision_encoder`` directly (``SamModel.get_image_embeddings`` is ``no_grad``) and only
    builds a graph when some encoder parameter trains. ``S`` may be smaller than SAM's input size
    (``region_crop_size``; see :func:`_encode_other_size`).
    """
    enc = sam.vision_encoder
    pixel_values = pixel_values.to(enc.patch_embed.projection.weight.dtype)
    native = tuple(pixel_values.shape[-2:]) == tuple(enc.patch_embed.image_size)
    run = (lambda x: enc(x)[0]) if native else (lambda x: _encode_other_size(enc, x))
    if any(p.requires_grad for p in enc.parameters()) and torch.is_grad_enabled():
        return run(pixel_values)
    with torch.no_grad():
        return run(pixel_values)


def decode_masks(
    sam,
    prompts: torch.Tensor,
    image_embeddings: torch.Tensor,
    image_index: torch.Tensor,
    valid_sizes: torch.Tensor,
    original_sizes: torch.Tensor,
    at_low_res: bool = False,
    boxes: torch.Tensor | None = None,
    box_dropout: float = 0.0,
    looks: torch.Tensor | None = None,
    look_dropout: float = 0.0,
) -> list[torch.Tensor]:
    """Decode one mask per prompt token.

    Args:
        sam: a ``transformers.SamModel``.
        prompts: ``(N, P)`` sparse prompt tokens (P = SAM prompt width, 256 for SAM).
        image_embeddings: ``(B, P, g, g)`` SAM embeddings of the B images (computed once each).
        image_index: ``(N,)`` image of each prompt.
        valid_sizes: ``(B, 2)`` (h, w) of each resized image inside SAM's padded square input.
        original_sizes: ``(B, 2)`` (H, W) of each original image.
        at_low_res: return the decoder's own ``4g × 4g`` logits, cropped to the image's valid part, with
            no upsampling (for training losses: :func:`~fclm.model.losses.mask_losses` pools the
            targets to that size). Inference keeps the default.
        boxes: ``(N, 4)`` predicted ``(cx, cy, w, h)`` image fractions (``box_prompt``): SAM's two
            box-corner tokens join each prompt token.
        box_dropout: the probability, per prompt, that its box tokens are replaced by SAM's "not a
            point" token (training only: the decoder keeps learning to read the prompt token alone).
        looks: ``(N, P)`` look prompt tokens (``look_prompt``), one more sparse token per prompt.
        look_dropout: the probability, per prompt, that its look token is replaced by SAM's "not a
            point" token (training only).
    Returns:
        N logit maps, the i-th of shape ``original_sizes[image_index[i]]`` (``at_low_res``: about
        ``valid_sizes[image_index[i]] · 4g / S``); mask = logits > 0.
    """
    if prompts.shape[0] == 0:
        return []
    n = prompts.shape[0]
    emb = image_embeddings[image_index]
    # called as a module, not read as `.weight`: sharded weights (ZeRO-3) are gathered in its forward
    no_mask = sam.prompt_encoder.no_mask_embed(torch.zeros(1, dtype=torch.long, device=emb.device))
    dense = no_mask.reshape(1, -1, 1, 1).expand(n, -1, *emb.shape[-2:])
    pos = sam.get_image_wide_positional_embeddings().to(emb.dtype).expand(n, -1, -1, -1)
    sparse = prompts.to(emb.dtype).view(n, 1, 1, -1)
    if boxes is not None:
        drop = torch.rand(n, device=boxes.device) < box_dropout if box_dropout > 0 else None
        corners = box_corner_tokens(sam, boxes, valid_sizes.to(boxes.device)[image_index.to(boxes.device)], drop)
        sparse = torch.cat([sparse, corners.to(emb.dtype)[:, None]], 2)
    if looks is not None:
        drop = torch.rand(n, device=looks.device) < look_dropout if look_dropout > 0 else None
        sparse = torch.cat([sparse, not_a_point_where(sam, looks.to(emb.dtype), drop).view(n, 1, 1, -1)], 2)
    low_res, _ = sam.mask_decoder(
        image_embeddings=emb,
        image_positional_embeddings=pos,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense.to(emb.dtype),
        multimask_output=False,
    )
    low_res = low_res[:, 0, :1].float()  # (N, 1, 4g, 4g)
    size = sam.config.vision_config.image_size
    if at_low_res:
        r = low_res.shape[-1] / size
        return [m[0, : max(1, round(int(valid_sizes[b][0]) * r)), : max(1, round(int(valid_sizes[b][1]) * r))]
                for m, b in zip(low_res.unbind(0), image_index.tolist())]
    up = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)
    out = []
    # unbind, not up[i:i+1]: each slice's backward would zero-fill a gradient the size of all of `up`
    for m, b in zip(up.unbind(0), image_index.tolist()):
        h, w = (int(v) for v in valid_sizes[b])
        H, W = (int(v) for v in original_sizes[b])
        m = m[:, :h, :w]
        if (h, w) != (H, W):
            m = F.interpolate(m[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        out.append(m[0])
    return out
