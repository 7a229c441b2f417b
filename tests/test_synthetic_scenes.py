"""The synthetic scene world: determinism, split disjointness, exact masks, unique references."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from fclm.data.masks import rle_area
from fclm.data.synthetic import (
    COLOURS, POSITION_PHRASE, RELATIONS, SceneConfig, generate_scene, generate_scenes, matching_objects,
    object_masks, parse_attributes,
)

N = 60


@pytest.fixture(scope="module")
def scenes():
    return generate_scenes(N, "train", seed=3)


def _hash(s):
    return hashlib.sha1(np.ascontiguousarray(s.image.array).tobytes()).hexdigest()


def test_determinism_same_seed_same_pixels_and_text():
    a = generate_scenes(8, "validation", seed=11)
    b = generate_scenes(8, "validation", seed=11)
    for x, y in zip(a, b):
        assert np.array_equal(x.image.array, y.image.array)
        assert [o.mask for o in x.objects] == [o.mask for o in y.objects]
        assert [o.caption for o in x.objects] == [o.caption for o in y.objects]
        assert x.caption == y.caption and x.questions == y.questions
    # a scene does not depend on how many scenes were generated before it
    assert np.array_equal(generate_scene(5, "validation", 11).image.array, a[5].image.array)
    assert np.array_equal(generate_scenes(3, "validation", 11, start=5)[0].image.array, a[5].image.array)
    # another seed gives other scenes
    c = generate_scenes(8, "validation", seed=12)
    assert not any(np.array_equal(x.image.array, y.image.array) for x, y in zip(a, c))


def test_splits_disjoint():
    hashes = {sp: {_hash(s) for s in generate_scenes(40, sp, seed=0)} for sp in ("train", "validation", "test")}
    assert all(len(h) == 40 for h in hashes.values())  # no repeats within a split either
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]
    ids = [s.id for sp in ("train", "test") for s in generate_scenes(3, sp, seed=0)]
    assert len(set(ids)) == len(ids)


def test_sample_schema(scenes):
    for s in scenes:
        assert s.source == "synthetic" and s.split == "train"
        assert s.image.array.shape == (256, 256, 3) and s.image.array.dtype == np.uint8
        assert s.height == s.width == 256
        assert 3 <= len(s.objects) <= 5
        im = s.image.open()
        assert im.size == (256, 256)
        for ob in s.objects:
            assert ob.category == ob.attributes["shape"]
            assert ob.attributes["colour"] in COLOURS
            assert ob.attributes["position"] in POSITION_PHRASE
            assert ob.expressions and ob.caption


def test_masks_exact(scenes):
    for s in scenes:
        masks = object_masks(s)
        assert masks.shape == (len(s.objects), 256, 256)
        assert masks.sum(0).max() <= 1, "visible masks must be disjoint"
        img = s.image.array
        for ob, m in zip(s.objects, masks):
            area = int(m.sum())
            assert area >= 30 and area == rle_area(ob.mask)
            ys, xs = np.nonzero(m)
            assert ob.box == [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            # every visible pixel carries the object's colour (or its dark pattern shade)
            col = np.asarray(COLOURS[ob.attributes["colour"]])
            dark = (col * 0.45).astype(np.uint8)
            px = img[m].astype(int)
            ok = np.all(px == col, axis=1) | np.all(px == dark, axis=1)
            assert ok.all()
            if ob.attributes["pattern"] == "solid":
                assert np.all(px == col)
            else:
                assert 0.05 < (~np.all(px == col, axis=1)).mean() < 0.8
            # position word agrees with the mask centroid
            cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
            row, col_ = min(2, int(cy * 3 / 256)), min(2, int(cx * 3 / 256))
            words = [["top left", "top", "top right"], ["left", "center", "right"],
                     ["bottom left", "bottom", "bottom right"]]
            assert ob.attributes["position"] == words[row][col_]
        # pixels outside every mask are background: no object colour there
        bg = img[~masks.any(0)].astype(int)
        for c in COLOURS.values():
            assert not np.any(np.all(bg == np.asarray(c), axis=1))


def test_attributes_distinct_and_lookalikes(scenes):
    n_look = 0
    for s in scenes:
        keys = [tuple(o.attributes[a] for a in ("shape", "colour", "size", "pattern")) for o in s.objects]
        assert len(set(keys)) == len(keys)
        for o in s.objects:
            if "lookalike_of" in o.extra:
                n_look += 1
                base = s.objects[o.extra["lookalike_of"]].attributes
                diff = [a for a in ("shape", "colour", "size", "pattern") if base[a] != o.attributes[a]]
                assert diff == [o.extra["lookalike_attribute"]]
    assert n_look > N // 2  # look-alike distractors are common


def test_expressions_identify_exactly_one_object(scenes):
    for s in scenes:
        for i, ob in enumerate(s.objects):
            assert len(set(ob.expressions)) == len(ob.expressions)
            for e in ob.expressions:
                named = parse_attributes(e)
                assert "shape" in named, e
                assert matching_objects(named, s.objects) == [i], (s.id, e)


def test_captions_identify_one_object_and_relation(scenes):
    for s in scenes:
        for i, ob in enumerate(s.objects):
            named = parse_attributes(ob.caption)
            assert set(named) == {"shape", "colour", "size", "pattern", "position"}, ob.caption
            assert {k: ob.attributes[k] for k in named} == named
            assert matching_objects(named, s.objects) == [i]
            rel = ob.attributes["relation"]
            assert rel in RELATIONS and f", {rel} " in ob.caption
            ref_text = ob.caption.split(f", {rel} ", 1)[1]
            j = ob.attributes["relation_to"]
            assert matching_objects(parse_attributes(ref_text, subject_only=False), s.objects) == [j]
            ci, cj = s.objects[i].extra["center"], s.objects[j].extra["center"]
            dx, dy = cj[0] - ci[0], cj[1] - ci[1]
            expect = (("to the left of" if dx > 0 else "to the right of") if abs(dx) >= abs(dy)
                      else ("above" if dy > 0 else "below"))
            assert rel == expect


def _resolve(expr, s):
    m = matching_objects(parse_attributes(expr, subject_only=False), s.objects)
    assert len(m) == 1, expr
    return m[0]


def test_questions_semantics(scenes):
    kinds = set()
    for s in scenes:
        assert [q.kind for q in s.questions] == ["reason", "multi"]
        rq, mq = s.questions
        assert len(rq.target_ids) == 1
        t = rq.target_ids[0]
        objs = s.objects
        cen = [o.extra["center"] for o in objs]
        if m := re.fullmatch(r"Which object has the same (\w+) as (.+)\?", rq.text):
            kinds.add("same")
            attr, r = m.group(1), _resolve(m.group(2), s)
            assert [j for j in range(len(objs)) if j != r and objs[j].attributes[attr] == objs[r].attributes[attr]] == [t]
        elif m := re.fullmatch(r"Which object is closest to the (\w+) edge of the image\?", rq.text):
            kinds.add("extreme")
            key = {"left": lambda j: cen[j][0], "right": lambda j: -cen[j][0],
                   "top": lambda j: cen[j][1], "bottom": lambda j: -cen[j][1]}[m.group(1)]
            assert min(range(len(objs)), key=key) == t
        else:
            kinds.add("riddle")
            assert sum(o.category == objs[t].category for o in objs) == 1
        assert len(mq.target_ids) >= 2 and len(set(mq.target_ids)) == len(mq.target_ids)
        assert mq.answer.count("{seg}") == len(mq.target_ids)
        xs = [cen[j][0] for j in mq.target_ids]
        assert xs == sorted(xs)
        if m := re.fullmatch(r"Can you find (.+) and (.+)\?", mq.text):
            assert [_resolve(m.group(1), s), _resolve(m.group(2), s)] == mq.target_ids
        elif m := re.fullmatch(r"Which objects are in the (\w+) half of the image\?", mq.text):
            side = m.group(1)
            k = 0 if side in ("left", "right") else 1
            inside = [j for j in range(len(objs)) if (cen[j][k] < 128) == (side in ("left", "top"))]
            assert sorted(inside) == sorted(mq.target_ids)
        else:
            named = parse_attributes(mq.text, subject_only=False)
            assert len(named) == 1
            assert sorted(matching_objects(named, objs)) == sorted(mq.target_ids)
    assert kinds == {"same", "extreme", "riddle"}


def test_gcg_phrase_spans(scenes):
    for s in scenes:
        assert len(s.phrases) == len(s.objects)
        assert sorted(p.object_ids[0] for p in s.phrases) == list(range(len(s.objects)))
        last = 0
        for p in s.phrases:
            a, b = p.span
            assert last <= a < b <= len(s.caption)
            assert s.caption[a:b] == p.text
            ob = s.objects[p.object_ids[0]]
            assert parse_attributes(p.text) == {k: ob.attributes[k] for k in ("shape", "colour", "size", "pattern")}
            last = b


def test_dialogue(scenes):
    for s in scenes:
        assert [t.role for t in s.dialogue] == ["user", "assistant", "user", "assistant"]
        assert sum(t.text.count("<region>") for t in s.dialogue) == len(s.dialogue_region_ids) == 1
        ob = s.objects[s.dialogue_region_ids[0]]
        assert ob.category in s.dialogue[1].text


@pytest.mark.parametrize("cfg", [
    SceneConfig(image_size=64, min_objects=2, max_objects=3),
    SceneConfig(image_size=128, shapes=("circle", "square", "triangle"), colours=("red", "blue"), sizes=("medium",),
                patterns=("solid",), min_objects=2, max_objects=4),
    SceneConfig(min_objects=1, max_objects=1, dialogue=False),
    SceneConfig(shapes=("circle",), patterns=("solid",), min_objects=3, max_objects=3, lookalike_prob=1.0),
])
def test_configurable(cfg):
    scenes = generate_scenes(15, "test", seed=1, config=cfg)
    for s in scenes:
        assert s.image.array.shape == (cfg.image_size, cfg.image_size, 3)
        assert cfg.min_objects <= len(s.objects) <= cfg.max_objects
        masks = object_masks(s)
        assert masks.sum(0).max() <= 1 and masks.sum((1, 2)).min() >= cfg.min_area
        for i, ob in enumerate(s.objects):
            assert ob.attributes["shape"] in cfg.shapes and ob.attributes["pattern"] in cfg.patterns
            for e in ob.expressions:
                assert matching_objects(parse_attributes(e), s.objects) == [i]
        assert len(s.questions[0].target_ids) == 1
        if len(s.objects) > 1:
            assert len(s.questions[1].target_ids) >= 2
        else:
            assert len(s.questions) == 1
        assert bool(s.dialogue) == cfg.dialogue


def test_config_validation():
    with pytest.raises(ValueError):
        SceneConfig(shapes=("hexagon",))
    with pytest.raises(ValueError):
        SceneConfig(shapes=("circle",), colours=("red",), sizes=("small",), patterns=("solid",), max_objects=2)
    with pytest.raises(ValueError):
        SceneConfig(min_objects=4, max_objects=3)
    assert generate_scenes(1, "train", 0, image_size=96)[0].width == 96


def test_many_scenes_distinct():
    """200 scenes (the quickstart draws thousands): distinct ids and images. Speed is measured in
    docs/benchmarks.md, never asserted (shared machines make wall-clock assertions flaky)."""
    scenes = generate_scenes(200, "train", seed=9)
    assert len({s.id for s in scenes}) == 200
    assert len({np.asarray(s.image.open()).tobytes() for s in scenes}) == 200


def test_preview(tmp_path):
    from PIL import Image

    from fclm.data.synthetic_preview import save_preview

    p = save_preview(str(tmp_path / "grid.png"), n=2, config=SceneConfig(image_size=96))
    im = Image.open(p)
    assert im.height >= 2 * 96 and im.width > 2 * 96
