"""Batched decoding over ``inputs_embeds`` with a KV cache, shared image work and ``[SEG]`` capture.

:func:`run_batch` takes any number of :class:`Request` rows (image, user text with ``<region>``
slots, region masks, optional teacher-forced answer) and:

1. encodes every *distinct* image once: one Qwen vision-encoder call for all of them; the features
   are written into the ``<|image_pad|>`` slots of every row that shows that image; region prompts
   for all rows come from one region-extractor call (its SAM crop encoder runs once per chunk of
   ``crop_batch`` regions);
2. prefills each image's *shared prompt prefix* (system prompt + image + the text up to the first
   ``<region>`` / ``[SEG]`` slot, identical for every row of that image) once at batch 1 and copies its
   KV cache into every row — so N regions of one image cost one image prefill plus N short
   suffixes;
3. prefills the per-row suffixes as one left-padded batch (attention mask + the rows' own M-RoPE
   positions from ``model.position_ids_for``), then decodes all rows together with a
   ``transformers.DynamicCache``: each step feeds the new tokens' embeddings at position "previous
   maximum position + 1" (all three M-RoPE axes equal for text); finished rows leave the batch;
4. records the last-layer hidden state of every step whose *input* token is ``[SEG]`` (teacher-forced
   ``[SEG]`` in the prompt, or a generated one fed back; a row that stops right after emitting
   ``[SEG]`` gets one extra step for it), and decodes those queries into masks with SAM's image
   embedding computed once per distinct image.

Greedy decoding of a row gives the same tokens whether it runs alone or in a batch (tested, float32
CPU): rows never see each other, and the prefix/suffix split is the same either way.

``GenerationOptions(static_cache=True)`` replaces steps 2–3's cache and loop by
:mod:`fclm.infer.static_decode` (image prefix KV kept once per image, fixed-shape steps, a host sync
only every ``stop_check_every`` steps), with the same tokens and ``[SEG]`` states.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch

from ..data.schema import FCLMDataError
from ..model.mask_decoding import decode_masks, sam_image_embeddings
from ..model.region_extractor import mask_box
from ..model.processing_fclm import CropSource, region_crops, resize_long_side, sam_preprocess
from .inputs import check_text_length

__all__ = ["GenerationOptions", "Request", "Completion", "run_batch"]

MASK_CHUNK = 4  # [SEG] queries upsampled to full size at a time


@dataclass
class GenerationOptions:
    """Decoding options (defaults: greedy, at most 128 new tokens, stop at ``<|im_end|>``/eos)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0  # end-of-turn tokens are suppressed until this many tokens exist
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_strings: Sequence[str] = ()  # stop once the decoded answer contains one (text is cut before it)
    ignore_eos: bool = False  # never stop on end-of-turn tokens (benchmarks: fixed-length decoding)
    share_prefix: bool = True  # prefill each image's common prompt prefix once
    crop_batch: int = 8  # regions per SAM crop-encoder call (local aggregation)
    static_cache: bool = False  # fixed-shape decode, image prefix KV kept once (fclm.infer.static_decode)
    stop_check_every: int = 8  # static_cache: steps between host-side stop checks
    compile_step: bool = False  # static_cache: decode steps through torch.compile(fullgraph=True)

    @classmethod
    def from_kwargs(cls, base: "GenerationOptions | None" = None, **kw) -> "GenerationOptions":
        names = set(cls.__dataclass_fields__)
        bad = sorted(k for k in kw if k not in names)
        if bad:
            raise TypeError(f"unknown generation option(s) {bad}; known: {sorted(names)}")
        opts = cls(**{**(base.__dict__ if base else {}), **{k: v for k, v in kw.items() if v is not None}})
        if opts.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if opts.do_sample and opts.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling")
        if isinstance(opts.stop_strings, str):
            opts.stop_strings = (opts.stop_strings,)
        return opts


