"""Task builders: one :class:`~fclm.data.schema.Sample` → :class:`~fclm.data.schema.Example` list.

Every builder has the signature ``build_<task>(sample, rng=None, eval=False) -> list[Example]``.
In training (``eval=False``) templates are drawn from :mod:`fclm.data.prompts` with ``rng`` (a
``numpy.random.Generator`` or ``random.Random``); with ``eval=True`` the fixed evaluation template
is used and no randomness is involved.

Conventions the processor relies on (checked by :func:`check_example`):

* ``Example.user`` holds ``<region>`` once per entry of ``region_ids``, in order; ``assistant``
  holds ``[SEG]`` once per entry of ``target_ids``, in order. For multi-turn ``conversation``
  examples the slots of the ``history`` turns come first (in turn order), then those of
  ``user`` / ``assistant``; every other task has an empty history.
* GCG answers wrap phrases as ``<p> phrase </p> [SEG]``; the ROC answer is just the label; task text
  never carries an image placeholder (the processor adds the image).

Evaluation: for the seven benchmark tasks, ``build_<task>(sample, eval=True)[k]`` is the example of
``list(iter_queries(sample, task))[k]`` (:mod:`fclm.eval.queries`), built by
:func:`build_eval_example`; teacher-forced answers are the fixed templates (``Sure, [SEG].``).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Iterable

from ..eval.queries import Query, iter_queries
from . import prompts as P
from .schema import Example, FCLMDataError, RegionObject, Sample, Turn

TASK_NAMES = ("res", "res_multi", "reasonseg", "muse", "dlres", "dlres_multi", "roc", "roc_multi", "dlc", "region_caption", "gcg", "region_seg", "conversation")

NO_TARGET_ANSWER = "There is no such object in the image."  # ours: a grounding query with no target


# ----------------------------------------------------------------------------------- helpers

def _choice(rng, seq):
    if rng is None:
        return seq[0]
    if hasattr(rng, "integers"):  # numpy Generator
        return seq[int(rng.integers(len(seq)))]
    return seq[rng.randrange(len(seq))]  # random.Random


def _shuffled(rng, seq: list) -> list:
    """``seq`` in a random order drawn from ``rng`` (unchanged when ``rng`` is None)."""
    if rng is None:
        return list(seq)
    order = rng.permutation(len(seq)) if hasattr(rng, "permutation") else rng.sample(range(len(seq)), len(seq))
    return [seq[int(k)] for k in order]


def _random(rng) -> float:
    return 0.0 if rng is None else float(rng.random())


def _seg_answer(n: int, rng, eval: bool) -> str:
    """Template answer holding ``n`` [SEG] tokens."""
    if n == 0:
        return NO_TARGET_ANSWER
    if n == 1:
        return "Sure, [SEG]." if eval else _choice(rng, P.ANSWER_LIST)
    segs = P.seg_list(n)
    return f"Sure, {segs}." if eval else P.fill(_choice(rng, P.MUSE_ANSWERS), segs=segs)


def _text_answer(answer: str | None, n: int) -> str | None:
    """A source text answer with its ``{seg}`` placeholders as [SEG], if it has exactly ``n``."""
    if not answer or answer.count("{seg}") != n or n == 0:
        return None
    return answer.replace("{seg}", P.SEG)


def _merged_object(sample: Sample, ids: list[int]) -> RegionObject:
    """One object whose mask is the union of ``sample.objects[ids]`` (a GCG phrase with several masks)."""
    from pycocotools import mask as mask_utils

    from .masks import _norm_rle, box_to_mask, encode_mask

    rles = []
    for i in ids:
        ob = sample.objects[i]
        if ob.mask is not None:
            rles.append(_norm_rle(ob.mask))
        elif ob.box is not None:
            rles.append(_norm_rle(encode_mask(box_to_mask(ob.box, sample.height, sample.width))))
        else:
            raise FCLMDataError(f"sample {sample.id}: object {i} of a GCG phrase has neither mask nor box")
    rle = mask_utils.merge(rles, intersect=False)
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    boxes = [sample.objects[i].box for i in ids if sample.objects[i].box is not None]
    box = ([min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
           if len(boxes) == len(ids) else None)
    return RegionObject(mask={"size": [int(x) for x in rle["size"]], "counts": counts}, box=box,
                        category=sample.objects[ids[0]].category, extra={"merged_from": list(ids)})


def gcg_answer(sample: Sample) -> tuple[str, list[int], Sample]:
    """GCG answer text (phrases wrapped as ``<p> phrase </p> [SEG]``), its target ids, and the sample
    the ids index.

    Phrases are taken in caption order; a phrase overlapping an earlier one, or lying outside the
    caption, is left unwrapped. A phrase grounded to several objects gets ONE ``[SEG]`` whose target is
    the union of their masks (GLaMM's convention): that merged object is appended to a shallow copy of
    the sample, which is returned (the original sample is returned when no merge was needed).
    """
    cap = sample.caption or ""
    phrases = sorted(sample.phrases, key=lambda p: (p.span[0], -p.span[1]))
    out, targets, pos = [], [], 0
    extra_objs: list[RegionObject] = []
    n = len(sample.objects)
    for ph in phrases:
        s, e = int(ph.span[0]), int(ph.span[1])
        ids = [int(i) for i in ph.object_ids if 0 <= int(i) < n]
        if not (pos <= s < e <= len(cap)) or not ids:
            continue
        if len(ids) == 1:
            tid = ids[0]
        else:
            extra_objs.append(_merged_object(sample, ids))
            tid = n + len(extra_objs) - 1
        out.append(cap[pos:s])
        out.append(f"<p> {cap[s:e]} </p> {P.SEG}")
        targets.append(tid)
        pos = e
    out.append(cap[pos:])
    if extra_objs:
        sample = replace(sample, objects=list(sample.objects) + extra_objs)
    return "".join(out), targets, sample


def check_example(ex: Example) -> None:
    """Raise :class:`FCLMDataError` unless the slot conventions of the module docstring hold."""
    users = [t.text for t in ex.history if t.role == "user"] + [ex.user]
    assistants = [t.text for t in ex.history if t.role == "assistant"] + [ex.assistant]
    n_reg = sum(u.count(P.REGION) for u in users)
    n_seg = sum(a.count(P.SEG) for a in assistants)
    if n_reg != len(ex.region_ids):
        raise FCLMDataError(f"{ex.task} example of {ex.sample.id}: {n_reg} <region> slots, {len(ex.region_ids)} region ids")
    if n_seg != len(ex.target_ids):
        raise FCLMDataError(f"{ex.task} example of {ex.sample.id}: {n_seg} [SEG], {len(ex.target_ids)} target ids")
    n_obj = len(ex.sample.objects)
    for i in list(ex.region_ids) + list(ex.target_ids):
        if not 0 <= i < n_obj:
            raise FCLMDataError(f"{ex.task} example of {ex.sample.id}: object index {i} out of range ({n_obj} objects)")


# ----------------------------------------------------------------------------------- evaluation

def build_eval_example(query: Query) -> Example:
    """The evaluation example of a :class:`~fclm.eval.queries.Query` (fixed template, teacher-forced answer)."""
    s, task = query.sample, query.task
    q_t, a_t = P.EVAL_TEMPLATES[task]
    targets = list(query.target_ids)
    if task == "res":
        return Example(task, s, P.fill(q_t, expr=query.text or ""), _seg_answer(len(targets), None, True),
                       target_ids=targets)
    if task == "dlres":
        return Example(task, s, P.fill(q_t, caption=P.strip_period(query.text or "")),
                       _seg_answer(len(targets), None, True), target_ids=targets)
    if task in ("reasonseg", "muse"):
        return Example(task, s, P.fill(q_t, question=(query.text or "").strip()),
                       _seg_answer(len(targets), None, True), target_ids=targets)
    if task == "roc":
        return Example(task, s, q_t, query.label or "", region_ids=list(query.region_ids))
    if task == "dlc":
        i = query.region_ids[0]
        return Example(task, s, q_t, s.objects[i].caption or "", region_ids=[i])
    if task == "gcg":
        if s.caption and s.phrases:
            ans, tids, s2 = gcg_answer(s)
        else:
            ans, tids, s2 = s.caption or "", [], s
        return Example(task, s2, q_t, ans, target_ids=tids)
    raise ValueError(f"no evaluation example for task {task!r}")


def _eval_list(sample: Sample, task: str) -> list[Example]:
    return [build_eval_example(q) for q in iter_queries(sample, task)]


# ----------------------------------------------------------------------------------- builders

def build_res(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Referring expression segmentation: one example per object (a random expression of it)."""
    if eval:
        return _eval_list(sample, "res")
    out = []
    for i, ob in enumerate(sample.objects):
        if not ob.expressions:
            continue
        expr = _choice(rng, ob.expressions).strip()
        out.append(Example("res", sample, P.fill(_choice(rng, P.RES_QUESTIONS), expr=expr),
                           _seg_answer(1, rng, False), target_ids=[i]))
    return out


def build_reasonseg(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Reasoning segmentation: one example from a random non-``multi`` question (eval: questions[0])."""
    if eval:
        return _eval_list(sample, "reasonseg")
    qs = [q for q in sample.questions if q.kind != "multi"]
    if not qs:
        return []
    q = _choice(rng, qs)
    if q.kind == "short":
        user = P.fill(_choice(rng, P.RES_QUESTIONS), expr=q.text.strip())
    else:
        user = P.fill(_choice(rng, P.REASONSEG_QUESTIONS), question=q.text.strip())
    return [Example("reasonseg", sample, user, _seg_answer(len(q.target_ids), rng, False),
                    target_ids=list(q.target_ids))]


def build_muse(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Multi-target reasoning segmentation: one example per ``multi`` question (or one with a text answer)."""
    if eval:
        return _eval_list(sample, "muse")
    out = []
    for q in sample.questions:
        if q.kind != "multi" and q.answer is None:
            continue
        n = len(q.target_ids)
        ans = _text_answer(q.answer, n) or _seg_answer(n, rng, False)
        out.append(Example("muse", sample, P.fill(_choice(rng, P.MUSE_QUESTIONS), question=q.text.strip()), ans,
                           target_ids=list(q.target_ids)))
    return out


def _dlres_example(sample: Sample, i: int, rng, pair_key: str | None = None) -> Example:
    cap = P.strip_period(sample.objects[i].caption or "")
    return Example("dlres", sample, P.fill(_choice(rng, P.DLRES_QUESTIONS), caption=cap),
                   _choice(rng, P.DLRES_ANSWERS), target_ids=[i], pair_key=pair_key)


def _dlc_example(sample: Sample, i: int, rng, pair_key: str | None = None) -> Example:
    return Example("dlc", sample, _choice(rng, P.DLC_QUESTIONS), (sample.objects[i].caption or "").strip(),
                   region_ids=[i], pair_key=pair_key)


def chain_turns(examples: list[Example], task: str, rng=None, max_turns: int = 3) -> list[Example]:
    """Up to ``max_turns`` single-turn examples about one image as one multi-turn conversation.

    LISA trains on several queries per image; one conversation shares the image tokens and gives
    one `[SEG]` loss per turn for little more than one example's cost. Slots keep turn order.
    """
    picked = _shuffled(rng, examples)[:max_turns]
    if not picked:
        return []
    history = [Turn(role, text) for ex in picked[:-1] for role, text in (("user", ex.user), ("assistant", ex.assistant))]
    last = picked[-1]
    return [Example(task, last.sample, last.user, last.assistant, history=history,
                    region_ids=[i for ex in picked for i in ex.region_ids],
                    target_ids=[i for ex in picked for i in ex.target_ids])]


def build_res_multi(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Several RES queries of one image in one conversation (training only; eval = :func:`build_res`)."""
    return build_res(sample, rng, eval) if eval else chain_turns(build_res(sample, rng), "res_multi", rng)


def build_dlres_multi(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Several DL-RES queries of one image in one conversation (training only; eval = :func:`build_dlres`)."""
    return build_dlres(sample, rng, eval) if eval else chain_turns(build_dlres(sample, rng), "dlres_multi", rng)


def build_dlres(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Detailed-localized RES (Table 12 prompts): one example per object with a caption."""
    if eval:
        return _eval_list(sample, "dlres")
    return [_dlres_example(sample, i, rng) for i, ob in enumerate(sample.objects) if ob.caption]


def build_dlc(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Detailed localized captioning (Table 12 prompts): one example per object with a caption.

    Evaluation yields every object (DLC-Bench asks for every region), its caption as reference.
    """
    if eval:
        return _eval_list(sample, "dlc")
    return [_dlc_example(sample, i, rng) for i, ob in enumerate(sample.objects) if ob.caption]


def build_region_caption(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Short region captions (Visual Genome region descriptions): region in, a referring phrase out."""
    q = P.REGION_CAPTION_QUESTIONS[0] if eval else None
    return [Example("region_caption", sample, q or _choice(rng, P.REGION_CAPTION_QUESTIONS),
                    (ob.expressions[0] if eval else _choice(rng, ob.expressions)).strip(), region_ids=[i])
            for i, ob in enumerate(sample.objects) if ob.expressions]


def build_roc_multi(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """ROC for every labelled region of the image in one example (more supervision per sequence)."""
    ids = [i for i, ob in enumerate(sample.objects) if ob.category]
    if len(ids) < 2:
        return build_roc(sample, rng, eval)
    if not eval:
        ids = _shuffled(rng, ids)
    regions = ", ".join([P.REGION] * (len(ids) - 1)) + " and " + P.REGION
    q = P.ROC_MULTI_QUESTIONS[0] if eval or rng is None else _choice(rng, P.ROC_MULTI_QUESTIONS)
    answer = ", ".join(sample.objects[i].category.strip() for i in ids)
    return [Example("roc_multi", sample, q.format(regions=regions), answer, region_ids=ids)]


def build_roc(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Referring object classification: one example per object with a category; the answer is the label."""
    if eval:
        return _eval_list(sample, "roc")
    return [Example("roc", sample, _choice(rng, P.ROC_QUESTIONS), ob.category.strip(), region_ids=[i])
            for i, ob in enumerate(sample.objects) if ob.category]


def build_gcg(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """Grounded conversation generation: the image caption with ``<p> phrase </p> [SEG]`` per phrase.

    A phrase grounded to several objects targets their union (see :func:`gcg_answer`); the example's
    ``sample`` is then a copy holding that merged object at the end of ``objects``.
    """
    if eval:
        return _eval_list(sample, "gcg")
    if not sample.caption or not sample.phrases:
        return []
    ans, tids, s2 = gcg_answer(sample)
    return [Example("gcg", s2, _choice(rng, P.GCG_QUESTIONS), ans, target_ids=tids)]


def _center(sample: Sample, i: int) -> tuple[float, float] | None:
    ob = sample.objects[i]
    c = ob.extra.get("center")
    if c is not None:
        return float(c[0]), float(c[1])
    if ob.box is not None:
        return (ob.box[0] + ob.box[2]) / 2, (ob.box[1] + ob.box[3]) / 2
    if ob.mask is not None:
        from .masks import decode_rle, mask_to_box

        b = mask_to_box(decode_rle(ob.mask))
        return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return None


_SAME_ATTRS = ("colour", "shape", "pattern", "size")


def _region_seg_candidates(sample: Sample, i: int) -> list[tuple[str, tuple[str, ...], dict, list[int]]]:
    """(kind, templates, format kwargs, targets) options for region ``i``, in evaluation preference order."""
    objs = sample.objects
    out = []
    me = objs[i].attributes
    for attr in _SAME_ATTRS:
        v = me.get(attr)
        if v is None:
            continue
        others = [j for j, o in enumerate(objs) if j != i and o.attributes.get(attr) == v]
        if others:
            tmpl = P.REGION_SEG_SAME_ONE if len(others) == 1 else P.REGION_SEG_SAME_MANY
            out.append((f"same_{attr}", tmpl, {"attr": attr}, others))
    ci = _center(sample, i)
    if ci is not None and len(objs) > 1:
        d = sorted((math.dist(ci, c), j) for j in range(len(objs)) if j != i and (c := _center(sample, j)) is not None)
        if d and (len(d) == 1 or d[0][0] < 0.8 * d[1][0]):
            out.append(("nearest", P.REGION_SEG_NEAREST, {}, [d[0][1]]))
    out.append(("identity", P.REGION_SEG_IDENTITY, {}, [i]))
    return out


def build_region_seg(sample: Sample, rng=None, eval: bool = False, identity_prob: float = 0.25) -> list[Example]:
    """Region in, mask out: "Please segment the object that has the same colour as <region>." → targets.

    One example per object with a mask or box. Relations from known attributes (synthetic data) and
    from geometry (the nearest object, when clearly nearest); "Please segment <region>." otherwise.
    Training picks the identity form with probability ``identity_prob`` (always when nothing else
    applies); evaluation takes the first option of: same colour, shape, pattern, size, nearest, identity.
    """
    out = []
    for i, ob in enumerate(sample.objects):
        if ob.mask is None and ob.box is None:
            continue
        cands = _region_seg_candidates(sample, i)
        if eval:
            kind, tmpls, kw, targets = cands[0]
            user = P.fill(tmpls[0], **kw)
        else:
            rel = [c for c in cands if c[0] != "identity"]
            kind, tmpls, kw, targets = (_choice(rng, rel) if rel and _random(rng) >= identity_prob else cands[-1])
            user = P.fill(_choice(rng, tmpls), **kw)
        out.append(Example("region_seg", sample, user, _seg_answer(len(targets), rng, eval),
                           region_ids=[i], target_ids=list(targets)))
    return out


def build_conversation(sample: Sample, rng=None, eval: bool = False) -> list[Example]:
    """A region dialogue (Osprey conversations): last assistant turn is the answer, earlier turns the history.

    ``region_ids`` are ``sample.dialogue_region_ids`` for the slots of the kept turns (history first).
    """
    turns = list(sample.dialogue)
    while turns and turns[-1].role != "assistant":
        turns.pop()
    if len(turns) < 2 or turns[-2].role != "user":
        return []
    n_slots = sum(t.text.count(P.REGION) for t in turns if t.role == "user")
    if n_slots > len(sample.dialogue_region_ids):
        raise FCLMDataError(f"sample {sample.id}: dialogue has {n_slots} <region> slots but "
                            f"{len(sample.dialogue_region_ids)} region ids")
    if any(P.SEG in t.text for t in turns):
        raise FCLMDataError(f"sample {sample.id}: dialogue answers with [SEG] carry no target ids")
    return [Example("conversation", sample, turns[-2].text, turns[-1].text,
                    region_ids=list(sample.dialogue_region_ids[:n_slots]), history=turns[:-2])]


BUILDERS: dict[str, Callable[..., list[Example]]] = {
    "res": build_res,
    "reasonseg": build_reasonseg,
    "muse": build_muse,
    "dlres": build_dlres,
    "res_multi": build_res_multi,
    "dlres_multi": build_dlres_multi,
    "roc": build_roc,
    "roc_multi": build_roc_multi,
    "dlc": build_dlc,
    "region_caption": build_region_caption,
    "gcg": build_gcg,
    "region_seg": build_region_seg,
    "conversation": build_conversation,
}


def build_examples(sample: Sample, tasks: Iterable[str], rng=None, eval: bool = False) -> list[Example]:
    """Examples of ``sample`` for every task named in ``tasks`` (in that order)."""
    out: list[Example] = []
    for t in tasks:
        if t not in BUILDERS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASK_NAMES}")
        out.extend(BUILDERS[t](sample, rng, eval=eval))
    return out


def pair_stage2(sample: Sample, rng=None, max_regions: int | None = None) -> list[Example]:
    """Stage-2 latent-consistency pairs: per captioned region one DLC and one DL-RES example.

    Returned as ``[dlc_0, dlres_0, dlc_1, dlres_1, ...]``; both examples of a region share
    ``pair_key = "{sample.id}#o{i}"`` (the DLC's ``<pos>`` is the pseudo-label of the DL-RES
    ``[SEG]``). ``max_regions`` keeps a random subset of the regions.
    """
    idx = [i for i, ob in enumerate(sample.objects) if ob.caption and (ob.mask is not None or ob.box is not None)]
    if max_regions is not None and len(idx) > max_regions:
        if rng is None:
            idx = idx[:max_regions]
        else:
            keep = set()
            pool = list(idx)
            while len(keep) < max_regions:
                keep.add(pool.pop(int(_random(rng) * len(pool)) if pool else 0))
            idx = [i for i in idx if i in keep]
    out = []
    for i in idx:
        key = f"{sample.id}#o{i}"
        out.append(_dlc_example(sample, i, rng, key))
        out.append(_dlres_example(sample, i, rng, key))
    return out
