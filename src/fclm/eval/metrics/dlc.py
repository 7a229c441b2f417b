"""DLC-Bench scoring (Describe Anything protocol).

Source: DAM — Lian et al., "Describe Anything: Detailed Localized Image and Video Captioning"
(2025), ``evaluation/eval_model_outputs.py`` in NVlabs/describe-anything (Apache-2.0). The judge
prompt text, the recognition question and the reply parsing below follow that file so that scores
are comparable; the code is our own.

For each benchmark region (key = DLC-Bench ``ann_id``) a judge LLM (reference:
Llama-3.1-8B-Instruct, temperature 0, ``max_tokens`` 300) answers multiple-choice questions about the
model's description:

1. a *recognition* question first — "Is it likely that the object in the description is a {class}
   or an object of a similar type?" (Yes → correct, No → incorrect). If incorrect, every score of
   the region is capped at 0 (``min(0, s)``);
2. the region's ``qa.json`` questions, each choice carrying its score: *positive* questions +1
   (correct detail), +0.5 (part mentioned, detail not), 0 (not mentioned), −1 (wrong detail);
   *negative* questions +1 (not mentioned), −1 (mentioned: hallucination), 0 (parent part absent).

Region Pos = mean of its positive scores, region Neg = mean of its negative scores (regions without
negatives are skipped for Neg). **Pos** = mean over regions of region Pos, **Neg** likewise,
**Avg** = (Pos + Neg) / 2, all ×100.

Deviations (documented in ``docs/evaluation.md``):

* A reply that names no choice scores 0 and is counted (as DAM); an empty reply, or a letter
  outside the choices, is treated the same way (DAM crashes on both).
* An unparseable reply to the *recognition* question is counted and treated as "not recognised"
  (DAM raises an error and stops).

The recognition question's article and plural test use the ``inflect`` package, as DAM does;
inflect 6.0.5 – 7.5 reproduce the wording of all 100 questions in DAM's cached evaluation
(``dam_3b_v1_eval.json``), 7.6 words "wine glass" differently, so ``fclm[eval]`` pins
``inflect<7.6`` and another version is refused (``FCLM_ALLOW_ANY_INFLECT=1`` overrides).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

PROMPT_EVAL = """Answer the multiple-choice question based on the text description of an object in an image. You need to follow these rules:
1. Do not output any reasoning. Do not perform correction. Please output exactly one answer from the choices for each question. Do not repeat the question.
2. There is no need for exact matching. Please choose the closest option based on the description.

The description is:
{pred_caption}

From the description above, please answer the following question with one of the choices:
{question_text_str}
"""

CHOICE_LABELS = "abcde"
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 300


# ---------------------------------------------------------------------------------------------
# recognition question
# ---------------------------------------------------------------------------------------------
INFLECT_TESTED = ((6, 0, 5), (7, 6))  # [lowest, first excluded) versions matching DAM's prompts
_ENGINE = None


def _inflect_engine():
    """One ``inflect.engine()``; a clear error if inflect is missing or words questions otherwise."""
    global _ENGINE
    if _ENGINE is not None:
        return _ENGINE
    from ...data.schema import FCLMDataError

    try:
        import inflect
    except ImportError as e:
        raise FCLMDataError("DLC-Bench questions are worded with the 'inflect' package as DAM's "
                            "eval_model_outputs.py does: pip install 'fclm[eval]'") from e
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("inflect")
    except PackageNotFoundError:  # pragma: no cover - vendored copy
        v = "0"
    parts = tuple(int(x) for x in re.findall(r"\d+", v)[:3])
    lo, hi = INFLECT_TESTED
    if not (lo <= parts < hi) and not os.environ.get("FCLM_ALLOW_ANY_INFLECT"):
        raise FCLMDataError(f"inflect {v} is installed; DAM's DLC-Bench question wording is reproduced by "
                            f"inflect >= 6.0.5, < 7.6 (pip install 'inflect<7.6'; "
                            "FCLM_ALLOW_ANY_INFLECT=1 to use it anyway)")
    _ENGINE = inflect.engine()
    return _ENGINE


def is_plural(name: str) -> bool:
    """Whether a class name is plural (DAM: ``inflect.singular_noun(name) is not False``, "bus" singular)."""
    if name == "bus":  # DAM's special case
        return False
    return _inflect_engine().singular_noun(name) is not False


def with_article(name: str) -> str:
    """``"a dog"`` / ``"an apple"`` (DAM uses ``inflect.a``)."""
    return _inflect_engine().a(name)


def recognition_question(class_name: str) -> dict:
    """DAM's recognition question for a region of class ``class_name``."""
    if is_plural(class_name):
        q = (f"Is it likely that the objects in the description are {class_name} or objects of a similar type? "
             "Again, It does not have to be an exact match.")
    else:
        q = (f"Is it likely that the object in the description is {with_article(class_name)} or an object of a "
             "similar type? Again, It does not have to be an exact match.")
    return {"question": q, "choices": [["Yes", "correct"], ["No", "incorrect"]], "type": "recognition"}


