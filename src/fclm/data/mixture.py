"""Weighted dataset mixture: a deterministic, rank-sharded, resumable sampler.

:class:`MixtureSampler` yields ``(dataset_name, index)`` pairs. Over ``num_samples`` draws each
dataset gets its share of the weights *exactly* (largest-remainder rounding; weights are Table-7
sample counts, so with ``num_samples`` = their sum every dataset is seen its Table-7 number of
times), in an order shuffled by ``seed``. Within a dataset, draws walk a fresh permutation each
pass (no repeats before every record was seen; small sets such as ReasonSeg are repeat-sampled).
Global draw ``p`` belongs to rank ``p % world_size``; ``state_dict()`` stores how many global draws
were consumed, so a resumed run, even with another world size, continues where it stopped.

:class:`MixtureDataset` maps ``(name, index)`` to a :class:`~fclm.data.schema.Sample` from
map-style readers (anything with ``__len__`` and ``__getitem__``), skipping a bad record (or one
whose ``transform`` fails, e.g. a corrupt image) with a warning that names it.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .schema import FCLMDataError

log = logging.getLogger("fclm.data")


def exact_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` draws in proportion to ``weights`` (largest remainder; sums to ``total``)."""
    names = list(weights)
    w = np.array([float(weights[n]) for n in names], dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {dict(weights)}")
    raw = w / w.sum() * total
    base = np.floor(raw).astype(np.int64)
    rest = total - int(base.sum())
    order = np.argsort(-(raw - base), kind="stable")[:rest]
    base[order] += 1
    return {n: int(c) for n, c in zip(names, base)}


class MixtureSampler:
    """Deterministic weighted mixture over datasets of known sizes, sharded over ranks."""

    def __init__(self, sizes: Mapping[str, int], weights: Mapping[str, float], num_samples: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        missing = set(weights) ^ set(sizes)
        if missing:
            raise ValueError(f"sizes and weights must name the same datasets; differ in {sorted(missing)}")
        empty = [n for n, s in sizes.items() if int(s) <= 0 and float(weights[n]) > 0]
        if empty:
            raise ValueError(f"datasets with a weight but no records: {empty}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.names = sorted(sizes)
        self.sizes = {n: int(sizes[n]) for n in self.names}
        self.weights = {n: float(weights[n]) for n in self.names}
        self.num_samples = int(num_samples)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.counts = exact_counts(self.weights, self.num_samples)
        self.epoch = 0
        self._consumed = 0  # global draws consumed (all ranks), at a multiple of world_size
        self._local = 0  # draws this rank yielded since the resume point
        self._plan_epoch: int | None = None
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    # -- plan -----------------------------------------------------------------------------------
    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(dataset label, occurrence number) of every global draw of the current epoch."""
        if self._plan_epoch != self.epoch:
            labels = np.concatenate([np.full(self.counts[n], i, dtype=np.int32)
                                     for i, n in enumerate(self.names)])
            np.random.default_rng([self.seed, self.epoch, 0]).shuffle(labels)
            occ = np.empty(len(labels), dtype=np.int64)
            for i in range(len(self.names)):
                pos = np.flatnonzero(labels == i)
                occ[pos] = np.arange(len(pos))
            self._labels, self._occ, self._plan_epoch = labels, occ, self.epoch
        return self._labels, self._occ

    def _index(self, d: int, occurrence: int) -> int:
        """Record index of the ``occurrence``-th draw from dataset ``d`` (epoch-wise permutations)."""
        n = self.sizes[self.names[d]]
        # passes continue across mixture epochs: offset by draws of d in earlier epochs
        k = self.epoch * self.counts[self.names[d]] + occurrence
        p, r = divmod(k, n)
        key = (d, p)
        perm = self._perm_cache.get(key)
        if perm is None:
            perm = np.random.default_rng([self.seed, d, p, 1]).permutation(n)
            self._perm_cache = {kk: v for kk, v in self._perm_cache.items() if kk[0] != d}
            self._perm_cache[key] = perm
        return int(perm[r])

    # -- iteration ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Draws this rank yields from the resume point to the end of the epoch."""
        return max(0, (self._usable() - self._consumed) // self.world_size)

    def _usable(self) -> int:
        return self.num_samples // self.world_size * self.world_size  # equal share per rank

    def __iter__(self) -> Iterator[tuple[str, int]]:
        labels, occ = self._plan()
        start = self._consumed
        self._local = 0
        for p in range(start + self.rank, self._usable(), self.world_size):
            d = int(labels[p])
            self._local += 1
            yield self.names[d], self._index(d, int(occ[p]))

    def set_epoch(self, epoch: int) -> None:
        """Start mixture epoch ``epoch`` (a new shuffle) from its beginning."""
        self.epoch, self._consumed, self._local = int(epoch), 0, 0

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self, samples_seen: int | None = None) -> dict[str, Any]:
        """Position to resume from. ``samples_seen``: draws this rank has *trained on* since the
        last resume/epoch start (pass it when a DataLoader prefetches ahead); default: yielded."""
        local = self._local if samples_seen is None else int(samples_seen)
        return {"epoch": self.epoch, "consumed": self._consumed + local * self.world_size,
                "seed": self.seed, "num_samples": self.num_samples, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.seed or dict(state["counts"]) != self.counts:
            raise ValueError("sampler state is from another mixture (seed / dataset counts differ): "
                             f"saved seed {state['seed']} counts {state['counts']}, now seed {self.seed} "
                             f"counts {self.counts}")
        self.epoch = int(state["epoch"])
        consumed = int(state["consumed"])
        self._consumed = consumed - consumed % self.world_size  # round down to a whole step
        self._local = 0


class MixtureDataset:
    """Map-style view: ``ds[(name, index)]`` → ``transform(reader[index])``.

    A record that fails (``SkipRecord`` / ``FCLMDataError`` from the reader or the transform, e.g. a
    corrupt image or mask) is skipped with a warning naming it; the next index of the same dataset
    is tried (deterministic), up to ``max_tries``.
    """

    def __init__(self, readers: Mapping[str, Any], transform: Callable[[Any], Any] | None = None,
                 max_tries: int = 16):
        self.readers = dict(readers)
        self.transform = transform
        self.max_tries = max_tries
        self.skipped = 0

    def sizes(self) -> dict[str, int]:
        return {n: len(r) for n, r in self.readers.items()}

    def __getitem__(self, key: tuple[str, int]):
        name, index = key
        reader = self.readers[name]
        n = len(reader)
        err: Exception | None = None
        for t in range(self.max_tries):
            i = (index + t) % n
            try:
                item = reader[i]
                return self.transform(item) if self.transform is not None else item
            except FCLMDataError as e:
                err = e
                self.skipped += 1
                log.warning("%s: skipping record %d in training: %s", name, i, e)
        raise FCLMDataError(f"{name}: {self.max_tries} consecutive bad records from index {index}; last: {err}")
