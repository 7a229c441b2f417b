"""Per-GPU memory plan of a training config under a strategy (``fclm train … --dry-run``).

Parameter counts come from the model built on the meta device (no weights, no download): the
SPEC §7 preset for ``init: pretrained`` configs naming a 3B / 7B Qwen2.5-VL, the folder's
config.json for ``init: path``. Byte counts per parameter:

=========  ======================  =========================  ==========================
strategy   weights                 gradients                  AdamW (m, v)
=========  ======================  =========================  ==========================
ddp        4·P (fp32) + 2·P        4·T + 4·T (DDP buckets)    8·T
           (autocast bf16 copies)
fsdp       4·P / N + unsharded     4·T / N                    8·T / N
           bf16 root group
zero2      2·P (bf16) + 4·T / N    2·T / N + buckets          8·T / N
           (fp32 master)
zero3      2·P / N + 4·T / N       2·T / N                    8·T / N
=========  ======================  =========================  ==========================

(P all parameters, T trainable ones, N GPUs.) Activations are an estimate for bf16 autocast:
with gradient checkpointing each LLM layer keeps its bf16 input and one layer is recomputed at a
time; without, each layer keeps ≈ 2·(8·d + 3·I) bytes per token. Logits: only at label positions
(bf16 logits + fp32 copy + fp32 gradient). A fixed 2 GiB covers the CUDA context, NCCL and
allocator slack. Measured numbers replace these estimates: see ``benchmarks/gpu_train.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1024**3
OVERHEAD_GIB = 2.0
# typical real lengths (SPEC §7 / issue 10): a 1.2k-token image + prompt and answer
DEFAULT_SEQ_LEN = 1400
DEFAULT_LABEL_TOKENS = 96  # answer tokens per sample (captions run longer than masks' "Sure, [SEG].")


@dataclass
class ModelFacts:
    name: str
    total: int
    trainable: int
    root: int  # parameters outside the separately sharded layers (FSDP2 root group)
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    vision_trainable: bool
    vision: dict = field(default_factory=dict)


def _preset_name(cfg) -> str | None:
    m = cfg.model
    ref = (m.llm or m.path or "").lower()
    if "7b" in ref:
        return "fclm-7b"
    if "3b" in ref:
        return "fclm-3b"
    return None


def model_facts(cfg, preset: str | None = None) -> ModelFacts:
    """Parameter counts of the config's model (meta device) and what the stage trains."""
    import os

    import torch

    from ..model.builders import preset_config, tiny_config
    from ..model.configuration_fclm import FCLMConfig
    from ..model.modeling_fclm import FCLMForConditionalGeneration
    from ..model.stages import apply_stage

    name = preset or _preset_name(cfg)
    if cfg.model.init == "path" and cfg.model.path and os.path.exists(os.path.join(cfg.model.path, "config.json")) and not preset:
        config, name = FCLMConfig.from_pretrained(cfg.model.path), os.path.basename(cfg.model.path.rstrip("/"))
    elif name:
        config = preset_config(name)
    elif cfg.model.init == "tiny":
        config, name = tiny_config(1024), "tiny"
    else:
        raise ValueError(f"{cfg.source_file}: cannot tell the model size (name a 3B or 7B model, or pass --preset)")
    for k, v in cfg.model.overrides.items():
        if hasattr(config, k):
            setattr(config, k, v)
    with torch.device("meta"):
        model = FCLMForConditionalGeneration(config)
    apply_stage(model, cfg.stage if cfg.trainable is None else None, cfg.trainable)
    params = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    layered = sum(p.numel() for m in model.modules() if type(m).__name__ in ("Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock")
                  for p in m.parameters())
    t, v = config.text_config, config.vision_config
    return ModelFacts(name, total, trainable, total - layered, t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                      t.vocab_size, any(p.requires_grad for p in model.model.visual.parameters()),
                      dict(hidden=v.hidden_size, intermediate=v.intermediate_size, layers=v.depth,
                           merge=v.spatial_merge_size))


