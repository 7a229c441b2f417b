"""Run FCLM on a benchmark with the reference prompting and write predictions (``fclm eval``).

RES-type tasks (res, dlres, reasonseg) are teacher-forced: the prompt ends with ``Sure, [SEG].``,
one forward, masks from the ``[SEG]`` states (LISA's protocol). MUSE, ROC, DLC and GCG decode
greedily. Predictions are appended to a JSONL file as they are produced (``{"id", "masks", "text"}``)
and ids already in the file are skipped, so a crashed run resumes where it stopped. Under
``accelerate launch`` each process takes every ``world``-th query and writes its own shard.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from ..data.masks import decode_rle, encode_mask
from ..data.schema import Sample
from ..data.tasks import build_eval_example
from .queries import iter_queries

TEACHER_FORCED = ("res", "dlres", "reasonseg")


def read_done(path: str) -> set[str]:
    """Ids already predicted in ``path``; a line cut by a crash (and anything after it) is removed."""
    done, good = set(), []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    done.add(json.loads(line)["id"])
                except (ValueError, KeyError):
                    break  # everything from here is redone
                good.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w") as f:
            f.writelines(good)
    return done


def _region_masks(ex):
    return [decode_rle(ex.sample.objects[i].mask) for i in ex.region_ids]


def predict(pipeline, samples: Iterable[Sample], task: str, out_path: str, rank: int = 0, world: int = 1,
            batch_queries: int = 32, max_new_tokens: int | None = None, progress: bool = True) -> int:
    """Predict every query of ``task`` over ``samples`` into ``out_path`` (JSONL); returns how many new."""
    from tqdm.auto import tqdm

    done = read_done(out_path)
    queries = [q for s in samples for q in iter_queries(s, task)]
    mine = [q for k, q in enumerate(queries) if k % world == rank and q.id not in done]
    # queries of one image next to each other: a batch holds all of an image's queries, which then
    # share its vision/SAM encodings and prompt prefix (the pipeline keys images by object)
    first = {}
    for q in mine:
        first.setdefault(q.sample.id, len(first))
    mine.sort(key=lambda q: first[q.sample.id])
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    gen = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    images: dict[str, object] = {}
    n = 0
    with open(out_path, "a") as f, tqdm(total=len(mine), desc=f"eval {task}", disable=not progress) as bar:
        for start in range(0, len(mine), batch_queries):
            chunk = mine[start: start + batch_queries]
            exs = [build_eval_example(q) for q in chunk]
            if len(images) > 256:  # bounded cache
                images.clear()
            for q in chunk:  # one PIL image per sample, so queries of an image share its encodings
                if q.sample.id not in images:
                    images[q.sample.id] = q.sample.image.open()
            records = []
            if task in ("res", "dlres", "reasonseg", "muse"):
                grounding = []
                for q, ex in zip(chunk, exs):
                    ans = ex.assistant if task in TEACHER_FORCED else None
                    grounding.append((images[q.sample.id], ex.user, ans))
                for q, r in zip(chunk, pipeline.run_grounding(grounding, **gen)):
                    records.append({"id": q.id, "text": r.text, "masks": [encode_mask(m) for m in r.masks]})
            elif task in ("roc", "dlc"):
                items = [(images[q.sample.id], _region_masks(ex)) for q, ex in zip(chunk, exs)]
                if task == "roc":
                    outs = pipeline.classify_many(items, prompt=exs[0].user, **gen)
                else:
                    outs = pipeline.describe_many(items, prompt=exs[0].user, **gen)
                for q, o in zip(chunk, outs):
                    records.append({"id": q.id, "text": o[0].text})
            elif task == "gcg":
                outs = pipeline.ground_many([images[q.sample.id] for q in chunk], prompt=exs[0].user, **gen)
                for q, g in zip(chunk, outs):
                    records.append({"id": q.id, "text": g.raw, "caption": g.caption,
                                    "phrases": [p.text for p in g.phrases if p.mask is not None],
                                    "masks": [encode_mask(m) for m in g.masks]})
            else:
                raise ValueError(f"unknown task {task!r}")
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            n += len(records)
            bar.update(len(chunk))
    return n
