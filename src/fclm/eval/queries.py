"""Evaluation queries: which (id, input, target) triples a benchmark sample yields.

One shared definition so that `fclm eval` (which writes predictions) and `fclm score` (which reads
them) agree on ids. Ids are stable strings built from ``Sample.id``:

==========  =====================  ===================================================
task        id                     one query per
==========  =====================  ===================================================
res         ``{sid}#o{i}e{j}``     expression j of object i (lower-cased, stripped)
dlres       ``{sid}#o{i}c``        object i with a detailed caption
reasonseg   ``{sid}#q0``           the sample's first question (LISA evaluates text[0])
muse        ``{sid}#q{k}``         question k (targets: its objects)
roc         ``{sid}#o{i}``         object i with a category
dlc         ``{ann_id}`` or        object i (DLC-Bench ids are its ``ann_id``)
            ``{sid}#o{i}``
gcg         ``{sid}``              image
==========  =====================  ===================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..data.schema import Sample

TASKS = ("res", "reasonseg", "muse", "dlres", "roc", "dlc", "gcg")


@dataclass
class Query:
    id: str
    task: str
    sample: Sample
    text: str | None = None  # the expression / question / caption (grounding tasks)
    region_ids: list[int] = field(default_factory=list)  # objects given as <region> (ROC, DLC)
    target_ids: list[int] = field(default_factory=list)  # objects to segment (grounding tasks)
    label: str | None = None  # ROC ground-truth category


def iter_queries(sample: Sample, task: str) -> Iterator[Query]:
    """Yield the evaluation queries of ``sample`` for ``task`` (see the module table)."""
    sid = sample.id
    if task == "res":
        for i, ob in enumerate(sample.objects):
            for j, expr in enumerate(ob.expressions):
                yield Query(f"{sid}#o{i}e{j}", task, sample, text=expr.lower().strip(), target_ids=[i])
    elif task == "dlres":
        for i, ob in enumerate(sample.objects):
            if ob.caption:
                yield Query(f"{sid}#o{i}c", task, sample, text=ob.caption.strip(), target_ids=[i])
    elif task == "reasonseg":
        if sample.questions:
            q = sample.questions[0]
            yield Query(f"{sid}#q0", task, sample, text=q.text, target_ids=list(q.target_ids))
    elif task == "muse":
        for k, q in enumerate(sample.questions):
            yield Query(f"{sid}#q{k}", task, sample, text=q.text, target_ids=list(q.target_ids))
    elif task == "roc":
        for i, ob in enumerate(sample.objects):
            if ob.category:
                yield Query(f"{sid}#o{i}", task, sample, region_ids=[i], label=ob.category)
    elif task == "dlc":
        for i, ob in enumerate(sample.objects):
            ann = ob.extra.get("ann_id")
            yield Query(str(ann) if ann is not None else f"{sid}#o{i}", task, sample, region_ids=[i])
    elif task == "gcg":
        yield Query(sid, task, sample, text=sample.caption)
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
