"""FCLM's losses (SPEC §1.5). Masks may carry the ignore label 255 (excluded from the loss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def _valid_and_target(target: torch.Tensor):
    valid = target != IGNORE
    return valid.float(), (target == 1).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss of one mask (LISA's form: 1 − (2·Σpt + ε)/(Σp + Σt + ε)); ``target`` in {0,1,255}."""
    valid, t = _valid_and_target(target)
    p = logits.sigmoid() * valid
    t = t * valid
    num = 2 * (p * t).sum() + eps
    den = p.sum() + t.sum() + eps
    return 1 - num / den


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel sigmoid BCE of one mask over valid pixels."""
    valid, t = _valid_and_target(target)
    loss = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1.0)


def pooled_target(target: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``{0,1,255}`` mask area-pooled to ``size``: (soft foreground fraction, valid fraction).

    The foreground fraction is over the valid pixels of each cell; a cell with no valid pixel gets
    weight 0.
    """
    valid, t = _valid_and_target(target)
    if tuple(target.shape[-2:]) == tuple(size):
        return t, valid
    stack = torch.stack([t * valid, valid])[None]
    fg, val = F.interpolate(stack, size=size, mode="area")[0]
    return fg / val.clamp(min=1e-6), val


def _batched_dice_bce(logits: torch.Tensor, t: torch.Tensor, valid: torch.Tensor, eps: float = 1.0):
    """Per-mask Dice and BCE of ``(N, h, w)`` logits against soft targets weighted by ``valid``."""
    p = logits.sigmoid() * valid
    t = t * valid
    dice = 1 - (2 * (p * t).flatten(1).sum(1) + eps) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + eps)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * valid
    bce = bce.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1.0)
    return dice, bce


def mask_losses(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Dice and mean BCE over a list of (logits, target) pairs.

    A target larger than its logits (low-resolution training losses, see
    :func:`~fclm.model.mask_decoding.decode_masks`) is area-pooled to the logits' size, giving soft
    targets; at equal sizes this is :func:`dice_loss` / :func:`bce_loss` exactly. Masks of one size
    are computed as one batch.
    """
    groups: dict[tuple, list[int]] = {}
    for i, l in enumerate(logits):
        groups.setdefault((tuple(l.shape), tuple(targets[i].shape)), []).append(i)
    dice, bce = [], []
    for (shape, _), idx in groups.items():
        pooled = [pooled_target(targets[i].to(logits[i].device), shape) for i in idx]
        t = torch.stack([p[0] for p in pooled])
        valid = torch.stack([p[1] for p in pooled])
        d, b = _batched_dice_bce(torch.stack([logits[i].float() for i in idx]), t, valid)
        dice.append(d)
        bce.append(b)
    return torch.cat(dice).mean(), torch.cat(bce).mean()


def latent_consistency(seg: torch.Tensor, pos: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Pull `[SEG]` vectors ``(P, D)`` towards their region's `<pos>` vectors ``(P, D)``.

    ``pos`` is a pseudo-label: it is detached here. ``kind``: "cosine" (1 − cos, the paper's
    choice), "kl" (KL(softmax(pos) ‖ softmax(seg))) or "mse".
    """
    pos = pos.detach().float()
    seg = seg.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(seg, pos, dim=-1)).mean()
    if kind == "kl":
        return F.kl_div(F.log_softmax(seg, -1), F.log_softmax(pos, -1), log_target=True, reduction="batchmean")
    if kind == "mse":
        return F.mse_loss(seg, pos)
    raise ValueError(f"unknown latent loss {kind!r}")
