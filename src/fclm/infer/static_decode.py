"""Decoding with a static KV cache whose shared image prefix is stored once per image.

:func:`decode_static` is the decode half of :func:`fclm.infer.decoding.run_batch` with
``GenerationOptions(static_cache=True)``:

* the prompt prefix shared by an image's rows (system prompt + image + text up to the first slot)
  keeps its keys/values **once** per image, ``(G, H_kv, P, D)`` per layer; rows never copy it;
* each row's own tokens (suffix, then generated tokens) go into preallocated ``(B, H_kv, T, D)``
  buffers written in place (no ``torch.cat`` per step, fixed shapes);
* attention (:func:`shared_prefix_attention`, registered as a transformers attention function)
  takes one softmax over [the row's image prefix ; its own cache]; a prefix is read by a batched
  matmul across all rows of its image, with no per-row copy;
* the loop keeps tokens, finished flags and hidden states on the device and syncs with the host
  only for the stop check every ``every`` steps, so one step is a fixed-shape function of
  (tokens, step) that ``torch.compile``/CUDA graphs can capture.

Greedy tokens equal the default path's (tested, float32 CPU).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

SHARED_PREFIX_ATTENTION = "fclm_shared_prefix"


class SharedPrefixCache:
    """Per layer: prefix K/V ``(G, H_kv, P, D)`` (one per image group, left-padded) and row K/V
    buffers ``(B, H_kv, T, D)``; ``write`` is the tensor of row-buffer columns the next call fills."""

    is_compileable = False
    is_linear = ()

    def __init__(self, prefix_k, prefix_v, prefix_valid, row_group, B, T):
        self.prefix_k, self.prefix_v = prefix_k, prefix_v  # lists per layer
        self.prefix_valid = prefix_valid  # (G, P) bool
        self.row_group = row_group  # (B,) group of each row
        self.groups = [torch.nonzero(row_group == g)[:, 0] for g in range(prefix_valid.shape[0])]
        k0 = prefix_k[0]
        self.k = [k0.new_zeros(B, k.shape[1], T, k.shape[3]) for k in prefix_k]
        self.v = [k0.new_zeros(B, k.shape[1], T, k.shape[3]) for k in prefix_k]
        self.write = None

    def update(self, key_states, value_states, layer_idx, **kwargs):
        self.k[layer_idx].index_copy_(2, self.write, key_states)
        self.v[layer_idx].index_copy_(2, self.write, value_states)
        return self.k[layer_idx], self.v[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prefix: SharedPrefixCache | None = None, **kwargs):
    """One softmax over [image prefix ; row cache].

    query ``(B, H, L, D)``; key/value the row buffers ``(B, H_kv, T, D)``; ``attention_mask``
    ``(B, 1, L, T)`` bool (True = attend). Returns ``((B, L, H, D), None)``.
    """
    c = shared_prefix
    B, H, L, D = query.shape
    hk = key.shape[1]
    rep = H // hk
    q = query.reshape(B, hk, rep * L, D).float()  # query head h uses key head h // rep (repeat_kv)
    s_row = torch.matmul(q, key.float().transpose(-1, -2)) * scaling  # (B, hk, rep·L, T)
    m = attention_mask[:, :, None].expand(B, 1, rep, L, key.shape[2]).reshape(B, 1, rep * L, -1)
    s_row = s_row.masked_fill(~m, float("-inf"))
    li = module.layer_idx
    pk, pv = c.prefix_k[li].float(), c.prefix_v[li].float()  # (G, hk, P, D)
    P = pk.shape[2]
    s_pre = q.new_full((B, hk, rep * L, P), float("-inf"))
    for g, rows in enumerate(c.groups):  # all rows of an image against its prefix: one matmul, no copy
        if len(rows):
            sg = torch.matmul(q.index_select(0, rows), pk[g].transpose(-1, -2)) * scaling
            sg = sg.masked_fill(~c.prefix_valid[g].view(1, 1, 1, P), float("-inf"))
            s_pre = s_pre.index_copy(0, rows, sg)
    p = torch.softmax(torch.cat([s_pre, s_row], -1), -1)
    out = torch.matmul(p[..., P:], value.float())
    for g, rows in enumerate(c.groups):
        if len(rows):
            out = out.index_add(0, rows, torch.matmul(p.index_select(0, rows)[..., :P], pv[g]))
    out = out.view(B, hk, rep, L, D).reshape(B, H, L, D).to(query.dtype)
    return out.transpose(1, 2), None


@contextmanager
def use_shared_prefix_attention(config):
    from transformers import AttentionInterface

    AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention)
    tc = config.text_config
    current = tc._attn_implementation
    tc._attn_implementation = SHARED_PREFIX_ATTENTION
    try:
        yield
    finally:
        tc._attn_implementation = current


def make_step(lm, cache: SharedPrefixCache, valid: torch.Tensor):
    """One language-model call over the static cache: ``step(emb (B, L, d), pos (3, B, L), write (L,))``
    → last hidden states ``(B, L, d)``. ``write`` holds the row-buffer columns of the L inputs;
    ``valid (B, T)`` the columns that hold real tokens. Fixed shapes for a fixed L: one graph for
    ``torch.compile`` (no graph breaks; tested with ``torch._dynamo.explain``)."""
    cols = torch.arange(valid.shape[1], device=valid.device)

    def step(emb, pos, write):
        cache.write = write
        causal = cols[None, None, None, :] <= write.view(1, 1, -1, 1)
        # a query always sees itself: a left-padding query of a row without a prefix would otherwise
        # see nothing (softmax of -inf → NaN states whose K/V then poison other rows through 0·NaN)
        mask = (valid[:, None, None, :] & causal) | (cols[None, None, None, :] == write.view(1, 1, -1, 1))
        out = lm(inputs_embeds=emb, attention_mask={"full_attention": mask}, position_ids=pos, cache=cache,
                 use_cache=True, shared_prefix=cache)
        return out.last_hidden_state

    return step


def decode_static(model, opts, prefix_kv: dict, groups: dict, row_img: list[int], prefix_len: list[int],
                  suffix: tuple, generate_rows: list[int], stop_ids: set[int], seg_id: int, generator=None,
                  every: int = 8):
    """Suffix prefill + decode of every row (see the module docstring).

    ``suffix``: ``(emb (B, S, d), pos (3, B, S), suffix_len list)`` left-padded; ``prefix_kv``: per
    image group u, a list per layer of ``(K, V)`` ``(1, H_kv, P_u, D)``. Returns ``(hidden of the
    suffix (B, S, d), generated ids per row, finish reason per row, [SEG] states of generated
    tokens per row)``.
    """
    from .decoding import _sample

    suf_emb, suf_pos, suffix_len = suffix
    B, S, _ = suf_emb.shape
    dev = suf_emb.device
    n_new = opts.max_new_tokens if generate_rows else 0
    T = S + n_new
    us = sorted(groups)
    gindex = {u: i for i, u in enumerate(us)}
    P = max([kv[0][0].shape[2] for kv in prefix_kv.values()] or [1])
    n_layers = len(model.model.language_model.layers)
    cfg = model.config
    hk = cfg.text_config.num_key_value_heads
    D = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    dtype = suf_emb.dtype
    pk = [torch.zeros(len(us), hk, P, D, dtype=dtype, device=dev) for _ in range(n_layers)]
    pv = [torch.zeros(len(us), hk, P, D, dtype=dtype, device=dev) for _ in range(n_layers)]
    valid_p = torch.zeros(len(us), P, dtype=torch.bool, device=dev)
    for u, kv in prefix_kv.items():
        g = gindex[u]
        n = kv[0][0].shape[2]
        for li, (k, v) in enumerate(kv):
            pk[li][g, :, P - n:] = k[0]
            pv[li][g, :, P - n:] = v[0]
        valid_p[g, P - n:] = True
    row_group = torch.tensor([gindex[u] for u in row_img], device=dev)
    cache = SharedPrefixCache(pk, pv, valid_p, row_group, B, T)
    valid = torch.zeros(B, T, dtype=torch.bool, device=dev)
    for r, s in enumerate(suffix_len):
        valid[r, S - s: S] = True
    lm = model.model.language_model

    step = make_step(lm, cache, valid)
    # decode steps (one token per row) through torch.compile when asked; the prefill stays eager
    step1 = torch.compile(step, fullgraph=True, dynamic=False) if opts.compile_step else step

    emb_layer = model.get_input_embeddings()
    gen_mask = torch.zeros(B, dtype=torch.bool, device=dev)
    gen_mask[generate_rows] = True
    stop_t = torch.tensor(sorted(stop_ids), device=dev)
    with use_shared_prefix_attention(cfg):
        hidden = step(suf_emb, suf_pos, torch.arange(S, device=dev))
        if not n_new:
            return hidden, [[] for _ in range(B)], [""] * B, [[] for _ in range(B)]
        h = hidden[:, -1]
        next_pos = suf_pos.amax(dim=(0, 2)) + 1  # (B,)
        tokens = torch.full((B, n_new), -1, dtype=torch.long, device=dev)
        states = hidden.new_zeros(B, n_new, hidden.shape[-1])  # state at step t: input token = tokens[:, t]
        done = ~gen_mask
        steps = 0
        for t in range(n_new):
            logits = model.lm_head(h).float()
            if opts.ignore_eos or t < opts.min_new_tokens:
                logits[:, stop_t] = float("-inf")
            tok = _sample(logits, opts, generator)
            tok = torch.where(done, torch.full_like(tok, -1), tok)
            tokens[:, t] = tok
            if not opts.ignore_eos:
                done = done | torch.isin(tok, stop_t)
            steps = t + 1
            last = t == n_new - 1
            if last and not bool((tok == seg_id).any()):
                break  # the last token's state is needed only for a final [SEG]
            valid[:, S + t] = True
            pos = next_pos.view(1, B, 1).expand(3, B, 1)
            h = step1(emb_layer(tok.clamp(min=0))[:, None], pos, torch.tensor([S + t], device=dev))[:, -1]
            states[:, t] = h
            next_pos = next_pos + 1
            if (t + 1) % every == 0 and bool(done.all()):  # the only host sync of the loop
                break
    tokens, states = tokens[:, :steps].tolist(), states[:, :steps]
    gen, finish, seg = [], [], []
    for r in range(B):
        row = tokens[r]
        k = next((i for i, x in enumerate(row) if x < 0 or x in stop_ids), len(row))
        gen.append(row[:k] if gen_mask[r] else [])
        finish.append(("eos" if k < len(row) and row[k] >= 0 else "length") if gen_mask[r] else "")
        seg.append([states[r, i] for i in range(k) if row[i] == seg_id and i < states.shape[1]])
    return hidden, gen, finish, seg
