"""`fclm eval --task all` end to end on a tiny model and synthetic test scenes."""
import json
import os

from fclm.cli import main


def test_eval_all_synthetic_writes_paper_table(tiny, tmp_path, capsys):
    _, _, folder = tiny
    out = tmp_path / "eval"
    assert main(["eval", "--task", "all", "--model", folder, "--data", "synthetic", "--limit", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    table = (out / "table.md").read_text()
    for heading in ("(RES)", "(ReasonSeg)", "(MUSE)", "(DL-RES)", "(ROC)", "(DLC", "(GCG)"):
        assert heading in table
    results = json.loads((out / "results.json").read_text())
    assert [r["task"] for r in results] == ["res", "reasonseg", "muse", "dlres", "roc", "dlc", "gcg"]
    res = results[0]
    assert 0.0 <= res["metrics"]["gIoU"] <= 100.0 and res["counts"]["queries"] > 0
    assert set(results[5]["metrics"]) == {"attribute_recall", "hallucination_rate"}
    assert "accuracy" in results[4]["metrics"]
    # predictions were written incrementally, one line per query
    lines = (out / "res" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == res["counts"]["queries"]
    assert "synthetic test" in capsys.readouterr().out


def test_eval_resumes_from_existing_predictions(tiny, tmp_path):
    from fclm.data.synthetic import generate_scenes
    from fclm.eval.runner import predict
    from fclm.infer.pipeline import FCLMPipeline

    _, _, folder = tiny
    pipe = FCLMPipeline.from_pretrained(folder, device="cpu")
    scenes = generate_scenes(2, "test", seed=0)
    path = str(tmp_path / "p.jsonl")
    first = predict(pipe, scenes, "roc", path, progress=False)
    with open(path, "a") as f:
        f.write('{"id": "broken')  # a line cut by a crash
    again = predict(pipe, scenes, "roc", path, progress=False)
    assert first > 0 and again == 0  # nothing redone
    lines = open(path).read().splitlines()
    assert len(lines) == first and all(json.loads(x)["id"] for x in lines)  # the cut line is gone
    assert os.path.getsize(path) > 0