@dataclass
class Request:
    """One conversation row: an image, the user text, its region masks, an optional answer.

    ``answer`` set → teacher forcing: no generation, the prompt ends with the answer (and its
    ``<|im_end|>``) and the ``[SEG]`` states inside it are read in the same forward pass.
    Rows with the same ``image_key`` (default: the PIL image object's identity) share the image
    encodings and the prompt-prefix prefill.
    """

    image: object  # PIL.Image (RGB)
    user: str
    regions: list[np.ndarray] = field(default_factory=list)
    answer: str | None = None
    image_key: Hashable | None = None
    name: str = ""  # names the row in error messages

    def key(self) -> Hashable:
        return self.image_key if self.image_key is not None else ("pil", id(self.image))


@dataclass
class Completion:
    """What one row produced."""

    text: str  # decoded answer (FCLM tokens such as [SEG] / <p> kept, chat tokens removed)
    token_ids: list[int]  # generated ids, end-of-turn token excluded (teacher forced: the answer's)
    finish_reason: str  # "eos" | "length" | "stop_string" | "teacher_forced"
    seg_states: torch.Tensor | None  # (n_seg, d) last-layer states at [SEG] inputs
    mask_logits: list[torch.Tensor] = field(default_factory=list)  # one (H, W) map per [SEG], on request
    masks: list[np.ndarray] = field(default_factory=list)  # logits > 0, bool, original image size


# ------------------------------------------------------------------ helpers
def model_device(model) -> torch.device:
    return next(model.parameters()).device


class _ImageEnc:
    """One distinct image's processor outputs (SAM input only when needed)."""

    def __init__(self, processor, image):
        self.image = image
        resized = resize_long_side(image, processor.image_long_side)
        vis = processor.image_processor(images=[resized], return_tensors="pt")
        self.pixel_values = vis["pixel_values"]
        self.grid = vis["image_grid_thw"][0]
        self.n_tokens = int(self.grid.prod()) // processor.merge_size ** 2
        self.original_size = (image.size[1], image.size[0])
        self._sam = None
        self._crops = None
        self._sam_emb = None

    def crop_source(self, size: int, device) -> CropSource:
        if self._crops is None:
            self._crops = CropSource(self.image, size, device)
        return self._crops

    def sam_embedding(self, model, processor, device) -> torch.Tensor:
        """``(C, g, g)`` SAM embedding of the whole image, computed once (region prompts with
        ``region_feature_source="image"`` and `[SEG]` decoding share it)."""
        if self._sam_emb is None:
            px = torch.from_numpy(self.sam(processor)[0])[None].to(device)
            self._sam_emb = sam_image_embeddings(model.sam, px)[0]
        return self._sam_emb

    def sam(self, processor):
        if self._sam is None:
            self._sam = sam_preprocess(self.image, processor.sam_image_size)
        return self._sam


def _encode_rows(processor, requests: list[Request]):
    """Distinct images, per-row ids and per-row image index, with every input check."""
    keys: dict[Hashable, int] = {}
    images: list[_ImageEnc] = []
    row_ids, row_img, boxes = [], [], []
    tokenized: dict = {}
    for i, rq in enumerate(requests):
        where = f"{rq.name}: " if rq.name else (f"query {i}: " if len(requests) > 1 else "")
        k = rq.key()
        if k not in keys:
            keys[k] = len(images)
            images.append(_ImageEnc(processor, rq.image))
        u = keys[k]
        enc = images[u]
        H, W = enc.original_size
        for j, m in enumerate(rq.regions):
            if m.shape != (H, W):
                raise FCLMDataError(f"{where}region {j}: mask is {m.shape[1]}x{m.shape[0]} (WxH) but the image is {W}x{H}")
            try:  # from the mask's projections, computed once and reused by crops and the position branch
                boxes.append(mask_box(torch.from_numpy(np.ascontiguousarray(m))))
            except ValueError:
                raise FCLMDataError(f"{where}region {j}: mask is empty") from None
        text = processor.user_text(rq.user, len(rq.regions), where)
        key = (text, rq.answer, enc.n_tokens)
        if key not in tokenized:  # rows that differ only by their regions (N regions, one prompt) tokenize once
            tokenized[key] = processor.build_ids(text, rq.answer, enc.n_tokens)[0]
        ids = list(tokenized[key])
        check_text_length(len(ids), processor.max_length, rq.user if rq.answer is None else f"{rq.user} / {rq.answer}",
                          f"{where}prompt")
        row_ids.append(ids)
        row_img.append(u)
    return images, row_ids, row_img, boxes


