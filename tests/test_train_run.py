"""Training in-process on a tiny model and synthetic scenes: stage 1, then stage 2 from the stage-1
model. Every loss term of the stage is logged, the loss curves PNG is written, checkpoints are
kept as configured, and stage 2 trains only the LLM."""
import json
import os

import pytest
import torch
import yaml

S1_STEPS, S2_STEPS = 4, 3


def run_stage(tmp_path, name, cfg):
    from fclm.train.config import load_train_config
    from fclm.train.trainer import Trainer

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tc = load_train_config(str(path))
    final = Trainer(tc, progress=False).run()
    return tc.output_dir, final


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_run")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s1_dir, s1_final = run_stage(tmp, "stage1", {
            "stage": "stage1",
            "output_dir": str(tmp / "stage1"),
            "model": {"init": "tiny", "overrides": {"self_recon_weight": 1.0, "latent_weight": 0.0}},
            "trainable": ["vision_encoder", "llm", "region_extractor", "seg_projector", "mask_decoder",
                          "sam_image_encoder"],
            "data": {"synthetic": {"num_scenes": 50, "seed": 0, "image_size": 128},
                     # region-in, mask-out has a `<pos>` region (L_self) and a mask (L_seg)
                     "sources": [{"name": "synthetic", "tasks": ["region_seg"], "weight": 3},
                                 {"name": "synthetic", "tasks": ["res", "dlres", "roc", "dlc", "gcg"],
                                  "weight": 1}]},
            "optim": {"lr": 1.0e-3, "warmup_steps": 1},
            "steps": S1_STEPS, "per_device_batch": 4, "save_every": 1, "keep_checkpoints": 2,
            "log_every": 1, "seed": 0,
        })
        s2_dir, s2_final = run_stage(tmp, "stage2", {
            "stage": "stage2",
            "output_dir": str(tmp / "stage2"),
            "model": {"init": "path", "path": s1_final,
                      "overrides": {"self_recon_weight": 0.0, "latent_weight": 1.0}},
            "data": {"synthetic": {"num_scenes": 50, "seed": 0, "image_size": 128}, "pair_stage2": True,
                     "sources": [{"name": "synthetic", "tasks": ["pair_stage2"]}]},
            "optim": {"lr": 1.0e-3, "warmup_steps": 1, "schedule": "constant"},
            "steps": S2_STEPS, "per_device_batch": 2, "save_every": 100, "log_every": 1, "seed": 1,
        })
    finally:
        torch.set_num_threads(prev)
    return {"stage1": (s1_dir, s1_final), "stage2": (s2_dir, s2_final)}


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def check_loss_sum(rec):
    parts = [rec[k] for k in ("loss_ce", "loss_seg", "loss_self", "loss_latent") if k in rec]
    assert rec["loss"] == pytest.approx(sum(parts), rel=1e-5), rec
    if "loss_seg" in rec:  # λ_dice = 1, λ_bce = 2
        assert rec["loss_seg"] == pytest.approx(rec["loss_dice"] + 2 * rec["loss_bce"], rel=1e-5), rec


def test_stage1_logs_every_term(runs):
    out, _ = runs["stage1"]
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, S1_STEPS + 1))
    stage_terms = {"loss", "loss_ce", "loss_seg", "loss_dice", "loss_bce", "loss_self"}
    assert any(stage_terms <= set(r) for r in log), log  # which terms a step has depends on its draws
    for r in log:
        assert {"loss", "loss_ce", "lr", "time"} <= set(r), r
        assert "loss_latent" not in r  # latent weight 0 in stage 1
        assert all(v == v and abs(v) != float("inf") for k, v in r.items() if k.startswith("loss")), r
        check_loss_sum(r)
    assert log[0]["lr"] > 0


def test_stage2_logs_latent_loss(runs):
    out, _ = runs["stage2"]
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, S2_STEPS + 1))
    for r in log:
        assert {"loss", "loss_ce", "loss_seg", "loss_latent"} <= set(r), r
        assert "loss_self" not in r  # self-reconstruction weight 0 in stage 2
        assert 0.0 <= r["loss_latent"] <= 2.0  # 1 − cos
        check_loss_sum(r)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_loss_curves_png(runs, stage):
    out, _ = runs[stage]
    png = os.path.join(out, "loss_curves.png")
    assert os.path.getsize(png) > 1000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_outputs_and_checkpoints(runs):
    out, final = runs["stage1"]
    assert final == os.path.join(out, "final")
    for f in ("config.json", "model.safetensors", "fclm_processor.json"):
        assert os.path.exists(os.path.join(final, f)), f
    with open(os.path.join(out, "train_config.json")) as f:
        assert json.load(f)["steps"] == S1_STEPS
    ck = os.path.join(out, "checkpoints")
    # keep_checkpoints=2 with save_every=1: only the last two; `latest` names the newest
    assert sorted(d for d in os.listdir(ck) if not d.startswith(".")) == [
        "latest", f"step-{S1_STEPS - 1:06d}", f"step-{S1_STEPS:06d}"]
    with open(os.path.join(ck, "latest")) as f:
        assert f.read().strip() == f"step-{S1_STEPS:06d}"
    last = os.path.join(ck, f"step-{S1_STEPS:06d}")
    for f in ("state/optimizer.bin", "state/random_states_0.pkl", "scheduler.pt", "trainer_state.json",
              "model/model.safetensors"):
        assert os.path.exists(os.path.join(last, f)), f
    with open(os.path.join(last, "trainer_state.json")) as f:
        state = json.load(f)
    assert state["step"] == S1_STEPS and state["strategy"] == "ddp" and state["num_processes"] == 1
    w_final, w_last = weights(final), weights(os.path.join(last, "model"))
    assert all(torch.equal(w_final[k], w_last[k]) for k in w_final)


def test_stage2_trains_only_the_llm(runs):
    w1, w2 = weights(runs["stage1"][1]), weights(runs["stage2"][1])
    assert sorted(w1) == sorted(w2)
    changed = {k for k in w1 if not torch.equal(w1[k], w2[k])}
    assert changed and all(k.startswith(("model.language_model.", "lm_head.")) for k in changed), \
        sorted(changed)[:5]


def test_final_model_loads(runs):
    from fclm.model.builders import load_fclm

    model, proc = load_fclm(runs["stage2"][1])
    w = weights(runs["stage2"][1])
    sd = model.state_dict()
    assert all(torch.equal(sd[k], w[k]) for k in w)
