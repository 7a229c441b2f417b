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

from .checkpoint import check_resumable, consolidated_state_dict, find_checkpoint, load_training_state, save_checkpoint
from .config import TrainConfig, to_dict
from .data import TrainingStream
from .dataset import SKIPPED_KEY, default_num_workers, micro_batch_loader
from .strategies import (configure_deepspeed, drop_untouched_gradients, init_adamw_state, make_accelerator,
                         touch_root_parameters)

log = logging.getLogger("fclm.train")
TERMS = ("loss", "loss_ce", "loss_dice", "loss_bce", "loss_seg", "loss_self", "loss_latent", "loss_box", "loss_look")


def build_model(cfg: TrainConfig, device=None):
    """Model + processor as the config's ``model`` section says, overrides applied."""
    from ..model.builders import build_from_pretrained, build_tiny, load_fclm

    m = cfg.model
    if m.init == "preset":  # random full-size weights, built in place on the training device
        from ..model.builders import random_preset

        model, processor = random_preset(m.preset or "fclm-3b", dtype=torch.float32, device=device or "cpu")
    elif m.init == "tiny":
        model, processor = build_tiny(seed=cfg.seed, **m.tiny, **m.overrides)
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
    processor.configure_for(model.config)
    processor.with_object_masks = model.config.self_recon_scope == "all_objects" and model.config.self_recon_weight > 0
    return model, processor


def _optimizer(model, cfg: TrainConfig, fused: bool = False):
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
    # fused: one kernel for every tensor (about 4x faster than the per-tensor loop on a CPU); kept
    # to plain (DDP) runs, where the parameters are ordinary tensors
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                             **({"fused": True} if fused else {}))


def _scheduler(optimizer, cfg: TrainConfig):
    from transformers import get_scheduler

    warm = cfg.optim.warmup_steps or int(math.ceil(cfg.optim.warmup_ratio * cfg.steps))
    if cfg.optim.schedule == "wsd":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: wsd_factor(s, warm, cfg.steps, cfg.optim.decay_ratio))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.optim.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warm, num_training_steps=cfg.steps)


def wsd_factor(step: int, warmup: int, total: int, decay_ratio: float) -> float:
    """Warm-up-stable-decay: linear warm-up, the full rate, then a cosine decay to 0 over the last
    ``decay_ratio`` of the steps. A short run keeps its full rate longer than under one long cosine.

    transformers' ``get_wsd_schedule`` has the same shape but a warm-up that starts at 0 (a first step
    with no update); every measured quickstart run (docs/benchmarks.md) used this one, which starts at
    1/warmup, so switching would change the recipe those figures describe."""
    decay = max(1, int(round(decay_ratio * total)))
    if step < warmup:
        return (step + 1) / warmup
    if step < total - decay:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - (total - decay)) / decay)))


