"""One trainer for both stages, on HF accelerate (1 CPU process, N GPUs, or several machines).

``fclm train --config FILE [--resume DIR]``. Which modules train comes from the model config's
``stages`` (or the YAML's ``trainable``) through :func:`fclm.model.stages.apply_stage`; loss weights
from ``model.overrides``. Every loss term is logged separately to ``log.jsonl`` (and TensorBoard
when installed); checkpoints are atomic and hold everything a killed run needs to resume.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from .checkpoint import find_checkpoint, load_training_state, save_checkpoint
from .config import TrainConfig, to_dict
from .data import TrainingStream

log = logging.getLogger("fclm.train")
TERMS = ("loss", "loss_ce", "loss_dice", "loss_bce", "loss_seg", "loss_self", "loss_latent")


def build_model(cfg: TrainConfig):
    """Model + processor as the config's ``model`` section says, overrides applied."""
    from ..model.builders import build_from_pretrained, build_tiny, load_fclm

    m = cfg.model
    if m.init == "tiny":
        model, processor = build_tiny(seed=cfg.seed, **m.overrides)
    elif m.init == "path":
        if not m.path:
            raise ValueError(f"{cfg.source_file}: model.init=path needs model.path")
        model, processor = load_fclm(m.path)
    else:
        model, processor = build_from_pretrained(m.llm, m.sam, dtype=torch.float32)
    for k, v in m.overrides.items():
        if not hasattr(model.config, k):
            raise ValueError(f"{cfg.source_file}: model.overrides.{k} is not an FCLMConfig field")
        setattr(model.config, k, v)
    model.config.validate_fclm()
    processor.with_local_crops = model.config.use_local_aggregation
    processor.with_object_masks = model.config.self_recon_scope == "all_objects" and model.config.self_recon_weight > 0
    return model, processor


def _optimizer(model, cfg: TrainConfig):
    groups = []
    seen = set()
    for name, mods in model.module_groups().items():
        params = []
        for p in (p for mod in mods for p in mod.parameters()):
            if p.requires_grad and id(p) not in seen:  # tied weights appear in two modules
                seen.add(id(p))
                params.append(p)
        if params:
            groups.append({"params": params, "lr": cfg.optim.lr * cfg.optim.lr_multipliers.get(name, 1.0),
                           "name": name})
    if not groups:
        raise ValueError("no trainable parameters: check the stage's module groups")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)


