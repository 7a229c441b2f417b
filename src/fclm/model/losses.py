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


def mask_losses(logits: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Dice and mean BCE over a list of (logits, target) pairs of matching shapes."""
    dice = torch.stack([dice_loss(l.float(), t) for l, t in zip(logits, targets)]).mean()
    bce = torch.stack([bce_loss(l.float(), t) for l, t in zip(logits, targets)]).mean()
    return dice, bce


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