def _sample(logits: torch.Tensor, opts: GenerationOptions, generator) -> torch.Tensor:
    if not opts.do_sample:
        return logits.argmax(-1)
    logits = logits / opts.temperature
    if opts.top_k and opts.top_k < logits.shape[-1]:
        kth = torch.topk(logits, opts.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if opts.top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        cum = sp.cumsum(-1)
        drop = cum - sp > opts.top_p  # keep the smallest set whose mass reaches top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _stop_ids(processor) -> set[int]:
    tok = processor.tokenizer
    ids = {processor.im_end_id, processor.pad_id}
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return {i for i in ids if i is not None}


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    if not hits:
        return text, False
    return text[: min(hits)].rstrip(), True


def _buffered_layer_class():
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys/values sit in a buffer with room for the tokens still to
        come: ``update`` writes the new tokens in place and returns views of the filled part — the
        same shapes and values as ``DynamicLayer``'s ``torch.cat``, without copying the whole cache
        at every step (at full size: every layer's ≈ 1.3 k-token image prompt, per row, per step)."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
            super().__init__()
            self.device, self.is_initialized, self.n = keys.device, True, keys.shape[-2]
            self._k = keys.new_empty(*keys.shape[:2], self.n + room, keys.shape[-1])
            self._v = values.new_empty(*values.shape[:2], self.n + room, values.shape[-1])
            self._k[:, :, : self.n], self._v[:, :, : self.n] = keys, values
            self._views()

        def _views(self):
            self.keys, self.values = self._k[:, :, : self.n], self._v[:, :, : self.n]

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self.n + m > self._k.shape[-2]:  # out of room (not expected): grow
                self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:2], self.n + m, self._k.shape[-1])], -2)
                self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:2], self.n + m, self._v.shape[-1])], -2)
            self._k[:, :, self.n: self.n + m] = key_states
            self._v[:, :, self.n: self.n + m] = value_states
            self.n += m
            self._views()
            return self.keys, self.values

        def select_rows(self, keep: torch.Tensor) -> None:
            self._k, self._v = self._k.index_select(0, keep), self._v.index_select(0, keep)
            self._views()

    return BufferedLayer


def _with_room(cache, room: int) -> None:
    """Move every filled layer of a ``DynamicCache`` into a buffer with ``room`` free columns."""
    cls = _buffered_layer_class()
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            cache.layers[i] = cls(layer.keys, layer.values, room)


