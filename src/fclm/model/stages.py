"""Which modules train in a stage: declared in ``FCLMConfig.stages``, applied by one function."""
from __future__ import annotations

from .configuration_fclm import MODULE_GROUPS


def apply_stage(model, stage: str | None = None, groups: list[str] | None = None) -> dict[str, int]:
    """Freeze every parameter, then unfreeze the groups of ``stage`` (or the explicit ``groups``).

    Returns the number of trainable parameters per group. Parameters shared between groups (the
    tied ``lm_head``/embeddings) follow the group that trains.
    """
    if groups is None:
        if stage not in model.config.stages:
            raise ValueError(f"unknown stage {stage!r}; config.stages has {sorted(model.config.stages)}")
        groups = model.config.stages[stage]
    unknown = [g for g in groups if g not in MODULE_GROUPS]
    if unknown:
        raise ValueError(f"unknown module groups {unknown}; known: {MODULE_GROUPS}")
    model.requires_grad_(False)
    table = model.module_groups()
    counts = {}
    for g in groups:
        for m in table[g]:
            m.requires_grad_(True)
    for g in MODULE_GROUPS:
        counts[g] = sum(p.numel() for m in table[g] for p in m.parameters() if p.requires_grad)
    return counts


def count_parameters(model) -> dict[str, int]:
    """Parameters per module group (works on the meta device)."""
    seen: set[int] = set()
    out = {}
    for g, mods in model.module_groups().items():
        n = 0
        for m in mods:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
        out[g] = n
    rest = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    out["other"] = rest
    return out
