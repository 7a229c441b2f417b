"""`fclm train --strategy fsdp --nproc 2 --cpu` (FSDP2 through accelerate, 2 gloo processes):

* the losses of 10 steps equal the 1-process run on the same global batch (gradient accumulation 2);
* a SIGKILL of every process mid-run, then `--resume`, ends with the same weights as the
  uninterrupted run; the final folder is one consolidated HF folder that `AutoModel` loads.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import write_tiny_train_config

STEPS, SAVE_EVERY = 10, 4
LOSS_TOL = 5e-4  # relative, every logged loss term of every step (measured max 1.1e-4: summation order drifts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sub_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def cmd(config, *extra):
    return [sys.executable, "-m", "fclm.cli", "train", "--config", str(config), "--no-progress", *extra]


def fsdp_cmd(config, *extra):
    return cmd(config, "--strategy", "fsdp", "--nproc", "2", "--cpu", "--port", str(free_port()), *extra)


def process_tree(pid):
    """``pid`` and all its descendants (torchrun starts the ranks in sessions of their own)."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return tree


def kill_tree(pid):
    for p in process_tree(pid):  # listed first, then killed: no process is left to respawn one
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def config(tmp_path, name, grad_accum):
    # at most 5 `[SEG]` targets per example: the subsampling of more draws from each process's RNG
    return write_tiny_train_config(tmp_path / f"{name}.yaml", tmp_path / name, steps=STEPS, grad_accum=grad_accum,
                                   save_every=SAVE_EVERY, keep_checkpoints=2,
                                   data={"synthetic": {"num_scenes": 50, "seed": 0, "image_size": 128},
                                         "num_workers": 1,
                                         "sources": [{"name": "synthetic", "tasks": ["res", "dlres"], "weight": 2},
                                                     {"name": "synthetic", "tasks": ["roc", "dlc"], "weight": 1}]})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1 process × grad_accum 2 and 2 fsdp processes × grad_accum 1, side by side."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("fsdp")
    one_cfg, two_cfg = config(tmp, "one", 2), config(tmp, "two", 1)
    env = sub_env()
    with open(tmp / "one.out", "w") as one_out:
        one = subprocess.Popen(cmd(one_cfg), env=env, stdout=one_out, stderr=subprocess.STDOUT)
        try:
            two = subprocess.run(fsdp_cmd(two_cfg), env=env, capture_output=True, text=True, timeout=600)
            rc_one = one.wait(600)
        finally:
            if one.poll() is None:
                one.kill()
                one.wait()
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-4000:]
    assert rc_one == 0, (tmp / "one.out").read_text()[-3000:]
    assert two.stdout.count("final model:") == 2, two.stdout  # two ranks ran the trainer
    return tmp, two_cfg


def test_two_fsdp_processes_match_one_process(runs):
    tmp, _ = runs
    with open(tmp / "two" / "checkpoints" / f"step-{STEPS:06d}" / "trainer_state.json") as f:
        state = json.load(f)
    assert state["strategy"] == "fsdp" and state["num_processes"] == 2
    # sharded: each rank wrote its own shard of the model and of the optimizer state
    st = tmp / "two" / "checkpoints" / f"step-{STEPS:06d}" / "state"
    assert sorted(os.listdir(st / "pytorch_model_fsdp_0")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert sorted(os.listdir(st / "optimizer_0")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    log1, log2 = read_log(tmp / "one"), read_log(tmp / "two")
    assert [r["step"] for r in log1] == [r["step"] for r in log2] == list(range(1, STEPS + 1))
    for a, b in zip(log1, log2):
        terms = sorted(k for k in a if k.startswith("loss"))
        assert terms == sorted(k for k in b if k.startswith("loss")) and "loss_ce" in terms, a["step"]
        for k in terms:
            assert abs(a[k] - b[k]) <= LOSS_TOL * max(abs(a[k]), 1e-8), (a["step"], k, a[k], b[k])
    assert abs(log1[-1]["loss"] - log1[0]["loss"]) > 1e-3  # the later steps depend on the updates
    w1, w2 = load_weights(tmp / "one" / "final"), load_weights(tmp / "two" / "final")
    assert sorted(w1) == sorted(w2)
    d = torch.cat([(w1[k] - w2[k]).flatten() for k in w1])
    rel = float(d.norm() / torch.cat([w1[k].flatten() for k in w1]).norm())
    print(f"fsdp 2 processes vs 1 process, {STEPS} steps: relative weight difference {rel:.2e}")
    assert rel < 1e-3


def test_final_folder_loads_with_automodel(runs):
    tmp, _ = runs
    import fclm  # noqa: F401  (registers FCLM with the Auto classes)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tmp / "two" / "final"))
    assert type(model).__name__ == "FCLMForConditionalGeneration"
    want = load_weights(tmp / "two" / "final")
    sd = model.state_dict()
    assert all(torch.equal(sd[k], want[k]) for k in want)
    assert all(v.dtype == torch.float32 for v in want.values() if v.is_floating_point())


def test_sigkill_then_resume_matches_uninterrupted(runs):
    tmp, _ = runs
    run_cfg = config(tmp, "killed", 1)
    run_dir = tmp / "killed"
    env = sub_env()
    with open(tmp / "killed.out", "w") as out:
        run = subprocess.Popen(fsdp_cmd(run_cfg), env=env, stdout=out, stderr=subprocess.STDOUT)
        latest, log_file = run_dir / "checkpoints" / "latest", run_dir / "log.jsonl"
        deadline = time.time() + 400
        try:
            while run.poll() is None and time.time() < deadline and not (
                    latest.exists() and log_file.exists() and log_file.read_text().count("\n") >= SAVE_EVERY + 1):
                time.sleep(0.02)
            assert latest.exists(), (tmp / "killed.out").read_text()[-3000:]
            ranks = process_tree(run.pid)
            assert len(ranks) >= 4, ranks  # fclm, accelerate launch (torchrun), 2 ranks
            kill_tree(run.pid)  # the launcher and both ranks at once, as a lost machine would
            rc = run.wait(60)
            time.sleep(1)
            assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                           for p in ranks), "a rank survived the kill"
        finally:
            if run.poll() is None:
                kill_tree(run.pid)
                run.wait()
    assert rc == -signal.SIGKILL, f"run ended on its own (rc {rc}) before the kill"
    assert not (run_dir / "final").exists()
    step = int(latest.read_text().strip().split("-")[1])
    assert SAVE_EVERY <= step < STEPS

    res = subprocess.run(fsdp_cmd(run_cfg, "--resume", str(run_dir)), env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"step-{step:06d}" in res.stderr and "resumed from" in res.stderr
    log, ref = read_log(run_dir), read_log(tmp / "two")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    for a, b in zip(log, ref):
        for k in b:
            if k.startswith("loss") or k == "lr":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
    want, got = load_weights(tmp / "two" / "final"), load_weights(run_dir / "final")
    assert sorted(want) == sorted(got)
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-5, rtol=0), k


def test_resume_under_another_strategy_is_refused(runs, tmp_path):
    tmp, two_cfg = runs
    res = subprocess.run(cmd(two_cfg, "--resume", str(tmp / "two")), env=sub_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("fclm train: error:")]
    assert len(err) == 1 and "written under strategy fsdp" in err[0] and "--strategy fsdp" in err[0], res.stderr
    assert "Traceback" not in res.stderr
