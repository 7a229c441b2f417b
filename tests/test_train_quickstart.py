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


def test_scene_size_reaches_both_stages_and_the_test_scenes(tmp_path):
    """A scene size set for stage 1 is stage 2's too, and the test scenes are drawn at it."""
    from fclm.data.masks import decode_rle
    from fclm.model.builders import load_fclm
    from fclm.train.quickstart import evaluate_all, scene_size, train_stages

    extra1 = ["data.synthetic.image_size=96", "model.tiny.sam_image_size=128", "model.tiny.image_long_side=84",
              "per_device_batch=2"]
    model_dir = train_stages(str(tmp_path), stage1_steps=1, stage2_steps=1, progress=False, extra1=extra1,
                             extra2=["per_device_batch=2"])
    for stage in ("stage1", "stage2"):
        cfg = json.loads((tmp_path / stage / "train_config.json").read_text())
        assert cfg["data"]["synthetic"]["image_size"] == 96, stage
    _, proc = load_fclm(model_dir)
    assert (proc.image_long_side, proc.sam_image_size) == (84, 128)
    assert scene_size(extra1) == 96 and scene_size() == 256  # the packaged config's own
    evaluate_all(model_dir, str(tmp_path), test_scenes=1, tasks=("res",), progress=False, image_size=96)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "res" / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(decode_rle(m).shape == (96, 96) for r in rows for m in r["masks"] or [])
    assert any(r["masks"] for r in rows)


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


def test_ablation_variants_keep_the_recipe_weights():
    """The full variant is the default quickstart (the recipe's own L_self weight, not 1.0); a dropped
    term gets weight 0 in the loaded stage configs."""
    from fclm.train.ablation import variant_overrides
    from fclm.train.config import load_train_config
    from fclm.train.quickstart import packaged_config

    s1, s2 = (load_train_config(packaged_config(f"quickstart-stage{i}.yaml")).model.overrides for i in (1, 2))
    for use_self, use_latent in VARIANTS:
        extra1, extra2 = variant_overrides(use_self, use_latent)
        o1 = load_train_config(packaged_config("quickstart-stage1.yaml"), extra1).model.overrides
        o2 = load_train_config(packaged_config("quickstart-stage2.yaml"), extra2).model.overrides
        assert o1["self_recon_weight"] == (s1["self_recon_weight"] if use_self else 0.0)
        assert o1["latent_weight"] == (s1["latent_weight"] if use_latent else 0.0)
        assert o2["latent_weight"] == (s2["latent_weight"] if use_latent else 0.0)
    assert variant_overrides(True, True) == ([], [])
    assert s1["self_recon_weight"] > 0 and s1["latent_weight"] > 0 and s2["latent_weight"] > 0


def _finished_quickstart(run, seed, s1_steps=None, tasks=("res", "dlres", "roc", "dlc"), test_scenes=60):
    """The files `fclm quickstart --seed SEED` leaves, configs from the packaged recipe."""
    from fclm.train.config import load_train_config, to_dict
    from fclm.train.quickstart import packaged_config

    for stage, st_seed, steps in (("stage1", seed, s1_steps), ("stage2", seed + 1, None)):
        over = [f"seed={st_seed}", f"output_dir={run}/{stage}"] + ([f"steps={steps}"] if steps else [])
        d = to_dict(load_train_config(packaged_config(f"quickstart-{stage}.yaml"), over))
        (run / stage).mkdir(parents=True)
        (run / stage / "train_config.json").write_text(json.dumps({**d, "strategy": "ddp", "num_processes": 1},
                                                                  default=str))
    metrics = {t: {"metrics": {"gIoU": 50.0 + seed, "cIoU": 40.0 + seed}} for t in tasks}
    (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "timings_s": {"total": 123.4},
                                                  "test_scenes": test_scenes}))
    return run


def test_reused_quickstart_run_is_checked_against_the_recipe(tmp_path):
    from fclm.train.ablation import reused_row

    run = _finished_quickstart(tmp_path / "qs1", seed=1)
    row = reused_row(str(run))
    assert (row["L_self"], row["L_latent"], row["seed"]) == (True, True, 1)
    assert row["res/gIoU"] == 51.0 and row["dlc/cIoU"] == 41.0 and row["source"] == str(run)
    with pytest.raises(ValueError, match=r"stage1/train_config.json: steps differs"):
        reused_row(str(run), stage1_steps=7)  # the ablation asks for another length
    with pytest.raises(ValueError, match="test_scenes is 60, the ablation uses 30"):
        reused_row(str(run), test_scenes=30)
    cfg = json.loads((run / "stage2" / "train_config.json").read_text())
    cfg["model"]["overrides"]["latent_weight"] = 0.0  # an ablated run, not the full variant
    (run / "stage2" / "train_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"stage2/train_config.json: model differs"):
        reused_row(str(run))
    with pytest.raises(ValueError, match=r"metrics.json: missing"):
        reused_row(str(tmp_path / "nowhere"))
    short = _finished_quickstart(tmp_path / "qs2", seed=2, tasks=("res", "dlres", "roc"))
    with pytest.raises(ValueError, match="no dlc metrics"):
        reused_row(str(short))
    cfg = json.loads((short / "stage1" / "train_config.json").read_text())
    (short / "stage1" / "train_config.json").write_text(json.dumps({**cfg, "seed": None}))
    with pytest.raises(ValueError, match=r"stage1/train_config.json: no integer seed"):
        reused_row(str(short))


def test_ablation_trains_only_what_is_not_reused(tmp_path, monkeypatch, capsys):
    from fclm.train import ablation

    trained = []

    def fake_run(out, use_self, use_latent, seed, **kw):
        trained.append((use_self, use_latent, seed))
        return {"L_self": use_self, "L_latent": use_latent, "seed": seed, "res/gIoU": 10.0 * seed}

    monkeypatch.setattr(ablation, "run_variant", fake_run)
    runs = [_finished_quickstart(tmp_path / f"qs{s}", seed=s, tasks=("res",)) for s in (0, 1)]
    abl = tmp_path / "abl"
    ablation.run_ablation(str(abl), seeds=[0, 1], jobs=1, progress=False, tasks=("res",), reuse=[str(r) for r in runs])
    assert sorted(trained) == sorted((s, l, k) for k in (0, 1) for s, l in VARIANTS if (s, l) != (True, True))
    data = json.loads((abl / "ablation.json").read_text())
    full = [r for r in data["rows"] if r["L_self"] and r["L_latent"]]
    assert [(r["seed"], r["res/gIoU"], r["source"]) for r in full] == [(0, 50.0, str(runs[0])), (1, 51.0, str(runs[1]))]
    assert "finished quickstart run" in (abl / "ablation.md").read_text()
    # the CLI: a reused folder that is not a finished run is one line, exit 2, before any training
    trained.clear()
    assert main(["quickstart", "--ablate", "--out", str(tmp_path / "o"), "--seeds", "0", "--jobs", "1",
                 "--reuse-full", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fclm quickstart: error: ") and "metrics.json: missing" in err and err.count("\n") == 1
    assert trained == [] and not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="seed 1 is not among the ablation's seeds"):
        ablation.run_ablation(str(tmp_path / "o2"), seeds=[0], jobs=1, progress=False, tasks=("res",),
                              reuse=[str(runs[1])])