def region_questions(class_name: str, qa: Sequence[Mapping]) -> list[dict]:
    """The recognition question followed by the region's ``qa.json`` questions."""
    return [recognition_question(class_name), *[dict(q) for q in qa]]


def format_prompt(caption: str, question: Mapping) -> str:
    """The judge prompt for one question about one description (DAM's ``prompt_eval``)."""
    s = f"{question['question']}\n"
    for i, (choice, _score) in enumerate(question["choices"]):
        s += f"{'ABCDE'[i]}. {choice}\n"
    return PROMPT_EVAL.format(pred_caption=caption, question_text_str=s.strip())


# ---------------------------------------------------------------------------------------------
# reply parsing (DAM's parse_pred, guarded)
# ---------------------------------------------------------------------------------------------
def parse_choice(reply: str | None, choices: Sequence[str]) -> int | None:
    """Index of the choice a judge reply names, or None if it names none.

    Same rules and order as DAM's ``parse_pred``: exact text / ``"b. text"`` / bare letter; a single
    choice contained in the reply; ``"b."`` prefix; several contained → the one occurring last
    (longest on a tie); reply contained in choices → the longest such choice; a lone letter (or a
    letter then a newline). Empty replies and letters beyond the choices give None.
    """
    pred = (reply or "").strip().lower()
    if not pred:
        return None
    n = len(choices)

    def ok(i: int) -> int | None:
        return i if 0 <= i < n else None

    substr: list[tuple[int, int, int]] = []
    for index, choice in enumerate(choices):
        c = str(choice).strip().lower()
        prefix = CHOICE_LABELS[index] if index < len(CHOICE_LABELS) else None
        if c == pred or (prefix and (pred == f"{prefix}. {c}" or pred == prefix)):
            return index
        if c and c in pred:
            substr.append((index, pred.index(c), len(c)))
    if len(substr) == 1:
        return substr[0][0]
    if len(pred) >= 2 and pred[0] in CHOICE_LABELS and pred[1] == ".":
        return ok(CHOICE_LABELS.index(pred[0]))
    if substr:
        last = max(s[1] for s in substr)
        return max((s for s in substr if s[1] == last), key=lambda s: s[2])[0]
    lengths = [(i, len(str(c).strip())) for i, c in enumerate(choices) if pred in str(c).strip().lower()]
    if lengths:
        return max(lengths, key=lambda x: x[1])[0]
    if pred[0] in CHOICE_LABELS and (len(pred) == 1 or pred[1] == "\n"):
        return ok(CHOICE_LABELS.index(pred[0]))
    return None


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
@dataclass
class RegionScore:
    key: str
    pos: float | None  # mean positive score (None: region has no positive question)
    neg: float | None  # mean negative score (None: region has no negative question)
    recognized: bool
    n_unparseable: int = 0
    details: list[dict] = field(default_factory=list)


def score_region(key: str, questions: Sequence[Mapping], replies: Sequence[str | None]) -> RegionScore:
    """Score one region from the judge's replies to ``questions`` (recognition question first)."""
    if len(replies) != len(questions):
        raise ValueError(f"region {key}: {len(replies)} judge replies for {len(questions)} questions")
    pos: list[float] = []
    neg: list[float] = []
    recognized: bool | None = None
    bad = 0
    details = []
    for q, reply in zip(questions, replies):
        choices = [c for c, _ in q["choices"]]
        idx = parse_choice(reply, choices)
        if idx is None:
            bad += 1
        qtype = q.get("type")
        if qtype == "recognition":
            recognized = idx is not None and q["choices"][idx][1] == "correct"
            value: Any = q["choices"][idx][1] if idx is not None else None
        elif qtype in ("positive", "negative"):
            if recognized is None:
                raise ValueError(f"region {key}: a {qtype} question comes before the recognition question")
            value = float(q["choices"][idx][1]) if idx is not None else 0.0
            if not recognized:
                value = min(0.0, value)
            (pos if qtype == "positive" else neg).append(value)
        else:
            raise ValueError(f"region {key}: invalid question type {qtype!r} (expected positive or negative)")
        details.append({"question": q["question"], "type": qtype, "reply": reply, "choice": idx, "score": value})
    return RegionScore(
        key=key,
        pos=sum(pos) / len(pos) if pos else None,
        neg=sum(neg) / len(neg) if neg else None,
        recognized=bool(recognized),
        n_unparseable=bad,
        details=details,
    )


