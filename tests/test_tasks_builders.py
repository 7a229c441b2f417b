"""Task builders: slot conventions, evaluation order, Table 12 prompts, stage-2 pairs."""
from __future__ import annotations

import random

import numpy as np
import pytest

from fclm.data import prompts as P
from fclm.data.masks import encode_mask
from fclm.data.schema import Example, FCLMDataError, ImageRef, Phrase, RegionObject, Sample, Turn
from fclm.data.synthetic import SceneConfig, generate_scenes
from fclm.data.tasks import (
    BUILDERS, TASK_NAMES, build_eval_example, build_examples, build_gcg, build_region_seg, build_conversation,
    check_example, gcg_answer, pair_stage2,
)
from fclm.eval.queries import TASKS as EVAL_TASKS, iter_queries


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(40, "train", seed=5) + generate_scenes(10, "test", seed=5, config=SceneConfig(min_objects=1, max_objects=2))


def test_table12_counts_and_text():
    assert len(P.DLC_QUESTIONS) == 30
    assert len(P.DLRES_QUESTIONS_TABLE12) == 2 and len(P.DLRES_QUESTIONS) == 2
    assert len(P.DLRES_ANSWERS) == 5
    assert all(q.count("<region>") == 1 for q in P.DLC_QUESTIONS)
    assert P.DLC_QUESTIONS[0] == "Can you provide me with a detailed description of the region in the picture marked by <region>?"
    assert P.DLC_QUESTIONS[29] == "Examine the region <region> closely and share its details."
    assert P.DLRES_QUESTIONS_TABLE12[1] == "<images>\n<Detailed Localized Caption>. Please output segmentation mask."
    assert P.DLRES_QUESTIONS == ("{caption}. Please respond with segmentation mask.", "{caption}. Please output segmentation mask.")
    assert P.DLRES_ANSWERS == ("It is [SEG].", "Sure, [SEG].", "Sure, it is [SEG].", "Sure, the segmentation result is [SEG].", "[SEG].")
    assert len(P.GCG_QUESTIONS) == 6 and len(P.LISA_SHORT_QUESTION_LIST) == 4
    assert set(EVAL_TASKS) | {"region_seg", "region_caption"} == set(P.EVAL_TEMPLATES)
    for t in list(P.RES_QUESTIONS) + list(P.REASONSEG_QUESTIONS) + list(P.GCG_QUESTIONS):
        assert "<image" not in t


def test_fill_and_seg_list():
    assert P.fill("Can you segment the {expr} in this image?", expr="the red circle") == "Can you segment the red circle in this image?"
    assert P.seg_list(1) == "[SEG]" and P.seg_list(2) == "[SEG] and [SEG]" and P.seg_list(3) == "[SEG], [SEG] and [SEG]"
    assert P.strip_period("A red circle. ") == "A red circle"


@pytest.mark.parametrize("eval_", [False, True])
def test_slot_counts_every_builder(scenes, eval_):
    rng = np.random.default_rng(0)
    seen = set()
    for s in scenes:
        for ex in build_examples(s, TASK_NAMES, rng, eval=eval_):
            check_example(ex)
            seen.add(ex.task)
            users = [t.text for t in ex.history if t.role == "user"] + [ex.user]
            answers = [t.text for t in ex.history if t.role == "assistant"] + [ex.assistant]
            assert sum(u.count("<region>") for u in users) == len(ex.region_ids)
            assert sum(a.count("[SEG]") for a in answers) == len(ex.target_ids)
            assert "<image" not in ex.user and "<|image" not in ex.user
            if ex.task == "roc":
                assert ex.assistant == s.objects[ex.region_ids[0]].category
            if ex.task in ("res_multi", "dlres_multi"):
                assert len(set(ex.target_ids)) == len(ex.target_ids) == len(users) <= 3
            elif ex.task != "conversation":
                assert ex.history == []
    multi = {"res_multi", "dlres_multi"}
    assert seen == (set(TASK_NAMES) - multi if eval_ else set(TASK_NAMES))  # eval: single-turn queries


