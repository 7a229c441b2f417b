"""The training stream: a weighted mixture of (dataset, tasks) sources → encoded examples.

Global draw ``p`` of the :class:`~fclm.data.mixture.MixtureSampler` fills slot ``p`` of the global
batch sequence; micro-batch ``m`` of rank ``r`` at step ``s`` takes slots
``s·G + (m·world + r)·P … + P`` (P = per-device batch, G = global batch). So one process with
gradient accumulation and several processes without see the same micro-batches. The task of a draw
and its random template are drawn from ``rng([seed, p])``: a draw builds the same example whatever
the world size and across a resume.

With ``data.group_by_length`` the draws of each window of ``data.length_group_steps`` optimizer
steps of a rank are regrouped into micro-batches of similar estimated length (less padding): the
same draws, another order, still a function of (seed, window, rank) only, so a resumed run and any
number of DataLoader workers see the same micro-batches; it depends on the world size, though (each
rank groups its own draws).

Micro-batches carry uint8 images (normalised on the device by the trainer) and each distinct image
once (``collate(share_images=True)``: a stage-2 DLC + DL-RES pair shares its image's encodings).
"""
from __future__ import annotations

import logging
import os
import random
from collections import OrderedDict
from dataclasses import dataclass

from ..data.mixture import MixtureSampler
from ..data.schema import FCLMDataError, Sample
from ..data.tasks import BUILDERS, pair_stage2
from .config import TrainConfig

log = logging.getLogger("fclm.train")


