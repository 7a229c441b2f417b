"""`fclm quickstart`: argument checks, the help text, and the `--ablate` mode (aggregation, plot,
parallel runs and resume) on tiny step counts."""
import json
import math
import os
import re
import statistics

import pytest

from fclm.cli import main
from fclm.train.ablation import VARIANTS, aggregate, markdown_table, plot_ablation


def _rows():
    vals = {(True, True): [50.0, 54.0, 58.0], (True, False): [40.0, 41.0, 45.0],
            (False, True): [30.0, 30.0, 30.0], (False, False): [20.0, 26.0, 29.0]}
    return [{"L_self": s, "L_latent": l, "seed": k, "res/gIoU": v, "roc/accuracy": 100 - v}
            for (s, l), vs in vals.items() for k, v in enumerate(vs)], vals


def test_aggregate_mean_and_sample_std():
    rows, vals = _rows()
    agg = aggregate(rows)
    assert [(a["L_self"], a["L_latent"]) for a in agg] == list(VARIANTS)
    for a in agg:
        v = vals[(a["L_self"], a["L_latent"])]
        assert a["seeds"] == [0, 1, 2]
        assert a["res/gIoU"][0] == pytest.approx(statistics.mean(v))
        assert a["res/gIoU"][1] == pytest.approx(statistics.stdev(v))
        assert a["roc/accuracy"][0] == pytest.approx(100 - statistics.mean(v))
    table = markdown_table(agg)
    assert "| ✓ | ✓ | 3 | 54.0 ± 4.0 | 46.0 ± 4.0 |" in table
    assert "| – | ✓ | 3 | 30.0 ± 0.0 |" in table


def test_one_seed_has_no_interval(tmp_path):
    rows = [{"L_self": True, "L_latent": True, "seed": 3, "res/gIoU": 12.5}]
    agg = aggregate(rows)
    assert agg[0]["res/gIoU"][0] == 12.5 and math.isnan(agg[0]["res/gIoU"][1])
    assert "| ✓ | ✓ | 1 | 12.5 |" in markdown_table(agg)
    png = plot_ablation(rows, agg, str(tmp_path / "a.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,msg", [
    (["--stage1-steps", "0"], "--stage1-steps must be at least 1, got 0"),
    (["--stage2-steps", "-1"], "--stage2-steps must be at least 0"),
    (["--test-scenes", "0"], "--test-scenes must be at least 1"),
    (["--ablate", "--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--ablate", "--seeds", "1,1"], "each once"),
    (["--ablate", "--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, msg):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fclm quickstart: error: ") and msg in err and err.count("\n") == 1
    assert not out.exists()  # nothing ran


def test_train_stages_rejects_zero_stage1_steps(tmp_path):
    from fclm.train.quickstart import train_stages

    with pytest.raises(ValueError, match="stage1_steps must be at least 1"):
        train_stages(str(tmp_path), stage1_steps=0)


def test_help_states_the_measured_time(capsys):
    with pytest.raises(SystemExit):
        main(["quickstart", "--help"])
    text = capsys.readouterr().out
    assert "docs/benchmarks.md" in text and re.search(r"\d+(\.\d+)? min", text)
    assert "~15 min" not in text  # the old figure, which no run supported


def test_ablate_flags_reach_run_ablation(tmp_path, monkeypatch, capsys):
    from fclm.train import ablation

    seen = {}
    monkeypatch.setattr(ablation, "run_ablation", lambda out, *a, **k: seen.update(out=out, args=a, **k) or "TABLE")
    assert main(["quickstart", "--ablate", "--out", str(tmp_path), "--stage1-steps", "5", "--seeds", "3,4",
                 "--jobs", "1", "--no-progress"]) == 0
    assert seen["out"] == os.path.join(str(tmp_path), "ablation") and seen["args"] == (5, None, 60)
    assert seen["seeds"] == [3, 4] and seen["jobs"] == 1 and "TABLE" in capsys.readouterr().out


def test_ablate_runs_every_variant_in_parallel_and_resumes(tmp_path):
    """Real tiny runs (1 stage-1 step, no stage 2, RES on one scene), two processes at a time."""
    from fclm.train.ablation import run_ablation

    abl = tmp_path / "ablation"
    kw = dict(stage1_steps=1, stage2_steps=0, test_scenes=1, seeds=[0], jobs=2, progress=False, tasks=("res",))
    table = run_ablation(str(abl), **kw)
    data = json.loads((abl / "ablation.json").read_text())
    assert [(r["L_self"], r["L_latent"], r["seed"]) for r in data["rows"]] == [(s, l, 0) for s, l in VARIANTS]
    for r in data["rows"]:
        assert 0.0 <= r["res/gIoU"] <= 100.0
    # each variant trained with its own loss switches
    cfg = json.loads((abl / "self0-latent1-seed0" / "stage1" / "train_config.json").read_text())
    assert cfg["model"]["overrides"]["self_recon_weight"] == 0.0 and cfg["model"]["overrides"]["latent_weight"] == 1.0
    assert (abl / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert table in (abl / "ablation.md").read_text() and table.count("\n") == 5
    assert not (abl / "self1-latent1-seed0" / "model").exists()  # weights are not kept per run
    # a second call finds every row and trains nothing
    stamps = {p: os.path.getmtime(abl / p / "row.json") for p in os.listdir(abl) if (abl / p / "row.json").exists()}
    assert len(stamps) == 4
    assert run_ablation(str(abl), **kw) == table
    assert {p: os.path.getmtime(abl / p / "row.json") for p in stamps} == stamps
