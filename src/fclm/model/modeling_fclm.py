"""FCLMForConditionalGeneration: Qwen2.5-VL + SAM + hybrid region extractor (SPEC §1).

A plain subclass of transformers' ``Qwen2_5_VLForConditionalGeneration`` (so real Qwen2.5-VL
weights load into it unchanged) that adds ``sam`` (a ``SamModel``), ``region_extractor`` and
``seg_projector``. Slots are found from ``input_ids`` (never by offsets):

* ``<mask>`` / ``<pos>`` input embeddings are overwritten with the extractor's T_mask / T_pos, in
  row-major order of their positions, matched one-to-one with ``region_masks``;
* the last-layer hidden state at each ``[SEG]`` position is a grounding query, matched one-to-one
  (row-major) with ``target_masks``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2_5_VLForConditionalGeneration, SamModel
from transformers.models.sam.modeling_sam import SamPositionalEmbedding
from transformers.utils import ModelOutput

from .configuration_fclm import FCLMConfig
from .losses import latent_consistency, mask_losses
from .mask_decoding import BoxHead, SegProjector, box_targets, decode_masks, sam_image_embeddings
from .region_extractor import HybridRegionExtractor
from .vision_attention import packed_vision_attention


@dataclass
class FCLMOutput(ModelOutput):
    """Every loss term separately (None when the batch has nothing for it), logits, masks.

    ``pred_masks``: one logit map per ``[SEG]`` query at its image's original size;
    ``seg_queries``: ``(N_seg, d)`` hidden states; ``seg_image_index``: ``(N_seg,)`` batch row.
    """

    loss: torch.Tensor | None = None
    loss_ce: torch.Tensor | None = None
    loss_dice: torch.Tensor | None = None
    loss_bce: torch.Tensor | None = None
    loss_seg: torch.Tensor | None = None
    loss_self: torch.Tensor | None = None
    loss_latent: torch.Tensor | None = None
    loss_box: torch.Tensor | None = None
    loss_look: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    cache: object | None = None
    pred_masks: list | None = None
    seg_queries: torch.Tensor | None = None
    seg_image_index: torch.Tensor | None = None


class FCLMForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    config_class = FCLMConfig
    config: FCLMConfig

    def __init__(self, config: FCLMConfig):
        super().__init__(config)
        self.sam = SamModel(config.sam_config)
        self.region_extractor = HybridRegionExtractor(config)
        self.seg_projector = SegProjector(config.llm_hidden_size, config.sam_prompt_size)
        self.box_head = BoxHead(config.llm_hidden_size) if config.box_prompt else None
        # look_prompt: the [SEG] state's look token (the region extractor's look_proj gives <pos>'s)
        self.look_head = SegProjector(config.llm_hidden_size, config.sam_prompt_size) if config.look_prompt else None
        self.post_init()
        self._init_non_qwen_modules()

    @torch.no_grad()
    def _init_non_qwen_modules(self) -> None:
        """PyTorch's default initialisation for SAM and FCLM's new modules (as segment-anything does).

        ``post_init`` applies Qwen's N(0, 0.02) to every Linear, which feeds near-zero vectors into
        the LayerNorms of SAM's neck and of the region extractor and blows their gradients up by
        ~10⁵ at random init (a global gradient clip then freezes every other module). Only random
        initialisation is affected: checkpoints load their own values afterwards.
        """
        for root in (self.sam, self.region_extractor, self.seg_projector, self.box_head or nn.Identity(),
                     self.look_head or nn.Identity()):
            for m in root.modules():
                if isinstance(m, nn.MultiheadAttention):
                    m._reset_parameters()
                elif hasattr(m, "reset_parameters") and not isinstance(m, (Qwen2_5_VLForConditionalGeneration,)):
                    m.reset_parameters()
                if isinstance(m, SamPositionalEmbedding):
                    # transformers scales these Fourier features by hidden/2 (aliasing on a small
                    # grid); segment-anything draws them with unit variance
                    m.positional_embedding.normal_(0.0, 1.0)
        self.region_extractor.semantic_guidance.reset_offsets()
        self.region_extractor.reset_output_scale(self.config.text_config.initializer_range)

    # ------------------------------------------------------------------ pieces
    def module_groups(self) -> dict[str, list[nn.Module]]:
        """The trainable-unit groups named in ``config.stages``."""
        return {
            "vision_encoder": [self.model.visual],
            "llm": [self.model.language_model, self.lm_head],
            "region_extractor": [self.region_extractor],
            "seg_projector": [self.seg_projector] + [m for m in (self.box_head, self.look_head) if m is not None],
            "mask_decoder": [self.sam.mask_decoder, self.sam.prompt_encoder],
            "sam_image_encoder": [self.sam.vision_encoder],
        }

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Qwen vision encoder → per image ``(gh, gw, d)`` merged features (row-major tokens)."""
        # inference: all attention windows of a block in one SDPA call (same outputs as the per-window loop)
        with packed_vision_attention(self.model.visual.config, enabled=not self.training):
            out = self.model.get_image_features(pixel_values, image_grid_thw)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        merge = self.config.vision_config.spatial_merge_size
        if isinstance(feats, torch.Tensor):
            feats = torch.split(feats, (image_grid_thw.prod(-1) // merge**2).tolist())
        return [f.view(int(t[1]) // merge, int(t[2]) // merge, -1) for f, t in zip(feats, image_grid_thw)]

    def position_ids_for(self, input_ids, image_grid_thw, attention_mask):
        """3-D M-RoPE positions ``(3, B, L)`` and per-row deltas ``(B, 1)``."""
        kwargs = {"image_grid_thw": image_grid_thw, "attention_mask": attention_mask}
        if "mm_token_type_ids" in inspect.signature(self.model.get_rope_index).parameters:
            kwargs["mm_token_type_ids"] = (input_ids == self.config.image_token_id).int()
        return self.model.get_rope_index(input_ids, **kwargs)

    def slot_positions(self, input_ids: torch.Tensor, token_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-major (batch, position) of every occurrence of ``token_id``."""
        if token_id is None:
            raise ValueError("FCLMConfig lacks a special-token id; build the model with fclm's processor")
        return torch.nonzero(input_ids == token_id, as_tuple=True)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_grid_thw: torch.Tensor | None,
        region_masks: list[torch.Tensor] | None = None,
        region_crop_pixel_values: torch.Tensor | None = None,
        region_crop_masks: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        sam_image_embeds: torch.Tensor | None = None,
        sam_valid_sizes: torch.Tensor | None = None,
        appearance: tuple | None = None,
    ):
        """Token embeddings with image features and visual prompts written into their slots.

        ``image_index`` ``(B,)``: row → image of ``pixel_values`` (distinct images, each encoded
        once); None: one image per row. ``sam_image_embeds`` ``(B, C, g, g)`` / ``sam_valid_sizes``
        ``(B, 2)``: the full-image SAM embeddings of each row, for ``region_feature_source="image"``
        (see :meth:`region_sam_embeddings`). ``appearance``: :meth:`appearance_source` of the rows'
        images, for ``pos_appearance``. Returns ``(inputs_embeds (B, L, d), vision_features (one
        per row), t_mask (R, d) | None, t_pos (R, d) | None, region_image_index (R,) | None)``.
        """
        embeds = self.get_input_embeddings()(input_ids)
        vision = None
        if pixel_values is not None:
            if pixel_values.dtype == torch.uint8:
                raise ValueError("pixel_values are uint8 pixels: normalise them first with FCLMProcessor.normalize_images")
            if image_index is None:
                vision = self.encode_images(pixel_values, image_grid_thw)
            else:
                first = _first_rows(image_index)
                distinct = self.encode_images(pixel_values, image_grid_thw[first])
                vision = [distinct[i] for i in image_index.tolist()]
            flat = torch.cat([v.flatten(0, 1) for v in vision]).to(embeds.dtype)
            img_mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
            if int(img_mask.sum()) != flat.shape[0]:
                raise ValueError(f"{int(img_mask.sum())} image tokens in input_ids but {flat.shape[0]} image features")
            embeds = embeds.masked_scatter(img_mask, flat)
        t_mask = t_pos = region_index = None
        mb, ml = self.slot_positions(input_ids, self.config.mask_token_id)
        pb, pl = self.slot_positions(input_ids, self.config.pos_token_id)
        n_regions = len(region_masks or [])
        if len(mb) != n_regions or len(pb) != n_regions:
            raise ValueError(f"input_ids hold {len(mb)} <mask> and {len(pb)} <pos> slots but {n_regions} region masks were given")
        if n_regions:
            if vision is None:
                raise ValueError("region prompts need the image (pixel_values)")
            region_index = mb
            crop_feats = None
            if self.config.uses_region_crops:
                if region_crop_pixel_values is None:
                    raise ValueError("use_local_aggregation needs region_crop_pixel_values from the processor")
                if region_crop_pixel_values.shape[-1] != self.config.crop_size:
                    raise ValueError(f"region crops are {region_crop_pixel_values.shape[-1]} px but the model's "
                                     f"region_crop_size is {self.config.crop_size}: configure the processor from "
                                     f"the model config (FCLMProcessor.configure_for)")
                crop_feats = sam_image_embeddings(self.sam, region_crop_pixel_values)
            elif self.config.use_local_aggregation and (sam_image_embeds is None or sam_valid_sizes is None):
                raise ValueError("region_feature_source='image' needs sam_pixel_values and sam_valid_sizes from the processor")
            t_mask, t_pos = self.region_extractor(region_masks, region_index, vision, crop_feats, region_crop_masks,
                                                  sam_image_features=sam_image_embeds, sam_valid_sizes=sam_valid_sizes,
                                                  appearance=appearance_of(appearance, region_index))
            embeds = self.place_visual_prompts(embeds, input_ids, t_mask, t_pos)
        return embeds, vision, t_mask, t_pos, region_index

    def appearance_source(self, sam_pixel_values: torch.Tensor | None, sam_valid_sizes: torch.Tensor | None,
                          row_image: torch.Tensor) -> tuple | None:
        """For ``pos_appearance`` / ``look_prompt``: ``(maps (N, g, g, r) of the N images, row → image
        (B,), valid sizes (N, 2))``; None when both are off or there are no SAM inputs."""
        if not self.config.uses_appearance or sam_pixel_values is None:
            return None
        return self.region_extractor.appearance_maps(sam_pixel_values), row_image, sam_valid_sizes

    def region_sam_embeddings(self, sam_pixel_values: torch.Tensor | None, region_masks) -> torch.Tensor | None:
        """Full-image SAM embeddings ``(B, C, g, g)`` when the region prompts read them
        (``region_feature_source="image"`` and some region), else None."""
        cfg = self.config
        if not (region_masks and cfg.use_local_aggregation and cfg.region_feature_source == "image"):
            return None
        if sam_pixel_values is None:
            raise ValueError("region_feature_source='image' needs sam_pixel_values from the processor")
        return sam_image_embeddings(self.sam, sam_pixel_values)

    def place_visual_prompts(self, embeds: torch.Tensor, input_ids: torch.Tensor, t_mask: torch.Tensor,
                             t_pos: torch.Tensor) -> torch.Tensor:
        """Write T_mask / T_pos into the ``<mask>`` / ``<pos>`` slots (row-major order), as
        ``config.visual_prompt`` says; works on a batch ``(B, L, d)`` or one row ``(L, d)``."""
        vp = self.config.visual_prompt
        if vp in ("both", "mask"):
            embeds = embeds.index_put(torch.nonzero(input_ids == self.config.mask_token_id, as_tuple=True),
                                      t_mask.to(embeds.dtype))
        if vp in ("both", "pos"):
            embeds = embeds.index_put(torch.nonzero(input_ids == self.config.pos_token_id, as_tuple=True),
                                      t_pos.to(embeds.dtype))
        return embeds

    def run_language_model(self, inputs_embeds, attention_mask, position_ids, cache=None, use_cache=False):
        """Call the Qwen text model; ``cache`` keyword differs across transformers 5.x releases."""
        lm = self.model.language_model
        key = getattr(self, "_lm_cache_key", None)
        if key is None:  # inspected once, not at every decode step (measurable on the CPU)
            key = self._lm_cache_key = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        return lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=use_cache, **{key: cache})

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        sam_valid_sizes: torch.Tensor | None = None,
        original_sizes: torch.Tensor | None = None,
        region_masks: list[torch.Tensor] | None = None,
        region_crop_pixel_values: torch.Tensor | None = None,
        region_crop_masks: torch.Tensor | None = None,
        target_masks: list[torch.Tensor] | None = None,
        latent_pairs: torch.LongTensor | None = None,
        object_masks: list[torch.Tensor] | None = None,
        object_image_index: torch.LongTensor | None = None,
        decode_seg: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_index: torch.LongTensor | None = None,
        **kwargs,
    ) -> FCLMOutput:
        r"""
        Args:
            input_ids: ``(B, L)``; one image per row, its ``<|image_pad|>`` run in place.
            attention_mask: ``(B, L)``.
            pixel_values / image_grid_thw: Qwen2-VL image processor outputs for the B images.
            labels: ``(B, L)`` answer-token targets, -100 elsewhere. In training mode with labels the
                LM head runs at the label positions only and ``logits`` is None.
            sam_pixel_values: ``(B, 3, S, S)`` SAM-preprocessed images (long side S, padded).
            sam_valid_sizes / original_sizes: ``(B, 2)`` resized (h, w) inside S×S / original (H, W).
            region_masks: one ``(H, W)`` bool mask per ``<mask><pos>`` slot, row-major order.
            region_crop_pixel_values / region_crop_masks: ``(R, 3, S, S)`` / ``(R, S, S)`` crops for
                local aggregation.
            target_masks: one ``(H, W)`` uint8 mask (0/1, 255 = ignore) per ``[SEG]``, row-major.
            latent_pairs: ``(P, 2)`` (``[SEG]`` index, region index) pairs for L_latent.
            object_masks / object_image_index: every annotated object of the images and its batch
                row, for L_self with ``self_recon_scope="all_objects"``.
            decode_seg: decode masks for every ``[SEG]`` (default: when SAM inputs are given).
            image_index: ``(B,)`` row → image when rows share images (``collate(share_images=True)``):
                ``pixel_values``, ``sam_pixel_values``, ``sam_valid_sizes`` and ``original_sizes``
                then hold the U distinct images. Each is run through the vision encoder once, and
                through SAM's image encoder once if some row of it needs SAM ([SEG] to decode, L_self).
            position_ids / cache / use_cache / mm_token_type_ids / logits_to_keep: set by
                ``generate`` — with a cache (or ``use_cache=True``) this is one generation step (see
                :meth:`_generation_step`); the training forward never passes them.
        """
        if cache is not None or use_cache:
            return self._generation_step(input_ids, attention_mask, pixel_values, image_grid_thw, region_masks,
                                         region_crop_pixel_values, region_crop_masks, position_ids, cache,
                                         use_cache, mm_token_type_ids, logits_to_keep, sam_pixel_values=sam_pixel_values,
                                         sam_valid_sizes=sam_valid_sizes, **kwargs)
        cfg = self.config
        region_sam = self.region_sam_embeddings(sam_pixel_values, region_masks)  # every (distinct) image, or None
        row_image = (torch.arange(input_ids.shape[0], device=input_ids.device) if image_index is None
                     else image_index.to(input_ids.device))
        appearance = self.appearance_source(sam_pixel_values, sam_valid_sizes, row_image)
        embeds, vision, t_mask, t_pos, region_index = self.build_inputs_embeds(
            input_ids, pixel_values, image_grid_thw, region_masks, region_crop_pixel_values, region_crop_masks,
            image_index, *self._per_row(region_sam, sam_valid_sizes, row_image), appearance=appearance)
        position_ids, _ = self.position_ids_for(input_ids, image_grid_thw, attention_mask)
        out = self.run_language_model(embeds, attention_mask, position_ids)
        hidden = out.last_hidden_state
        result = FCLMOutput(hidden_states=hidden)
        terms: dict[str, torch.Tensor] = {}

        if labels is None or not self.training:
            result.logits = self.lm_head(hidden)
        if labels is not None:  # CE at the answer tokens only: no (B, L, vocab) fp32 logits in training
            shift_labels = labels[:, 1:].to(hidden.device)
            at = shift_labels != -100
            if at.any():
                token_logits = self.lm_head(hidden[:, :-1][at]).float()
                result.loss_ce = nn.functional.cross_entropy(token_logits, shift_labels[at])
                terms["ce"] = cfg.ce_weight * result.loss_ce

        sb, sl = self.slot_positions(input_ids, cfg.seg_token_id)
        result.seg_queries, result.seg_image_index = hidden[sb, sl], sb
        if target_masks is not None and len(target_masks) != len(sb):
            raise ValueError(f"input_ids hold {len(sb)} [SEG] tokens but {len(target_masks)} target masks were given")
        decode_seg = sam_pixel_values is not None if decode_seg is None else decode_seg
        self_masks, self_pos, self_index = self._self_recon_inputs(region_masks, t_pos, region_index, object_masks,
                                                                   object_image_index, embeds.dtype, appearance)
        with_self = bool(self_masks) and cfg.self_recon_weight > 0 and sam_pixel_values is not None
        sam_rows = [sb] if decode_seg and len(sb) else []  # batch rows whose image SAM must encode
        if with_self:
            self_index = self_index.to(sb.device)
            sam_rows.append(self_index)
        image_emb = None
        if sam_rows and region_sam is not None:  # every image is encoded already: the region prompts read it
            image_emb, sam_slot = region_sam, row_image.to(sb.device)
        elif sam_rows:
            image_emb, sam_slot, sam_valid_sizes, original_sizes = self._sam_images(
                torch.cat(sam_rows), row_image.to(sb.device), sam_pixel_values, sam_valid_sizes, original_sizes)

        box_pred, box_true = [], []  # box_prompt: predicted and true boxes of every supervised decode
        latent_to_targets = cfg.latent_weight > 0 and cfg.latent_scope == "all_targets"
        # targets with a foreground pixel: the box loss and L_latent's all_targets both need them
        nonempty = ([i for i, t in enumerate(target_masks) if bool((t == 1).any())]
                    if target_masks and (self.box_head is not None or latent_to_targets) else [])

        if decode_seg and len(sb):
            prompts = self.seg_projector(result.seg_queries)
            boxes = self.box_head(result.seg_queries) if self.box_head is not None else None
            looks = self.look_head(result.seg_queries) if self.look_head is not None else None
            if target_masks is not None and self.training:
                keep = self._subsample_targets(sb)
                logits_k = decode_masks(self.sam, prompts[keep], image_emb, sam_slot[sb[keep]], sam_valid_sizes,
                                        original_sizes, at_low_res=cfg.mask_loss_at_low_res,
                                        boxes=None if boxes is None else boxes[keep], box_dropout=cfg.box_prompt_dropout,
                                        looks=None if looks is None else looks[keep])
                result.loss_dice, result.loss_bce = mask_losses(logits_k, [target_masks[i] for i in keep.tolist()])
                result.pred_masks = None
            else:
                result.pred_masks = decode_masks(self.sam, prompts, image_emb, sam_slot[sb], sam_valid_sizes,
                                                 original_sizes, boxes=boxes, looks=looks)
                if target_masks is not None:
                    result.loss_dice, result.loss_bce = mask_losses(result.pred_masks, target_masks)
            if result.loss_dice is not None:
                result.loss_seg = cfg.dice_weight * result.loss_dice + cfg.bce_weight * result.loss_bce
                terms["seg"] = result.loss_seg
            if boxes is not None and nonempty:
                box_pred.append(boxes[nonempty])
                box_true.append(box_targets([target_masks[i] for i in nonempty]))

        if with_self:
            self_boxes = self.box_head(self_pos) if self.box_head is not None else None
            self_looks = (self.region_extractor.encode_look(self_masks, appearance_of(appearance, self_index))
                          if cfg.look_prompt else None)
            rec = decode_masks(self.sam, self.seg_projector(self_pos), image_emb, sam_slot[self_index], sam_valid_sizes,
                               original_sizes, at_low_res=cfg.mask_loss_at_low_res and self.training, boxes=self_boxes,
                               box_dropout=cfg.box_prompt_dropout if self.training else 0.0, looks=self_looks,
                               look_dropout=cfg.look_prompt_dropout if self.training else 0.0)
            d, b = mask_losses(rec, [m.to(torch.uint8) for m in self_masks])
            result.loss_self = cfg.dice_weight * d + cfg.bce_weight * b
            terms["self"] = cfg.self_recon_weight * result.loss_self
            if self_boxes is not None:
                box_pred.append(self_boxes)
                box_true.append(box_targets(self_masks))
        if box_pred:  # DETR's L1: summed over (cx, cy, w, h), averaged over boxes
            pred = torch.cat(box_pred)
            result.loss_box = (pred - torch.cat(box_true).to(pred)).abs().sum(-1).mean()
            terms["box"] = cfg.box_loss_weight * result.loss_box

        seg_vec = pos_vec = None
        if latent_to_targets and target_masks:
            if nonempty:
                pos_vec, _ = self.region_extractor.encode_position(
                    [target_masks[i] == 1 for i in nonempty], embeds.dtype,
                    appearance=appearance_of(appearance, sb[nonempty]))
                seg_vec = result.seg_queries[nonempty]
        elif cfg.latent_weight > 0 and latent_pairs is not None and len(latent_pairs):
            seg_vec = result.seg_queries[latent_pairs[:, 0]]
            pos_vec = t_pos[latent_pairs[:, 1]]
        if seg_vec is not None:
            if cfg.latent_space == "prompt":
                # the projector is a fixed map here (frozen in the paper's stage 2): letting L_latent
                # train it collapses every output onto one direction (cosine 1 for any pair). A module
                # call, not a read of its weights: under ZeRO-3 they exist only inside its forward
                seg_vec, pos_vec = self.seg_projector(seg_vec, frozen=True), self.seg_projector(pos_vec, frozen=True)
            result.loss_latent = latent_consistency(seg_vec, pos_vec, cfg.latent_loss)
            terms["latent"] = cfg.latent_weight * result.loss_latent
        if latent_to_targets and nonempty and self.look_head is not None and cfg.look_latent_weight > 0:
            target_looks = self.region_extractor.encode_look([target_masks[i] == 1 for i in nonempty],
                                                             appearance_of(appearance, sb[nonempty]))
            result.loss_look = latent_consistency(self.look_head(result.seg_queries[nonempty]), target_looks)
            terms["look"] = cfg.look_latent_weight * result.loss_look

        if terms:
            result.loss = sum(terms.values())
        return result

    # ------------------------------------------------------------------ generate
    _GENERATE_PREFILL_ONLY = ("region_masks", "region_crop_pixel_values", "region_crop_masks", "sam_pixel_values")

    def _generation_step(self, input_ids, attention_mask, pixel_values, image_grid_thw, region_masks,
                         region_crop_pixel_values, region_crop_masks, position_ids, cache, use_cache,
                         mm_token_type_ids, logits_to_keep, sam_pixel_values=None, sam_valid_sizes=None, **kwargs):
        """One ``generate`` step: Qwen2.5-VL's own forward, with the prefill's input embeddings built
        by :meth:`build_inputs_embeds` (image features and the regions' ``<mask><pos>`` prompts in
        their slots). Later steps only embed the new tokens (the cache holds the rest)."""
        embeds = None
        if pixel_values is not None:
            embeds, *_ = self.build_inputs_embeds(input_ids, pixel_values, image_grid_thw, region_masks,
                                                  region_crop_pixel_values, region_crop_masks,
                                                  sam_image_embeds=self.region_sam_embeddings(sam_pixel_values, region_masks),
                                                  sam_valid_sizes=sam_valid_sizes,
                                                  appearance=self.appearance_source(
                                                      sam_pixel_values, sam_valid_sizes,
                                                      torch.arange(input_ids.shape[0], device=input_ids.device))
                                                  if region_masks and self.config.pos_appearance else None)
        for k in ("original_sizes", "labels", "target_masks", "latent_pairs", "object_masks",
                  "object_image_index", "decode_seg"):
            kwargs.pop(k, None)
        return Qwen2_5_VLForConditionalGeneration.forward(
            self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=embeds, use_cache=use_cache, image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids, logits_to_keep=logits_to_keep, **kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """Qwen2.5-VL's, plus: region inputs (like ``pixel_values``) go to the prefill step only."""
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for k in self._GENERATE_PREFILL_ONLY:
                inputs.pop(k, None)
        return inputs

    @torch.no_grad()
    def seg_masks_from_generation(self, sequences: torch.LongTensor, inputs: dict,
                                  return_logits: bool = False) -> list[list[torch.Tensor]]:
        """The masks of the ``[SEG]`` tokens in ``generate``'s output.

        ``sequences``: what ``model.generate(**inputs)`` returned (prompt + new tokens, one row per
        prompt); ``inputs``: the processor's output it was called with (needs ``sam_pixel_values``,
        ``sam_valid_sizes``, ``original_sizes``). One teacher-forced forward over each row up to its
        first end token reads the last-layer state at every ``[SEG]`` (as during decoding) and
        decodes it with SAM. Returns per row a list of ``(H, W)`` bool masks at the original image
        size (``return_logits``: float logit maps instead).
        """
        prompt_len = inputs["input_ids"].shape[1]
        new = sequences[:, prompt_len:]
        stop = torch.tensor(self._stop_token_ids(), device=new.device)
        ended = torch.isin(new, stop).long().cumsum(1)
        keep_new = (ended == 0) | ((ended == 1) & torch.isin(new, stop))  # up to and including the first end
        attn = torch.cat([inputs["attention_mask"].to(new.device), keep_new.long()], 1)
        ids = torch.where(attn.bool(), sequences, sequences.new_full((), self._stop_token_ids()[-1]))
        fwd = {k: inputs[k] for k in ("pixel_values", "image_grid_thw", "sam_pixel_values", "sam_valid_sizes",
                                      "original_sizes", "region_masks", "region_crop_pixel_values",
                                      "region_crop_masks") if k in inputs}
        out = self(input_ids=ids, attention_mask=attn, decode_seg=True, **fwd)
        per_row: list[list[torch.Tensor]] = [[] for _ in range(ids.shape[0])]
        for m, b in zip(out.pred_masks or [], out.seg_image_index.tolist()):
            per_row[b].append(m if return_logits else m > 0)
        return per_row

    def _stop_token_ids(self) -> list[int]:
        eos = self.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if not eos:
            raise ValueError("generation_config has no eos_token_id; build or load the model with fclm")
        return eos

    def _self_recon_inputs(self, region_masks, t_pos, region_index, object_masks, object_image_index, dtype,
                           appearance=None):
        """Masks, `<pos>` vectors and batch rows that L_self reconstructs."""
        masks, pos, index = list(region_masks or []), t_pos, region_index
        if self.config.self_recon_scope == "all_objects" and object_masks:
            cap = self.config.self_recon_max_masks
            if cap and len(object_masks) > cap and self.training:
                pick = torch.randperm(len(object_masks))[:cap].sort().values
                object_masks = [object_masks[i] for i in pick.tolist()]
                object_image_index = object_image_index[pick.to(object_image_index.device)]
            obj_pos, _ = self.region_extractor.encode_position(object_masks, dtype,
                                                               appearance=appearance_of(appearance, object_image_index))
            masks += list(object_masks)
            pos = obj_pos if pos is None else torch.cat([pos, obj_pos])
            idx = object_image_index.to(obj_pos.device)
            index = idx if index is None else torch.cat([index, idx])
        return masks, pos, index

    @staticmethod
    def _per_row(region_sam, sam_valid_sizes, row_image):
        """Full-image SAM embeddings and valid sizes of each row (images may be shared), or Nones."""
        if region_sam is None:
            return None, None
        return region_sam[row_image.to(region_sam.device)], sam_valid_sizes[row_image.to(sam_valid_sizes.device)]

    def _sam_images(self, rows, row_image, sam_pixel_values, sam_valid_sizes, original_sizes):
        """SAM image embeddings of the images of ``rows`` only, each once (``row_image`` ``(B,)``:
        row → image of ``sam_pixel_values``).

        Returns ``(embeddings (K, C, g, g), slot (B,)`` row → embedding (-1: not encoded), and the K
        images' valid / original sizes)."""
        need = row_image[rows].unique()  # sorted
        n_images = sam_pixel_values.shape[0]
        if len(need) < n_images:
            idx = need.to(sam_pixel_values.device)
            sam_pixel_values, sam_valid_sizes, original_sizes = (
                sam_pixel_values[idx], sam_valid_sizes[need.to(sam_valid_sizes.device)],
                original_sizes[need.to(original_sizes.device)])
        slot = torch.full((n_images,), -1, dtype=torch.long, device=rows.device)
        slot[need] = torch.arange(len(need), device=rows.device)
        return sam_image_embeddings(self.sam, sam_pixel_values), slot[row_image], sam_valid_sizes, original_sizes

    def _subsample_targets(self, seg_rows: torch.Tensor) -> torch.Tensor:
        """Indices of at most ``max_masks_per_sample`` random `[SEG]` targets per example."""
        keep = []
        for b in seg_rows.unique().tolist():
            idx = (seg_rows == b).nonzero(as_tuple=True)[0]
            if len(idx) > self.config.max_masks_per_sample:
                idx = idx[torch.randperm(len(idx))[: self.config.max_masks_per_sample].to(idx.device)].sort().values
            keep.append(idx)
        return torch.cat(keep)


def appearance_of(source: tuple | None, rows: torch.Tensor) -> tuple | None:
    """:meth:`FCLMForConditionalGeneration.appearance_source` → the ``appearance`` argument of
    ``encode_position`` / ``encode_look`` for masks of batch ``rows``."""
    if source is None:
        return None
    maps, row_image, valid = source
    return maps, row_image[rows.to(row_image.device)], valid


def _first_rows(image_index: torch.Tensor) -> list[int]:
    """The first row of each image ``0 … U-1`` in ``image_index`` (every image must have a row)."""
    first: dict[int, int] = {}
    for b, u in enumerate(image_index.tolist()):
        first.setdefault(u, b)
    if sorted(first) != list(range(len(first))):
        raise ValueError(f"image_index must number the images 0…U-1, got {image_index.tolist()}")
    return [first[u] for u in range(len(first))]


def register_auto_classes() -> None:
    """Register FCLM with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    from .processing_fclm import FCLMProcessor

    try:
        AutoConfig.register("fclm", FCLMConfig)
    except ValueError:
        pass
    for auto in (AutoModel, AutoModelForImageTextToText):
        try:
            auto.register(FCLMConfig, FCLMForConditionalGeneration)
        except ValueError:
            pass
    try:
        AutoProcessor.register(FCLMConfig, FCLMProcessor)
    except ValueError:
        pass
