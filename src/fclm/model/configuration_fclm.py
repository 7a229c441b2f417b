"""FCLMConfig: Qwen2.5-VL's config plus a SAM config and FCLM's own switches (SPEC §1)."""
from __future__ import annotations

from transformers import PreTrainedConfig, Qwen2_5_VLConfig, SamConfig

# Module groups that a training stage can make trainable (see fclm.model.stages).
MODULE_GROUPS = (
    "vision_encoder",  # Qwen2.5-VL ViT + merger
    "llm",  # Qwen2.5-VL language model + lm_head
    "region_extractor",  # hybrid region extractor (§1.3)
    "seg_projector",  # d → d → 256 MLP (§1.4)
    "mask_decoder",  # SAM prompt encoder + mask decoder
    "sam_image_encoder",  # SAM ViT
)

DEFAULT_STAGES = {
    "stage1": ["llm", "region_extractor", "seg_projector", "mask_decoder"],
    "stage2": ["llm"],
}

SPECIAL_TOKENS = {"mask": "<mask>", "pos": "<pos>", "seg": "[SEG]", "p_start": "<p>", "p_end": "</p>"}
REGION_PLACEHOLDER = "<region>"


class FCLMConfig(Qwen2_5_VLConfig):
    r"""Configuration of :class:`~fclm.model.FCLMForConditionalGeneration`.

    Everything of Qwen2.5-VL's config (``text_config``, ``vision_config``, image token ids), plus:

    sam_config (`SamConfig` or dict): the SAM model whose image encoder, prompt encoder and mask
        decoder FCLM uses (ViT-H for the paper).
    region_hidden_size (`int`, defaults to 256): width inside the hybrid region extractor.
    use_local_aggregation / use_pixel_enhancement / use_semantic_guidance (`bool`): the three
        progressive steps of the semantic branch (§1.3; paper Table 9).
    visual_prompt (`str`, "both" | "mask" | "pos"): which visual-prompt embeddings overwrite their
        slots (paper Table 8); a slot left unused keeps its learned token embedding.
    deformable_points / deformable_heads: semantic-guidance sampling points K and heads.
    local_crop_margin (`float`): context margin around the mask box, as a fraction of its size.
    region_feature_source (`str`, "crop" | "image", defaults to "crop"): where local aggregation
        reads SAM features. "crop": one SAM encoder pass per region on a crop around its mask (the
        paper). "image": the cells of the full-image SAM embedding under the mask (one SAM pass per
        image, shared with `[SEG]` decoding; no per-region SAM pass, coarser features for small
        regions). A cheaper option, off until an ablation on real weights says otherwise.
    region_crop_size (`int`, *optional*): side of the SAM crops for ``region_feature_source="crop"``
        (None: SAM's input size, 1024 for ViT-H). E.g. 512: 4× fewer SAM tokens per region, the
        absolute position embedding resized (``fclm.model.mask_decoding.sam_image_embeddings``).
        A multiple of SAM's patch size, at most its input size. Off (None) until an ablation says
        otherwise.
    pos_grid_size (`int`): S of the S×S mask grid the position branch sees.
    pos_fourier_bands (`int`, defaults to 0): when > 0, the position branch also sees sin/cos of
        the box centre and size at this many octave frequencies (a Fourier input encoding; 0 = the
        paper's raw coordinates). An MLP on raw coordinates learns a smooth function of them, while
        the SAM decoder localises by matching Fourier features of positions.
    pos_appearance (`bool`, defaults to False): T_pos also carries the region's look: a stride-8
        convolution over SAM's input pixels, mean-pooled under the mask, through an MLP, added to
        the position branch's output. L_self then teaches the mask decoder to find a region by its
        colour and texture as well as by its place, and L_latent asks `[SEG]` for the look that the
        expression names (ours, not the paper's: the paper's T_pos is geometry only).
    look_prompt (`bool`, defaults to False): the mask decoder gets the region's look as a second
        sparse prompt token, beside the geometry token: for a `<pos>` decode (L_self) the same
        stride-8 appearance cells as ``pos_appearance``, pooled under the mask, through an MLP into
        SAM's prompt space; for a `[SEG]` decode a second head (``look_head``) on the `[SEG]`
        state. T_pos and the `<pos>` slots stay geometry only (ours, not the paper's).
    look_prompt_dropout (`float`, defaults to 0.5): in training, the probability that an L_self
        decode gets SAM's "not a point" token instead of its look, so that the decoder also finds a
        region from its geometry alone (a `[SEG]` whose expression names no look needs that).
    look_latent_weight (`float`, defaults to 0.0): weight of a cosine pull of each `[SEG]`'s look
        token towards its target mask's pooled look (with L_latent on, ``latent_scope="all_targets"``
        only).
    max_region_pixels (`int`): cap on foreground feature cells used by pixel enhancement.
    ce_weight, dice_weight, bce_weight, self_recon_weight, latent_weight (`float`): loss weights
        (§1.5). ``self_recon_weight`` is L_self (stage 1), ``latent_weight`` L_latent (stage 2).
    self_recon_scope (`str`, "regions" | "all_objects"): L_self decodes the `<pos>` of the prompt's
        regions (the paper), or also every annotated object of the batch's images (ours: many more
        masks per step for the same LLM cost; only the position branch runs for those).
    latent_loss (`str`, "cosine" | "kl" | "mse") and latent_space (`str`, "prompt" | "llm").
    latent_scope (`str`, "pairs" | "all_targets"): L_latent pulls the `[SEG]` of each DL-RES example
        towards the `<pos>` of its paired DLC example (the paper), or every `[SEG]` towards the
        `<pos>` of its target mask. T_pos depends on the mask alone, so the second is the same
        pseudo-label without needing the DLC partner in the batch (ours).
    max_masks_per_sample (`int`, defaults to 5): targets sampled per example for the mask loss.
    mask_loss_at_low_res (`bool`, defaults to False): in training, compute the mask losses on the
        decoder's ``4g × 4g`` logits against area-pooled targets instead of upsampling every mask
        to the original size (cheaper; inference is unchanged).
    self_recon_max_masks (`int`, defaults to 0): with ``self_recon_scope="all_objects"``, at most
        this many extra objects per batch for L_self, drawn at random (0 = all).
    box_prompt (`bool`, defaults to False): a box head reads the same vector as ``seg_projector``
        (a `[SEG]` state or a `<pos>` embedding) and predicts the region's box; SAM's prompt encoder
        turns it into its two box-corner tokens, which join the projector's token as sparse prompts,
        and ``box_loss_weight`` × L1 on (cx, cy, w, h) supervises it wherever a mask is decoded in
        training. The decoder then localises with SAM's own positional encoding of the box instead of
        having to learn it from the projector (ours, not the paper's; off in every packaged config:
        see docs/benchmarks.md, "A SAM-native box in the mask prompt").
    box_loss_weight (`float`, defaults to 5.0): weight of that box L1 loss (DETR's L1 weight).
    box_prompt_dropout (`float`, defaults to 0.0): in training, the probability that a decoded mask's
        box tokens are replaced by SAM's "not a point" token, so that the decoder also learns to
        find the region from the projector's token alone.
    stages (`dict[str, list[str]]`): per training stage, the module groups that train (others are
        frozen); groups are listed in ``fclm.model.configuration_fclm.MODULE_GROUPS``.
    mask_token_id / pos_token_id / seg_token_id / p_start_token_id / p_end_token_id (`int`): ids of
        FCLM's special tokens, written by the processor builder (never hard-coded).
    """

    model_type = "fclm"
    sub_configs_defaults = {**Qwen2_5_VLConfig.sub_configs_defaults, "sam_config": SamConfig}

    sam_config: dict | PreTrainedConfig | None = None
    region_hidden_size: int = 256
    use_local_aggregation: bool = True
    use_pixel_enhancement: bool = True
    use_semantic_guidance: bool = True
    visual_prompt: str = "both"
    deformable_points: int = 4
    deformable_heads: int = 8
    local_crop_margin: float = 0.1
    region_feature_source: str = "crop"
    region_crop_size: int | None = None
    pos_grid_size: int = 16
    pos_fourier_bands: int = 0
    pos_appearance: bool = False
    look_prompt: bool = False
    look_prompt_dropout: float = 0.5
    look_latent_weight: float = 0.0
    max_region_pixels: int = 1024
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    bce_weight: float = 2.0
    self_recon_weight: float = 1.0
    self_recon_scope: str = "regions"
    latent_weight: float = 1.0
    latent_loss: str = "cosine"
    latent_space: str = "prompt"
    latent_scope: str = "pairs"
    max_masks_per_sample: int = 5
    mask_loss_at_low_res: bool = False
    self_recon_max_masks: int = 0
    box_prompt: bool = False
    box_loss_weight: float = 5.0
    box_prompt_dropout: float = 0.0
    stages: dict | None = None
    mask_token_id: int | None = None
    pos_token_id: int | None = None
    seg_token_id: int | None = None
    p_start_token_id: int | None = None
    p_end_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.stages is None:
            self.stages = {k: list(v) for k, v in DEFAULT_STAGES.items()}
        super().__post_init__(**kwargs)
        self.validate_fclm()

    def validate_fclm(self) -> None:
        if self.visual_prompt not in ("both", "mask", "pos"):
            raise ValueError(f"visual_prompt must be 'both', 'mask' or 'pos', got {self.visual_prompt!r}")
        if self.latent_loss not in ("cosine", "kl", "mse"):
            raise ValueError(f"latent_loss must be 'cosine', 'kl' or 'mse', got {self.latent_loss!r}")
        if self.latent_scope not in ("pairs", "all_targets"):
            raise ValueError(f"latent_scope must be 'pairs' or 'all_targets', got {self.latent_scope!r}")
        if self.self_recon_scope not in ("regions", "all_objects"):
            raise ValueError(f"self_recon_scope must be 'regions' or 'all_objects', got {self.self_recon_scope!r}")
        if self.latent_space not in ("prompt", "llm"):
            raise ValueError(f"latent_space must be 'prompt' or 'llm', got {self.latent_space!r}")
        if self.region_feature_source not in ("crop", "image"):
            raise ValueError(f"region_feature_source must be 'crop' or 'image', got {self.region_feature_source!r}")
        if self.region_crop_size is not None:
            vc = self.sam_config.vision_config
            if not 0 < self.region_crop_size <= vc.image_size or self.region_crop_size % vc.patch_size:
                raise ValueError(f"region_crop_size must be a multiple of SAM's patch size {vc.patch_size} in "
                                 f"[{vc.patch_size}, {vc.image_size}], got {self.region_crop_size}")
        for stage, groups in self.stages.items():
            bad = [g for g in groups if g not in MODULE_GROUPS]
            if bad:
                raise ValueError(f"stage {stage!r} names unknown module groups {bad}; known: {MODULE_GROUPS}")
        if self.self_recon_max_masks < 0:
            raise ValueError(f"self_recon_max_masks must be >= 0, got {self.self_recon_max_masks}")
        if not 0.0 <= self.box_prompt_dropout <= 1.0:
            raise ValueError(f"box_prompt_dropout must be in [0, 1], got {self.box_prompt_dropout}")
        if not 0.0 <= self.look_prompt_dropout <= 1.0:
            raise ValueError(f"look_prompt_dropout must be in [0, 1], got {self.look_prompt_dropout}")
        if self.pos_fourier_bands < 0:
            raise ValueError(f"pos_fourier_bands must be >= 0, got {self.pos_fourier_bands}")
        if self.deformable_heads < 1 or self.region_hidden_size % self.deformable_heads:
            raise ValueError("region_hidden_size must be divisible by deformable_heads")

    @property
    def llm_hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def crop_size(self) -> int:
        """Side of the local-aggregation SAM crops (``region_crop_size`` or SAM's input size)."""
        return self.region_crop_size or self.sam_config.vision_config.image_size

    @property
    def uses_region_crops(self) -> bool:
        """Whether the processor must make per-region crops (local aggregation from crops)."""
        return self.use_local_aggregation and self.region_feature_source == "crop"

    @property
    def uses_appearance(self) -> bool:
        """Whether the model reads appearance cells of SAM's input (``pos_appearance`` or ``look_prompt``)."""
        return self.pos_appearance or self.look_prompt

    @property
    def sam_prompt_size(self) -> int:
        return self.sam_config.prompt_encoder_config.hidden_size