class Trainer:
    """One run of one stage under the strategy its launcher set up (see :mod:`.strategies`)."""

    def __init__(self, cfg: TrainConfig, resume: str | None = None, progress: bool = True):
        from accelerate.utils import set_seed

        from ..model.stages import apply_stage

        self.cfg = cfg
        self.accelerator, self.strategy = make_accelerator(cfg.precision, cfg.grad_accum)
        acc = self.accelerator
        ckpt = state = None
        if resume:
            ckpt = find_checkpoint(resume)
            if ckpt is None:
                raise FileNotFoundError(f"no checkpoint to resume from in {resume}")
            state = check_resumable(ckpt, self.strategy, acc.num_processes)
        set_seed(cfg.seed)
        self.model, self.processor = build_model(cfg, acc.device)
        # fp32 master weights whatever the init folder holds (bf16 weights lose most lr-2e-5
        # updates to rounding); bf16 compute comes from autocast (precision: bf16)
        self.model.float()
        self.trainable = apply_stage(self.model, cfg.stage if cfg.trainable is None else None, cfg.trainable)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.optimizer = _optimizer(self.model, cfg, fused=self.strategy == "ddp" and acc.device.type in ("cpu", "cuda"))
        self.scheduler = _scheduler(self.optimizer, cfg)  # stepped once per optimizer step, not prepared
        configure_deepspeed(acc, cfg.per_device_batch, cfg.optim.grad_clip)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if self.strategy == "fsdp":
            self.unwrapped.register_forward_hook(touch_root_parameters)
            init_adamw_state(self.optimizer)
        self.start_step, self.skipped = 0, 0
        if ckpt:
            load_training_state(acc, ckpt, self.scheduler)
            self.start_step, self.skipped = int(state["step"]), int(state.get("skipped_records", 0))
            log.info("resumed from %s at step %d", ckpt, self.start_step)
        world = acc.num_processes
        self.stream = TrainingStream(cfg, self.processor, cfg.steps * cfg.global_batch_per_process * world)
        workers = cfg.data.num_workers
        self.num_workers = (default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), acc.device.type != "cpu")
                            if workers is None else workers)
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
            json.dump({**to_dict(self.cfg), "strategy": self.strategy, "num_processes": self.accelerator.num_processes},
                      f, indent=2, default=str)
        return open(self.log_path, "a")

    def _tensorboard(self):
        if not self.accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(os.path.join(self.cfg.output_dir, "tensorboard"))

    def batches(self, start_step: int | None = None):
        """This rank's micro-batches from ``start_step`` on (DataLoader with worker processes)."""
        acc, cfg = self.accelerator, self.cfg
        return micro_batch_loader(self.stream, cfg.steps, cfg.grad_accum, acc.process_index, acc.num_processes,
                                  self.start_step if start_step is None else start_step, self.num_workers,
                                  pin_memory=acc.device.type == "cuda")

    def train_step(self, batches) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches through ``accelerator.accumulate``);
        returns the mean of each loss term over micro-batches and processes."""
        from accelerate.utils import send_to_device

        acc, cfg = self.accelerator, self.cfg
        sums: dict[str, list[float]] = {}
        self.model.train()
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            self.skipped += int(batch.pop(SKIPPED_KEY, 0))
            batch = self.processor.normalize_images(send_to_device(batch, acc.device, non_blocking=True))
            with acc.accumulate(self.model), acc.autocast():
                out = self.model(**batch)
                acc.backward(out.loss)  # accelerate divides by grad_accum
                if acc.sync_gradients and self.strategy == "fsdp":
                    drop_untouched_gradients(self.model, acc)
                if acc.sync_gradients and cfg.optim.grad_clip:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                self.optimizer.step()  # a no-op until the last micro-batch
                self.optimizer.zero_grad(set_to_none=True)
            for k in TERMS:
                v = getattr(out, k)
                if v is not None:
                    sums.setdefault(k, []).append(float(v.detach()))
        if not acc.sync_gradients:
            raise RuntimeError("gradient accumulation out of step with the optimizer steps")
        self.scheduler.step()
        local = {k: sum(v) / len(v) for k, v in sums.items()}
        # mean over processes; a term absent on a process counts as absent (NaN-free mean)
        vals = torch.tensor([[local.get(k, 0.0), float(k in local)] for k in TERMS], device=acc.device)
        vals = acc.reduce(vals, reduction="sum")
        return {k: float(vals[i, 0] / vals[i, 1]) for i, k in enumerate(TERMS) if vals[i, 1] > 0}

    def save(self, step: int) -> str:
        acc = self.accelerator
        skipped = torch.tensor([float(self.skipped)], device=acc.device)
        state = {"skipped_records": int(acc.reduce(skipped, reduction="sum").item()) if acc.num_processes > 1 else self.skipped,
                 "num_processes": acc.num_processes, "strategy": self.strategy, "config_file": self.cfg.source_file}
        return save_checkpoint(acc, self.cfg.output_dir, step, self.model, self.processor, self.scheduler, state,
                               self.cfg.keep_checkpoints, _DTYPES[self.cfg.save_dtype])

    def run(self) -> str:
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.cfg
        logf, tb = self._open_log(), self._tensorboard()
        bar = tqdm(total=cfg.steps, initial=self.start_step, desc=f"train {cfg.stage}",
                   disable=not (self.progress and acc.is_main_process), dynamic_ncols=True)
        t0 = time.time()
        batches = iter(self.batches())
        for step in range(self.start_step, cfg.steps):
            terms = self.train_step(batches)
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
                self.save(done)
        bar.close()
        del batches  # stops the DataLoader workers
        final = os.path.join(cfg.output_dir, "final")
        sd = consolidated_state_dict(acc, self.model, _DTYPES[cfg.save_dtype])
        if acc.is_main_process:
            from ..model.builders import save_fclm

            save_fclm(self.unwrapped, self.processor, final, state_dict=sd)
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


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _log_step(line: str) -> float:
    """Step of a ``log.jsonl`` line; a blank or torn line (a kill mid-write) sorts past every step."""
    try:
        return json.loads(line).get("step", 0) if line.strip() else math.inf
    except json.JSONDecodeError:
        return math.inf
