"""benchmarks/gpu_smoke.py on the CPU: ``--tiny`` (the full script, tiny model) and ``--dry-run``."""
import importlib.util
import json
import math
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_smoke.py")


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_runs_every_loss_and_writes_json(smoke, tmp_path, capsys):
    out = tmp_path / "smoke.json"
    assert smoke.main(["--tiny", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary_lines = [ln for ln in printed.splitlines() if ln.startswith("SUMMARY ")]
    assert len(summary_lines) == 1
    data = json.loads(out.read_text())
    assert json.loads(summary_lines[0][len("SUMMARY "):]) == data

    for key in ("mode", "model", "device", "dtype", "grad_ckpt", "batch_size", "image_size", "seq_len", "tokens",
                "params_total", "trainable_params", "trainable_by_group", "losses", "ok", "times_s",
                "peak_mem_gib", "caption", "grounding", "env"):
        assert key in data, key
    assert data["mode"] == "tiny" and data["device"] == "cpu" and data["dtype"] == "float32"
    assert data["ok"] is True and data["batch_size"] == 2 and data["image_size"] == 1024

    losses = data["losses"]
    for key in ("loss", "loss_ce", "loss_seg", "loss_dice", "loss_bce", "loss_self", "loss_latent", "grad_norm"):
        assert losses[key] is not None and math.isfinite(losses[key]), (key, losses[key])
    assert losses["loss_self"] > 0 and losses["loss_latent"] >= 0

    for phase in ("build", "train_step", "caption", "ground_teacher_forced", "ground_generate"):
        assert data["times_s"][phase] > 0, phase
    assert data["peak_mem_gib"]["train"] > 0
    # frozen groups of stage 1 stay frozen; the others train
    g = data["trainable_by_group"]
    assert g["vision_encoder"] == 0 and g["sam_image_encoder"] == 0
    assert all(g[k] > 0 for k in ("llm", "region_extractor", "seg_projector", "mask_decoder"))
    assert data["caption"]["finish_reason"] == "length" and data["caption"]["max_new_tokens"] == 32
    assert data["grounding"]["teacher_forced_masks"] == 1
    assert data["grounding"]["teacher_forced_mask_shape"] == [1024, 1024]
    assert data["grounding"]["generate_finish_reason"] == "length"


def test_dry_run_estimates_3b_on_meta(smoke, tmp_path):
    out = tmp_path / "dry.json"
    assert smoke.main(["--dry-run", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["mode"] == "dry-run" and data["model"] == "fclm-3b"
    assert 4.2e9 < data["params_total"] < 4.6e9
    assert data["image_tokens_per_image"] == 1296  # 1024 px → 1008 × 1008 → 36 × 36 merged tokens
    assert 2.9e9 < data["trainable_params"] < 3.3e9
    assert 20 < data["static_memory_gib"]["total_excl_activations"] < 35


def test_full_size_refuses_cpu(smoke):
    with pytest.raises(SystemExit, match="needs a GPU"):
        smoke.main(["--device", "cpu"])