def aggregate(regions: Sequence[RegionScore], scale: float = 100.0) -> dict:
    """Pos, Neg and Avg over regions (×``scale``) and the counts behind them."""
    pos = [r.pos for r in regions if r.pos is not None]
    neg = [r.neg for r in regions if r.neg is not None]
    p = sum(pos) / len(pos) if pos else 0.0
    n = sum(neg) / len(neg) if neg else 0.0
    return {
        "metrics": {"Pos": p * scale, "Neg": n * scale, "Avg": (p + n) / 2 * scale},
        "counts": {
            "regions": len(regions),
            "regions_with_negatives": len(neg),
            "not_recognized": sum(1 for r in regions if not r.recognized),
            "unparseable_replies": sum(r.n_unparseable for r in regions),
        },
    }


@dataclass
class DLCBenchGT:
    """DLC-Bench ground truth: ``qa`` {ann_id: [question…]} and ``class_names`` {ann_id: name}."""

    qa: dict[str, list]
    class_names: dict[str, str]
    source: str = "<memory>"


def load_dlc_bench(root: str) -> DLCBenchGT:
    """Read ``qa.json`` and ``class_names.json`` from a DLC-Bench directory (or beside a ``qa.json``)."""
    from ...data.schema import FCLMDataError

    base = root if os.path.isdir(root) else os.path.dirname(root)
    if not os.path.exists(os.path.join(base, "qa.json")) and os.path.exists(os.path.join(base, "annotations", "qa.json")):
        base = os.path.join(base, "annotations")  # the release folder: annotations/ beside images/
    paths = {name: os.path.join(base, f"{name}.json") for name in ("qa", "class_names")}
    data = {}
    for name, path in paths.items():
        if not os.path.exists(path):
            raise FCLMDataError(f"DLC-Bench file not found: {path} (expected qa.json and class_names.json in {base})")
        try:
            with open(path, encoding="utf-8") as f:
                data[name] = json.load(f)
        except json.JSONDecodeError as e:
            raise FCLMDataError(f"{path}: invalid JSON: {e}") from e
        if not isinstance(data[name], dict):
            raise FCLMDataError(f"{path}: expected a JSON object keyed by ann_id")
    qa = {str(k): v for k, v in data["qa"].items()}
    names = {str(k): v for k, v in data["class_names"].items()}
    missing = [k for k in qa if k not in names]
    if missing:
        raise FCLMDataError(f"{paths['class_names']}: no class name for ann_id(s) {missing[:5]}")
    for k, qs in qa.items():
        for i, q in enumerate(qs):
            if not isinstance(q, dict) or "question" not in q or "choices" not in q or q.get("type") not in ("positive", "negative"):
                raise FCLMDataError(f"{paths['qa']}: ann_id {k} question {i}: expected "
                                    "{question, choices: [[text, score]...], type: positive|negative}")
    return DLCBenchGT(qa=qa, class_names=names, source=base)


def _call_judge(judge, prompts: list[str]) -> list[str | None]:
    if hasattr(judge, "complete_many"):
        return list(judge.complete_many(prompts))
    return list(judge(prompts))


def evaluate_dlc(captions: Mapping[str, str], gt: DLCBenchGT, judge: Callable | Any, *,
                 default_prediction: str | None = None, details: bool = False, scale: float = 100.0) -> dict:
    """Score descriptions ``{ann_id: caption}`` on DLC-Bench with ``judge``.

    ``judge`` is a :class:`fclm.eval.judge.JudgeClient` (anything with ``complete_many(prompts)``)
    or a callable mapping a list of prompts to a list of replies. A region without a caption, or
    whose caption starts with ``"Error:"`` (DAM's convention), uses ``default_prediction``; without
    one it is an error, as in DAM.
    """
    from ...data.schema import FCLMDataError

    keys = list(gt.qa)
    missing: list[str] = []
    texts: dict[str, str] = {}
    for k in keys:
        c = captions.get(k)
        if c is None or str(c).startswith("Error:"):
            missing.append(k)
            if default_prediction is None:
                continue
            c = default_prediction
        texts[k] = str(c)
    if missing and default_prediction is None:
        raise FCLMDataError(f"DLC-Bench: no usable description for {len(missing)} region(s), e.g. ann_id "
                            f"{missing[:5]}; pass a default prediction to score them anyway")
    questions = {k: region_questions(gt.class_names[k], gt.qa[k]) for k in keys}
    prompts: list[str] = []
    for k in keys:
        prompts += [format_prompt(texts[k], q) for q in questions[k]]
    replies = _call_judge(judge, prompts)
    if len(replies) != len(prompts):
        raise RuntimeError(f"judge returned {len(replies)} replies for {len(prompts)} prompts")
    regions = []
    pos = 0
    for k in keys:
        n = len(questions[k])
        regions.append(score_region(k, questions[k], replies[pos:pos + n]))
        pos += n
    out = aggregate(regions, scale)
    out["counts"]["missing_predictions"] = len(missing)
    out["counts"]["judge_prompts"] = len(prompts)
    if details:
        out["details"] = {r.key: {"pos": r.pos, "neg": r.neg, "recognized": r.recognized,
                                  "questions": r.details} for r in regions}
    return out
