"""The training stream: a weighted mixture of (dataset, tasks) sources → encoded examples.

Global draw ``p`` of the :class:`~fclm.data.mixture.MixtureSampler` fills slot ``p`` of the global
batch sequence; micro-batch ``m`` of rank ``r`` at step ``s`` takes slots
``s·G + (m·world + r)·P … + P`` (P = per-device batch, G = global batch). So one process with
gradient accumulation and several processes without see the same micro-batches. The task of a draw
and its random template are drawn from ``rng([seed, p])``: a draw builds the same example whatever
the world size and across a resume.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

from ..data.mixture import MixtureSampler
from ..data.schema import FCLMDataError, Sample
from ..data.tasks import BUILDERS, pair_stage2
from .config import TrainConfig

log = logging.getLogger("fclm.train")


class SyntheticReader:
    """Map-style reader over generated scenes (generated on access: no memory held)."""

    def __init__(self, num_scenes: int, split: str = "train", seed: int = 0, **scene_options):
        from ..data.synthetic import SceneConfig

        self.n, self.split, self.seed = int(num_scenes), split, int(seed)
        self.config = SceneConfig(**scene_options)
        self.name = "synthetic"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        from ..data.synthetic import generate_scene

        return generate_scene(int(i), self.split, self.seed, self.config)


def open_source(cfg: TrainConfig, src) -> object:
    """The reader of one data source of the config."""
    if src.name == "synthetic":
        opts = dict(cfg.data.synthetic)
        opts.update(src.options)
        return SyntheticReader(opts.pop("num_scenes", 2000), src.split or "train", opts.pop("seed", 0), **opts)
    from ..data.formats.registry import load_dataset

    if not cfg.data.data_root and not src.root:
        raise ValueError(f"source {src.name!r} needs data.data_root (or a root of its own) in {cfg.source_file}")
    root = os.path.join(cfg.data.data_root or "", src.root or "")
    return load_dataset(src.name, root, src.split, **src.options)


@dataclass
class Draw:
    position: int  # global draw number
    source: str
    index: int


class TrainingStream:
    """Examples of each global draw, built and encoded (bad records skipped and counted)."""

    def __init__(self, cfg: TrainConfig, processor, total_draws: int, max_tries: int = 16):
        self.cfg, self.processor, self.max_tries = cfg, processor, max_tries
        self.sources = {}
        self.tasks = {}
        weights = {}
        for i, src in enumerate(cfg.data.sources):
            key = f"{i}:{src.name}"
            unknown = [t for t in src.tasks if t not in BUILDERS and t != "pair_stage2"]
            if unknown:
                raise ValueError(f"{cfg.source_file}: source {src.name!r} names unknown tasks {unknown}")
            self.sources[key] = open_source(cfg, src)
            self.tasks[key] = list(src.tasks)
            weights[key] = float(src.weight)
        sizes = {k: len(r) for k, r in self.sources.items()}
        self.sampler = MixtureSampler(sizes, weights, num_samples=max(total_draws, 1), seed=cfg.seed)
        self.skipped = 0

    def draws(self, start: int, count: int) -> list[Draw]:
        """Global draws ``start … start + count - 1``."""
        self.sampler.load_state_dict({**self.sampler.state_dict(), "consumed": start, "epoch": 0})
        out = []
        for p, (name, idx) in zip(range(start, start + count), self.sampler):
            out.append(Draw(p, name, idx))
        return out

    def examples(self, draw: Draw):
        """Examples of one draw: one task's example, or a DLC + DL-RES pair (``pair_stage2``)."""
        rng = random.Random(hash((self.cfg.seed, draw.position)) & 0xFFFFFFFF)
        reader = self.sources[draw.source]
        n = len(reader)
        last = None
        for t in range(self.max_tries):
            i = (draw.index + t) % n
            try:
                sample = reader[i]
                task = rng.choice(self.tasks[draw.source])
                if task == "pair_stage2" or (self.cfg.data.pair_stage2 and task in ("dlc", "dlres")):
                    exs = pair_stage2(sample, rng, max_regions=1)
                else:
                    cands = BUILDERS[task](sample, rng)
                    exs = [rng.choice(cands)] if cands else []
                if not exs:
                    raise FCLMDataError(f"{sample.source}:{sample.id} yields no {task} example")
                return [self.processor.encode_example(ex) for ex in exs]
            except FCLMDataError as e:
                last = e
                self.skipped += 1
                log.warning("%s: skipping record %d: %s", draw.source, i, e)
        raise FCLMDataError(f"{draw.source}: {self.max_tries} consecutive bad records from index {draw.index}: {last}")

    def micro_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        """The collated micro-batch ``micro`` of ``rank`` at optimizer step ``step``."""
        P = self.cfg.per_device_batch
        G = P * self.cfg.grad_accum * world
        start = step * G + (micro * world + rank) * P
        encoded = [e for d in self.draws(start, P) for e in self.examples(d)]
        return self.processor.collate(encoded)