def plan(facts: ModelFacts, strategy: str, gpus: int, gpu_memory_gib: float, batch: int, seq_len: int,
         label_tokens: int, grad_ckpt: bool) -> dict:
    """Bytes per GPU of each part; ``fits`` when the sum is within ``gpu_memory_gib``."""
    P, T, N = facts.total, facts.trainable, max(1, gpus)
    if strategy == "ddp":
        weights, grads, optim = 4 * P + 2 * P, 8 * T, 8 * T
    elif strategy == "fsdp":
        layer = (P - facts.root) / max(1, facts.layers)  # one layer's share, gathered at a time (+ prefetch)
        weights, grads, optim = 4 * P / N + 2 * (facts.root + 2 * layer), 4 * T / N, 8 * T / N
    elif strategy == "zero2":
        weights, grads, optim = 2 * P + 4 * T / N, 2 * T / N + 2 * 5e8, 8 * T / N
    elif strategy == "zero3":
        weights, grads, optim = 2 * P / N + 4 * T / N + 2 * 1e9, 2 * T / N, 8 * T / N
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    tokens, d, inter, L = batch * seq_len, facts.hidden, facts.intermediate, facts.layers
    per_layer = 2 * tokens * (8 * d + 3 * inter)
    acts = (2 * tokens * d * L + per_layer) if grad_ckpt else per_layer * L
    if facts.vision_trainable:  # image patches before the 2×2 merge: ≈ 4 per image token
        vt, vd, vi, vl = 4 * tokens, facts.vision["hidden"], facts.vision["intermediate"], facts.vision["layers"]
        v_layer = 2 * vt * (8 * vd + 3 * vi)
        acts += (2 * vt * vd * vl + v_layer) if grad_ckpt else v_layer * vl
    logits = batch * label_tokens * facts.vocab * (2 + 4 + 4)
    parts = {"weights": weights, "gradients": grads, "optimizer": optim, "activations": acts, "logits": logits,
             "overhead": OVERHEAD_GIB * GiB}
    total = sum(parts.values())
    return {"model": facts.name, "strategy": strategy, "gpus": N, "gpu_memory_gib": gpu_memory_gib,
            "params": P, "trainable": T, "batch": batch, "seq_len": seq_len, "grad_ckpt": grad_ckpt,
            "parts_gib": {k: v / GiB for k, v in parts.items()}, "total_gib": total / GiB,
            "fits": total / GiB <= gpu_memory_gib}


def plan_for_config(cfg, strategy: str, gpus: int, gpu_memory_gib: float, seq_len: int = DEFAULT_SEQ_LEN,
                    label_tokens: int = DEFAULT_LABEL_TOKENS, preset: str | None = None) -> dict:
    from .strategies import STRATEGIES, StrategyError

    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if gpus < 1:
        raise StrategyError(f"--gpus must be ≥ 1, got {gpus}")
    facts = model_facts(cfg, preset)
    out = plan(facts, strategy, gpus, gpu_memory_gib, cfg.per_device_batch, seq_len, label_tokens,
               cfg.model.gradient_checkpointing)
    out["config"] = cfg.source_file
    return out


def render(p: dict) -> str:
    lines = [f"{p['model']} ({p['params'] / 1e9:.2f} B parameters, {p['trainable'] / 1e9:.2f} B trainable), "
             f"strategy {p['strategy']} on {p['gpus']} GPU(s) of {p['gpu_memory_gib']:g} GiB, "
             f"{p['batch']} × {p['seq_len']} tokens per GPU, gradient checkpointing {'on' if p['grad_ckpt'] else 'off'}"]
    for k, v in p["parts_gib"].items():
        lines.append(f"  {k:<12} {v:8.1f} GiB")
    lines.append(f"  {'total':<12} {p['total_gib']:8.1f} GiB per GPU: "
                 + ("fits" if p["fits"] else f"does NOT fit in {p['gpu_memory_gib']:g} GiB"))
    return "\n".join(lines)


def markdown_table(rows: list[tuple[str, str, str | None]], strategies=("ddp", "fsdp", "zero2", "zero3"), gpus=(1, 8, 16),
                   gpu_memory_gib: float = 80.0) -> str:
    """Docs table: total GiB per GPU (fits / does not) of each config × strategy × GPU count."""
    from .config import load_train_config

    head = "| config | model | trainable | " + " | ".join(f"{s} ×{n}" for s in strategies for n in gpus) + " |"
    lines = [head, "|" + "---|" * (3 + len(strategies) * len(gpus))]
    for label, path, preset in rows:  # (row label, training config, preset or None)
        cfg = load_train_config(path)
        facts = model_facts(cfg, preset)
        cells = []
        for s in strategies:
            for n in gpus:
                p = plan(facts, s, n, gpu_memory_gib, cfg.per_device_batch, DEFAULT_SEQ_LEN, DEFAULT_LABEL_TOKENS,
                         cfg.model.gradient_checkpointing)
                cells.append(f"{p['total_gib']:.0f}" + ("" if p["fits"] else " ✗"))
        lines.append(f"| {label} | {facts.name} | {facts.trainable / 1e9:.2f} B | " + " | ".join(cells) + " |")
    return "\n".join(lines)
