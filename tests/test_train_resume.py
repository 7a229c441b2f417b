"""Killing `fclm train` (SIGKILL) and rerunning with `--resume` ends with the same weights as an
uninterrupted run (issue 3, "Done when"). Tiny random model, synthetic scenes, CPU subprocesses."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import write_tiny_train_config

STEPS, SAVE_EVERY = 24, 4


def write_config(path, out_dir, **extra):
    tasks = (("res", "dlres"), ("roc", "dlc"), ("reasonseg", "muse", "gcg", "region_seg"))
    opts = dict(steps=STEPS, save_every=SAVE_EVERY, keep_checkpoints=2, optim={"lr": 1.0e-3, "warmup_steps": 3,
                                                                             "schedule": "cosine"})
    opts.update(extra)
    return write_tiny_train_config(path, out_dir, tasks, **opts)


def train_cmd(config, *args):
    return [sys.executable, "-m", "fclm.cli", "train", "--config", config, "--no-progress", *args]


def sub_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ref_cfg = write_config(tmp_path / "ref.yaml", ref_dir)
    run_cfg = write_config(tmp_path / "run.yaml", run_dir)
    env = sub_env()
    ref_log = open(tmp_path / "ref.out", "w")
    ref = subprocess.Popen(train_cmd(ref_cfg), env=env, stdout=ref_log, stderr=subprocess.STDOUT)
    run_out = open(tmp_path / "run.out", "w")
    run = subprocess.Popen(train_cmd(run_cfg), env=env, stdout=run_out, stderr=subprocess.STDOUT)
    try:
        # kill two steps past the first checkpoint, so the log has a tail that resume must drop
        latest, log_file = run_dir / "checkpoints" / "latest", run_dir / "log.jsonl"
        deadline = time.time() + 240
        while run.poll() is None and time.time() < deadline and not (
                latest.exists() and log_file.exists() and log_file.read_text().count("\n") >= SAVE_EVERY + 2):
            time.sleep(0.02)
        assert latest.exists(), f"no checkpoint appeared: {(tmp_path / 'run.out').read_text()[-3000:]}"
        run.send_signal(signal.SIGKILL)
        rc = run.wait(60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    run_out.close()
    # the kill must land mid-run, or this test proves nothing
    assert rc == -signal.SIGKILL, f"run ended on its own (rc {rc}) before the kill"
    assert not (run_dir / "final").exists()
    ckpt_step = int(latest.read_text().strip().split("-")[1])
    assert SAVE_EVERY <= ckpt_step < STEPS
    killed_log = read_log(run_dir) if (run_dir / "log.jsonl").exists() else []
    assert len(killed_log) >= ckpt_step
    # a kill in the middle of a log write leaves a torn last line: resume must drop it too
    with open(run_dir / "log.jsonl", "a") as f:
        f.write('{"step": 999, "loss": 1.2')

    res = subprocess.run(train_cmd(run_cfg, "--resume", str(run_dir)), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resumed from" in res.stderr and f"step-{ckpt_step:06d}" in res.stderr
    assert ref.wait(300) == 0, (tmp_path / "ref.out").read_text()[-3000:]
    ref_log.close()

    # the log: exactly one line per step, the killed run's tail past the checkpoint dropped
    log = read_log(run_dir)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert log[:ckpt_step] == killed_log[:ckpt_step]
    ref_records = read_log(ref_dir)
    for a, b in zip(log, ref_records):
        for k in b:
            if k.startswith("loss") or k == "lr":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)

    # the weights: same as the uninterrupted run
    want, got = load_weights(ref_dir / "final"), load_weights(run_dir / "final")
    assert sorted(want) == sorted(got)
    max_diff = max(float((want[k].float() - got[k].float()).abs().max()) if want[k].numel() else 0.0
                   for k in want)
    print(f"kill at step-{ckpt_step:06d} of {STEPS} ({len(killed_log)} steps logged); max |Δw| after resume = {max_diff:.3e}")
    for k in want:
        assert torch.allclose(want[k].float(), got[k].float(), atol=1e-5, rtol=0), k
    # the last checkpoint is the final model, and training still moved the weights near the end
    ckpts = run_dir / "checkpoints"
    last = load_weights(ckpts / f"step-{STEPS:06d}" / "model")
    assert all(torch.equal(last[k], got[k]) for k in got)
    before = load_weights(ckpts / f"step-{STEPS - SAVE_EVERY:06d}" / "model")
    assert max(float((before[k].float() - got[k].float()).abs().max()) for k in got) > 1e-4
