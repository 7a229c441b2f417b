"""benchmarks/grounding_diagnosis.py: known answers for the RES report, and a run on a tiny model."""
import importlib.util
import json
import os

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "grounding_diagnosis.py")


def _module():
    spec = importlib.util.spec_from_file_location("grounding_diagnosis", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scenes(n=4):
    from fclm.data.synthetic import generate_scenes

    return generate_scenes(n, "test", seed=0)


def _report(mod, samples, preds):
    from fclm.data.synthetic import object_masks

    return mod.res_by_kind(samples, [object_masks(s) for s in samples], preds)


def _predictions(samples, pick):
    """RES predictions whose mask is ``pick(sample, target)`` (a list of object indices, unioned)."""
    from fclm.data.masks import decode_rle, encode_mask
    from fclm.eval.queries import iter_queries

    out = {}
    for s in samples:
        for q in iter_queries(s, "res"):
            ids = pick(s, q.target_ids[0])
            m = np.zeros((s.height, s.width), bool)
            for i in ids:
                m |= decode_rle(s.objects[i].mask).astype(bool)
            out[q.id] = {"id": q.id, "masks": [encode_mask(m)]}
    return out


def _exact_iou(mod, samples):
    """Mean IoU (%) per kind when every prediction is its target: I = U = the target's area A, and
    LISA's rule gives A / (A + 1e-5)."""
    from fclm.data.masks import decode_rle
    from fclm.eval.queries import iter_queries

    per: dict[str, list[float]] = {}
    for s in samples:
        for q in iter_queries(s, "res"):
            a = int(decode_rle(s.objects[q.target_ids[0]].mask).astype(bool).sum())
            per.setdefault(mod.expression_kind(q.text), []).append(100 * a / (a + 1e-5))
    return {k: sum(v) / len(v) for k, v in per.items()}


def test_expression_kinds():
    mod = _module()
    assert mod.expression_kind("the star in the top left") == "position"
    assert mod.expression_kind("the star") == "category"
    assert mod.expression_kind("the small red striped star") == "attributes"


def test_res_report_known_answers():
    mod = _module()
    samples = _scenes()
    n_queries = sum(len(o.expressions) for s in samples for o in s.objects)
    exact = _report(mod, samples, _predictions(samples, lambda s, t: [t]))
    assert sum(v["n"] for v in exact.values()) == n_queries
    expected = _exact_iou(mod, samples)
    for kind, v in exact.items():
        assert abs(v["IoU"] - expected[kind]) < 1e-9 and v["outcomes"] == {"target only": v["n"]} and v["multi"] == 0
    # every object at once: each prediction covers all of the scene's (3-5) objects
    union = _report(mod, samples, _predictions(samples, lambda s, t: range(len(s.objects))))
    for v in union.values():
        assert v["multi"] == v["n"] and v["IoU"] < 100.0 and v["outcomes"] == {"target and others": v["n"]}
    # a neighbour instead of the target: never on the target
    wrong = _report(mod, samples, _predictions(samples, lambda s, t: [(t + 1) % len(s.objects)]))
    for v in wrong.values():
        assert v["outcomes"] == {"others": v["n"]} and v["multi"] == 0
    # no prediction at all
    empty = _report(mod, samples, {})
    for v in empty.values():
        assert v["IoU"] == 0.0 and v["outcomes"] == {"none": v["n"]}


def test_runs_on_a_saved_tiny_model(tmp_path, capsys):
    from fclm.model.builders import build_tiny

    build_tiny(str(tmp_path / "m"), seed=0)
    samples = _scenes(2)
    preds = _predictions(samples, lambda s, t: [t])
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds.values()))
    report = _module().main([str(tmp_path / "m"), "--scenes", "2", "--res-predictions", str(path)])
    r = report["self_reconstruction"]
    assert r["n"] == sum(len(s.objects) for s in samples) and 0.0 <= r["IoU"] <= 100.0 and 0 <= r["multi"] <= r["n"]
    expected = _exact_iou(_module(), samples)
    assert all(abs(v["IoU"] - expected[k]) < 1e-9 for k, v in report["res"].items())
    assert "self-reconstruction" in capsys.readouterr().out