def test_eval_matches_queries(scenes):
    for s in scenes:
        for task in EVAL_TASKS:
            qs = list(iter_queries(s, task))
            exs = BUILDERS[task](s, None, eval=True)
            assert len(qs) == len(exs), task
            for q, ex in zip(qs, exs):
                assert ex.task == task
                if task == "gcg":
                    assert sorted(ex.target_ids) == list(range(len(s.objects)))
                else:
                    assert ex.target_ids == q.target_ids and ex.region_ids == q.region_ids
                assert build_eval_example(q).user == ex.user
                if task == "res":
                    assert ex.user == f"What is {q.text} in this image? Please output segmentation mask."
                    assert ex.assistant == "Sure, [SEG]."
                if task == "roc":
                    assert ex.assistant == q.label
        # eval output does not depend on any rng
        a = build_examples(s, TASK_NAMES, np.random.default_rng(1), eval=True)
        b = build_examples(s, TASK_NAMES, np.random.default_rng(2), eval=True)
        assert [(e.user, e.assistant) for e in a] == [(e.user, e.assistant) for e in b]


def test_training_is_seeded_and_varied(scenes):
    s = scenes[0]
    a = build_examples(s, TASK_NAMES, np.random.default_rng(7))
    b = build_examples(s, TASK_NAMES, np.random.default_rng(7))
    assert [(e.user, e.assistant) for e in a] == [(e.user, e.assistant) for e in b]
    users = {e.user for sc in scenes[:20] for e in BUILDERS["dlc"](sc, np.random.default_rng(len(sc.objects) * 31 + sc.extra["index"]))}
    assert len(users) > 10  # Table 12 questions are sampled
    r = build_examples(s, TASK_NAMES, random.Random(0))  # random.Random works too
    for ex in r:
        check_example(ex)


def test_res_and_dlres_text(scenes):
    rng = np.random.default_rng(0)
    for s in scenes[:10]:
        for ex in BUILDERS["res"](s, rng):
            (t,) = ex.target_ids
            assert any(e in ex.user for e in s.objects[t].expressions)
            assert "the the" not in ex.user
        for ex in BUILDERS["dlres"](s, rng):
            (t,) = ex.target_ids
            cap = s.objects[t].caption
            assert ex.user.startswith(cap.rstrip(".") + ". Please ")
            assert ex.assistant in P.DLRES_ANSWERS
        for ex in BUILDERS["dlc"](s, rng):
            assert ex.user in P.DLC_QUESTIONS and ex.assistant == s.objects[ex.region_ids[0]].caption


def test_muse_answer_and_reasonseg(scenes):
    rng = np.random.default_rng(0)
    for s in scenes:
        mus = BUILDERS["muse"](s, rng)
        multi = [q for q in s.questions if q.kind == "multi"]
        assert len(mus) == len(multi)
        for ex, q in zip(mus, multi):
            assert ex.assistant == q.answer.replace("{seg}", "[SEG]")
            assert ex.user.startswith(q.text)
        (rs,) = BUILDERS["reasonseg"](s, rng)
        assert rs.target_ids == s.questions[0].target_ids


def test_gcg_answer(scenes):
    s = scenes[0]
    ans, tids, s2 = gcg_answer(s)
    assert s2 is s
    assert ans.count("<p> ") == ans.count(" </p> [SEG]") == len(s.phrases) == len(tids)
    plain = ans.replace("<p> ", "").replace(" </p> [SEG]", "")
    assert plain == s.caption
    for p, t in zip(sorted(s.phrases, key=lambda p: p.span[0]), tids):
        assert f"<p> {p.text} </p> [SEG]" in ans and p.object_ids == [t]


def test_gcg_multi_object_phrase_and_bad_spans(scenes):
    from fclm.data.masks import decode_rle

    s = scenes[0]
    cap = "two shapes and one more shape here"
    multi = Sample("x", "flickr", s.image, s.height, s.width, s.objects, caption=cap,
                   phrases=[Phrase("one more shape", (15, 29), [2]), Phrase("two shapes", (0, 10), [0, 1]),
                            Phrase("shapes", (4, 10), [1]), Phrase("beyond", (30, 99), [0])])
    (ex,) = build_gcg(multi, None)
    check_example(ex)
    assert ex.assistant == "<p> two shapes </p> [SEG] and <p> one more shape </p> [SEG] here"
    n = len(s.objects)
    assert ex.target_ids == [n, 2] and len(ex.sample.objects) == n + 1 and len(multi.objects) == n
    union = decode_rle(s.objects[0].mask) | decode_rle(s.objects[1].mask)
    assert np.array_equal(decode_rle(ex.sample.objects[n].mask), union)
    assert ex.sample.objects[n].extra["merged_from"] == [0, 1]
    (ev,) = BUILDERS["gcg"](multi, None, eval=True)
    assert ev.target_ids == [n, 2] and ev.sample.objects[n].extra["merged_from"] == [0, 1]


