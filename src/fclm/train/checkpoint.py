"""Atomic, resumable training checkpoints.

``<output_dir>/checkpoints/step-NNNNNN/`` holds the model + processor (safetensors, loadable with
``FCLMPipeline``/``load_fclm``), ``optimizer.pt``, ``scheduler.pt`` and ``trainer_state.json`` (step,
RNG state, sampler position). A checkpoint is written to a temporary folder and renamed into place,
then ``latest`` (a one-line file) is replaced atomically: a run killed at any moment leaves the
previous checkpoint intact. Tensors are read back with ``torch.load(weights_only=True)``.
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


def save_checkpoint(output_dir: str, step: int, model, processor, optimizer, scheduler, state: dict,
                    keep: int = 2) -> str:
    from ..model.builders import save_fclm

    root = os.path.join(output_dir, CKPT_DIR)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step-{step:06d}")
    tmp = tempfile.mkdtemp(prefix=".tmp-step-", dir=root)
    try:
        save_fclm(model, processor, os.path.join(tmp, "model"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        torch.save({"torch": torch.get_rng_state()}, os.path.join(tmp, "rng.pt"))
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


def load_training_state(ckpt: str, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``ckpt``; return its trainer state."""
    from safetensors.torch import load_file

    weights = {}
    mdir = os.path.join(ckpt, "model")
    for f in sorted(os.listdir(mdir)):
        if f.endswith(".safetensors"):
            weights.update(load_file(os.path.join(mdir, f)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # tied weights (lm_head ↔ embeddings, SAM's shared positional embedding) are saved once
    state = model.state_dict()
    loaded = {state[k].data_ptr() for k in weights if k in state}
    missing = [k for k in missing if state[k].data_ptr() not in loaded]
    if missing or unexpected:
        raise ValueError(f"{ckpt}: checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=True))
    scheduler.load_state_dict(torch.load(os.path.join(ckpt, "scheduler.pt"), weights_only=True))
    torch.set_rng_state(torch.load(os.path.join(ckpt, "rng.pt"), weights_only=True)["torch"])
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        return json.load(f)
