"""The training stream as a ``torch.utils.data`` pipeline: worker processes build micro-batches.

Item ``k`` of :class:`RankMicroBatches` is this rank's ``k``-th micro-batch (optimizer step
``k // grad_accum``, micro-batch ``k % grad_accum``), built by :meth:`TrainingStream.micro_batch`:
the same examples as the in-process path for a seed, whatever the number of workers. Ranks are
sharded by the stream's slot arithmetic, workers by the DataLoader handing out items round-robin
(each worker builds whole micro-batches, decoding and preprocessing on its own core), and the
DataLoader returns them in order. Resuming at step ``s`` starts the index range at
``s · grad_accum``: the stream continues where the killed run stopped.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from .data import TrainingStream

SKIPPED_KEY = "_skipped_records"


class RankMicroBatches(Dataset):
    def __init__(self, stream: TrainingStream, steps: int, grad_accum: int, rank: int, world: int):
        self.stream, self.steps, self.grad_accum, self.rank, self.world = stream, steps, grad_accum, rank, world

    def __len__(self) -> int:
        return self.steps * self.grad_accum

    def __getitem__(self, k: int) -> dict:
        step, micro = divmod(int(k), self.grad_accum)
        before = self.stream.skipped
        batch = self.stream.micro_batch(step, micro, self.rank, self.world)
        batch[SKIPPED_KEY] = self.stream.skipped - before  # workers' counters stay in the workers
        return batch


def _identity(batch):
    return batch


def default_num_workers(world_local: int = 1, on_gpu: bool = True) -> int:
    """On a GPU: one worker per spare core of this process's share of the machine, at most 4. On
    the CPU none: the training step itself uses every core, and a worker only competes with it."""
    if not on_gpu:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, world_local) - 1))


def micro_batch_loader(stream: TrainingStream, steps: int, grad_accum: int, rank: int, world: int,
                       start_step: int = 0, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Micro-batches ``start_step · grad_accum …`` of this rank, in order."""
    ds = RankMicroBatches(stream, steps, grad_accum, rank, world)
    order = range(start_step * grad_accum, steps * grad_accum)
    # its own generator: an iterator draws its base seed from it, not from the global torch RNG that
    # the model's target subsampling uses (a resumed run restores that RNG; the draw would shift it)
    return DataLoader(ds, batch_size=None, sampler=order, num_workers=num_workers, collate_fn=_identity,
                      generator=torch.Generator().manual_seed(0),
                      pin_memory=pin_memory, prefetch_factor=2 if num_workers else None,
                      multiprocessing_context="fork" if num_workers and hasattr(os, "fork") else None,
                      worker_init_fn=_worker_init if num_workers else None)


def _worker_init(_):
    torch.set_num_threads(1)  # preprocessing is PIL/numpy; leave the cores to the training process