def _prune(cache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        if hasattr(layer, "select_rows"):
            layer.select_rows(keep)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys.index_select(0, keep)
            layer.values = layer.values.index_select(0, keep)


def _suffix_batch(row_emb, row_pos, prefix_len, suffix_len, dev):
    """Left-padded suffix embeddings ``(B, S, d)`` and positions ``(3, B, S)``."""
    B, S_max = len(row_emb), max(suffix_len)
    d = row_emb[0].shape[-1]
    suf_emb = row_emb[0].new_zeros(B, S_max, d)
    suf_pos = torch.ones(3, B, S_max, dtype=torch.long, device=dev)
    for r in range(B):
        p, s = prefix_len[r], suffix_len[r]
        suf_emb[r, S_max - s:] = row_emb[r][p:]
        suf_pos[:, r, S_max - s:] = row_pos[r][:, p:]
    return suf_emb, suf_pos


def _prompt_seg_states(hidden, row_ids, prefix_len, suffix_len, seg_id, dev):
    """States at the ``[SEG]`` tokens of each row's (teacher-forced) prompt suffix."""
    S_max = hidden.shape[1]
    out = []
    for r in range(len(row_ids)):
        ids = torch.tensor(row_ids[r][prefix_len[r]:], device=dev)
        cols = torch.nonzero(ids == seg_id)[:, 0] + (S_max - suffix_len[r])
        out.append(list(hidden[r, cols]))
    return out


def _generator(opts, dev):
    if opts.do_sample and opts.seed is not None:
        return torch.Generator(device=dev).manual_seed(int(opts.seed))
    return None


def _decode_static(model, opts, requests, row_ids, row_emb, row_pos, row_img, prefix_len, suffix_len, prefix_kv,
                   groups, processor, dev):
    from .static_decode import decode_static

    cfg = model.config
    suf_emb, suf_pos = _suffix_batch(row_emb, row_pos, prefix_len, suffix_len, dev)
    alive = [r for r in range(len(requests)) if requests[r].answer is None and opts.max_new_tokens > 0]
    hidden, gen, finish, new_seg = decode_static(
        model, opts, prefix_kv, groups, row_img, prefix_len, (suf_emb, suf_pos, suffix_len), alive,
        _stop_ids(processor), cfg.seg_token_id, _generator(opts, dev), max(1, int(opts.stop_check_every)))
    seg_states = _prompt_seg_states(hidden, row_ids, prefix_len, suffix_len, cfg.seg_token_id, dev)
    for r in range(len(requests)):
        seg_states[r] += new_seg[r]
        if requests[r].answer is not None:
            finish[r] = "teacher_forced"
        elif r not in alive:
            finish[r] = "length"
    return gen, finish, seg_states


def _decode_dynamic(model, opts, requests, row_ids, row_emb, row_pos, prefix_len, suffix_len, prefix_kv, groups,
                    n_layers, processor, dev):
    """Suffix prefill and decode with a ``DynamicCache`` (prefix KV copied into every row)."""
    from transformers import DynamicCache

    cfg = model.config
    B = len(requests)
    P_max, S_max = max(prefix_len), max(suffix_len)
    emb_layer = model.get_input_embeddings()
    cache = DynamicCache(config=cfg)
    if P_max:
        kv0 = next(iter(prefix_kv.values()))
        data = []
        for li in range(n_layers):
            k0, v0 = kv0[li]
            K = k0.new_zeros(B, k0.shape[1], P_max, k0.shape[3])
            V = v0.new_zeros(B, v0.shape[1], P_max, v0.shape[3])
            for u, rows in groups.items():
                if u not in prefix_kv:
                    continue
                kg, vg = prefix_kv[u][li]
                idx = torch.tensor(rows, device=dev)
                P = kg.shape[2]
                K[idx, :, P_max - P:] = kg.expand(len(rows), -1, -1, -1)
                V[idx, :, P_max - P:] = vg.expand(len(rows), -1, -1, -1)
            data.append((K, V))
        cache = DynamicCache(data, config=cfg)

    suf_emb, suf_pos = _suffix_batch(row_emb, row_pos, prefix_len, suffix_len, dev)
    attn = torch.zeros(B, P_max + S_max, dtype=torch.long, device=dev)
    for r in range(B):
        p, s = prefix_len[r], suffix_len[r]
        attn[r, P_max - p: P_max] = 1
        attn[r, P_max + S_max - s:] = 1
    out = model.run_language_model(suf_emb, attn, suf_pos, cache=cache, use_cache=True)
    hidden = out.last_hidden_state
    del suf_emb

    seg_states = _prompt_seg_states(hidden, row_ids, prefix_len, suffix_len, cfg.seg_token_id, dev)

    # 3. decode
    gen: list[list[int]] = [[] for _ in range(B)]
    finish = ["teacher_forced" if rq.answer is not None else "" for rq in requests]
    alive = [r for r in range(B) if requests[r].answer is None and opts.max_new_tokens > 0]
    for r in range(B):
        if requests[r].answer is None and opts.max_new_tokens <= 0:
            finish[r] = "length"
    stop_ids = _stop_ids(processor)
    stop_t = torch.tensor(sorted(stop_ids), device=dev)
    next_pos = torch.stack([p.max() + 1 for p in row_pos])  # (B,)
    generator = _generator(opts, dev)
    if alive:
        keep = torch.tensor(alive, device=dev)
        logits = model.lm_head(hidden[keep, -1]).float()
        if len(alive) < B:
            _prune(cache, keep)
            attn = attn[keep]
        next_pos = next_pos[keep]
    del hidden, out
    if alive:
        _with_room(cache, opts.max_new_tokens + 1)  # decode steps write in place (no torch.cat per step)
    padded = None
    # without padding a one-token step needs no mask: say so (transformers would work it out at every step)
    no_mask = {t: None for t in set(model.model.language_model.config.layer_types)}
    while alive:
        n_gen = len(gen[alive[0]])
        if opts.ignore_eos or n_gen < opts.min_new_tokens:
            logits[:, stop_t] = float("-inf")
        tokens = _sample(logits, opts, generator).tolist()
        feed, cont = [], []
        for k, (r, t) in enumerate(zip(alive, tokens)):
            if t in stop_ids and not opts.ignore_eos and n_gen >= opts.min_new_tokens:
                finish[r] = "eos"
                continue
            gen[r].append(t)
            if len(gen[r]) >= opts.max_new_tokens:
                finish[r] = "length"
            elif opts.stop_strings and _cut_at_stop(processor.decode(gen[r]), opts.stop_strings)[1]:
                finish[r] = "stop_string"
            if not finish[r] or t == cfg.seg_token_id:  # a final [SEG] is fed once more for its state
                feed.append(k)
                cont.append(not finish[r])
        if not feed:
            break
        n_before = len(alive)
        if len(feed) < len(alive):
            keep = torch.tensor(feed, device=dev)
            _prune(cache, keep)
            attn, next_pos = attn[keep], next_pos[keep]
            alive = [alive[k] for k in feed]
            tokens = [tokens[k] for k in feed]
        tok_t = torch.tensor(tokens, device=dev)
        attn = torch.cat([attn, attn.new_ones(len(alive), 1)], 1)
        if padded is None or len(feed) < n_before:
            padded = bool((attn == 0).any())  # no padding left: plain causal attention, no mask to build
        pos = next_pos.view(1, -1, 1).expand(3, -1, 1)
        out = model.run_language_model(emb_layer(tok_t)[:, None], attn if padded else no_mask, pos, cache=cache,
                                       use_cache=True)
        next_pos = next_pos + 1
        h = out.last_hidden_state[:, -1]
        for k, r in enumerate(alive):
            if tokens[k] == cfg.seg_token_id:
                seg_states[r].append(h[k])
        if not all(cont):
            keep = torch.tensor([k for k, c in enumerate(cont) if c], device=dev)
            alive = [r for r, c in zip(alive, cont) if c]
            if not alive:
                break
            _prune(cache, keep)
            attn, next_pos, h = attn[keep], next_pos[keep], h[keep]
        logits = model.lm_head(h).float()
    del cache
    return gen, finish, seg_states


# ------------------------------------------------------------------ the batch
@torch.inference_mode()
def run_batch(model, processor, requests: list[Request], options: GenerationOptions | None = None,
              decode_seg: bool = True, keep_logits: bool = False) -> list[Completion]:
    """Run every request (generation or teacher forcing) in one batch; see the module docstring.

    Masks come back as bool arrays at the original image size; ``keep_logits=True`` also keeps each
    mask's float logit map (``Completion.mask_logits``)."""
    from transformers import DynamicCache

    opts = options or GenerationOptions()
    if not requests:
        return []
    cfg = model.config
    dev = model_device(model)
    images, row_ids, row_img, boxes = _encode_rows(processor, requests)
    B = len(requests)

    # 1. vision encoder once for all distinct images
    pv = torch.cat([im.pixel_values for im in images]).to(dev)
    grids = torch.stack([im.grid for im in images]).to(dev)
    vision = model.encode_images(pv, grids)
    emb_layer = model.get_input_embeddings()
    dtype = emb_layer.weight.dtype

    # per-row embeddings with image features in their slots
    row_emb, embedded = [], {}
    for ids, u in zip(row_ids, row_img):
        key = (u, tuple(ids))
        if key not in embedded:  # rows with the same ids and image (N regions, one prompt) embed once
            t = torch.tensor(ids, device=dev)
            e = emb_layer(t)
            e[t == cfg.image_token_id] = vision[u].flatten(0, 1).to(dtype)
            embedded[key] = e
        row_emb.append(embedded[key])  # shared: rows are only ever replaced out of place (place_visual_prompts)

    # region prompts: one extractor call for every region of every row
    masks_all, region_rows = [], []
    for r, rq in enumerate(requests):
        for m in rq.regions:
            masks_all.append(torch.from_numpy(np.ascontiguousarray(m)).to(dev))
            region_rows.append(r)
    if masks_all:
        rows_t = torch.tensor(region_rows, device=dev)
        crop_feats = crop_masks = sam_rows = valid_rows = None
        if cfg.use_local_aggregation and cfg.region_feature_source == "image":
            sam_rows = [images[u].sam_embedding(model, processor, dev) for u in row_img]
            valid_rows = [images[u].sam(processor)[1] for u in row_img]
        elif cfg.use_local_aggregation:
            crops, cms, k = [], [], 0
            for r, rq in enumerate(requests):
                if rq.regions:  # crops made with tensor ops on the model's device
                    n = len(rq.regions)
                    c, cm = region_crops(images[row_img[r]].crop_source(cfg.crop_size, dev), masks_all[k: k + n],
                                         processor.crop_margin, boxes[k: k + n])
                    crops.append(c)
                    cms.append(cm)
                    k += n
            cp = torch.cat(crops)
            step = max(1, int(opts.crop_batch))
            crop_feats = torch.cat([sam_image_embeddings(model.sam, cp[i: i + step]) for i in range(0, len(cp), step)])
            crop_masks = torch.cat(cms)
        vis_rows = [vision[u] for u in row_img]
        appearance = None
        if cfg.pos_appearance:  # appearance cells of each distinct image of a region's row
            used = sorted({row_img[r] for r in region_rows})
            px = torch.stack([torch.from_numpy(images[u].sam(processor)[0]) for u in used]).to(dev)
            valid = torch.tensor([list(images[u].sam(processor)[1]) for u in used], device=dev)
            slot = {u: j for j, u in enumerate(used)}
            appearance = (model.region_extractor.appearance_maps(px),
                          torch.tensor([slot[row_img[r]] for r in region_rows], device=dev), valid)
        t_mask, t_pos = model.region_extractor(masks_all, rows_t, vis_rows, crop_feats, crop_masks, boxes,
                                               sam_image_features=sam_rows, sam_valid_sizes=valid_rows,
                                               appearance=appearance)
        k = 0
        for r, ids in enumerate(row_ids):
            n = len(requests[r].regions)
            row_emb[r] = model.place_visual_prompts(row_emb[r], torch.tensor(ids, device=dev),
                                                    t_mask[k: k + n], t_pos[k: k + n])
            k += n

    # M-RoPE positions per row, unpadded (rows with identical ids share the computation)
    pos_cache: dict = {}
    row_pos = []
    for ids, u in zip(row_ids, row_img):
        key = (u, tuple(ids))
        if key not in pos_cache:
            t = torch.tensor([ids], device=dev)
            p, _ = model.position_ids_for(t, grids[u: u + 1], torch.ones_like(t))
            pos_cache[key] = p[:, 0]  # (3, L)
        row_pos.append(pos_cache[key])

    # 2. shared prefix per image: common ids up to the first region / [SEG] slot
    special = {cfg.mask_token_id, cfg.pos_token_id, cfg.seg_token_id}
    groups: dict[int, list[int]] = {}
    for r, u in enumerate(row_img):
        groups.setdefault(u, []).append(r)
    prefix_len = [0] * B
    n_layers = None
    prefix_kv: dict[int, list] = {}
    if opts.share_prefix:
        for u, rows in groups.items():
            ref = row_ids[rows[0]]
            P = min(len(row_ids[r]) for r in rows) - 1
            for r in rows:
                ids = row_ids[r]
                j = 0
                while j < P and ids[j] == ref[j] and ids[j] not in special:
                    j += 1
                P = j
            if P <= 0:
                continue
            cache_g = DynamicCache(config=cfg)
            r0 = rows[0]
            model.run_language_model(row_emb[r0][:P][None], torch.ones(1, P, dtype=torch.long, device=dev),
                                     row_pos[r0][:, :P][:, None], cache=cache_g, use_cache=True)
            prefix_kv[u] = [(layer.keys, layer.values) for layer in cache_g.layers]
            n_layers = len(prefix_kv[u])
            for r in rows:
                prefix_len[r] = P
    P_max = max(prefix_len)
    suffix_len = [len(ids) - p for ids, p in zip(row_ids, prefix_len)]
    S_max = max(suffix_len)

    if opts.static_cache and not opts.stop_strings:
        gen, finish, seg_states = _decode_static(model, opts, requests, row_ids, row_emb, row_pos, row_img,
                                                 prefix_len, suffix_len, prefix_kv, groups, processor, dev)
    else:
        gen, finish, seg_states = _decode_dynamic(model, opts, requests, row_ids, row_emb, row_pos, prefix_len,
                                                  suffix_len, prefix_kv, groups, n_layers, processor, dev)
    del row_emb, prefix_kv

    # 4. results and masks
    results = []
    for r, rq in enumerate(requests):
        if rq.answer is not None:
            ids = processor._ids(rq.answer)
            text = processor.decode(ids)
        else:
            ids = gen[r]
            text = processor.decode(ids)
            if opts.stop_strings:
                text, _ = _cut_at_stop(text, opts.stop_strings)
        st = torch.stack(seg_states[r]) if seg_states[r] else None
        results.append(Completion(text=text, token_ids=list(ids), finish_reason=finish[r] or "length", seg_states=st))
    if decode_seg:
        seg_rows = [r for r in range(B) if results[r].seg_states is not None]
        if seg_rows:
            need = sorted({row_img[r] for r in seg_rows})
            where = {u: i for i, u in enumerate(need)}
            sam_in = [images[u].sam(processor) for u in need]
            valid = torch.tensor([s[1] for s in sam_in])
            orig = torch.tensor([images[u].original_size for u in need])
            if all(images[u]._sam_emb is not None for u in need):  # already read by the region prompts
                emb = torch.stack([images[u]._sam_emb for u in need])
            else:
                emb = sam_image_embeddings(model.sam, torch.from_numpy(np.stack([s[0] for s in sam_in])).to(dev))
            states = torch.cat([results[r].seg_states for r in seg_rows])
            index = torch.tensor([where[row_img[r]] for r in seg_rows for _ in range(len(results[r].seg_states))],
                                 device=dev)
            prompts = model.seg_projector(states.to(dtype))
            boxes = model.box_head(states.to(dtype)) if model.box_head is not None else None
            looks = model.look_head(states.to(dtype)) if model.look_head is not None else None
            k = 0
            masks, logits_kept = [], []
            # a few queries at a time: full-size float logits (48 MB each at 12 MP) never pile up
            for c in range(0, len(prompts), MASK_CHUNK):
                for x in decode_masks(model.sam, prompts[c: c + MASK_CHUNK], emb, index[c: c + MASK_CHUNK], valid, orig,
                                      boxes=None if boxes is None else boxes[c: c + MASK_CHUNK],
                                      looks=None if looks is None else looks[c: c + MASK_CHUNK]):
                    masks.append((x > 0).cpu().numpy())
                    if keep_logits:
                        logits_kept.append(x.float().cpu())
            for r in seg_rows:
                n = len(results[r].seg_states)
                results[r].masks = masks[k: k + n]
                if keep_logits:
                    results[r].mask_logits = logits_kept[k: k + n]
                k += n
    return results