class SyntheticReader:
    """Map-style reader over generated scenes, generated on first access.

    The last ``SCENE_CACHE_SIZE`` scenes read by any reader of this process are kept (a scene is a
    pure function of its index, split, seed and options): a quickstart run draws each of its 4,000
    scenes ≈ 4.6 times and its six sources share them, and generating a scene is ≈ 30 % of building
    a training example (cProfile). About 0.2 MB per scene (the 256² image and the object masks)."""

    SCENE_CACHE_SIZE = 4096
    _cache: OrderedDict = OrderedDict()

    def __init__(self, num_scenes: int, split: str = "train", seed: int = 0, **scene_options):
        from ..data.synthetic import SceneConfig

        self.n, self.split, self.seed = int(num_scenes), split, int(seed)
        self.config = SceneConfig(**scene_options)
        self.name = "synthetic"
        self._cache_key = (self.split, self.seed, repr(self.config))  # + the index: one scene

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        from ..data.synthetic import generate_scene

        key = (int(i), *self._cache_key)
        cache = SyntheticReader._cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        sample = generate_scene(int(i), self.split, self.seed, self.config)
        if self.SCENE_CACHE_SIZE > 0:
            cache[key] = sample
            while len(cache) > self.SCENE_CACHE_SIZE:
                cache.popitem(last=False)
        return sample


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
        self._groups_key, self._groups = None, []

    def draws(self, start: int, count: int) -> list[Draw]:
        """Global draws ``start … start + count - 1``."""
        self.sampler.load_state_dict({**self.sampler.state_dict(), "consumed": start, "epoch": 0})
        out = []
        for p, (name, idx) in zip(range(start, start + count), self.sampler):
            out.append(Draw(p, name, idx))
        return out

    def _task_examples(self, draw: Draw, rng: random.Random, i: int) -> list:
        """The task examples (not encoded) of record ``i`` of the draw's source."""
        sample = self.sources[draw.source][i]
        task = rng.choice(self.tasks[draw.source])
        if task == "pair_stage2" or (self.cfg.data.pair_stage2 and task in ("dlc", "dlres")):
            exs = pair_stage2(sample, rng, max_regions=1)
        else:
            cands = BUILDERS[task](sample, rng)
            exs = [rng.choice(cands)] if cands else []
        if not exs:
            raise FCLMDataError(f"{sample.source}:{sample.id} yields no {task} example")
        return exs

    def _rng(self, draw: Draw) -> random.Random:
        return random.Random(hash((self.cfg.seed, draw.position)) & 0xFFFFFFFF)

    def examples(self, draw: Draw):
        """Examples of one draw: one task's example, or a DLC + DL-RES pair (``pair_stage2``); the
        examples of one draw share one image, opened and run through the image processors once."""
        rng = self._rng(draw)
        n = len(self.sources[draw.source])
        last = None
        for t in range(self.max_tries):
            i = (draw.index + t) % n
            try:
                exs = self._task_examples(draw, rng, i)
                image = exs[0].sample.image.open() if len(exs) > 1 else None
                cache: dict = {}
                return [self.processor.encode_example(ex, image, uint8_images=True, image_cache=cache) for ex in exs]
            except FCLMDataError as e:
                last = e
                self.skipped += 1
                log.warning("%s: skipping record %d: %s", draw.source, i, e)
        raise FCLMDataError(f"{draw.source}: {self.max_tries} consecutive bad records from index {draw.index}: {last}")

    def micro_draws(self, step: int, micro: int, rank: int, world: int) -> list[Draw]:
        """The draws of micro-batch ``micro`` of ``rank`` at optimizer step ``step``."""
        if self.cfg.data.group_by_length:
            W = self.cfg.data.length_group_steps
            return self._grouped_window(step // W, rank, world)[(step % W) * self.cfg.grad_accum + micro]
        P = self.cfg.per_device_batch
        G = P * self.cfg.grad_accum * world
        return self.draws(step * G + (micro * world + rank) * P, P)

    def micro_batch(self, step: int, micro: int, rank: int, world: int) -> dict:
        """The collated micro-batch ``micro`` of ``rank`` at optimizer step ``step``: uint8 images
        (``processor.normalize_images`` finishes them on the device), each distinct image once."""
        encoded = [e for d in self.micro_draws(step, micro, rank, world) for e in self.examples(d)]
        return self.processor.collate(encoded, share_images=True)

    def draw_length(self, draw: Draw) -> int:
        """Estimated tokens of the draw's longest example, from the record's image size and the
        text (no image decoded, no processor run); 0 for a record that builds no example."""
        try:
            exs = self._task_examples(draw, self._rng(draw), draw.index % len(self.sources[draw.source]))
        except FCLMDataError:
            return 0
        return max(estimated_tokens(self.processor, ex) for ex in exs)

    def _grouped_window(self, window: int, rank: int, world: int) -> list[list[Draw]]:
        """Length-grouped micro-batches of ``rank`` for the steps of ``window`` (in step, micro order)."""
        key = (window, rank, world)
        if self._groups_key != key:
            P, A = self.cfg.per_device_batch, self.cfg.grad_accum
            G = P * A * world
            W = self.cfg.data.length_group_steps
            slots = [(s, m) for s in range(window * W, min((window + 1) * W, max(self.cfg.steps, 1))) for m in range(A)]
            draws = [d for s, m in slots for d in self.draws(s * G + (m * world + rank) * P, P)]
            order = sorted(range(len(draws)), key=lambda j: (self.draw_length(draws[j]), draws[j].position))
            groups = [[draws[j] for j in order[k:k + P]] for k in range(0, len(order), P)]
            # shuffled so that the longest batches do not all come last in the window
            random.Random(f"length-groups:{self.cfg.seed}:{window}:{rank}:{world}").shuffle(groups)
            self._groups_key, self._groups = key, groups
        return self._groups


def estimated_tokens(processor, ex) -> int:
    """Tokens of an encoded example, estimated: the exact image-token count from the record's size
    (resize to the long side, then Qwen's rounding to whole merged patches) plus the text's tokens
    without the chat template."""
    s = ex.sample
    scale = processor.image_long_side / max(s.width, s.height)
    w, h = max(1, int(s.width * scale + 0.5)), max(1, int(s.height * scale + 0.5))
    n_img = processor.image_processor.get_number_of_image_patches(h, w, {}) // processor.merge_size ** 2
    text = " ".join([t.text for t in ex.history] + [ex.user, ex.assistant or ""])
    return n_img + len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