def test_region_seg_semantics(scenes):
    rng = np.random.default_rng(0)
    n_rel = 0
    for s in scenes:
        for ex in build_region_seg(s, rng) + build_region_seg(s, None, eval=True):
            (r,) = ex.region_ids
            if "same" in ex.user:
                n_rel += 1
                attr = next(a for a in ("colour", "shape", "pattern", "size") if f"same {a} as" in ex.user)
                v = s.objects[r].attributes[attr]
                assert ex.target_ids == [j for j, o in enumerate(s.objects) if j != r and o.attributes[attr] == v]
            elif "close" in ex.user or "nearest" in ex.user:
                assert ex.target_ids != [r] and len(ex.target_ids) == 1
            else:
                assert ex.target_ids == [r]
    assert n_rel > 20


def test_region_seg_generic_sample():
    """Real-data samples carry no attributes: identity, or the clearly nearest object."""
    m = np.zeros((40, 100), bool)
    objs = []
    for x0 in (0, 20, 80):
        mm = m.copy()
        mm[10:20, x0:x0 + 10] = True
        objs.append(RegionObject(mask=encode_mask(mm), box=[x0, 10, x0 + 10, 20], category="box"))
    s = Sample("g", "real", ImageRef(array=np.zeros((40, 100, 3), np.uint8)), 40, 100, objs)
    exs = build_region_seg(s, None, eval=True)
    assert [e.target_ids for e in exs] == [[1], [0], [1]]
    assert exs[0].user == "Please segment the object closest to <region>."


def test_conversation_history():
    img = ImageRef(array=np.zeros((8, 8, 3), np.uint8))
    obs = [RegionObject(box=[0, 0, 4, 4]), RegionObject(box=[4, 4, 8, 8])]
    turns = [Turn("user", "There are <region> and <region>. What is the first?"), Turn("assistant", "A cat."),
             Turn("user", "And the second?"), Turn("assistant", "A dog."), Turn("user", "Anything else?")]
    s = Sample("c", "osprey_conversation", img, 8, 8, obs, dialogue=turns, dialogue_region_ids=[1, 0])
    (ex,) = build_conversation(s, None)
    assert ex.user == "And the second?" and ex.assistant == "A dog."
    assert [t.text for t in ex.history] == [turns[0].text, turns[1].text]
    assert ex.region_ids == [1, 0]
    check_example(ex)
    s.dialogue_region_ids = [1]
    with pytest.raises(FCLMDataError):
        build_conversation(s, None)
    s.dialogue = [Turn("user", "hi")]
    assert build_conversation(s, None) == []


def test_pair_stage2(scenes):
    rng = np.random.default_rng(0)
    for s in scenes[:20]:
        exs = pair_stage2(s, rng)
        assert len(exs) == 2 * len(s.objects)
        for dlc, dlres in zip(exs[::2], exs[1::2]):
            assert (dlc.task, dlres.task) == ("dlc", "dlres")
            assert dlc.pair_key == dlres.pair_key is not None
            assert dlc.region_ids == dlres.target_ids and len(dlc.region_ids) == 1
            cap = s.objects[dlc.region_ids[0]].caption
            assert dlc.assistant == cap and cap.rstrip(".") in dlres.user
            assert dlc.user in P.DLC_QUESTIONS and dlres.assistant in P.DLRES_ANSWERS
            check_example(dlc)
            check_example(dlres)
        assert len({e.pair_key for e in exs}) == len(s.objects)
        sub = pair_stage2(s, rng, max_regions=2)
        assert len(sub) == 2 * min(2, len(s.objects))


def test_unknown_task():
    s = generate_scenes(1, "train", 0)[0]
    with pytest.raises(ValueError):
        build_examples(s, ["nope"], None)


def test_check_example_catches_mismatch():
    s = generate_scenes(1, "train", 0)[0]
    with pytest.raises(FCLMDataError):
        check_example(Example("res", s, "What is x?", "Sure, [SEG] [SEG].", target_ids=[0]))
    with pytest.raises(FCLMDataError):
        check_example(Example("roc", s, "What is <region>?", "circle", region_ids=[]))
