"""Hybrid region extractor (SPEC §1.3): binary region mask → (T_mask, T_pos) ∈ R^d.

Semantic branch, three progressive steps, each switchable (paper Table 9):

1. local aggregation — SAM image encoder on a crop around the mask, cells inside the mask are
   projected ("Proj") and mask-average-pooled ("MP") → T⁰;
2. pixel enhancement — cross-attention of T⁰ over the selected pixel features → T¹;
3. semantic guidance — deformable attention around the region centre over the vision encoder's
   feature map of the whole image (K sampling points per head, bilinear sampling) → T²;

then an MLP to the LLM width d → T_mask. With local aggregation off the pixel features are the
vision encoder's cells inside the mask, so with everything off T_mask is the mask-pooled vision
feature (the baseline row). Position branch: MLP over (the mask inside its box on an S×S grid, box
centre, box size) → T_pos. With ``pos_appearance`` (ours, off by default) T_pos also carries the
region's look: a small convolution over SAM's input pixels, mean-pooled under the mask.

Cheaper local aggregation (config; off by default until an ablation on real weights):
``region_crop_size`` (smaller SAM crops, e.g. 512) or ``region_feature_source="image"`` (the cells of
the full-image SAM embedding under the mask: no per-region SAM pass).
"""
from __future__ import annotations

import math

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn


