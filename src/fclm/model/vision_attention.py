"""Qwen2.5-VL vision attention with all windows in one SDPA call (inference).

Outside flash-attention, transformers' ``Qwen2_5_VLVisionAttention`` splits the packed sequence at
``cu_seqlens`` and runs one SDPA call per window: ≈ 81 calls per windowed block at 1008² (64-token
windows), each too small to fill a GPU. :func:`packed_sdpa_attention` takes the same varlen
arguments as the flash-attention path and runs every window in one batched SDPA call (windows padded
to the longest, padded keys masked), which gives the same result as the per-window loop.

It is registered under a name containing "flash" because that is what makes the vision attention
pass ``cu_seqlens`` through instead of looping (``is_flash_attention_requested`` tests the name);
:func:`packed_vision_attention` switches a model's vision encoder to it for the duration of a call.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "fclm_packed_sdpa_flash_varlen"


def packed_sdpa_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                          cu_seq_lens_q=None, is_causal=False, **kwargs):
    """Varlen attention over the packed sequences of ``cu_seq_lens_q`` in one SDPA call.

    query / key / value ``(1, H, N, D)`` → ``((1, N, H, D), None)`` (the layout of the flash path).
    """
    _, H, N, D = query.shape
    cu = cu_seq_lens_q.to(query.device)
    lengths = cu[1:] - cu[:-1]
    W = lengths.numel()
    Lm = int(lengths.max())
    if bool((lengths == Lm).all()):  # equal windows (a grid divisible by the window): a plain reshape
        q, k, v = (t[0].view(H, W, Lm, D).transpose(0, 1) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling)
        return out.permute(0, 2, 1, 3).reshape(1, N, H, D), None
    window = torch.repeat_interleave(torch.arange(W, device=query.device), lengths)
    offset = torch.arange(N, device=query.device) - cu[:-1][window]
    slot = window * Lm + offset  # place of each token in the padded (W, Lm) layout

    def pad(t):
        return t[0].new_zeros(H, W * Lm, D).index_copy(1, slot, t[0]).view(H, W, Lm, D).transpose(0, 1)

    valid = (torch.arange(Lm, device=query.device)[None] < lengths[:, None]).view(W, 1, 1, Lm)
    out = F.scaled_dot_product_attention(pad(query), pad(key), pad(value), attn_mask=valid, dropout_p=dropout,
                                         scale=scaling)  # (W, H, Lm, D)
    out = out.permute(0, 2, 1, 3).reshape(W * Lm, H, D).index_select(0, slot)
    return out[None], None


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)


@contextmanager
def packed_vision_attention(vision_config, enabled: bool = True):
    """Use :func:`packed_sdpa_attention` in the vision encoder while inside the block, when its
    attention is plain SDPA (eager and real flash-attention are left as they are)."""
    current = vision_config._attn_implementation
    if not enabled or current not in ("sdpa", None):
        yield
        return
    register()
    vision_config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        vision_config._attn_implementation = current
