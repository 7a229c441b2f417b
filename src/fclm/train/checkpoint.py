"""Atomic, resumable training checkpoints, written by every process through accelerate.

``<output_dir>/checkpoints/step-NNNNNN/`` holds

* ``state/``: ``accelerator.save_state`` (model + optimizer, sharded under fsdp / zero, per-rank
  RNG states) — what resume reads;
* ``model/``: the consolidated model + processor (safetensors, an HF folder loadable with
  ``FCLMPipeline`` / ``AutoModel.from_pretrained`` after ``import fclm``);
* ``scheduler.pt`` and ``trainer_state.json`` (step, strategy, world size, skipped records).

Every process writes its part into ``.tmp-step-NNNNNN``; the main process renames it into place and
then replaces ``latest`` (a one-line file) atomically: a run killed at any moment leaves the
previous checkpoint intact. Tensors are read back with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

CKPT_DIR = "checkpoints"


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def consolidated_state_dict(acc, model, dtype: torch.dtype | None = None) -> dict:
    """The full model state dict on the main process (gathered from shards; empty elsewhere)."""
    sd = acc.get_state_dict(model, unwrap=True)
    if not acc.is_main_process:
        return {}
    # tied weights (lm_head ↔ embeddings, SAM's shared positional embedding) come back from the
    # shards as separate tensors: keep the first name of each, as save_pretrained does unsharded
    unwrapped, tied = acc.unwrap_model(model), set()
    named = list(unwrapped.named_parameters(remove_duplicate=False)) + list(unwrapped.named_buffers(remove_duplicate=False))
    seen: dict[int, str] = {}
    for name, t in named:
        if id(t) in seen:
            tied.add(name)
        else:
            seen[id(t)] = name
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu()
            for k, v in sd.items() if k not in tied}


def save_checkpoint(acc, output_dir: str, step: int, model, processor, scheduler, state: dict,
                    keep: int = 2, dtype: torch.dtype | None = None) -> str:
    """Collective: every process calls it at the same step."""
    from ..model.builders import save_fclm

    root = os.path.join(output_dir, CKPT_DIR)
    final = os.path.join(root, f"step-{step:06d}")
    tmp = os.path.join(root, f".tmp-step-{step:06d}")
    if acc.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a killed run's partial write
        os.makedirs(tmp)
    acc.wait_for_everyone()
    acc.save_state(os.path.join(tmp, "state"))
    sd = consolidated_state_dict(acc, model, dtype)
    if acc.is_main_process:
        try:
            save_fclm(acc.unwrap_model(model), processor, os.path.join(tmp, "model"), state_dict=sd)
            torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
                json.dump({**state, "step": step}, f, indent=2)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_atomic(os.path.join(root, "latest"), os.path.basename(final) + "\n")
        olds = sorted(d for d in os.listdir(root) if d.startswith("step-") and d != os.path.basename(final))
        for d in olds[: max(0, len(olds) - (keep - 1))]:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    acc.wait_for_everyone()
    return final


def find_checkpoint(path: str) -> str | None:
    """A checkpoint folder from a run folder (its latest), a checkpoints folder, or itself."""
    if os.path.exists(os.path.join(path, "trainer_state.json")):
        return path
    for root in (os.path.join(path, CKPT_DIR), path):
        latest = os.path.join(root, "latest")
        if os.path.exists(latest):
            cand = os.path.join(root, open(latest).read().strip())
            if os.path.exists(os.path.join(cand, "trainer_state.json")):
                return cand
    return None


def read_trainer_state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        return json.load(f)


def check_resumable(ckpt: str, strategy: str, world: int) -> dict:
    """The checkpoint's trainer state, or a clear error when this run cannot continue it."""
    from .strategies import StrategyError

    state = read_trainer_state(ckpt)
    if not os.path.isdir(os.path.join(ckpt, "state")):
        raise StrategyError(f"{ckpt}: no state/ folder (a checkpoint of an older fclm): cannot resume")
    was = state.get("strategy", "ddp")
    if was != strategy:
        raise StrategyError(f"{ckpt} was written under strategy {was}, this run is {strategy}: "
                            f"resume with --strategy {was}")
    if strategy.startswith("zero") and int(state.get("num_processes", world)) != world:
        raise StrategyError(f"{ckpt} holds DeepSpeed shards of {state['num_processes']} processes, this run "
                            f"has {world}: resume with the same number of processes")
    return state


def load_training_state(acc, ckpt: str, scheduler) -> None:
    """Restore model, optimizer and RNG (``state/``) and the scheduler; after ``prepare``."""
    acc.load_state(os.path.join(ckpt, "state"))
    scheduler.load_state_dict(torch.load(os.path.join(ckpt, "scheduler.pt"), weights_only=True))