def mask_coverage(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Fraction of each cell of a ``size`` grid covered by each mask.

    Args:
        masks: ``(R, H, W)`` binary masks (any dtype).
        size: ``(gh, gw)`` target grid.
    Returns:
        ``(R, gh, gw)`` float coverage in [0, 1].
    """
    return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), size).squeeze(1)


def take_grid(mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``mask[rows][:, cols]`` for 1-D index tensors, as two 1-D gathers (on the CPU with numpy's
    ``take``: torch's ``index_select`` along the columns of a byte mask is ~5× slower)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(mask.numpy().take(rows.cpu().numpy(), 0).take(cols.cpu().numpy(), 1))
    return mask.index_select(0, rows.to(mask.device)).index_select(1, cols.to(mask.device))


COVERAGE_SAMPLES = 8  # samples per cell side when a box is too large to pool exactly


def grid_coverage(mask: torch.Tensor, box: tuple, size: tuple[int, int]) -> torch.Tensor:
    """``(gh, gw)`` coverage of the cells of a ``size`` grid laid over ``box`` = (x0, y0, x1, y1) of
    the mask's pixels (x0, y0 integers; x1, y1 may be fractional and may reach past the mask, whose
    outside counts as uncovered — e.g. the padded square of SAM's input).

    Exact (:func:`mask_coverage` of the box's pixels) when the box lies inside the mask and spans at
    most ``COVERAGE_SAMPLES`` pixels per cell; otherwise the mask is read at COVERAGE_SAMPLES²
    pixel centres per cell (an edge through a cell moves its estimate by at most one row of
    samples, 1/8; ~1/64 on average), so the cost does not grow with the image's pixel count.
    """
    x0, y0, x1, y1 = box
    gh, gw = size
    H, W = mask.shape
    n = COVERAGE_SAMPLES
    inside = float(x1).is_integer() and float(y1).is_integer() and x1 <= W and y1 <= H
    if inside and y1 - y0 <= n * gh and x1 - x0 <= n * gw:
        return mask_coverage(mask[None, y0:int(y1), x0:int(x1)], (gh, gw))[0]

    def samples(lo, hi, cells):
        idx = torch.arange(n * cells, dtype=torch.float64) + 0.5  # on the CPU: no device sync below
        return (lo + (idx * (hi - lo) / (n * cells)).floor().long()).clamp(max=math.ceil(hi) - 1)

    rows, cols = samples(y0, y1, gh), samples(x0, x1, gw)
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    nr, nc = int((rows < H).sum()), int((cols < W).sum())  # sample positions rise: the inside ones come first
    sampled = take_grid(m, rows[:nr], cols[:nc])
    if (nr, nc) != (len(rows), len(cols)):
        sampled = F.pad(sampled, (0, len(cols) - nc, 0, len(rows) - nr))
    return mask_coverage(sampled[None], (gh, gw))[0]


def box_coverage(mask: torch.Tensor, box: tuple[int, int, int, int], s: int) -> torch.Tensor:
    """``(s, s)`` coverage of the mask inside ``box`` (:func:`grid_coverage` on an s×s grid)."""
    return grid_coverage(mask, box, (s, s))


def mask_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (x1, y1 exclusive) of a non-empty ``(H, W)`` mask, from its row and column
    projections: two reductions instead of listing every pixel (``nonzero`` on a 12 MP mask is
    ~50× slower)."""
    if mask.device.type == "cpu":  # numpy's any() is ~5× faster than torch's reductions here
        m = mask.numpy()
        rows = np.flatnonzero(m.any(1))
        # columns only over the rows the mask spans
        cols = np.flatnonzero(m[rows[0]: rows[-1] + 1].any(0)) if len(rows) else rows
    else:
        m = mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).to(torch.uint8)
        rows, cols = torch.nonzero(m.amax(1))[:, 0], torch.nonzero(m.amax(0))[:, 0]
    if len(rows) == 0:
        raise ValueError("mask_box: the mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def centre_size(box: tuple[int, int, int, int], shape: tuple[int, int]) -> list[float]:
    """``(cx, cy, w, h)`` of a ``(x0, y0, x1, y1)`` box as fractions of an ``(H, W)`` image."""
    x0, y0, x1, y1 = box
    h, w = shape
    return [(x0 + x1) / (2 * w), (y0 + y1) / (2 * h), (x1 - x0) / w, (y1 - y0) / h]


APPEARANCE_STRIDE = 8  # pixels per side of a ``pos_appearance`` cell


def padded_square_extent(mask_shape: tuple[int, int], valid_size, side: int) -> tuple[float, float]:
    """``(x1, y1)`` in a mask's pixels that SAM's padded ``side``-px square input spans from (0, 0),
    when the image fills its resized ``valid_size`` = (h, w) part (the rest is padding)."""
    h, w = (float(v) for v in valid_size)
    return side * mask_shape[1] / w, side * mask_shape[0] / h


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` (written out: ``nn.RMSNorm``'s fused kernel is not bit-stable across a
    save/load round trip)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mlp(nn.Sequential):
    def __init__(self, dims: list[int], act=nn.GELU):
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(act())
        super().__init__(*layers)


class PixelEnhancement(nn.Module):
    """Cross-attention of the region query over its foreground pixel features, residual + FFN."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.ffn = Mlp([width, 4 * width, width])
        self.norm2 = nn.LayerNorm(width)

    def forward(self, query: torch.Tensor, pixels: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """query ``(R, C)``, pixels ``(R, N, C)``, pad ``(R, N)`` True where padding → ``(R, C)``."""
        out, _ = self.attn(query.unsqueeze(1), pixels, pixels, key_padding_mask=pad, need_weights=False)
        x = self.norm1(query + out.squeeze(1))
        return self.norm2(x + self.ffn(x))


class DeformableGuidance(nn.Module):
    """Single-scale deformable attention (Deformable DETR style) in plain PyTorch.

    Each head predicts K sampling offsets (in feature-map cells) and K weights from the query;
    values are bilinearly sampled from the projected feature map around the reference point.
    """

    def __init__(self, width: int, feature_dim: int, heads: int, points: int):
        super().__init__()
        self.heads, self.points = heads, points
        self.value_proj = nn.Linear(feature_dim, width)
        self.offsets = nn.Linear(width, heads * points * 2)
        self.weights = nn.Linear(width, heads * points)
        self.out_proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.ffn = Mlp([width, 4 * width, width])
        self.norm2 = nn.LayerNorm(width)
        self.reset_offsets()

    @torch.no_grad()
    def reset_offsets(self) -> None:
        """Initial sampling points on a ring of one cell around the reference (Deformable DETR)."""
        if self.offsets.weight.is_meta:
            return
        nn.init.zeros_(self.offsets.weight)
        n = self.heads * self.points
        angles = torch.arange(n, dtype=torch.float32) * (2 * torch.pi / n)
        self.offsets.bias.copy_(torch.stack([angles.cos(), angles.sin()], -1).flatten())

    def values(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Projected values ``(heads, C / heads, gh, gw)`` of a ``(gh, gw, D)`` feature map."""
        gh, gw, _ = feature_map.shape
        return self.value_proj(feature_map).permute(2, 0, 1).reshape(self.heads, -1, gh, gw)

    def forward(self, query: torch.Tensor, feature_map: torch.Tensor, centers: torch.Tensor,
                value: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            query: ``(R, C)`` region queries of one image.
            feature_map: ``(gh, gw, D)`` vision-encoder features of that image.
            centers: ``(R, 2)`` reference points (cx, cy), normalised to [0, 1].
            value: ``self.values(feature_map)`` when the caller has it already.
        Returns:
            ``(R, C)`` updated queries.
        """
        R, C = query.shape
        gh, gw, _ = feature_map.shape
        h, k = self.heads, self.points
        value = self.values(feature_map) if value is None else value
        off = self.offsets(query).view(R, h, k, 2)
        scale = torch.tensor([1.0 / gw, 1.0 / gh], device=query.device, dtype=query.dtype)
        loc = centers.view(R, 1, 1, 2) + off * scale  # normalised sampling locations
        grid = (loc * 2 - 1).permute(1, 0, 2, 3)  # (h, R, k, 2) in grid_sample's [-1, 1]
        sampled = F.grid_sample(value, grid.to(value.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (h, C/h, R, k)
        w = self.weights(query).view(R, h, k).softmax(-1).permute(1, 0, 2)  # (h, R, k)
        agg = (sampled * w.unsqueeze(1)).sum(-1)  # (h, C/h, R)
        agg = agg.permute(2, 0, 1).reshape(R, C)
        x = self.norm(query + self.out_proj(agg))
        return self.norm2(x + self.ffn(x))


class HybridRegionExtractor(nn.Module):
    """Mask → visual prompt ``<mask><pos>`` embeddings. See the module docstring."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        r, d = config.region_hidden_size, config.llm_hidden_size
        sam_channels = config.sam_config.vision_config.output_channels
        s = config.pos_grid_size
        self.local_proj = Mlp([sam_channels, r, r])  # "Proj" on SAM crop features
        self.vision_proj = Mlp([d, r, r])  # pixel features when local aggregation is off
        self.pixel_enhancement = PixelEnhancement(r, config.deformable_heads)
        self.semantic_guidance = DeformableGuidance(r, d, config.deformable_heads, config.deformable_points)
        self.mask_out = Mlp([r, d, d])
        self.pos_branch = Mlp([s * s + 4 + 8 * config.pos_fourier_bands, r, d, d])
        if config.uses_appearance:
            # 8-px cells of SAM's input: colour and texture only (no position, unlike SAM's features)
            self.appearance_stem = nn.Conv2d(3, r, kernel_size=APPEARANCE_STRIDE, stride=APPEARANCE_STRIDE)
        if config.pos_appearance:
            self.appearance_proj = Mlp([r, r, d])
        if config.look_prompt:
            self.look_proj = Mlp([r, r, config.sam_prompt_size])
        # RMS-normalised outputs with a gain at the token embeddings' scale: unnormalised, their norm
        # drifts to ~20× the embeddings', and the LLM's RMSNorm then shrinks the gradient of every
        # region-specific direction by that factor (the region tokens stop being told apart)
        self.mask_norm = RMSNorm(d)
        self.pos_norm = RMSNorm(d)
        self.reset_output_scale()

    @torch.no_grad()
    def reset_output_scale(self, std: float = 0.02) -> None:
        """Start T_mask / T_pos at the scale of the LLM's token embeddings (N(0, std) rows)."""
        for norm in (self.mask_norm, self.pos_norm):
            if not norm.weight.is_meta:
                norm.weight.fill_(std)

    def _pixels(self, feats: torch.Tensor, cover: torch.Tensor, cap: int):
        """Pool each region over every covered cell; pick the pixel-enhancement keys.

        The pooled feature is the coverage-weighted mean over *all* cells with coverage > 0 (the
        mask-average pool, at any grid size). Attention keys are the covered cells too; when a
        region covers more than ``cap`` cells (``cap`` <= 0: no cap), ``cap`` of them are kept,
        evenly spaced along the region's cells in row-major order (an unbiased subsample: every part
        of the region keeps its share, no band of rows is favoured).

        feats ``(R, N, C)``, cover ``(R, N)`` → keys ``(R, M, C)``, key padding mask ``(R, M)`` (True =
        padding), pooled ``(R, C)``.
        """
        covered = cover > 0
        w = cover.clamp(min=0)
        pooled = torch.einsum("rn,rnc->rc", w, feats) / w.sum(1, keepdim=True).clamp(min=1e-6)
        count = covered.sum(1, keepdim=True)
        keep = covered
        if cap > 0:
            rank = covered.cumsum(1) - 1  # index of each covered cell among the region's cells
            slot = torch.div(rank * cap, count.clamp(min=1), rounding_mode="floor")
            prev = torch.div((rank - 1) * cap, count.clamp(min=1), rounding_mode="floor")
            thin = covered & ((rank == 0) | (slot != prev))  # first cell of each of the cap slots
            keep = torch.where(count > cap, thin, covered)
        m = max(1, int(keep.sum(1).max()))
        # kept cells first, in their row-major order (stable sort on "not kept")
        idx = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :m]
        pixels = torch.gather(feats, 1, idx.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        pad = ~torch.gather(keep, 1, idx)
        pad[:, 0] = False  # never fully padded (only for a region that covers no cell at all)
        return pixels, pad, pooled

    def appearance_maps(self, sam_pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` SAM-preprocessed images → ``(N, S/8, S/8, r)`` appearance cells
        (``pos_appearance`` or ``look_prompt``)."""
        w = self.appearance_stem.weight
        return self.appearance_stem(sam_pixel_values.to(device=w.device, dtype=w.dtype)).permute(0, 2, 3, 1)

    def encode_position(self, region_masks: list[torch.Tensor], dtype,
                        boxes: list[tuple[int, int, int, int]] | None = None,
                        appearance: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Position branch alone: R masks → T_pos ``(R, d)`` and their (cx, cy, w, h) ``(R, 4)``.
        ``boxes``: the masks' :func:`mask_box` when the caller has them already. ``appearance``
        (needed with ``pos_appearance``): ``(maps, image_index, valid_sizes)``, i.e. the
        :meth:`appearance_maps` of the images, each mask's image ``(R,)``, and each image's resized
        ``(h, w)`` inside SAM's padded square input.

        The S×S grid is the mask inside its own bounding box: with the box it pins down the region's
        shape as well as its place (an image-wide S×S grid would blur a small region to a blob).
        """
        s = self.config.pos_grid_size
        grids, geo = [], []
        for i, m in enumerate(region_masks):
            x0, y0, x1, y1 = boxes[i] if boxes is not None else mask_box(m)
            grids.append(box_coverage(m, (x0, y0, x1, y1), s))
            geo.append(torch.tensor(centre_size((x0, y0, x1, y1), m.shape)))
        grid = torch.stack(grids).to(dtype)
        centers_sizes = torch.stack(geo).to(device=grid.device, dtype=dtype)
        # inputs centred on 0: raw coverages/coordinates in [0, 1] share a large mean that makes
        # every region's T_pos point the same way (pairwise cosine ≈ 0.97 at initialisation)
        feats = [grid.flatten(1) * 2 - 1, centers_sizes * 2 - 1]
        if self.config.pos_fourier_bands:
            freqs = math.pi * 2.0 ** torch.arange(self.config.pos_fourier_bands, device=grid.device, dtype=dtype)
            angles = (centers_sizes[:, :, None] * freqs).flatten(1)  # (R, 4·bands)
            feats += [angles.sin(), angles.cos()]
        out = self.pos_branch(torch.cat(feats, 1))
        if self.config.pos_appearance:
            if appearance is None:
                raise ValueError("pos_appearance needs the images' appearance maps (sam_pixel_values)")
            out = out + self.appearance_proj(self._pool_appearance(region_masks, *appearance).to(out.dtype))
        return self.pos_norm(out), centers_sizes

    def encode_look(self, region_masks: list[torch.Tensor], appearance: tuple) -> torch.Tensor:
        """``look_prompt``: R masks → their look prompt tokens ``(R, P)`` in SAM's prompt space.
        ``appearance``: as for :meth:`encode_position`."""
        if appearance is None:
            raise ValueError("look_prompt needs the images' appearance maps (sam_pixel_values)")
        pooled = self._pool_appearance(region_masks, *appearance)
        return self.look_proj(pooled.to(self.look_proj[0].weight.dtype))

    @staticmethod
    def _pool_appearance(region_masks, maps, image_index, valid_sizes) -> torch.Tensor:
        """Coverage-weighted mean of each mask's image's appearance cells ``(R, r)``."""
        pooled = []
        g = maps.shape[1]
        side = g * APPEARANCE_STRIDE  # SAM's square input, in pixels
        for m, i in zip(region_masks, image_index.tolist()):
            extent = padded_square_extent(m.shape, valid_sizes[i], side)
            cover = grid_coverage(m, (0, 0, *extent), (g, g)).to(device=maps.device, dtype=maps.dtype)
            pooled.append(torch.einsum("hw,hwc->c", cover, maps[i]) / cover.sum().clamp(min=1e-6))
        return torch.stack(pooled)

    def _pool_maps(self, region_masks, region_image_index, maps, proj, extents, dtype):
        """Pooling (and pixel-enhancement keys) from one feature map per image: each map is projected
        once however many regions or rows share it, and each region's cell coverage comes from
        :func:`grid_coverage` over the map's ``extent`` (cost independent of the image's pixel count).

        maps ``(gh, gw, C)`` and extents ``(x1, y1)`` (the mask pixels the map spans from (0, 0)),
        indexed by ``region_image_index`` → keys ``(R, M, r)``, padding ``(R, M)``, pooled ``(R, r)``.
        """
        projected: dict = {}
        pix, pads, pooled = [], [], []
        for m, i in zip(region_masks, region_image_index.tolist()):
            fmap = maps[i]
            key = (fmap.data_ptr(), tuple(fmap.shape), fmap.stride())  # rows of one image share its map
            if key not in projected:
                projected[key] = proj(fmap.reshape(1, -1, fmap.shape[-1]).to(dtype))
            gh, gw = fmap.shape[:2]
            cover = grid_coverage(m, (0, 0, *extents[i]), (gh, gw)).flatten()[None].to(dtype)
            p, pd, t = self._pixels(projected[key], cover, self.config.max_region_pixels)
            pix.append(p[0]), pads.append(pd[0]), pooled.append(t[0])
        pixels = nn.utils.rnn.pad_sequence(pix, batch_first=True)
        pad = nn.utils.rnn.pad_sequence(pads, batch_first=True, padding_value=True)
        return pixels, pad, torch.stack(pooled)

    def forward(
        self,
        region_masks: list[torch.Tensor],
        region_image_index: torch.Tensor,
        vision_features: list[torch.Tensor],
        sam_crop_features: torch.Tensor | None = None,
        crop_masks: torch.Tensor | None = None,
        region_boxes: list[tuple[int, int, int, int]] | None = None,
        sam_image_features: list[torch.Tensor] | torch.Tensor | None = None,
        sam_valid_sizes: torch.Tensor | list | None = None,
        appearance: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            region_masks: R binary masks, each ``(H_i, W_i)`` at its image's original size.
            region_image_index: ``(R,)`` which image each region belongs to.
            vision_features: per image ``(gh, gw, d)`` merged vision-encoder features.
            sam_crop_features: ``(R, C_sam, g, g)`` SAM features of each region's crop (local
                aggregation from crops, ``region_feature_source="crop"``).
            crop_masks: ``(R, S, S)`` region masks in crop coordinates (same).
            region_boxes: optional ``(x0, y0, x1, y1)`` of each mask (:func:`mask_box`), if known.
            sam_image_features: per image ``(C_sam, g, g)`` full-image SAM embedding
                (``region_feature_source="image"``).
            sam_valid_sizes: per image ``(h, w)`` of the resized image inside SAM's padded square
                input (``region_feature_source="image"``).
        Returns:
            T_mask ``(R, d)`` and T_pos ``(R, d)``.
        """
        cfg = self.config
        dtype = vision_features[0].dtype
        t_pos, centers_sizes = self.encode_position(region_masks, dtype, region_boxes, appearance)

        if cfg.use_local_aggregation and cfg.region_feature_source == "crop":
            g = sam_crop_features.shape[-1]
            cover = mask_coverage(crop_masks, (g, g)).flatten(1).to(dtype)
            feats = self.local_proj(sam_crop_features.flatten(2).transpose(1, 2).to(dtype))
            pixels, pad, t0 = self._pixels(feats, cover, cfg.max_region_pixels)
        elif cfg.use_local_aggregation:  # the cells of the full-image SAM embedding under each mask
            if sam_image_features is None or sam_valid_sizes is None:
                raise ValueError("region_feature_source='image' needs sam_image_features and sam_valid_sizes")
            side = cfg.sam_config.vision_config.image_size  # the embedding spans SAM's padded square input
            extents = {i: padded_square_extent(m.shape, sam_valid_sizes[i], side)
                       for m, i in zip(region_masks, region_image_index.tolist())}
            maps = [f.permute(1, 2, 0) for f in sam_image_features]
            pixels, pad, t0 = self._pool_maps(region_masks, region_image_index, maps, self.local_proj, extents, dtype)
        else:  # the vision encoder's cells under each mask
            extents = {i: (m.shape[1], m.shape[0]) for m, i in zip(region_masks, region_image_index.tolist())}
            pixels, pad, t0 = self._pool_maps(region_masks, region_image_index, vision_features, self.vision_proj,
                                              extents, dtype)

        t = self.pixel_enhancement(t0, pixels, pad) if cfg.use_pixel_enhancement else t0
        if cfg.use_semantic_guidance:
            out = torch.empty_like(t)
            values: dict = {}
            for i in region_image_index.unique().tolist():
                sel = (region_image_index == i).nonzero(as_tuple=True)[0]
                fmap = vision_features[i]
                key = (fmap.data_ptr(), tuple(fmap.shape), fmap.stride())  # rows of one image share its values
                if key not in values:
                    values[key] = self.semantic_guidance.values(fmap)
                out[sel] = self.semantic_guidance(t[sel], fmap, centers_sizes[sel, :2], values[key])
            t = out
        return self.mask_norm(self.mask_out(t)), t_pos