def _scheduler(optimizer, cfg: TrainConfig):
    from transformers import get_scheduler

    warm = cfg.optim.warmup_steps or int(math.ceil(cfg.optim.warmup_ratio * cfg.steps))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.optim.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warm, num_training_steps=cfg.steps)


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None, progress: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.cfg = cfg
        # `accelerate launch --multi_gpu`/torchrun on a CPU-only machine: accelerate only sets up gloo
        # (MULTI_CPU) when told to use the CPU; otherwise every process would train alone as rank 0.
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        self.accelerator = Accelerator(mixed_precision=cfg.precision,
                                       cpu=launched > 1 and not torch.cuda.is_available(),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if launched > 1 and self.accelerator.num_processes != launched:
            raise RuntimeError(f"{launched} processes were launched but accelerate set up "
                               f"{self.accelerator.num_processes}: check the launcher's distributed settings")
        set_seed(cfg.seed)
        self.model, self.processor = build_model(cfg)
        from ..model.stages import apply_stage

        self.trainable = apply_stage(self.model, cfg.stage if cfg.trainable is None else None, cfg.trainable)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.optimizer = _optimizer(self.model, cfg)
        self.scheduler = _scheduler(self.optimizer, cfg)
        self.start_step = 0
        if resume:
            ckpt = find_checkpoint(resume)
            if ckpt is None:
                raise FileNotFoundError(f"no checkpoint to resume from in {resume}")
            state = load_training_state(ckpt, self.model, self.optimizer, self.scheduler)
            self.start_step = int(state["step"])
            log.info("resumed from %s at step %d", ckpt, self.start_step)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        world = self.accelerator.num_processes
        self.stream = TrainingStream(cfg, self.processor, cfg.steps * cfg.global_batch_per_process * world)
        self.progress = progress
        self.log_path = os.path.join(cfg.output_dir, "log.jsonl")

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def _open_log(self):
        if not self.accelerator.is_main_process:
            return None
        os.makedirs(self.cfg.output_dir, exist_ok=True)
        kept = []
        if os.path.exists(self.log_path):  # drop entries past the resume point (a killed run's tail)
            with open(self.log_path) as f:
                kept = [line for line in f if _log_step(line) <= self.start_step]
        with open(self.log_path, "w") as f:
            f.writelines(kept)
        with open(os.path.join(self.cfg.output_dir, "train_config.json"), "w") as f:
            json.dump(to_dict(self.cfg), f, indent=2, default=str)
        return open(self.log_path, "a")

    def _tensorboard(self):
        if not self.accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(os.path.join(self.cfg.output_dir, "tensorboard"))

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (all micro-batches); returns the mean of each loss term."""
        acc, cfg = self.accelerator, self.cfg
        sums: dict[str, list[float]] = {}
        self.model.train()
        for m in range(cfg.grad_accum):
            batch = self.stream.micro_batch(step, m, acc.process_index, acc.num_processes)
            from accelerate.utils import send_to_device

            batch = send_to_device(batch, acc.device)
            sync = m == cfg.grad_accum - 1
            ctx = acc.no_sync(self.model) if not sync else _null()
            with ctx, acc.autocast():
                out = self.model(**batch)
                acc.backward(out.loss / cfg.grad_accum)
            for k in TERMS:
                v = getattr(out, k)
                if v is not None:
                    sums.setdefault(k, []).append(float(v.detach()))
        if cfg.optim.grad_clip:
            acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        local = {k: sum(v) / len(v) for k, v in sums.items()}
        # mean over processes; a term absent on a process counts as absent (NaN-free mean)
        vals = torch.tensor([[local.get(k, 0.0), float(k in local)] for k in TERMS], device=acc.device)
        vals = acc.reduce(vals, reduction="sum")
        return {k: float(vals[i, 0] / vals[i, 1]) for i, k in enumerate(TERMS) if vals[i, 1] > 0}

    def run(self) -> str:
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        logf, tb = self._open_log(), self._tensorboard()
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"train {cfg.stage}",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        t0 = time.time()
        for step in range(self.start_step, cfg.steps):
            terms = self.train_step(step)
            done = step + 1
            if acc.is_main_process:
                rec = {"step": done, "lr": self.scheduler.get_last_lr()[0], "time": round(time.time() - t0, 3), **terms}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                if tb is not None:
                    for k, v in terms.items():
                        tb.add_scalar(f"train/{k}", v, done)
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in terms.items() if k != "loss"})
            bar.update(1)
            if done % cfg.save_every == 0 or done == cfg.steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(cfg.output_dir, done, self.unwrapped, self.processor, self.optimizer,
                                    self.scheduler, {"skipped_records": self.stream.skipped, "num_processes": acc.num_processes,
                                                     "config_file": cfg.source_file}, cfg.keep_checkpoints)
        bar.close()
        final = os.path.join(cfg.output_dir, "final")
        acc.wait_for_everyone()
        if acc.is_main_process:
            from ..model.builders import save_fclm

            save_fclm(self.unwrapped, self.processor, final)
            if logf:
                logf.close()
            if tb is not None:
                tb.close()
            try:
                from .plots import plot_losses

                plot_losses(self.log_path, os.path.join(cfg.output_dir, "loss_curves.png"))
            except Exception as e:  # a plot must never lose a finished run
                log.warning("could not plot loss curves: %s", e)
        acc.wait_for_everyone()
        return final


def _log_step(line: str) -> float:
    """Step of a ``log.jsonl`` line; a blank or torn line (a kill mid-write) sorts past every step."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else math.inf
    except json.JSONDecodeError:
        return math.inf


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
