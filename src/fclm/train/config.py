"""Training configuration: one YAML file per stage (see ``configs/train/``).

Every field has a default; unknown keys are an error that names the key and the file.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class ModelSection:
    init: str = "path"  # "tiny" | "path" | "pretrained" | "preset" (random full-size weights: benchmarks)
    path: str | None = None  # init=path: an FCLM folder (e.g. the stage-1 output)
    llm: str | None = None  # init=pretrained: Qwen2.5-VL id/folder
    sam: str | None = None  # init=pretrained: SAM id/folder/.pth
    preset: str | None = None  # init=preset: fclm-3b | fclm-7b
    overrides: dict[str, Any] = field(default_factory=dict)  # FCLMConfig fields (loss weights, switches)
    tiny: dict[str, int] = field(default_factory=dict)  # init=tiny: {image_long_side, sam_image_size} input sizes
    gradient_checkpointing: bool = False


@dataclass
class SourceSection:
    """One entry of the data mixture: a dataset and the tasks built from it."""

    name: str
    tasks: list[str]
    weight: float = 1.0
    split: str | None = None
    root: str | None = None  # relative to data.data_root
    options: dict[str, Any] = field(default_factory=dict)  # loader keyword arguments


@dataclass
class DataSection:
    data_root: str | None = None
    sources: list[SourceSection] = field(default_factory=list)
    synthetic: dict[str, Any] = field(default_factory=dict)  # {num_scenes, seed, image_size, ...}
    pair_stage2: bool = False  # each region → one DLC + one DL-RES example (latent pairs)
    num_workers: int | None = None  # DataLoader worker processes per rank (None: GPU one per spare core ≤ 4, CPU 0)
    group_by_length: bool = False  # micro-batches of similar estimated length (see fclm.train.data)
    length_group_steps: int = 16  # optimizer steps per grouping window (per rank)


@dataclass
class OptimSection:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant | wsd (warm-up, stable, then a cosine decay)
    decay_ratio: float = 0.2  # wsd: share of the steps in the final decay
    grad_clip: float = 1.0
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # module group → lr factor


@dataclass
class TrainConfig:
    stage: str = "stage1"
    output_dir: str = "runs/fclm"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainable: list[str] | None = None  # default: model.config.stages[stage]
    steps: int = 1000
    per_device_batch: int = 2
    grad_accum: int = 1
    precision: str = "no"  # no | bf16 | fp16: autocast compute; weights and AdamW state stay fp32
    save_dtype: str = "float32"  # dtype of the saved model folders (checkpoints' model/, final/)
    seed: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    source_file: str | None = None

    @property
    def global_batch_per_process(self) -> int:
        return self.per_device_batch * self.grad_accum


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kw = {}
    nested = {"model": ModelSection, "data": DataSection, "optim": OptimSection}
    for k, v in data.items():
        if k in nested and cls is TrainConfig:
            kw[k] = _build(nested[k], v or {}, f"{where}: {k}")
        elif k == "sources" and cls is DataSection:
            kw[k] = [_build(SourceSection, s, f"{where}: sources[{i}]") for i, s in enumerate(v or [])]
        elif k == "betas":
            kw[k] = tuple(float(x) for x in v)
        elif names[k].type == "float" and isinstance(v, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                kw[k] = float(v)
            except ValueError:
                raise ValueError(f"{where}: {k} must be a number, got {v!r}") from None
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from e


def load_train_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config; ``overrides`` are ``a.b=value`` strings (YAML values)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    cfg = _build(TrainConfig, raw, path)
    cfg.source_file = os.path.abspath(path)
    base = os.path.dirname(cfg.source_file)
    # relative paths in a config are relative to the config file
    if cfg.model.path and not os.path.isabs(cfg.model.path) and not os.path.exists(cfg.model.path):
        cand = os.path.join(base, cfg.model.path)
        cfg.model.path = cand if os.path.exists(cand) else cfg.model.path
    if cfg.precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"{path}: precision must be no, bf16 or fp16, got {cfg.precision!r}")
    if cfg.save_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{path}: save_dtype must be float32, bfloat16 or float16, got {cfg.save_dtype!r}")
    if cfg.model.init not in ("tiny", "path", "pretrained", "preset"):
        raise ValueError(f"{path}: model.init must be tiny, path, pretrained or preset, got {cfg.model.init!r}")
    bad = sorted(set(cfg.model.tiny) - {"image_long_side", "sam_image_size"})
    if bad:
        raise ValueError(f"{path}: unknown key(s) {bad} in model.tiny; known: ['image_long_side', 'sam_image_size']")
    if cfg.optim.schedule not in ("cosine", "linear", "constant", "wsd"):
        raise ValueError(f"{path}: optim.schedule must be cosine, linear, constant or wsd, got {cfg.optim.schedule!r}")
    if not 0 < cfg.optim.decay_ratio <= 1:
        raise ValueError(f"{path}: optim.decay_ratio must be in (0, 1], got {cfg.optim.decay_ratio}")
    if cfg.data.length_group_steps < 1:
        raise ValueError(f"{path}: data.length_group_steps must be ≥ 1, got {cfg.data.length_group_steps}")
    if not cfg.data.sources:
        raise ValueError(f"{path}: data.sources is empty: nothing to train on")
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)
